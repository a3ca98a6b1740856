"""`ray submit` of a tiny sweep through a real local-provider Ray cluster on 127.0.0.1.

The test starts its own sshd on loopback with throw-away host and client keys. Every SSH command is
forced through a wrapper that points HOME at a temporary folder (so `ray up` and `ray submit` write
their bootstrap files and the submitted tune.py there, never into the real home) and puts this
project's .venv first on PATH. Without sshd/rsync (or root, or a free port 22), the test is skipped
with that reason, and `test_ray_job_submit` exercises the submission path with `ray job submit`.
"""
from __future__ import annotations

import getpass
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # multi-process / cluster / browser / benchmark: not in the fast tier

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def _port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    env = dict(os.environ)
    env.update(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0",
               PATH=f"{VENV_BIN}:{env.get('PATH', '')}")
    return env


def _sweep_args(tiny_shards: Path, tmp_path: Path) -> list[str]:
    return [
        "sscr-sweep", str(ROOT / "configs" / "weak" / "sscr.yaml"),
        f"data.shards={tiny_shards}", "data.patch_size_px=32", "data.num_workers=0", "data.target=scribble_rdfa",
        "model.name=fr_unet", "model.params.width=4", "train.epochs=1", "train.steps_per_epoch=2",
        "train.batch_size=2", "train.device=cpu", f"train.run_dir={tmp_path / 'runs'}",
        "eval.select_from_epoch=0", "eval.test_split=", "eval.batch_size=16",
        "--grid", "method.params.lambda1=0.5,1.0", "--grid", "method.params.lambda2=0.5",
        "--storage", str(tmp_path / "tune"), "--name", "submitted",
    ]


def _assert_two_nested_runs(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("dias-sweep-train")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(parents) == 1 and len(children) == 2
    assert all(c.info.status == "FINISHED" for c in children)


@pytest.fixture
def loopback_sshd(tmp_path):
    missing = [name for name, ok in (("sshd", os.path.exists(SSHD)), ("rsync", shutil.which("rsync"))) if not ok]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed (apt-get install openssh-server rsync); "
                    "test_ray_job_submit covers submission with `ray job submit`")
    if os.geteuid() != 0:
        pytest.skip("a loopback sshd on port 22 needs root; test_ray_job_submit covers submission")
    if _port_open(22):
        pytest.skip("port 22 on 127.0.0.1 is already in use; test_ray_job_submit covers submission")
    d = tmp_path / "ssh"
    home = tmp_path / "home"
    d.mkdir()
    home.mkdir()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", d / "host_key"], check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", d / "client_key"], check=True)
    shutil.copy(d / "client_key.pub", d / "authorized_keys")
    profile = (f"export PATH={VENV_BIN}:$PATH RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_AUTH_MODE=disabled "
               f"RAY_USAGE_STATS_ENABLED=0 OMP_NUM_THREADS=1 DS_ACCELERATOR=cpu\n")
    (home / ".bash_profile").write_text(profile)
    (home / ".bashrc").write_text(profile)
    force = d / "force.sh"
    force.write_text(f'#!/bin/bash\nexport HOME={home}\ncd "$HOME"\nexec /bin/bash -c "$SSH_ORIGINAL_COMMAND"\n')
    force.chmod(0o755)
    config = d / "sshd_config"
    config.write_text("\n".join([
        "Port 22", "ListenAddress 127.0.0.1", f"HostKey {d / 'host_key'}", f"PidFile {d / 'sshd.pid'}",
        f"AuthorizedKeysFile {d / 'authorized_keys'}", "PermitRootLogin prohibit-password",
        "PasswordAuthentication no", "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no",
        f"ForceCommand {force}", "MaxStartups 50", "MaxSessions 50", "",
    ]))
    Path("/run/sshd").mkdir(exist_ok=True)
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=subprocess.DEVNULL,
                            stderr=open(d / "sshd.log", "w"), start_new_session=True)
    for _ in range(50):
        if _port_open(22):
            break
        time.sleep(0.1)
    else:
        proc.kill()
        pytest.skip(f"sshd did not start: {(d / 'sshd.log').read_text()[-500:]}")
    try:
        yield {"key": d / "client_key", "home": home, "user": getpass.getuser()}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)


