"""Nothing waits forever on a remote shard server: a server that accepts connections and never answers fails a
read after data.read_timeout_s without a byte, or after data.download_budget_s in all (dias_dist/data/timeouts.py),
with one line naming the URL; a training run on it fails that way, leaves no run folder, and a second run of the
same name is not blocked. Servers here are threads on 127.0.0.1 that stop by themselves."""
import functools
import math
import shutil
import socket
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from dias_dist import cli
from dias_dist.config import load_config
from dias_dist.data import location, timeouts
from dias_dist.data.shards import read_manifest

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "debug.yaml")
LIFETIME_S = 60  # every server here stops by itself after this long


@pytest.fixture(autouse=True)
def default_limits():
    """Each test starts from the default limits, and leaves them so (trainer.run sets the process's)."""
    timeouts.set_limits(timeouts.DEFAULT.read_timeout_s, timeouts.DEFAULT.budget_s)
    yield
    timeouts.set_limits(timeouts.DEFAULT.read_timeout_s, timeouts.DEFAULT.budget_s)


@pytest.fixture
def silent_server():
    """Base URL of a TCP server that accepts every connection and never sends a byte."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    listener.settimeout(0.2)
    stop, held = threading.Event(), []

    def serve():
        deadline = time.monotonic() + LIFETIME_S
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                held.append(listener.accept()[0])
            except OSError:  # the 0.2 s accept timeout
                pass
        for conn in held:
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join(5)
    listener.close()


class _StallOnTars(SimpleHTTPRequestHandler):
    """Serves the manifest; holds every .tar request open without an answer until the server stops."""

    stop: threading.Event

    def do_GET(self):  # noqa: N802 - http.server's name
        if self.path.endswith(".tar"):
            self.stop.wait(LIFETIME_S)
            return
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def stalling_shards(tmp_path, tiny_shards):
    """URL of the tiny set whose manifest is served and whose shards never come."""
    root = tmp_path / "www"
    shutil.copytree(tiny_shards, root / "dsa")
    stop = threading.Event()
    handler = type("Handler", (_StallOnTars,), {"stop": stop})
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/dsa"
    stop.set()
    server.shutdown()
    server.server_close()


@pytest.mark.timeout(60)
def test_read_timeout_names_the_url(silent_server, monkeypatch):
    monkeypatch.setattr(timeouts, "CURL_RETRIES", 0)  # one try: the read timeout alone ends it
    timeouts.set_limits(2, 50)
    start = time.monotonic()
    with pytest.raises(ValueError) as caught:
        read_manifest(f"{silent_server}/dsa")
    assert time.monotonic() - start < 15
    message = str(caught.value)
    assert len(message.splitlines()) == 1
    assert message.startswith(f"{silent_server}/dsa/manifest.json: no shard manifest could be read (timed out: "
                              f"no byte for data.read_timeout_s=2 s")


@pytest.mark.timeout(60)
def test_download_budget_ends_retries_and_stops_the_program(silent_server, monkeypatch):
    timeouts.set_limits(1, 4)  # 1 s per try, 3 retries 2 s apart would take longer than the budget
    start = time.monotonic()
    with pytest.raises(ValueError, match=r"^http://127\.0\.0\.1:\d+/dsa/manifest\.json: no shard manifest could be "
                                         r"read \(no complete answer within data\.download_budget_s=4 s \(curl was "
                                         r"stopped\)\)$"):
        read_manifest(f"{silent_server}/dsa")
    assert time.monotonic() - start < 10


@pytest.mark.timeout(60)
def test_budget_stops_a_pipe_command_and_what_it_started(monkeypatch, tmp_path):
    import webdataset.utils

    monkeypatch.setattr(webdataset.utils, "enforce_security", False)  # conftest sets WDS_SECURE=1
    timeouts.set_limits(1, 2)
    start = time.monotonic()
    with pytest.raises(ValueError, match=r"within data\.download_budget_s=2 s \(the pipe: command was stopped\)"):
        read_manifest("pipe:sleep 50 | cat {}")  # the shell's child holds the pipe open: it is stopped too
    assert time.monotonic() - start < 10


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_training_on_a_stalled_server_fails_naming_the_url_and_leaves_no_folder(stalling_shards, tmp_path, capsys,
                                                                                tiny_shards):
    runs = tmp_path / "runs"
    argv = ["train", CONFIG, f"data.shards={stalling_shards}", "data.read_timeout_s=2", "data.download_budget_s=5",
            f"train.run_dir={runs}", "train.run_name=r", "train.max_steps=1", "eval.test_split="]
    for attempt in range(2):  # the second run of the name is not blocked by the first: it fails the same way
        start = time.monotonic()
        assert cli.main(argv) == 2
        assert time.monotonic() - start < 60
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert err.startswith(f"dias train: error: {stalling_shards}/training/training-00000")
        assert "data.download_budget_s=5 s" in err or "data.read_timeout_s=2 s" in err
        assert not (runs / "r").exists()
    # and a run of that name on shards that answer trains
    assert cli.main(["train", CONFIG, f"data.shards={tiny_shards}", f"train.run_dir={runs}", "train.run_name=r",
                     "train.max_steps=1", "eval.test_split=", "eval.val_every_epochs=5"]) == 0
    assert (runs / "r" / "checkpoints" / "final.pt").is_file()


def test_limits_reach_curl_and_boto3():
    args = timeouts.curl_args("http://h/x", timeouts.Limits(2.5, 40))
    assert args[args.index("--speed-time") + 1] == "3" and args[args.index("--speed-limit") + 1] == "1"
    assert args[args.index("--max-time") + 1] == "40" and args[args.index("--retry-max-time") + 1] == "40"
    assert args[args.index("--connect-timeout") + 1] == "2.5" and args[-1] == "http://h/x"
    pytest.importorskip("boto3")
    timeouts.set_limits(7, 30)
    config = location._s3_client().meta.config
    assert (config.read_timeout, config.connect_timeout) == (7, 7)
    assert config.retries["total_max_attempts"] == timeouts.CURL_RETRIES + 1


@pytest.mark.parametrize("value", [0, -1, math.nan, math.inf, "soon"])
@pytest.mark.parametrize("key", ["data.read_timeout_s", "data.download_budget_s"])
def test_limits_are_checked_at_load(key, value):
    with pytest.raises(ValueError, match=rf"{key}"):
        load_config(CONFIG, [f"{key}={value}"])


def test_defaults_are_documented_values():
    data = load_config(CONFIG).data
    assert (data.read_timeout_s, data.download_budget_s) == (60.0, 3600.0) == (
        timeouts.DEFAULT.read_timeout_s, timeouts.DEFAULT.budget_s)


# --------------------------------------------------------------------------------------------
# a read-only MLflow store: one warning at once, not ~100 s of MLflow's retries and 36 lines of tracebacks


def _readonly_store(tmp_path, how):
    """A store MLflow cannot write. Tests run as root in CI, where chmod does not stop writes, so read-only is
    made otherwise: `ro` opens an existing store through SQLite's read-only URI (`mode=ro`, what a read-only
    file or mount gives), `folder` names a folder where the database file should be (SQLite cannot open it,
    as a store in a folder the user may not enter: MLflow retried that 10 times, ~100 s)."""
    import subprocess
    import sys

    if how == "ro":
        db = tmp_path / "store" / "mlflow.db"
        db.parent.mkdir()
        subprocess.run([sys.executable, "-c", f"from mlflow import MlflowClient; "
                        f"MlflowClient('sqlite:///{db}').search_experiments()"], check=True, capture_output=True,
                       timeout=120)
        return f"sqlite:///file:{db}?mode=ro&uri=true"
    (tmp_path / "store.db").mkdir()
    return f"sqlite:///{tmp_path / 'store.db'}"


@pytest.mark.slow
@pytest.mark.timeout(200)
@pytest.mark.parametrize("how", ["ro", "folder"])
def test_read_only_mlflow_store_is_one_quick_warning(how, tmp_path, tiny_shards):
    import os
    import subprocess
    import sys

    uri = _readonly_store(tmp_path, how)
    start = time.monotonic()
    proc = subprocess.run([sys.executable, str(ROOT / "launch" / "train.py"), CONFIG, f"data.shards={tiny_shards}",
                           f"train.run_dir={tmp_path / 'runs'}", "train.run_name=r", "train.max_steps=2",
                           "eval.test_split=", "eval.val_every_epochs=5", "track.enabled=true",
                           f"track.tracking_uri={uri}"], capture_output=True, text=True, timeout=150,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
    seconds = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "runs" / "r" / "checkpoints" / "final.pt").is_file()
    warnings = [line for line in proc.stderr.splitlines() if "Warning" in line]
    assert len(warnings) == 1 and "MLflow start failed" in warnings[0] and "cannot be written" in warnings[0], \
        proc.stderr
    assert "Traceback" not in proc.stderr and "retried" not in proc.stderr and "ERROR" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) <= 2  # the warning and its source line
    assert seconds < 80, f"{seconds:.0f} s"  # MLflow alone spent ~100 s retrying the folder case
