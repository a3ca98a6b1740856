"""Shards from anywhere: the same manifest + tars served over HTTP (Python's http.server) and S3 (moto's
S3-compatible server), both on 127.0.0.1 and started here, read through WebDataset. Remote shards
give the patches, sequences, verification and corrupt-data handling of local ones, and a 2-rank
torchrun training on them matches the one on the local folder (losses, weights, evaluation)."""
import functools
import json
import os
import shutil
import subprocess
import sys
import threading
import warnings
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from dias_dist.config import load_config
from dias_dist.data import location
from dias_dist.data import shards as shards_mod
from dias_dist.data.loader import TrainSource, eval_sequences, train_batches
from dias_dist.data.shards import open_shard, read_manifest

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _Handler(SimpleHTTPRequestHandler):
    requests: list[str] = []

    def do_GET(self):  # noqa: N802 - http.server's name
        type(self).requests.append(self.path)
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_shards):
    """(folder served, base URL): the folder holds a copy of ``tiny_shards`` as ``dsa/``."""
    root = tmp_path_factory.mktemp("www")
    shutil.copytree(tiny_shards, root / "dsa")
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def fresh_copy(served, tiny_shards, request):
    """A served copy of the tiny set of its own (``<url>/<name>``) that a test may damage."""
    root, url = served
    name = request.node.name.replace("[", "_").replace("]", "")
    shutil.copytree(tiny_shards, root / name)
    yield root / name, f"{url}/{name}"
    shutil.rmtree(root / name, ignore_errors=True)


def _batches(shards, n=3, **kwargs):
    stream = iter(train_batches(TrainSource(str(shards)), batch_size=4, patch_size=32, patches_per_sequence=3,
                                shuffle_buffer=4, num_workers=0, seed=5, **kwargs))
    return [next(stream) for _ in range(n)]


def _same_batches(a, b):
    return all(torch.equal(x[k], y[k]) for x, y in zip(a, b) for k in ("image", "target", "is_pseudo"))


def test_http_shards_give_the_local_patches_and_sequences(served, tiny_shards, tmp_path):
    _, url = served
    assert read_manifest(f"{url}/dsa") == read_manifest(tiny_shards)
    local = _batches(tiny_shards)
    assert _same_batches(local, _batches(f"{url}/dsa"))
    assert _same_batches(local, _batches(f"{url}/dsa/", cache_dir=str(tmp_path / "cache")))
    for split in ("validation", "test"):
        here = list(eval_sequences(tiny_shards, split, num_workers=0))
        there = list(eval_sequences(f"{url}/dsa", split, num_workers=2))
        assert [s["key"] for s in here] == [s["key"] for s in there] and len(here) == 2
        assert all(torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
                   for a, b in zip(here, there))


def test_reader_is_chosen_by_scheme(served, tiny_shards, tmp_path):
    _, url = served
    entry = read_manifest(tiny_shards)["splits"]["training"]["shards"][0]
    local = open_shard(location.join(tiny_shards, entry["name"]), entry)
    streamed = open_shard(f"{url}/dsa/{entry['name']}", entry)
    cached = open_shard(f"{url}/dsa/{entry['name']}", entry, cache_dir=tmp_path / "c")
    assert type(local).__name__ == "ShardReader" and type(cached).__name__ == "ShardReader"
    assert type(streamed).__name__ == "StreamedShard"
    for key in entry["keys"]:
        assert (local.frames(key) == streamed.frames(key)).all() and (local.frames(key) == cached.frames(key)).all()
    # the copy is named by the manifest's sha256: a second use reads it without downloading
    assert [p.name for p in (tmp_path / "c").iterdir()] == [f"{entry['sha256'][:32]}-training-000000.tar"]
    before = len(_Handler.requests)
    open_shard(f"{url}/dsa/{entry['name']}", entry, cache_dir=tmp_path / "c")
    assert len(_Handler.requests) == before


def _flip_frame_bytes(tar_path):
    data = bytearray(tar_path.read_bytes())
    start = data.index(b"\x93NUMPY") + 200
    data[start:start + 64] = bytes(255 - b for b in data[start:start + 64])
    tar_path.write_bytes(bytes(data))


