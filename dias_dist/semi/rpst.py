"""Random-patch self-training (RPST, paper §IV-C, Algorithm 1; docs/REFERENCE.md §7).

Stages of one job, in order (``stage_names(rounds)``)::

    teacher   train on the first ``data.num_labeled`` labelled sequences (weak augmentation)
    pseudo1   label ``rpst.unlabeled_split`` with the teacher's final checkpoint (hard labels at 0.5)
    round1    student: each patch is labelled with probability ``rpst.labeled_prob`` (P), else pseudo-labelled
              (strong augmentation when ``rpst.strong_augment``); initialised from the teacher
              (``rpst.student_init="teacher"``, reference) or fresh (ST++)
    pseudo2   re-label with round 1's final checkpoint, round2 ... up to ``rpst.rounds``

Every training stage is one ``dias_dist.trainer.run`` (the one loop); every stage is an MLflow run nested
under one parent run for the job, tagged ``rpst.stage`` (teacher / pseudo1 / round1 ...), ``rpst.round``
and ``rpst.num_labeled``. The parent also logs ``rpst_test_<metric>`` / ``rpst_val_dsc`` with step = round
(0 = teacher): the Fig. 9 curve in one chart. ``dias report`` draws it across jobs from the tags.

Stages are callable one by one (``run_stage``): a job's progress lives in
``<train.run_dir>/<job>/rpst_state.json`` (written by rank 0; run ids, checkpoints, pseudo-label
folders, final metrics per stage). ``run_rpst`` runs the stages not yet finished, so re-running a job
continues where it stopped.

Deviation from the reference, documented: the reference student re-uses the teacher's AdamW state;
here a student starts with a fresh optimiser and a restarted schedule (the reference's schedule
restarts too) and only the weights are carried over (``trainer.run(init_from=...)``).
"""
from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path
from typing import Callable

from dias_dist import dist, trainer
from dias_dist.config import Config, derive
from dias_dist.data import timeouts
from dias_dist.data.loader import TrainSource
from dias_dist.methods import build_network
from dias_dist.metrics import METRIC_NAMES
from dias_dist.run.atomic import atomic_write
from dias_dist.run.checkpoint import broadcast_model_state
from dias_dist.run.params import resolved_params
from dias_dist.run.track import make_tracker
from dias_dist.semi.pseudo_label import pseudo_label_split

STATE_FILE = "rpst_state.json"
STUDENT_INITS = ("teacher", "fresh")


def stage_names(rounds: int) -> list[str]:
    """["teacher", "pseudo1", "round1", ..., "pseudoR", "roundR"]."""
    names = ["teacher"]
    for k in range(1, rounds + 1):
        names += [f"pseudo{k}", f"round{k}"]
    return names


def stage_round(stage: str) -> int:
    """teacher -> 0, pseudoK / roundK -> K."""
    if stage == "teacher":
        return 0
    match = re.fullmatch(r"(pseudo|round)(\d+)", stage)
    if match is None:
        raise ValueError(f"unknown RPST stage {stage!r}; stages look like teacher, pseudo1, round1, pseudo2, ...")
    return int(match.group(2))


def validate(cfg: Config) -> None:
    """ValueError naming the key for RPST settings that cannot work."""
    r = cfg.rpst
    if cfg.data.num_labeled < 1:
        raise ValueError(f"data.num_labeled={cfg.data.num_labeled}: RPST trains the teacher on the first N "
                         "labelled sequences, set N >= 1 (paper: 1, 3, 10)")
    if not 0.0 < r.labeled_prob < 1.0:
        raise ValueError(f"rpst.labeled_prob={r.labeled_prob} must lie strictly between 0 and 1 (paper: 0.5)")
    if r.rounds < 1:
        raise ValueError(f"rpst.rounds={r.rounds} must be >= 1")
    if r.student_init not in STUDENT_INITS:
        raise ValueError(f"rpst.student_init={r.student_init!r}; valid: {', '.join(STUDENT_INITS)}")
    for key in ("teacher_epochs", "student_epochs", "num_unlabeled"):
        if getattr(r, key) < 0:
            raise ValueError(f"rpst.{key}={getattr(r, key)} must be >= 0")