@pytest.mark.timeout(600)
def test_ray_submit_runs_a_sweep_on_a_loopback_cluster(loopback_sshd, tiny_shards, tmp_path):
    port = _free_port()
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(json.dumps({  # YAML is a superset of JSON
        "cluster_name": f"dias-test-{port}",
        "provider": {"type": "local", "head_ip": "127.0.0.1", "worker_ips": []},
        "auth": {"ssh_user": loopback_sshd["user"], "ssh_private_key": str(loopback_sshd["key"])},
        "min_workers": 0, "max_workers": 0, "setup_commands": [], "file_mounts": {},
        "head_start_ray_commands": [
            "ray stop",
            f"ray start --head --node-ip-address=127.0.0.1 --port={port} --num-cpus=2 "
            "--include-dashboard=false --disable-usage-stats",
        ],
        "worker_start_ray_commands": [],
    }))
    env = _env()
    try:
        proc = subprocess.run(
            ["ray", "submit", "--start", "--no-config-cache", str(cluster), str(ROOT / "tune.py"), "--",
             *_sweep_args(tiny_shards, tmp_path), "--address", "auto"],
            env=env, capture_output=True, text=True, timeout=540, stdin=subprocess.DEVNULL,
        )
        log = proc.stdout + proc.stderr
        assert proc.returncode == 0, log[-4000:]
        assert "[tune] 2 trials, 0 failed" in log, log[-4000:]
        assert (loopback_sshd["home"] / "tune.py").is_file()  # submitted into the throw-away home
    finally:
        subprocess.run(["ray", "down", "-y", str(cluster)], env=env, capture_output=True, timeout=120,
                       stdin=subprocess.DEVNULL)
    _assert_two_nested_runs(tmp_path)


@pytest.mark.timeout(600)
def test_ray_job_submit(tiny_shards, tmp_path):
    """The submission path without SSH: a local head with the dashboard, then `ray job submit`.

    Runs only where the loopback-sshd `ray submit` test cannot (the fallback without SSH)."""
    if os.path.exists(SSHD) and shutil.which("rsync") and os.geteuid() == 0 and not _port_open(22):
        pytest.skip("sshd is available: test_ray_submit_runs_a_sweep_on_a_loopback_cluster covers submission")
    pytest.importorskip("ray.dashboard")
    env = _env()
    gcs, dash = _free_port(), _free_port()
    temp = Path("/tmp") / f"ray-job-{gcs}"  # short: Ray's socket paths must stay under 108 bytes
    start = subprocess.run(
        ["ray", "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs}", "--num-cpus=2",
         "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
         f"--temp-dir={temp}", "--disable-usage-stats"],
        env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    try:
        assert start.returncode == 0, start.stdout + start.stderr
        workdir = tmp_path / "job"
        workdir.mkdir()
        shutil.copy(ROOT / "tune.py", workdir / "tune.py")  # a clean working dir: nothing else uploaded
        proc = subprocess.run(
            ["ray", "job", "submit", "--address", f"http://127.0.0.1:{dash}", "--working-dir", str(workdir),
             "--", "python", "tune.py", *_sweep_args(tiny_shards, tmp_path), "--address", f"127.0.0.1:{gcs}"],
            env=env, capture_output=True, text=True, timeout=480, stdin=subprocess.DEVNULL)
        log = proc.stdout + proc.stderr
        assert proc.returncode == 0, log[-4000:]
        assert "[tune] 2 trials, 0 failed" in log, log[-4000:]
    finally:
        subprocess.run(["ray", "stop", "--force"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)
    _assert_two_nested_runs(tmp_path)
