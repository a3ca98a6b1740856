"""Semi-supervised training: random-patch self-training (RPST, paper §IV-C).

``rpst.run_rpst(cfg)`` runs a whole job (teacher, then pseudo-label + student rounds), ``rpst.run_stage``
one stage of it; ``pseudo_label`` writes a teacher's hard labels as a new shard set.
"""
