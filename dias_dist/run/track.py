"""Experiment tracking: one ``Tracker`` protocol, MLflow on rank 0, a null object everywhere else.

``metrics.jsonl`` in the run folder is the source of truth (rank 0 writes it, one JSON object a
line: ``{"kind": "train"|"val"|"test", "step": N, ...}``); MLflow is a view of it. A tracking
store that cannot be reached does not stop training: the first failure prints one warning and
MLflow logging is switched off for the rest of the run, ``metrics.jsonl`` keeps everything.

The tracker gets the ``track`` section, the runs' root folder (``train.run_dir``) and the method
name, not the whole config. Store: ``track.tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else
``sqlite:///<train.run_dir>/mlflow.db``. Experiments are created by ``experiment_id`` only: in a
SQLite store their artifacts go to ``mlartifacts/`` next to the database file (never to ``./mlruns``
in whatever directory the process runs in); a server keeps its own artifact root.

Studies: every run carries a ``study`` tag and, unless ``track.experiment`` names one, goes to the
experiment ``dias-<study>``, so runs that the paper compares in one table share one MLflow
experiment: ``supervised`` (dense labels, Tables II and VI), ``weak`` (scribble methods, Table III)
and ``semi`` (random-patch self-training stages, which tag themselves). A ``study`` entry in
``track.tags`` wins. With ``track.parent_run_id`` the run is nested under that run (RPST rounds,
Tune sweeps).

Every new run carries MLflow's source tags (``mlflow.user``, ``mlflow.source.name``,
``mlflow.source.type`` and ``mlflow.source.git.commit``, the commit of ``git_sha``: the checkout's, or
inside the Docker image the one baked in at build time). System metrics (CPU, memory, disk, network
and, with ``nvidia-ml-py``, GPU utilisation and memory, as ``system/...``) are logged by MLflow's
monitor thread when ``track.system_metrics=true`` or ``MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING=true``
(sampling interval ``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL``, default 10 s).

A moved store: MLflow writes absolute ``file://`` artifact URIs into a SQLite store. A store
folder (``mlflow.db`` with its ``mlartifacts/``) that was moved or copied (another directory, a
container that mounted it elsewhere) is re-pointed at its own ``mlartifacts/`` when dias opens it
(``relocate_store``); afterwards any MLflow client, ``mlflow ui`` included, reads it. A tracking
server (``mlflow server``, artifacts proxied as ``mlflow-artifacts:/``) is relative by itself.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from pathlib import Path
from typing import Any, Protocol

import torch

from dias_dist import dist
from dias_dist.config import TrackConfig, derive
from dias_dist.data import location
from dias_dist.methods import METHODS
from dias_dist.run.history import read_records

# A server that is down must fail fast, not after minutes of retries (respect explicit settings).
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


class Tracker(Protocol):
    run_id: str
    client: Any  # the MlflowClient of the run's store, None when not tracking

    def log_params(self, params: dict[str, Any], *, keep_logged: bool = False) -> None: ...

    def set_tags(self, tags: dict[str, Any]) -> None: ...

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...

    def close(self, status: str = "FINISHED") -> None: ...


class NullTracker:
    """Does nothing (ranks other than 0, tracking disabled, dry runs)."""

    run_id = ""
    client = None

    def log_params(self, params, *, keep_logged=False):
        pass

    def set_tags(self, tags):
        pass

    def log_metrics(self, metrics, step):
        pass

    def log_artifact(self, path, artifact_path=None):
        pass

    def close(self, status="FINISHED"):
        pass


def tracking_uri(track: TrackConfig, run_root: str | Path) -> str:
    """The MLflow store of runs under ``run_root`` (see module docstring)."""
    if track.tracking_uri:
        return track.tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{Path(run_root).resolve()}/mlflow.db"


STUDY_OF_TARGET = {"dense": "supervised", "scribble": "weak"}  # by the method's ``target_kind``


def study_of(track: TrackConfig, method: str) -> str:
    """``track.tags["study"]`` if set, else the study of method ``method``'s kind of targets."""
    if track.tags.get("study"):
        return str(track.tags["study"])
    return STUDY_OF_TARGET.get(getattr(METHODS.get(method), "target_kind", ""), method)


def experiment_name(track: TrackConfig, method: str) -> str:
    """``track.experiment``, else ``dias-<study>``."""
    return track.experiment or f"dias-{study_of(track, method)}"


