"""Evaluation with the paper's protocol: tiling (``tiling``), split evaluation over ranks (``evaluate``),
tables (``tables``), Fig. 7 overlays (``overlay``), ``dias score`` (``score``) and ``dias baseline`` (``baseline``).
Per-image metrics live in ``dias_dist.metrics``."""