def test_changed_remote_shard_fails_naming_its_url(fresh_copy, tmp_path):
    folder, url = fresh_copy
    for tar in (folder / "training").glob("*.tar"):
        _flip_frame_bytes(tar)
    shard_url = rf"{url}/training/training-00000[01]\.tar"
    with pytest.raises(ValueError, match=rf"^{shard_url}: sha256 is .* the manifest says"):
        _batches(url)
    with pytest.raises(ValueError, match="sha256 is"):  # a copy in the cache is checked the same way, and deleted
        _batches(url, cache_dir=str(tmp_path / "cache"))
    assert not list((tmp_path / "cache").glob("*.tar"))
    assert _batches(url, verify=False)[0]["image"].shape == (4, 8, 32, 32)
    with pytest.raises(ValueError, match=rf"^{shard_url}: sha256"):  # DataLoader worker: the same first line
        next(iter(train_batches(TrainSource(url), batch_size=2, patch_size=32, num_workers=1)))
    for tar in (folder / "test").glob("*.tar"):
        _flip_frame_bytes(tar)
    with pytest.raises(ValueError, match="sha256 is"):  # evaluation checks the same way ...
        list(eval_sequences(url, "test", num_workers=0))
    assert len(list(eval_sequences(url, "test", num_workers=0, verify=False))) == 2  # ... and obeys data.verify


def test_a_local_shard_is_opened_once_whatever_keys_are_asked(served, tiny_shards):
    from dias_dist.data.loader import _ReaderCache, _Skips

    _, url = served
    entry = read_manifest(tiny_shards)["splits"]["training"]["shards"][0]
    first, second = entry["keys"][:1], entry["keys"][1:]
    cache = _ReaderCache(_Skips("raise"))
    local = location.join(tiny_shards, entry["name"])
    assert cache.get(local, entry, first) is cache.get(local, entry, second)  # a memory map serves every key
    remote = f"{url}/dsa/{entry['name']}"
    assert cache.get(remote, entry, first) is not cache.get(remote, entry, second)  # streamed: only its keys


def test_corrupt_remote_data_is_skipped_when_asked(fresh_copy):
    folder, url = fresh_copy
    tar = folder / "training" / "training-000000.tar"
    tar.write_bytes(tar.read_bytes()[:3000])  # truncated on the server
    with pytest.raises(ValueError, match=r"training-000000.tar: shard is 3000 bytes, the manifest says"):
        _batches(url, n=10)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batches = _batches(url, n=10, on_corrupt="skip")
    assert batches[0]["image"].shape == (4, 8, 32, 32)  # from the other shard
    assert any("skipped corrupt data" in str(w.message) and "training-000000.tar" in str(w.message) for w in caught)
    (folder / "test" / "test-000000.tar").unlink()  # gone from the server (HTTP 404)
    with pytest.raises(ValueError, match=r"test-000000.tar: unreadable shard"):
        list(eval_sequences(url, "test", num_workers=0))
    assert len(list(eval_sequences(url, "test", num_workers=0, on_corrupt="skip"))) == 1


def test_missing_manifest_names_the_url(served):
    _, url = served
    with pytest.raises(ValueError, match=rf"^{url}/nothing/manifest.json: no shard manifest could be read"):
        read_manifest(f"{url}/nothing")


def test_run_tag_hashes_the_manifest_at_a_url(served, tiny_shards):
    """The run's shard_manifest_sha256 tag is the manifest's hash for shards at a URL too."""
    import hashlib

    from dias_dist.run.track import manifest_sha256

    _, url = served
    expected = hashlib.sha256((Path(tiny_shards) / "manifest.json").read_bytes()).hexdigest()
    assert manifest_sha256(f"{url}/dsa") == manifest_sha256(tiny_shards) == expected
    assert manifest_sha256(f"{url}/nothing") == "missing"


def test_pipe_command_location(tiny_shards, monkeypatch):
    import webdataset.utils

    monkeypatch.setattr(webdataset.utils, "enforce_security", False)  # conftest sets WDS_SECURE=1
    assert _same_batches(_batches(tiny_shards), _batches(f"pipe:cat {tiny_shards}/{{}}"))


@pytest.mark.parametrize("value, says", [
    ("s4://bucket/dsa", "scheme s4://, which is not supported"),
    ("pipe:aws s3 cp s3://b/dsa -", "without {}"),
    ("http:///dsa", "names no host"),
    ("s3://", "names no bucket"),
])
def test_config_names_a_bad_shard_location(value, says):
    with pytest.raises(ValueError, match=rf"data.shards='{value}' .*{says}"):
        load_config(ROOT / "configs" / "debug.yaml", [f"data.shards={value}"])


