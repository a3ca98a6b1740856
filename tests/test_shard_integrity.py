"""Shards are what the manifest says: sha256 verified once per process, all-or-nothing `dias shard`,
sample keys validated before they become file names."""
import io
import json
import shutil
import tarfile

import numpy as np
import pytest

from dias_dist import cli
from dias_dist.data import shards as shards_mod
from dias_dist.data.loader import TrainSource, eval_sequences, train_batches
from dias_dist.data.phantom_cli import write_phantom_dataset
from dias_dist.data.shards import ShardReader, npy_bytes, read_manifest, verify_shards, write_shards


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = tmp_path_factory.mktemp("release")
    write_phantom_dataset(root, size=48, train=2, val=1, test=1, unlabeled=0, seed=2, preview=False)
    return root


@pytest.fixture
def shard_set(release, tmp_path):
    out = tmp_path / "set"
    write_shards(release, out)
    return out


def _first_batch(shard_dir, num_workers=0, **kwargs):
    stream = train_batches(TrainSource(str(shard_dir)), batch_size=2, patch_size=32, patches_per_sequence=2,
                           shuffle_buffer=0, num_workers=num_workers, **kwargs)
    return next(iter(stream))


def _flip_frame_bytes(tar_path):
    """Change frame values inside a shard without changing its size (silent corruption)."""
    data = bytearray(tar_path.read_bytes())
    start = data.index(b"\x93NUMPY") + 200
    data[start:start + 64] = bytes(255 - b for b in data[start:start + 64])
    tar_path.write_bytes(bytes(data))


def test_changed_shard_fails_naming_it_and_verify_false_skips(shard_set):
    shards_mod._VERIFIED.clear()
    tar = shard_set / "training" / "training-000000.tar"
    _flip_frame_bytes(tar)
    with pytest.raises(ValueError, match=rf"{tar}: sha256 .* the manifest says"):
        _first_batch(shard_set)
    assert _first_batch(shard_set, verify=False)["image"].shape == (2, 8, 32, 32)
    with pytest.raises(ValueError, match="sha256"):
        list(eval_sequences(shard_set, "training", num_workers=0))


def test_worker_errors_reach_the_user_with_their_own_first_line(shard_set):
    tar = shard_set / "training" / "training-000000.tar"
    _flip_frame_bytes(tar)
    for run in (lambda: _first_batch(shard_set, num_workers=1),
                lambda: list(eval_sequences(shard_set, "training", num_workers=1))):
        with pytest.raises(ValueError) as info:
            run()
        message = str(info.value)
        assert message.splitlines()[0].startswith(f"{tar}: sha256 is")
        assert "DataLoader worker" not in message and "Traceback" not in message


def test_bogus_manifest_hash_fails(shard_set):
    manifest = read_manifest(shard_set)
    manifest["splits"]["training"]["shards"][0]["sha256"] = "0" * 64
    (shard_set / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="training-000000.tar: sha256"):
        _first_batch(shard_set)


def test_each_shard_hashed_once_per_process(shard_set, monkeypatch):
    shards_mod._VERIFIED.clear()
    calls = []
    real = shards_mod._sha256
    monkeypatch.setattr(shards_mod, "_sha256", lambda path: calls.append(path) or real(path))
    entry = read_manifest(shard_set)["splits"]["training"]["shards"][0]
    path = shard_set / entry["name"]
    for _ in range(3):
        ShardReader(path, entry["bytes"], entry["keys"], entry["sha256"])
    assert len(calls) == 1
    _flip_frame_bytes(path)  # a changed file (new mtime) is hashed again
    with pytest.raises(ValueError, match="sha256"):
        ShardReader(path, entry["bytes"], entry["keys"], entry["sha256"])
    assert len(calls) == 2


def test_failed_reshard_leaves_old_set_untouched(release, shard_set, tmp_path):
    before = {p.relative_to(shard_set): p.read_bytes() for p in shard_set.rglob("*") if p.is_file()}
    broken = tmp_path / "broken"
    shutil.copytree(release, broken)
    (broken / "test" / "labels" / "label_s3.png").write_bytes(b"not a png")  # fails after training is written
    with pytest.raises(ValueError, match="label_s3.png"):
        write_shards(broken, shard_set)
    after = {p.relative_to(shard_set): p.read_bytes() for p in shard_set.rglob("*") if p.is_file()}
    assert after == before
    verify_shards(shard_set)
    assert sorted(p.name for p in shard_set.parent.iterdir()) == ["broken", "set"]  # no partial folder left


def test_partial_reshard_keeps_other_splits(release, shard_set):
    old = read_manifest(shard_set)
    new = write_shards(release, shard_set, splits=["training"], shard_size_mb=0.01)
    assert new["splits"]["training"]["num_shards"] == 2  # rewritten
    assert new["splits"]["test"] == old["splits"]["test"]  # carried over
    verify_shards(shard_set)


def _crafted_shard(path, key):
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in ((f"{key}.frames.npy", npy_bytes(np.zeros((8, 32, 32), np.float16))),
                           (f"{key}.meta.json", b"{}")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("key", ["/424242", "../../escape", "s12x"])
def test_crafted_keys_are_refused_before_any_write(tmp_path, key):
    shard_dir = tmp_path / "crafted"
    (shard_dir / "test").mkdir(parents=True)
    tar = shard_dir / "test" / "test-000000.tar"
    _crafted_shard(tar, key)
    with pytest.raises(ValueError, match="is not 's' followed by digits"):
        ShardReader(tar)
    manifest = {"format": shards_mod.FORMAT, "splits": {"test": {"num_samples": 1, "num_shards": 1, "shards": [
        {"name": "test/test-000000.tar", "keys": [key], "bytes": tar.stat().st_size, "sha256": "0" * 64}]}}}
    (shard_dir / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "out"
    assert cli.main(["baseline", str(shard_dir), "--split", "test", "--out", str(out)]) == 2
    assert not (tmp_path / "escape.npy").exists() and not any(tmp_path.rglob("*.npy"))