def job_name(cfg: Config) -> str:
    """``train.run_name`` or ``rpst-<model>-L<N>-<yymmdd_HHMMSS>`` (chosen on rank 0, broadcast)."""
    if cfg.train.run_name:
        return cfg.train.run_name
    return dist.broadcast_object(f"rpst-{cfg.model.name}-L{cfg.data.num_labeled}-{time.strftime('%y%m%d_%H%M%S')}")


def job_dir(cfg: Config, job: str) -> Path:
    return Path(cfg.train.run_dir) / job


# --------------------------------------------------------------------------------------------
# job state (rank 0 reads and writes; every rank gets a copy)


def load_state(cfg: Config, job: str) -> dict:
    """The job's state on every rank ({"job", "parent_run_id", "num_labeled", "stages": {}} when new)."""
    state = None
    if dist.is_main():
        path = job_dir(cfg, job) / STATE_FILE
        state = json.loads(path.read_text()) if path.is_file() else {
            "job": job, "parent_run_id": "", "num_labeled": cfg.data.num_labeled, "stages": {}}
    state = dist.broadcast_object(state)
    if state["num_labeled"] != cfg.data.num_labeled:
        raise ValueError(f"data.num_labeled={cfg.data.num_labeled} but job {job!r} was started with "
                         f"{state['num_labeled']}; use another train.run_name")
    return state


def save_state(cfg: Config, state: dict) -> None:
    """Rank 0 writes the state atomically."""
    if dist.is_main():
        with atomic_write(job_dir(cfg, state["job"]) / STATE_FILE) as handle:
            handle.write(json.dumps(state, indent=1))  # stage order = run order
    dist.barrier()


# --------------------------------------------------------------------------------------------
# MLflow (rank 0 only; a NullTracker elsewhere)


def _tags(cfg: Config, stage: str) -> dict:
    """Stage tags; strong_augment / student_init / labeled_prob tell ablation variants of one N apart."""
    return {"study": "semi", "rpst.stage": stage, "rpst.round": str(stage_round(stage)),
            "rpst.num_labeled": str(cfg.data.num_labeled), "rpst.strong_augment": str(cfg.rpst.strong_augment).lower(),
            "rpst.student_init": cfg.rpst.student_init, "rpst.labeled_prob": str(cfg.rpst.labeled_prob)}


def open_parent(cfg: Config, state: dict):
    """The job's parent run (created once, resumed later); nested under ``track.parent_run_id`` if set."""
    parent_cfg = derive(cfg, {"track.tags": {**cfg.track.tags, "study": "semi", "rpst.job": state["job"],
                                             "rpst.num_labeled": str(cfg.data.num_labeled)}})
    tracker = make_tracker(parent_cfg.track, state["job"], run_root=cfg.train.run_dir, method=cfg.method.name,
                           is_main=dist.is_main(), resume_run_id=state["parent_run_id"])
    if dist.is_main() and tracker.run_id and not state["parent_run_id"]:
        tracker.log_params(resolved_params(cfg, semi=True))
    state["parent_run_id"] = dist.broadcast_object(tracker.run_id)
    return tracker


def stage_config(cfg: Config, state: dict, stage: str, epochs: int) -> Config:
    """The config of one training stage: its run name, epochs, tags and the parent run."""
    return derive(cfg, {
        "train.run_name": f"{state['job']}-{stage}",
        "train.epochs": epochs or cfg.train.epochs,
        "track.parent_run_id": state["parent_run_id"],
        "track.tags": {**cfg.track.tags, **_tags(cfg, stage)},
    })


# --------------------------------------------------------------------------------------------
# stages