def test_config_accepts_every_supported_location():
    for value in ("shards/dsa", "/abs/dsa", "file:///abs/dsa", "https://host/dsa", "s3://bucket/dsa",
                  "gs://bucket/dsa", "pipe:aws s3 cp s3://b/dsa/{} -"):
        assert load_config(ROOT / "configs" / "debug.yaml", [f"data.shards={value}"]).data.shards == value


@pytest.mark.parametrize("name", ["../x.tar", "/etc/passwd", "a;rm -rf ~.tar", "training/$(id).tar", ""])
def test_crafted_manifest_names_are_refused(name):
    with pytest.raises(ValueError, match="is not a file name `dias shard` writes"):
        location.join("pipe:cat /data/{}", name)


# --------------------------------------------------------------------------------------------
# S3 (moto's server on 127.0.0.1)


@pytest.fixture(scope="module")
def s3_env(tmp_path_factory, tiny_shards):
    """An S3-compatible server holding the tiny set under s3://dias-test/sets/dsa; yields the env that
    points boto3 (and so every AWS tool) at it."""
    moto_server = pytest.importorskip("moto.server")
    import boto3

    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    home = tmp_path_factory.mktemp("aws")
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_CONFIG_FILE": str(home / "config"), "AWS_SHARED_CREDENTIALS_FILE": str(home / "credentials"),
           "AWS_EC2_METADATA_DISABLED": "true"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    location._S3_CLIENTS.clear()
    client = boto3.session.Session().client("s3")
    client.create_bucket(Bucket="dias-test")
    files = sorted(p for p in tiny_shards.rglob("*") if p.is_file())
    for path in sorted(files, key=lambda p: p.name == "manifest.json"):  # manifest last, as the README says
        client.upload_file(str(path), "dias-test", f"sets/dsa/{path.relative_to(tiny_shards)}")
    yield env
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    location._S3_CLIENTS.clear()


@pytest.mark.slow
def test_s3_shards_give_the_local_patches(s3_env, tiny_shards, tmp_path):
    assert read_manifest("s3://dias-test/sets/dsa") == read_manifest(tiny_shards)
    assert _same_batches(_batches(tiny_shards), _batches("s3://dias-test/sets/dsa"))
    assert _same_batches(_batches(tiny_shards), _batches("s3://dias-test/sets/dsa", cache_dir=str(tmp_path / "c")))
    # the original fault: the URL used to be mangled into a path (s3:/bucket/...)
    with pytest.raises(ValueError, match=r"^s3://dias-test/none/manifest.json: no shard manifest could be read "
                                         r"\(.*NoSuchKey"):
        read_manifest("s3://dias-test/none")


# --------------------------------------------------------------------------------------------
# 2-rank torchrun training on remote shards == on the local folder


def _train(shards, run_dir, *extra, env=None):
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node=2", str(ROOT / "launch" / "train.py"),
           str(ROOT / "configs" / "debug.yaml"), f"data.shards={shards}", f"train.run_dir={run_dir}",
           "train.run_name=r", "train.max_steps=4", "train.checkpoint_every_steps=2", "data.num_workers=1",
           "eval.test_checkpoint=final", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **(env or {})}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = run_dir / "r"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    final = torch.load(run / "checkpoints" / "final.pt", weights_only=True)["model"]
    return rows, final, (run / "eval" / "test" / "metrics.csv").read_text()


@pytest.fixture(scope="module")
def local_run(tiny_shards, tmp_path_factory):
    return _train(tiny_shards, tmp_path_factory.mktemp("local_run"))


def _assert_same_run(a, b):
    rows_a, final_a, test_a = a
    rows_b, final_b, test_b = b
    drop = ("patches_per_s", "data_wait_share", "seconds", "time")
    strip = lambda rows: [{k: v for k, v in r.items() if k not in drop and not k.endswith("_s")} for r in rows]  # noqa: E731
    assert [r["step"] for r in rows_a if r["kind"] == "train"] == [1, 2, 3, 4]
    assert strip(rows_a) == strip(rows_b)  # every logged loss, lr, grad norm and validation metric
    assert final_a.keys() == final_b.keys() and all(torch.equal(final_a[n], final_b[n]) for n in final_a)
    assert test_a == test_b and len(test_a.splitlines()) == 1 + 2  # each test image once over both ranks


