"""metrics.jsonl after a crash (torn last line, corruption) and the elastic-restart rules (config, start record)."""
import json

import pytest

from dias_dist.run import elastic
from dias_dist.config import load_config
from dias_dist.run.history import _SkippingTracker, read_records, skip_logged
from dias_dist.run.track import MetricsLog, NullTracker


def _lines(path, records, tail=""):
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)


RECORDS = [{"kind": "train", "step": s, "loss_total": 1.0 / s} for s in (1, 2, 3)]


def test_torn_last_line_is_dropped_with_a_warning_and_resume_appends_cleanly(tmp_path):
    path = tmp_path / "metrics.jsonl"
    _lines(path, RECORDS, tail='{"kind": "train", "st')
    with pytest.warns(RuntimeWarning, match=r"metrics.jsonl:4: torn last line dropped"):
        assert read_records(path) == RECORDS
    log = MetricsLog(path, enabled=True)
    with pytest.warns(RuntimeWarning, match="torn"):
        resumed, _ = skip_logged(log, NullTracker(), 2)
    resumed.write("train", 3, {"loss_total": 9.0})  # replayed: already there, not written again
    resumed.write("train", 4, {"loss_total": 0.25})
    assert [(r["step"], r["loss_total"]) for r in read_records(path)] == [(1, 1.0), (2, 0.5), (3, 1 / 3), (4, 0.25)]


def test_corruption_before_the_last_line_names_file_and_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps(RECORDS[0]) + "\n{garbage\n" + json.dumps(RECORDS[1]) + "\n")
    with pytest.raises(ValueError, match=rf"{path}:2: corrupt metrics record"):
        read_records(path)
    path.write_text(json.dumps(RECORDS[0]) + '\n["not", "a", "record"]\n')
    with pytest.raises(ValueError, match=rf"{path}:2: corrupt metrics record"):
        read_records(path)


def test_tracker_skips_points_its_run_already_holds():
    logged = []

    class Recording(NullTracker):
        run_id = "abc"

        def log_metrics(self, metrics, step):
            logged.append((step, sorted(metrics)))

    tracker = _SkippingTracker(Recording(), {("loss_total", 5), ("lr", 5)})
    tracker.log_metrics({"loss_total": 1.0, "lr": 0.1}, 5)  # fully present: nothing sent
    tracker.log_metrics({"loss_total": 1.0, "lr": 0.1, "val_dsc": 0.5}, 5)  # only the missing point
    tracker.log_metrics({"loss_total": 1.0}, 6)
    assert logged == [(5, ["val_dsc"]), (6, ["loss_total"])] and tracker.run_id == "abc"


def test_elastic_restart_continues_the_named_job(monkeypatch):
    cfg = load_config(None, ["model.name=unet", "method.name=em", "train.overwrite=true"])
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    monkeypatch.delenv("TORCHELASTIC_RESTART_COUNT", raising=False)
    assert elastic.continue_job(cfg) is cfg  # outside torchrun nothing changes
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")
    assert elastic.continue_job(cfg).train.run_name == ""  # the shared default id names no job
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "3f2c/9a")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    first = elastic.continue_job(cfg)
    assert first.train.run_name == "unet-em-3f2c_9a" and first.train.resume == "never" and first.train.overwrite
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "2")
    again = elastic.continue_job(cfg)
    assert again.train.run_name == first.train.run_name
    assert again.train.resume == "auto" and not again.train.overwrite and elastic.lock_wait_s() > 0
    named = load_config(None, ["train.run_name=mine", "train.resume=/x/last.pt"])
    assert elastic.continue_job(named).train.run_name == "mine"
    assert elastic.continue_job(named).train.resume == "/x/last.pt"


def test_a_restart_continues_only_its_own_jobs_start_record(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-a")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "2")
    elastic.record_start(tmp_path, "mlflow-run-1", "sqlite:///x.db")
    assert elastic.restarts_left() == 2
    assert elastic.unfinished_start(tmp_path, "sqlite:///x.db") is None  # the first attempt starts afresh
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    assert elastic.unfinished_start(tmp_path, "sqlite:///x.db")["mlflow_run_id"] == "mlflow-run-1"
    assert elastic.unfinished_start(tmp_path, "sqlite:///other.db") is None  # another MLflow store
    assert elastic.unfinished_start(tmp_path / "missing", "sqlite:///x.db") is None
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-b")
    assert elastic.unfinished_start(tmp_path, "sqlite:///x.db") is None  # another job's folder
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")
    assert elastic.unfinished_start(tmp_path, "sqlite:///x.db") is None  # no job id: nothing to tell jobs apart
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "2")
    assert elastic.restarts_left() == 0


def test_a_restart_from_step_0_does_not_log_again_what_the_killed_attempt_logged(tmp_path):
    path = tmp_path / "metrics.jsonl"
    _lines(path, RECORDS[:2])
    log, _ = skip_logged(MetricsLog(path, enabled=True), NullTracker(), 0, resumed=True)
    for step in (1, 2, 3):
        log.write("train", step, {"loss_total": 1.0 / step})
    assert [(r["step"], r["loss_total"]) for r in read_records(path)] == [(1, 1.0), (2, 0.5), (3, 1 / 3)]
    fresh, _ = skip_logged(MetricsLog(path, enabled=True), NullTracker(), 0)  # a new run: no skipping wrapper
    assert isinstance(fresh, MetricsLog)