def with_study(cfg):
    """``cfg`` with ``track.experiment`` and ``track.tags["study"]`` filled in (saved with the run)."""
    study = study_of(cfg.track, cfg.method.name)
    return derive(cfg, {"track.experiment": experiment_name(cfg.track, cfg.method.name),
                        "track.tags": {**cfg.track.tags, "study": study}}, "resolved config")


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` store URI, else None (a server, in-memory)."""
    if not uri.startswith("sqlite:///"):
        return None
    db = uri[len("sqlite:///"):].split("?", 1)[0]
    return None if not db or db == ":memory:" else Path(db)


# (table, column) pairs of an MLflow SQLite store that hold artifact URIs
_URI_COLUMNS = (("experiments", "artifact_location"), ("runs", "artifact_uri"),
                ("logged_models", "artifact_location"), ("model_versions", "source"),
                ("model_versions", "storage_location"), ("trace_tags", "value"))


def relocate_store(uri: str) -> list[tuple[str, str]]:
    """Re-point a moved SQLite store at its own ``mlartifacts/``; returns the (old, new) roots changed.

    Experiments created by dias keep their artifacts in ``<folder of the db>/mlartifacts`` (see
    ``artifact_location``). When that folder was moved, the absolute URIs in the database name the
    old place: every URI under an old ``.../mlartifacts`` root is rewritten to the current one (in one
    transaction). Nothing happens for a server, a store that has not moved, or experiments whose
    artifacts live elsewhere (an explicit artifact location). A read-only store is left as it is,
    with a warning (its artifacts stay unreachable until it is opened with write access).

    A store mounted at two paths at once (a host folder and a container's bind mount) is re-pointed
    by whichever side opens it last; a run still logging from the other side would then write its
    artifacts under a path of the wrong machine. Share a store between places with ``mlflow server``
    (docs/docker.md), not by opening one SQLite file from both.
    """
    import sqlite3
    from contextlib import closing

    db = sqlite_path(uri)
    if db is None or not db.is_file():
        return []
    new_root = (db.resolve().parent / "mlartifacts").as_uri()
    try:
        with closing(sqlite3.connect(str(db), timeout=30)) as connection, connection as con:  # one transaction
            tables = {name for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if "experiments" not in tables:  # a new (or just write-probed, check_writable) store: nothing to move
                return []
            rows = con.execute("SELECT artifact_location FROM experiments").fetchall()
            old_roots = sorted({loc.split("/mlartifacts", 1)[0] + "/mlartifacts" for (loc,) in rows
                                if loc and loc.startswith("file://") and "/mlartifacts" in loc} - {new_root})
            if not old_roots:
                return []
            for old in old_roots:
                for table, column in _URI_COLUMNS:
                    if table not in tables:
                        continue
                    con.execute(f"UPDATE {table} SET {column} = ? || substr({column}, ?) "  # noqa: S608 - fixed names
                                f"WHERE substr({column}, 1, ?) = ? AND "
                                f"(length({column}) = ? OR substr({column}, ?, 1) = '/')",
                                (new_root, len(old) + 1, len(old), old, len(old), len(old) + 1))
    except sqlite3.Error as err:
        warnings.warn(f"MLflow store {db} was moved but cannot be re-pointed at {new_root} ({err}); "
                      "its artifacts are unreachable until it is opened with write access", RuntimeWarning,
                      stacklevel=2)
        return []
    return [(old, new_root) for old in old_roots]


def check_writable(uri: str) -> None:
    """Raise ``OSError`` naming the database when the SQLite store ``uri`` cannot be written (a read-only
    file, folder or ``mode=ro`` URI, a folder where the file should be); nothing for a server.

    MLflow itself retries opening a database it cannot open ten times with exponential back-off (about
    100 s) and logs every failed write with its traceback; this probe (a table created and rolled back
    in one transaction, so the journal is written too) fails at once, and the tracker's one warning says
    why."""
    import sqlite3
    from contextlib import closing

    if not uri.startswith("sqlite:///"):
        return
    path, _, query = uri[len("sqlite:///"):].partition("?")
    if not path or path == ":memory:":
        return
    as_uri = "uri=true" in query.lower()  # sqlite:///file:/x/mlflow.db?mode=ro&uri=true
    if not as_uri:
        Path(path).parent.mkdir(parents=True, exist_ok=True)  # as MLflow does before opening it
    try:
        with closing(sqlite3.connect(f"{path}?{query}" if as_uri else path, uri=as_uri, timeout=30)) as con:
            con.execute("BEGIN IMMEDIATE")
            con.execute("CREATE TABLE dias_write_probe (x INTEGER)")
            con.rollback()
    except sqlite3.Error as err:
        raise OSError(f"MLflow store {path} cannot be written ({err})") from None


def open_store(uri: str):
    """An ``MlflowClient`` of the store at ``uri``, re-pointed at its own ``mlartifacts/`` first when
    the store's folder was moved (``relocate_store``): how dias opens a store to write or report."""
    from mlflow import MlflowClient

    relocate_store(uri)
    return MlflowClient(tracking_uri=uri)


def git_sha() -> str:
    """The commit of the running code: the git checkout's (``mlflow.utils.git_utils``), else
    ``$DIAS_GIT_SHA`` (set in the Docker image from the ``GIT_SHA`` build argument), else ``unknown``."""
    from mlflow.utils.git_utils import get_git_commit

    return get_git_commit(str(Path(__file__).resolve().parent)) or os.environ.get("DIAS_GIT_SHA", "").strip() or "unknown"


def source_tags() -> dict[str, str]:
    """MLflow's standard source tags for a run started by this process: ``mlflow.user``,
    ``mlflow.source.name``, ``mlflow.source.type`` (as ``mlflow.start_run`` sets them) and
    ``mlflow.source.git.commit`` from ``git_sha`` (absent when unknown)."""
    from mlflow.tracking.context.default_context import DefaultRunContext
    from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT

    tags = {str(k): str(v) for k, v in DefaultRunContext().tags().items()}
    sha = git_sha()
    if sha != "unknown":
        tags[MLFLOW_GIT_COMMIT] = sha
    return tags


def system_metrics_enabled(track: TrackConfig) -> bool:
    """``track.system_metrics`` or ``MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING``, read by MLflow's own parser
    (true/false/1/0; any other value is MLflow's ValueError naming the variable and the value)."""
    from mlflow.environment_variables import MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING

    return track.system_metrics or bool(MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING.get())


def artifact_location(uri: str) -> str | None:
    """Artifact root for a new experiment in store ``uri``: ``<folder of the db>/mlartifacts`` for a
    SQLite file (MLflow's own default would be ``./mlruns`` in the current directory), else None
    (the tracking server's default)."""
    db = sqlite_path(uri)
    return None if db is None else (db.resolve().parent / "mlartifacts").as_uri()


def experiment_id(client, name: str, uri: str) -> str:
    """The id of experiment ``name`` in store ``uri`` (``client`` is bound to it), created when missing
    with its artifacts at ``artifact_location(uri)``. Used by training runs and sweep parent runs."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return client.create_experiment(name, artifact_location=artifact_location(uri))


class MLflowTracker:
    """MLflow client bound to one run; every call is guarded (warning + disable on failure)."""

    def __init__(self, track: TrackConfig, run_name: str, *, run_root: str | Path, method: str,
                 resume_run_id: str = ""):
        self.run_id = ""
        self._client = None
        self._monitor = None
        system_metrics = system_metrics_enabled(track)  # a bad value is a config error, not a tracking failure
        self._guard("start", self._start, track, run_name, run_root, method, resume_run_id)
        if system_metrics and self._client is not None:
            self._start_system_metrics(tracking_uri(track, run_root), bool(resume_run_id))

    def _start(self, track: TrackConfig, run_name: str, run_root: str | Path, method: str, resume_run_id: str) -> None:
        uri = tracking_uri(track, run_root)
        check_writable(uri)  # a read-only store: one warning now, not ~100 s of MLflow's retries and tracebacks
        client = open_store(uri)
        if resume_run_id:
            client.update_run(resume_run_id, status="RUNNING")
            self.run_id, self._client = resume_run_id, client
            return
        exp_id = experiment_id(client, experiment_name(track, method), uri)
        tags = {**source_tags(), "study": study_of(track, method), **{str(k): str(v) for k, v in track.tags.items()}}
        if track.parent_run_id:
            tags["mlflow.parentRunId"] = track.parent_run_id
        run = client.create_run(exp_id, run_name=run_name, tags=tags)
        self.run_id, self._client = run.info.run_id, client

    def _start_system_metrics(self, uri: str, resume: bool) -> None:
        """MLflow's monitor thread (needs psutil; GPUs with nvidia-ml-py) logging ``system/...`` to this
        run; a failure to start it is one warning and leaves the other tracking on."""
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            self._monitor = SystemMetricsMonitor(self.run_id, resume_logging=resume, tracking_uri=uri)
            self._monitor.start()
        except Exception as err:  # noqa: BLE001 - e.g. psutil missing
            warnings.warn(f"MLflow system metrics are off ({type(err).__name__}: {str(err)[:200]})",
                          RuntimeWarning, stacklevel=3)
            self._monitor = None

    @property
    def client(self):
        """The ``MlflowClient`` bound to this run's store, or None once tracking is off (never
        started, or switched off by a failure): for callers that log what this class does not wrap,
        such as the trained model (``dias_dist.predict.mlflow_model``)."""
        return self._client

    def _guard(self, what: str, fn, *args) -> None:
        if what != "start" and self._client is None:
            return
        try:
            fn(*args)
        except Exception as err:  # noqa: BLE001 — any tracking failure must not stop training
            warnings.warn(f"MLflow {what} failed ({type(err).__name__}: {str(err)[:200]}); "
                          "tracking to MLflow is off for the rest of this run, metrics.jsonl keeps everything",
                          RuntimeWarning, stacklevel=3)
            self._client = None

    def log_params(self, params: dict[str, Any], *, keep_logged: bool = False) -> None:
        """Log ``params``; ``keep_logged``: leave out names the run already holds (MLflow refuses to change a
        param, and a restart's resolved config differs from the first attempt's in ``train.resume``)."""
        from mlflow.entities import Param

        def log():
            logged = self._client.get_run(self.run_id).data.params if keep_logged else {}
            items = [Param(k, str(v)[:6000]) for k, v in params.items() if k not in logged]
            if items:  # MlflowClient.log_batch splits long lists into the store's per-request limits itself
                self._client.log_batch(self.run_id, params=items)

        self._guard("log_params", log)

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        self._guard("set_tags", lambda: self._client.log_batch(
            self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()]))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, int(step)) for k, v in metrics.items()]
        self._guard("log_metrics", lambda: self._client.log_batch(self.run_id, metrics=items))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self._guard("log_artifacts", lambda: self._client.log_artifacts(self.run_id, str(path), artifact_path))
        else:
            self._guard("log_artifact", lambda: self._client.log_artifact(self.run_id, str(path), artifact_path))

    def close(self, status: str = "FINISHED") -> None:
        if self._monitor is not None:  # its last samples are flushed before the run ends
            monitor, self._monitor = self._monitor, None
            try:
                monitor.finish()
            except Exception as err:  # noqa: BLE001
                warnings.warn(f"MLflow system metrics: {type(err).__name__}: {str(err)[:200]}", RuntimeWarning,
                              stacklevel=2)
        self._guard("close", lambda: self._client.set_terminated(self.run_id, status))


def make_tracker(track: TrackConfig, run_name: str, *, run_root: str | Path, method: str, is_main: bool,
                 resume_run_id: str = "") -> Tracker:
    """MLflowTracker on rank 0 when ``track.enabled``, else NullTracker. A bad
    ``MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING`` is a ValueError on every rank."""
    if track.enabled:
        system_metrics_enabled(track)
    if is_main and track.enabled:
        return MLflowTracker(track, run_name, run_root=run_root, method=method, resume_run_id=resume_run_id)
    return NullTracker()


def run_tags(shards: str | Path, *, device: torch.device, num_params: int) -> dict:
    """git SHA, hash of the shard set's manifest, world size, device and parameter count (rank 0 logs them)."""
    return {"git_sha": git_sha(), "world_size": dist.world_size(), "num_params": num_params,
            "shard_manifest_sha256": manifest_sha256(shards),
            "device": str(device) if device.type == "cpu" else f"{device} ({torch.cuda.get_device_name(device)})"}


def manifest_sha256(shards: str | Path) -> str:
    """sha256 of the shard set's manifest, local or at a URL (``dias_dist.data.location``); "missing"
    when it cannot be read (the reader has already named the problem by then)."""
    manifest = location.join(shards, "manifest.json")
    try:
        data = Path(manifest).read_bytes() if location.is_local(shards) else location.read_bytes(manifest)
    except OSError:
        return "missing"
    return hashlib.sha256(data).hexdigest()


class MetricsLog:
    """Append-only ``metrics.jsonl`` (rank 0). A resumed run does not write again what a killed run
    logged after its checkpoint (``dias_dist.run.history.skip_logged``)."""

    def __init__(self, path: str | Path, enabled: bool):
        self.path = Path(path)
        self.enabled = enabled

    def write(self, kind: str, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"kind": kind, "step": int(step), "time": round(time.time(), 3)}
        record.update({k: (float(v) if isinstance(v, (int, float)) else v) for k, v in values.items()})
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")

    def read(self) -> list[dict]:
        """Every record; a torn last line is dropped with a warning, other bad lines name file:line."""
        return read_records(self.path)