@pytest.mark.slow
def test_torchrun_on_http_shards_matches_local(local_run, served, tmp_path):
    _, url = served
    _assert_same_run(local_run, _train(f"{url}/dsa", tmp_path))


@pytest.mark.slow
def test_torchrun_on_s3_shards_with_cache_matches_local(local_run, s3_env, tmp_path):
    _assert_same_run(local_run, _train("s3://dias-test/sets/dsa", tmp_path, f"data.cache_dir={tmp_path / 'cache'}"))
    assert len(list((tmp_path / "cache").glob("*.tar"))) == 6  # 3 splits read, 2 shards each, downloaded once


def test_dias_shard_refuses_a_url_naming_the_upload(tiny_shards):
    from dias_dist.data.shards import write_shards

    with pytest.raises(ValueError, match=r"^s3://b/dsa: `dias shard` writes a local folder.*aws s3 cp --recursive"):
        write_shards(tiny_shards.parent / "src", "s3://b/dsa")


def test_sweep_keeps_urls_and_makes_folders_absolute(tmp_path, monkeypatch):
    from dias_dist.sweep import _absolute_overrides

    monkeypatch.chdir(tmp_path)
    out = _absolute_overrides(["data.shards=s3://b/dsa", "data.shards=pipe:cat /x/{}", "data.shards=shards/dsa",
                               "data.cache_dir=cache"])
    assert out == ["data.shards=s3://b/dsa", "data.shards=pipe:cat /x/{}", f"data.shards={tmp_path}/shards/dsa",
                   f"data.cache_dir={tmp_path}/cache"]


def test_dias_baseline_reads_a_url(served, capsys):
    from dias_dist import cli

    _, url = served
    assert cli.main(["baseline", f"{url}/dsa", "--split", "test", "--no-images"]) == 0
    assert "MinIP-Otsu baseline" in capsys.readouterr().out


@pytest.mark.slow
def test_killed_run_on_http_shards_resumes_to_the_local_run(served, tiny_shards, tmp_path):
    """SIGKILL after a checkpoint, ``train.resume=auto``: the run on HTTP shards ends bit-identical to
    an uninterrupted run on the local folder (the stream is rebuilt from (seed, step), whatever reads it)."""
    import signal
    import time

    from dias_dist import trainer

    _, url = served

    def command(shards, run_dir, *extra):
        return [sys.executable, str(ROOT / "launch" / "train.py"), str(ROOT / "configs" / "debug.yaml"),
                f"data.shards={shards}", f"train.run_dir={run_dir}", "train.run_name=r", "train.epochs=1",
                "train.steps_per_epoch=12", "train.checkpoint_every_steps=2",  # a kill window of 10 steps
                "eval.test_split=", "eval.val_every_epochs=1000", *extra]

    def step_of(path):
        try:
            return int(torch.load(path, weights_only=True)["step"])
        except Exception:  # not written yet, or being replaced
            return -1

    straight, killed = tmp_path / "straight", tmp_path / "killed"
    trainer.run(load_config(command(tiny_shards, straight)[2], command(tiny_shards, straight)[3:]))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(command(f"{url}/dsa", killed), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    last, deadline = killed / "r" / "checkpoints" / "last.pt", time.time() + 180
    while step_of(last) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 2 <= step_of(last) < 12 and not (killed / "r" / "checkpoints" / "final.pt").exists()
    subprocess.run(command(f"{url}/dsa", killed, "train.resume=auto"), check=True, env=env, timeout=240,
                   capture_output=True)
    a = torch.load(straight / "r" / "checkpoints" / "final.pt", weights_only=True)
    b = torch.load(killed / "r" / "checkpoints" / "final.pt", weights_only=True)
    assert a["step"] == b["step"] == 12
    assert all(torch.equal(a["model"][n], b["model"][n]) for n in a["model"])
    exp_avg = lambda ckpt: [s["exp_avg"] for s in ckpt["optimizer"]["state"].values()]  # noqa: E731
    assert all(torch.equal(x, y) for x, y in zip(exp_avg(a), exp_avg(b))) and exp_avg(a)