def _train_stage(cfg: Config, state: dict, stage: str, *, sources, init_from, report) -> dict:
    epochs = cfg.rpst.teacher_epochs if stage == "teacher" else cfg.rpst.student_epochs
    last_validation: dict = {}
    result = trainer.run(stage_config(cfg, state, stage, epochs), report=last_validation.update, sources=sources,
                         init_from=init_from)
    result = dist.broadcast_object(result)  # run_id is known on rank 0 only
    entry = {"run_id": result.get("run_id", ""), "run_dir": result["run_dir"],
             "checkpoint": str(Path(result["run_dir"]) / "checkpoints" / "final.pt"),
             "metrics": {k: v for k, v in result.items() if isinstance(v, (int, float))},
             "last_validation": {k: v for k, v in last_validation.items() if isinstance(v, (int, float))}}
    if report is not None:
        report({"stage": stage, "round": stage_round(stage), **entry["last_validation"], **entry["metrics"]})
    return entry


def labelled_source(cfg: Config, weight: float = 1.0):
    """The first ``data.num_labeled`` labelled training sequences as a ``TrainSource`` of mixing ``weight``."""
    return TrainSource(cfg.data.shards, "training", weight=weight, augment=cfg.data.augment, target=cfg.data.target,
                       num_sequences=cfg.data.num_labeled, num_folds=cfg.data.num_folds, fold=cfg.data.fold,
                       fold_groups=cfg.data.fold_groups)  # a fold never trains on its held-out part


def teacher_stage(cfg: Config, state: dict, *, report=None) -> dict:
    """Train the teacher on the first ``data.num_labeled`` labelled sequences."""
    return _train_stage(cfg, state, "teacher", sources=[labelled_source(cfg)], init_from=None, report=report)


def pseudo_stage(cfg: Config, state: dict, k: int) -> dict:
    """Label ``rpst.unlabeled_split`` with the final checkpoint of the previous training stage (a nested run)."""
    timeouts.set_limits(cfg.data.read_timeout_s, cfg.data.download_budget_s)
    source_stage = "teacher" if k == 1 else f"round{k - 1}"
    source = _finished(state, source_stage, f"pseudo{k}")
    # idempotent (an existing group is reused): gives this rank's device, also when run_stage runs standalone
    device = dist.init(cfg.dist, cfg.train.device)
    _, model = build_network(cfg.model, cfg.method)
    model.load_state_dict(broadcast_model_state(Path(source["checkpoint"])))
    model.to(device)
    out_dir = job_dir(cfg, state["job"]) / "pseudo" / f"round{k}"
    provenance = {"rpst_job": state["job"], "round": k, "labelled_by_stage": source_stage,
                  "teacher_run_id": source["run_id"], "checkpoint": str(Path(source["checkpoint"]).resolve())}
    stage_cfg = stage_config(cfg, state, f"pseudo{k}", 0)
    tracker = make_tracker(stage_cfg.track, stage_cfg.train.run_name, run_root=cfg.train.run_dir,
                           method=cfg.method.name, is_main=dist.is_main())
    status = "FAILED"
    try:
        stats = pseudo_label_split(model, cfg.data.shards, cfg.rpst.unlabeled_split, out_dir, cfg.eval,
                                   device=device, provenance=provenance, num_sequences=cfg.rpst.num_unlabeled,
                                   amp=cfg.train.bf16_autocast(device),
                                   progress=cfg.train.progress and dist.is_main())
        tracker.log_params({**provenance, "unlabeled_split": cfg.rpst.unlabeled_split, "out_dir": str(out_dir)})
        tracker.log_metrics({k_: float(v) for k_, v in stats.items() if isinstance(v, (int, float))}, k)
        tracker.log_artifact(out_dir / "manifest.json")
        status = "FINISHED"
    finally:
        tracker.close(status)
    return {"run_id": dist.broadcast_object(tracker.run_id), "out_dir": str(out_dir), **stats}


def student_sources(cfg: Config, pseudo_dir: str | Path) -> list:
    """Labelled source (weight P) + pseudo-labelled source (weight 1 - P, strong augmentation if enabled)."""
    p = cfg.rpst.labeled_prob
    pseudo = TrainSource(str(pseudo_dir), cfg.rpst.unlabeled_split, weight=1.0 - p,
                         augment="strong" if cfg.rpst.strong_augment else cfg.data.augment, target="pseudo",
                         is_pseudo=True)
    return [labelled_source(cfg, weight=p), pseudo]


