"""Run-folder ownership (dias_dist.run.folder): the OS lock against other processes, stale locks after a
crash, the overwrite policy, failed starts, stale temporary files and folder faults."""
import errno
import os
import signal
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from dias_dist.run import folder as run_folder
from dias_dist.run.folder import RunFolderError, claim

ROOT = Path(__file__).resolve().parents[1]
HOLDER = ("import sys, time\n"
          "from dias_dist.run import folder as run_folder\n"
          "held = run_folder.claim(sys.argv[1], continuing=False, auto=True, overwrite=False)\n"
          "print('held', flush=True)\n"
          "time.sleep(120)\n")


def _hold(path):
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_claim_fails_naming_the_holder_and_a_crash_leaves_no_stale_lock(tmp_path):
    run = tmp_path / "r"
    holder = _hold(run)
    try:
        with pytest.raises(RunFolderError, match=rf"in use .* host {socket.gethostname()} pid {holder.pid}"):
            claim(run, continuing=True, auto=True, overwrite=False)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    folder = claim(run, continuing=True, auto=True, overwrite=False)  # the kernel dropped the dead holder's lock
    assert f'"pid": {os.getpid()}' in (run / ".lock").read_text()
    with pytest.raises(RunFolderError, match="already in use by this process"):
        claim(run, continuing=True, auto=True, overwrite=False)
    folder.release("FINISHED")
    claim(run, continuing=True, auto=True, overwrite=False).release("FINISHED")


def _old_run(path):
    (path / "checkpoints").mkdir(parents=True)
    for name in ("last.pt", "final.pt", "best.pt", ".last.pt.tmp4242"):
        (path / "checkpoints" / name).write_bytes(b"x")
    (path / "metrics.jsonl").write_text('{"kind": "train", "step": 1}\n')
    (path / "config.yaml.tmp").write_text("torn")


def test_an_earlier_run_is_never_overwritten_by_default(tmp_path):
    _old_run(tmp_path / "r")
    before = sorted(p.name for p in (tmp_path / "r").rglob("*"))
    with pytest.raises(RunFolderError, match="holds an earlier run .*train.resume=auto.*train.overwrite=true"):
        claim(tmp_path / "r", continuing=False, auto=False, overwrite=False)
    assert sorted(p.name for p in (tmp_path / "r").rglob("*") if p.name != ".lock") == before


def test_overwrite_removes_everything_of_the_old_run_including_best(tmp_path):
    _old_run(tmp_path / "r")
    folder = claim(tmp_path / "r", continuing=False, auto=False, overwrite=True)
    assert [p.name for p in (tmp_path / "r").iterdir()] == [".lock"]
    folder.release("FINISHED")
    with pytest.raises(RunFolderError, match="would delete the checkpoint this run resumes from"):
        claim(tmp_path / "r", continuing=True, auto=True, overwrite=True)


def test_auto_without_checkpoint_starts_afresh_with_a_warning(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "config.yaml").write_text("old")
    with pytest.warns(RuntimeWarning, match="no checkpoint to resume from"):
        folder = claim(tmp_path / "r", continuing=False, auto=True, overwrite=False)
    assert not (tmp_path / "r" / "config.yaml").exists()
    folder.release("FINISHED")


def test_continuing_keeps_the_run_and_sweeps_interrupted_temporary_files(tmp_path):
    _old_run(tmp_path / "r")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        folder = claim(tmp_path / "r", continuing=True, auto=True, overwrite=False)
    names = sorted(p.name for p in (tmp_path / "r").rglob("*"))
    assert names == [".lock", "best.pt", "checkpoints", "final.pt", "last.pt", "metrics.jsonl"]
    folder.release("FAILED")  # a failed resume never deletes the run it continued
    assert (tmp_path / "r" / "checkpoints" / "last.pt").is_file()


def test_failed_start_leaves_no_folder_but_a_failure_after_a_checkpoint_keeps_it(tmp_path):
    folder = claim(tmp_path / "runs" / "new", continuing=False, auto=False, overwrite=False)
    (tmp_path / "runs" / "new" / "config.yaml").write_text("x")
    (tmp_path / "runs" / "new" / "checkpoints").mkdir()
    folder.release("FAILED")
    assert not (tmp_path / "runs" / "new").exists()
    folder = claim(tmp_path / "runs" / "kept", continuing=False, auto=False, overwrite=False)
    (tmp_path / "runs" / "kept" / "checkpoints").mkdir()
    (tmp_path / "runs" / "kept" / "checkpoints" / "last.pt").write_bytes(b"x")
    folder.release("FAILED")
    assert (tmp_path / "runs" / "kept" / "checkpoints" / "last.pt").is_file()


