"""The parameters a run logs to MLflow: its fully resolved configuration, flat and stable.

Two runs line up in MLflow's Compare view only when both logged the same keys. So every run logs
what its model and method constructors actually received, defaults included (an all-frames
VSS-Net logs ``model.params.frames = all`` although its YAML never says so), under the same
dotted names as the YAML (``model.params.width``, ``optim.lr``). Sections a run does not use are
left out: ``rpst.*`` outside random-patch self-training, ``dist.deepspeed_config`` under DDP, and
``track.*`` (experiment, parent and tags are attributes of the MLflow run itself). Empty mappings
log nothing.

``models.build_model`` / ``methods.build_method`` record their constructor's bound arguments
(``models.constructor_args``) as ``init_args`` on the object they return, where they build it;
``resolved_params`` prefers those over re-binding the YAML values, so an argument a method sets
itself (the 3-class head of the scribble methods) is logged as received. The registries never
import this module (it imports them).
"""
from __future__ import annotations

from typing import Any

from dias_dist.config import Config, flatten, to_dict
from dias_dist.methods import METHODS
from dias_dist.models import INIT_ARGS, MODELS, constructor_args


def _model_args(cfg: Config, model: Any) -> dict:
    cls = MODELS.get(cfg.model.name)
    if model is not None:
        # the registered network itself, also when a method wraps it (SSCR's pair, engine wrappers)
        for module in model.modules():
            if (cls is None or type(module) is cls) and hasattr(module, INIT_ARGS):
                return dict(getattr(module, INIT_ARGS))
    return constructor_args(cls, cfg.model.params) if cls is not None else dict(cfg.model.params)


def _method_args(cfg: Config, method: Any) -> dict:
    if method is not None and hasattr(method, INIT_ARGS):
        return dict(getattr(method, INIT_ARGS))
    cls = METHODS.get(cfg.method.name)
    return constructor_args(cls, cfg.method.params) if cls is not None else dict(cfg.method.params)


def resolved_params(cfg: Config, method: Any = None, model: Any = None, *, semi: bool = False) -> dict[str, str]:
    """Flat ``{dotted key: str value}`` of ``cfg`` as the run uses it (see the module docstring).

    method / model: the built objects (their recorded ``init_args`` win); None re-binds the YAML
    values to the registered constructors. semi: the run is part of random-patch self-training
    (logs ``rpst.*``).
    """
    data = to_dict(cfg)
    data["model"]["params"] = _model_args(cfg, model)
    data["method"]["params"] = _method_args(cfg, method)
    data.pop("track")
    if not semi:
        data.pop("rpst")
    if cfg.dist.engine != "deepspeed":
        data["dist"].pop("deepspeed_config")
    return {key: str(value) for key, value in flatten(data).items()}
