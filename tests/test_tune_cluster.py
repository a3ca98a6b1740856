"""Ray Tune on a cluster: --storage URIs (a loopback S3 server), trial checkpoints that a restored trial
continues from, and population-based training over the SSCR lambdas (real trials on tiny shards)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SSCR = str(ROOT / "configs" / "weak" / "sscr.yaml")


def _tiny(tiny_shards, run_dir: Path, epochs: int, steps: int) -> list[str]:
    return [
        f"data.shards={tiny_shards}", "data.patch_size_px=32", "data.num_workers=0", "data.target=scribble_rdfa",
        "model.name=fr_unet", "model.params={width: 4}", f"train.epochs={epochs}", f"train.steps_per_epoch={steps}",
        "train.batch_size=2", "train.device=cpu", f"train.run_dir={run_dir}", "eval.select_from_epoch=0",
        "eval.batch_size=16", "eval.overlays=false", "track.enabled=true",
    ]


def _children(uri: str, parent_id: str):
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    parent = client.get_run(parent_id)
    return client.search_runs([parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")


def test_storage_uris_are_kept_and_local_paths_made_absolute(tmp_path, monkeypatch):
    from dias_dist.sweep import experiment_location, is_uri, storage_location

    monkeypatch.chdir(tmp_path)
    assert storage_location("s3://bucket/tune", "runs") == "s3://bucket/tune"
    assert storage_location("gs://bucket/a/b", "runs") == "gs://bucket/a/b"
    assert storage_location("rel/tune", "runs") == str(tmp_path / "rel" / "tune")
    assert storage_location(None, "runs") == str(tmp_path / "runs" / "tune")
    assert not is_uri("/abs/path") and is_uri("file:///abs/path")
    assert experiment_location("s3://bucket/tune/", "grid") == "s3://bucket/tune/grid"
    assert (experiment_location("s3://b/t?endpoint_override=127.0.0.1:9000&scheme=http", "g")
            == "s3://b/t/g?endpoint_override=127.0.0.1:9000&scheme=http")
    assert experiment_location(str(tmp_path), "grid") == str(tmp_path / "grid")


def test_pbt_needs_grid_keys_and_single_worker_training_trials():
    from dias_dist.sweep import SweepSpec, _pbt_mutations

    spec = SweepSpec(kind="train", config=SSCR, param_space={"method.params.lambda1": [0.5, 2.0]}, scheduler="pbt")
    assert _pbt_mutations(spec) == {"method.params.lambda1": [0.5, 2.0]}
    with pytest.raises(ValueError, match="--grid keys to mutate"):
        _pbt_mutations(SweepSpec(kind="train", config=SSCR, param_space={}, scheduler="pbt"))
    with pytest.raises(ValueError, match="--perturbation-interval must be >= 1, got 0"):
        _pbt_mutations(SweepSpec(kind="train", config=SSCR, param_space={"optim.lr": [1e-3]}, perturbation_interval=0))
    with pytest.raises(ValueError, match="single-worker"):
        _pbt_mutations(SweepSpec(kind="train", config=SSCR, param_space={"optim.lr": [1e-3]}, workers_per_trial=2))


@pytest.fixture
def s3(monkeypatch):
    """A moto S3 server on 127.0.0.1 (a thread of this process) with bucket ``dias``; the AWS_* variables
    point every client at it, Ray's trial processes (pyarrow's S3 filesystem) included."""
    pytest.importorskip("moto")
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    for key, value in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(key, value)
    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket="dias")
    yield client
    server.stop()


@pytest.mark.slow
def test_pyarrow_s3_honours_the_endpoint_variable(s3):
    """Ray resolves ``s3://`` storage with pyarrow: it must reach the server named by AWS_ENDPOINT_URL."""
    import pyarrow.fs

    fs, path = pyarrow.fs.FileSystem.from_uri("s3://dias/probe")
    with fs.open_output_stream(f"{path}/hello.txt") as handle:
        handle.write(b"hi")
    assert s3.get_object(Bucket="dias", Key="probe/hello.txt")["Body"].read() == b"hi"


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_s3_storage_holds_checkpoints_a_restored_trial_continues_from(s3, tiny_shards, tmp_path):
    """--storage s3://...: Tune's state and the trials' checkpoints land in the bucket. The trial fails
    after its last validation (a bad eval.test_checkpoint); its run folder is then deleted (as if it had run
    on another node); re-running the sweep restores the trial from the bucket's checkpoint, which
    continues at the last step in the same MLflow run instead of training again."""
    import shutil

    from dias_dist.sweep import SweepSpec, run_sweep

    runs = tmp_path / "runs"

    def spec(*extra):
        return SweepSpec(kind="train", config=SSCR, name="s3grid", param_space={"method.params.lambda1": [1.0]},
                         overrides=[*_tiny(tiny_shards, runs, 2, 2), *extra], cpus_per_trial=1)

    first = run_sweep(spec("eval.test_checkpoint=nope"), storage_path="s3://dias/tune")
    assert len(first["errors"]) == 1 and "nope" in first["errors"][0]["error"]
    assert first["storage"] == "s3://dias/tune/s3grid"
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket="dias", Prefix="tune/s3grid/")
            for o in page.get("Contents", [])]
    assert any(k.endswith("/last.pt") for k in keys) and any(k.endswith("/trial.json") for k in keys), keys
    assert "tune/s3grid/parent_run_id" in keys
    (trial_dir,) = [p for p in runs.iterdir() if p.name.startswith("s3grid-")]
    assert (trial_dir / "checkpoints" / "last.pt").is_file()
    shutil.rmtree(trial_dir)

    again = run_sweep(spec("eval.test_checkpoint=final"), storage_path="s3://dias/tune")
    assert again["errors"] == [] and again["parent_run_id"] == first["parent_run_id"]
    records = [json.loads(line) for line in (trial_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(r["kind"], r["step"]) for r in records] == [("test", 4)]  # nothing trained again: resumed at step 4
    uri = f"sqlite:///{runs / 'mlflow.db'}"
    (child,) = _children(uri, first["parent_run_id"])
    assert child.info.status == "FINISHED" and child.data.tags["tune.restored_from"] == f"{trial_dir.name}@4"
    assert child.data.metrics["val_dsc"] >= 0  # the first attempt's history is the same run's


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_pbt_over_sscr_lambdas_clones_a_trial_from_its_checkpoint(tiny_shards, tmp_path):
    """`tune.py sscr-sweep --scheduler pbt`: 2 trials, a perturbation after every validation; the worse
    trial continues from the better one's checkpoint (weights, optimizer, step) under its own MLflow run.

    Which trial is worse after a few steps of a tiny model is chance, and asynchronous PBT clones only a
    trial that was the top one at its own last report; eval.threshold=0.99999999 makes every val_dsc exactly 0
    (only a float32 probability of exactly 1.0 reaches it, which a few steps of a tiny model never give),
    and PBT ranks ties in the order the trials were added, so the first trial is always the bottom one
    and clones the second at its first report after the second reported as the top one. Four reports
    per trial: with two, a first trial that Ray starts well before the second (a loaded CI machine) could
    finish before the second reports once, and nothing would be cloned."""
    import subprocess
    import sys

    runs = tmp_path / "runs"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tune.py"), "sscr-sweep", SSCR, *_tiny(tiny_shards, runs, 4, 2), "eval.test_split=",
         "eval.threshold=0.99999999",
         "--grid", "method.params.lambda1=0.5,2.0", "--grid", "method.params.lambda2=0.5",
         "--scheduler", "pbt", "--perturbation-interval", "1", "--name", "pbt", "--storage", str(tmp_path / "tune")],
        cwd=tmp_path, capture_output=True, text=True, timeout=280)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "[tune] 2 trials, 0 failed" in log, log[-4000:]
    assert "continues from pbt-" in log, log[-4000:]  # an exploit happened and the trial took the checkpoint
    parent_id = (tmp_path / "tune" / "pbt" / "parent_run_id").read_text().strip()
    children = _children(f"sqlite:///{runs / 'mlflow.db'}", parent_id)
    assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children)
    cloned = [c for c in children if "tune.restored_from" in c.data.tags]
    assert cloned, [c.data.tags for c in children]
    source, step = cloned[0].data.tags["tune.restored_from"].rsplit("@", 1)
    assert source != cloned[0].info.run_name and int(step) > 0
    assert "tune.method.params.lambda1" in cloned[0].data.metrics  # its new lambda, from that step on
