"""The life of a run: everything between "train this config" and the loop's first step, and what
outlives the loop (see docs/ARCHITECTURE.md, "A run, end to end").

- ``lifecycle.open_run``: the one entry the trainer uses (elastic continuation, name and folder,
  lock, restore, start record, tracker, params; closes tracker and folder with the run's status)
- ``folder``: claim and lock of the run folder, the overwrite policy, one-line folder errors
- ``elastic``: torchrun restarts continue the same run (name, ``start.json``)
- ``history``: ``metrics.jsonl`` read safely; a resumed run logs nothing twice
- ``checkpoint``: checkpoint files, RNG states, run name / folder resolution
- ``artifacts``: a checkpoint file or an MLflow model URI to a checkpoint payload (``dias evaluate``, ``dias predict``)
- ``track``: MLflow (one ``Tracker`` protocol) and ``metrics.jsonl``
- ``params``: the resolved parameters a run logs
- ``atomic``: the one way to write a file a restart or a reader depends on

This package file imports nothing, so ``dias_dist.run.atomic`` stays a leaf that ``config`` may use.
"""