def test_folder_faults_are_one_line_naming_the_path(tmp_path, monkeypatch):
    (tmp_path / "afile").write_text("")
    with pytest.raises(RunFolderError, match=r"train.run_dir='.*afile' is a file"):
        claim(tmp_path / "afile" / "r", continuing=False, auto=False, overwrite=False)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "r").write_text("")
    with pytest.raises(RunFolderError, match=r"runs/r: is a file, not a run folder"):
        claim(tmp_path / "runs" / "r", continuing=False, auto=False, overwrite=False)

    def refuse(self, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", refuse)  # root ignores chmod, so refuse the way the kernel would
    with pytest.raises(RunFolderError) as info:
        claim(tmp_path / "ro" / "r", continuing=False, auto=False, overwrite=False)
    assert str(info.value) == f"{tmp_path / 'ro' / 'r'}: Permission denied; choose a writable train.run_dir"
    full = OSError(errno.ENOSPC, "No space left on device", "/x/last.pt")
    assert run_folder.describe_os_error(full).startswith("/x/last.pt: No space left on device; the last complete")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_run_dir_is_one_line(tmp_path):
    (tmp_path / "ro").mkdir(mode=0o555)
    with pytest.raises(RunFolderError, match="Permission denied"):
        claim(tmp_path / "ro" / "r", continuing=False, auto=False, overwrite=False)


def test_a_failed_attempt_that_torchrun_restarts_keeps_its_folder_for_the_restart(tmp_path):
    folder = claim(tmp_path / "runs" / "job", continuing=False, auto=False, overwrite=False)
    (tmp_path / "runs" / "job" / "start.json").write_text("{}")
    folder.keep_on_failure = True  # elastic.restarts_left() > 0: the trainer sets it once start.json is written
    folder.release("FAILED")
    assert (tmp_path / "runs" / "job" / "start.json").is_file()


def test_an_attempt_that_fails_before_its_start_record_leaves_a_folder_the_restart_can_claim(
        tiny_shards, tmp_path, monkeypatch, capsys):
    """A named run under torchrun with restarts left fails after writing config.yaml but before start.json
    (here: building the tracker): the folder goes, as for any failed start, and the restart trains in it;
    kept, it would hold an earlier run that the restart cannot prove its own and would refuse."""
    from dias_dist import cli
    from dias_dist.run import lifecycle

    def unreachable(*args, **kwargs):
        assert (tmp_path / "r" / "config.yaml").is_file()  # the window: the folder is prepared, no start.json
        raise ValueError("tracker down")

    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "2")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-7")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    monkeypatch.setattr(lifecycle, "make_tracker", unreachable)
    argv = ["train", str(ROOT / "configs" / "debug.yaml"), f"data.shards={tiny_shards}", f"train.run_dir={tmp_path}",
            "train.run_name=r", "eval.test_split=", "train.epochs=1", "train.steps_per_epoch=2"]
    assert cli.main(argv) == 2
    assert "tracker down" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    monkeypatch.undo()
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "2")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-7")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    assert cli.main(argv) == 0, capsys.readouterr().err
    assert (tmp_path / "r" / "checkpoints" / "final.pt").is_file()


@pytest.mark.parametrize("record, resumes", [
    (None, True),  # no folder yet: the job's own first checkpoint-less attempt died before making it
    ('{"job": "job-7", "mlflow_run_id": "abc", "tracking_uri": "x"}', True),  # this job's folder
    ('{"job": "job-1", "mlflow_run_id": "abc", "tracking_uri": "x"}', False),  # another job's run
    ("", False),  # a folder without a start record: not provably this job's
])
def test_a_restart_resumes_only_a_folder_its_own_job_started(tmp_path, monkeypatch, record, resumes):
    """Under a torchrun restart resume=never becomes auto, but not on a named run folder that another
    job holds: attempt 0 was refused there, and the restart must be refused too, not continue (or
    overwrite) somebody else's run."""
    from dias_dist.run import elastic
    from dias_dist.config import Config, derive

    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-7")
    cfg = derive(Config(), {"train.run_dir": str(tmp_path), "train.run_name": "shared-name"}, "test")
    if record is not None:
        (tmp_path / "shared-name").mkdir()
        if record:
            (tmp_path / "shared-name" / "start.json").write_text(record)
    assert elastic.continue_job(cfg).train.resume == ("auto" if resumes else "never")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    assert elastic.continue_job(cfg).train.resume == "never"  # the first attempt never resumes by itself