def student_stage(cfg: Config, state: dict, k: int, *, report=None) -> dict:
    """Round ``k``: train the student on the labelled / pseudo-labelled patch mixture."""
    pseudo = _finished(state, f"pseudo{k}", f"round{k}")
    init_from = None
    if cfg.rpst.student_init == "teacher":
        init_from = _finished(state, "teacher" if k == 1 else f"round{k - 1}", f"round{k}")["checkpoint"]
    return _train_stage(cfg, state, f"round{k}", sources=student_sources(cfg, pseudo["out_dir"]),
                        init_from=init_from, report=report)


def _finished(state: dict, stage: str, needed_by: str) -> dict:
    if stage not in state["stages"]:
        raise ValueError(f"RPST job {state['job']!r}: stage {needed_by} needs stage {stage} first "
                         f"(finished: {', '.join(state['stages']) or 'none'})")
    return state["stages"][stage]


def run_stage(cfg: Config, stage: str, *, state: dict | None = None, report: Callable[[dict], None] | None = None,
              parent=None) -> dict:
    """Run one stage of the job ``train.run_name`` (teacher / pseudoK / roundK); returns its state entry."""
    validate(cfg)
    k = stage_round(stage)
    if k > cfg.rpst.rounds:
        raise ValueError(f"stage {stage!r} is beyond rpst.rounds={cfg.rpst.rounds}")
    state = state if state is not None else load_state(cfg, job_name(cfg))
    own_parent = parent is None
    parent = parent if parent is not None else open_parent(cfg, state)
    status = "FAILED"
    try:
        if stage == "teacher":
            entry = teacher_stage(cfg, state, report=report)
        elif stage.startswith("pseudo"):
            entry = pseudo_stage(cfg, state, k)
        else:
            entry = student_stage(cfg, state, k, report=report)
        state["stages"][stage] = entry
        save_state(cfg, state)
        _log_stage_on_parent(parent, stage, entry)
        status = "FINISHED"
    finally:
        if own_parent:
            parent.close(status)
    return entry


def _log_stage_on_parent(parent, stage: str, entry: dict) -> None:
    """Parent metrics with step = round: rpst_test_<m>, rpst_val_dsc (training stages), pseudo stats."""
    k = stage_round(stage)
    values = {}
    if stage.startswith("pseudo"):
        values = {"rpst_pseudo_vessel_fraction": entry["vessel_fraction"], "rpst_pseudo_seconds": entry["seconds"]}
    else:
        for name in METRIC_NAMES:
            if f"test_{name}" in entry["metrics"]:
                values[f"rpst_test_{name}"] = entry["metrics"][f"test_{name}"]
        if "val_dsc" in entry["last_validation"]:
            values["rpst_val_dsc"] = entry["last_validation"]["val_dsc"]
    parent.log_metrics({k_: v for k_, v in values.items() if math.isfinite(v)}, k)


def run_rpst(cfg: Config, report: Callable[[dict], None] | None = None) -> dict:
    """The whole job: every stage not yet finished, in order. Returns the job state (on every rank).

    report: called after the teacher and after every round with that stage's last validation metrics
    (``val_dsc`` ...) and final metrics (Ray Tune passes ``tune.report``).
    """
    validate(cfg)
    dist.init(cfg.dist, cfg.train.device)
    state = load_state(cfg, job_name(cfg))
    parent = open_parent(cfg, state)
    status = "FAILED"
    try:
        for stage in stage_names(cfg.rpst.rounds):
            if stage in state["stages"]:
                if dist.is_main():
                    print(f"rpst {state['job']}: stage {stage} already finished, skipped")
                continue
            run_stage(cfg, stage, state=state, report=report, parent=parent)
        status = "FINISHED"
    finally:
        parent.close(status)
    return state
