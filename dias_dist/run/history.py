"""The metric history of a run that resumes: ``metrics.jsonl`` read safely, nothing logged twice.

Reading (``read_records``): a final line without its newline or not valid JSON is what a power
loss or SIGKILL in the middle of a write leaves; it is dropped with a warning. Any other bad line
is corruption and raises ``ValueError`` naming the file and the line number.

Resuming (``skip_logged``): a run killed after its last checkpoint at step S has already logged
the steps after S (to ``metrics.jsonl`` and to MLflow). Re-running them from the checkpoint would
log them a second time, and MLflow cannot delete metric points. So the records already present
are kept and the resumed run does not log them again: ``metrics.jsonl`` skips (kind, step) pairs it
holds beyond S, the tracker skips (metric, step) pairs MLflow holds beyond S (asked from MLflow
itself, which may hold a step whose ``metrics.jsonl`` line was lost). On CPU the re-run steps are
bit-identical, so the history equals an uninterrupted run; on GPU (or after a resume with changed
settings) the kept values are those of the first execution, identical in MLflow and ``metrics.jsonl``.
A torchrun restart of a job killed before its first checkpoint continues its folder and MLflow run
from step 0 (``dias_dist.run.elastic.unfinished_start``): everything the killed attempt logged is kept.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any


def read_records(path: str | Path) -> list[dict]:
    """Every record of a ``metrics.jsonl`` file (see the module docstring for torn and bad lines)."""
    path = Path(path)
    if not path.is_file():
        return []
    text = path.read_text(errors="replace")
    lines = text.split("\n")
    complete = text.endswith("\n")
    if complete:
        lines = lines[:-1]
    records = []
    for number, line in enumerate(lines, start=1):
        last = number == len(lines)
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or "step" not in record or "kind" not in record:
                raise ValueError("not a {kind, step, ...} record")
        except ValueError as err:
            if last and (not complete or isinstance(err, json.JSONDecodeError)):
                warnings.warn(f"{path}:{number}: torn last line dropped (an interrupted write): {line[:80]!r}",
                              RuntimeWarning, stacklevel=2)
                break
            raise ValueError(f"{path}:{number}: corrupt metrics record ({err}): {line[:80]!r}; "
                             f"fix or delete that line to resume") from None
        if last and not complete:  # valid JSON but no newline: the write stopped at the very end
            warnings.warn(f"{path}:{number}: last line had no newline (an interrupted write); kept",
                          RuntimeWarning, stacklevel=2)
        records.append(record)
    return records


def rewrite(path: str | Path, records: list[dict]) -> None:
    """Write ``records`` as the whole file (atomically), e.g. after dropping a torn line."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    tmp.replace(path)


class _SkippingLog:
    """A ``MetricsLog`` that does not write (kind, step) pairs the file already holds."""

    def __init__(self, log, present: set[tuple[str, int]]):
        self._log, self._present = log, present

    def write(self, kind: str, step: int, values: dict[str, Any]) -> None:
        if (kind, int(step)) not in self._present:
            self._log.write(kind, step, values)

    def __getattr__(self, name):
        return getattr(self._log, name)


class _SkippingTracker:
    """A tracker that does not log (metric, step) pairs its MLflow run already holds."""

    def __init__(self, tracker, present: set[tuple[str, int]]):
        self._tracker, self._present = tracker, present

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        fresh = {k: v for k, v in metrics.items() if (k, int(step)) not in self._present}
        if fresh:
            self._tracker.log_metrics(fresh, step)

    def __getattr__(self, name):
        return getattr(self._tracker, name)


def mlflow_points_after(uri: str, run_id: str, step: int) -> set[tuple[str, int]]:
    """(metric, step) pairs with step > ``step`` in MLflow run ``run_id``; empty when unreachable
    (the tracker then warns and switches itself off anyway)."""
    try:
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        keys = client.get_run(run_id).data.metrics
        return {(key, m.step) for key in keys for m in client.get_metric_history(run_id, key) if m.step > step}
    except Exception as err:  # noqa: BLE001 - a tracking failure must not stop training
        warnings.warn(f"MLflow history of run {run_id} unreadable ({type(err).__name__}: {str(err)[:200]}); "
                      f"steps after {step} may be logged twice there", RuntimeWarning, stacklevel=2)
        return set()


def skip_logged(log, tracker, step: int, tracking_uri: str = "", *, resumed: bool | None = None):
    """(log, tracker) for a run starting at ``step``: records beyond ``step`` already written are
    not written again (see the module docstring). A torn last line of the file is dropped here.
    resumed: the run continues an earlier one's folder and MLflow run (default: ``step > 0``); True also
    at step 0 for a torchrun restart of a job killed before its first checkpoint."""
    if not log.enabled:
        return log, tracker
    records = read_records(log.path)
    text = log.path.read_text(errors="replace") if log.path.is_file() else ""
    if text and (not text.endswith("\n") or text.count("\n") != len(records)):
        rewrite(log.path, records)  # drop the torn line (or end the last one) before appending after it
    if not (step > 0 if resumed is None else resumed):  # a fresh run: nothing of an earlier one survives
        return log, tracker
    log = _SkippingLog(log, {(r["kind"], int(r["step"])) for r in records if int(r["step"]) > step})
    if tracker.run_id and tracking_uri:
        tracker = _SkippingTracker(tracker, mlflow_points_after(tracking_uri, tracker.run_id, step))
    return log, tracker
