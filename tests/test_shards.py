"""Shards: byte-exact round trip, manifest, shard counts, corrupt shards and members."""
import hashlib
import io
import json
import re
import tarfile

import numpy as np
import pytest
from PIL import Image

from dias_dist import cli
from dias_dist.data import dias
from dias_dist.data.loader import TrainSource, eval_sequences, train_batches
from dias_dist.data.phantom_cli import write_phantom_dataset
from dias_dist.data.preprocess import preprocess_sequence
from dias_dist.data.shards import (ShardReader, npy_bytes, read_manifest, shard_urls, verify_shards, write_samples,
                                   write_shards)


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = tmp_path_factory.mktemp("release")
    write_phantom_dataset(root, size=80, train=4, val=2, test=3, unlabeled=2, seed=1, preview=False)
    return root


@pytest.fixture(scope="module")
def shard_set(release, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards") / "demo"
    write_shards(release, out, min_shards=2)
    return out


def test_round_trip_is_byte_exact(release, shard_set):
    for split in dias.SPLITS:
        members = {}
        for url in shard_urls(shard_set, split):
            with tarfile.open(url) as tar:
                for info in tar:
                    members[info.name] = tar.extractfile(info).read()
        for seq in dias.read_split(release, split):
            key = f"s{seq.seq_id:05d}"
            frames, meta = preprocess_sequence(seq.frames)
            assert members[f"{key}.frames.npy"] == npy_bytes(frames)
            stored = json.loads(members[f"{key}.meta.json"])
            assert stored["split"] == split and stored["id"] == seq.seq_id
            assert stored["original_num_frames"] == seq.frames.shape[0] and stored["source"] == seq.source
            assert stored["mean"] == meta["mean"] and stored["std"] == meta["std"]
            if seq.label is not None:
                label = np.asarray(Image.open(io.BytesIO(members[f"{key}.label.png"])))
                assert np.array_equal(label, seq.label * 255)
            for name, scribble in seq.scribbles.items():
                decoded = np.asarray(Image.open(io.BytesIO(members[f"{key}.scribble_{name}.png"])))
                assert np.array_equal(decoded, scribble)
            reader = ShardReader(next(u for u in shard_urls(shard_set, split) if key in ShardReader(u).keys))
            sample = reader.decode(key)
            assert np.array_equal(sample["frames"], frames)
            if seq.label is not None:
                assert np.array_equal(sample["label"], seq.label)
            for name, scribble in seq.scribbles.items():
                assert np.array_equal(sample[f"scribble_{name}"], scribble)
        assert not any(name.endswith((".pyd", ".pickle")) for name in members)


def test_manifest_and_determinism(release, shard_set, tmp_path):
    manifest = read_manifest(shard_set)
    assert manifest["preprocessing"]["num_frames"] == 8
    assert manifest["splits"]["training"]["num_samples"] == 4
    assert manifest["splits"]["training"]["num_shards"] == 2  # min_shards honoured
    verify_shards(shard_set)
    again = write_shards(release, tmp_path / "again", min_shards=2)
    assert [s["sha256"] for s in again["splits"]["test"]["shards"]] == \
        [s["sha256"] for s in manifest["splits"]["test"]["shards"]]


def test_shard_size_limit_splits(release, tmp_path):
    manifest = write_shards(release, tmp_path / "small", shard_size_mb=0.05, splits=["training"])
    assert manifest["splits"]["training"]["num_shards"] == 4  # one 80x80 sequence (~100 kB) per shard


def test_shard_cli(release, tmp_path, capsys):
    assert cli.main(["shard", str(release), str(tmp_path / "cli"), "--min-shards", "3", "--splits", "test"]) == 0
    assert len(shard_urls(tmp_path / "cli", "test")) == 3
    assert re.search(r"^test\s+\d+ sequences\s+3 shards", capsys.readouterr().out, re.M)


def test_write_samples_for_pseudo_labels(tmp_path):
    samples = ({"__key__": f"s{i:05d}", "frames.npy": np.zeros((8, 16, 16), np.float16),
                "pseudo.png": np.full((16, 16), 255, np.uint8), "meta.json": {"id": i}} for i in range(3))
    manifest = write_samples(samples, tmp_path, "pseudo", num_samples=3, min_shards=2,
                             provenance={"teacher": "run-1"})
    entry = manifest["splits"]["pseudo"]
    assert entry["provenance"] == {"teacher": "run-1"} and entry["num_shards"] == 2
    sample = ShardReader(shard_urls(tmp_path, "pseudo")[0]).decode("s00000")
    assert sample["pseudo"].max() == 1 and sample["meta"] == {"id": 0}


def _corrupt_copy(shard_set, tmp_path, mutate):
    import shutil

    target = tmp_path / "corrupt"
    shutil.copytree(shard_set, target)
    url = shard_urls(target, "training")[0]
    data = bytearray(open(url, "rb").read())
    open(url, "wb").write(mutate(data))
    # the manifest's hash follows the file: these tests are about faults inside a shard written that
    # way (sha256 verification, which would catch them first, is tested in test_shard_integrity.py)
    manifest = read_manifest(target)
    for shard in manifest["splits"]["training"]["shards"]:
        if str(target / shard["name"]) == url:
            shard["sha256"] = hashlib.sha256(open(url, "rb").read()).hexdigest()
    (target / "manifest.json").write_text(json.dumps(manifest))
    return target, url


def test_truncated_shard_names_shard_and_key(shard_set, tmp_path):
    target, url = _corrupt_copy(shard_set, tmp_path, lambda d: d[:len(d) // 2])
    with pytest.raises(ValueError, match=url):
        next(iter(train_batches(TrainSource(str(target)), batch_size=16, patches_per_sequence=1, shuffle_buffer=0,
                                num_workers=0)))
    with pytest.raises(ValueError, match=f"{url}: shard is .* bytes, the manifest says"):
        list(eval_sequences(target, "training", num_workers=0))


def test_corrupt_member_names_shard_and_key(shard_set, tmp_path):
    def break_npy(data):
        at = data.index(b"\x93NUMPY")
        data[at:at + 6] = b"XXXXXX"
        return data

    target, url = _corrupt_copy(shard_set, tmp_path, break_npy)
    key = ShardReader(url).keys[0]
    with pytest.raises(ValueError, match=f"{url}: sample '{key}'"):
        for _ in eval_sequences(target, "training", num_workers=0):
            pass
    with pytest.raises(ValueError, match=key):  # through a DataLoader worker: an error, not a hang
        for _ in eval_sequences(target, "training", num_workers=1):
            pass
    with pytest.warns(UserWarning, match="skipped corrupt data"):
        keys = [s["key"] for s in eval_sequences(target, "training", num_workers=0, on_corrupt="skip")]
    assert key not in keys and len(keys) == 3
    stream = train_batches(TrainSource(str(target)), batch_size=16, patches_per_sequence=1, shuffle_buffer=0,
                           num_workers=0, on_corrupt="skip")
    with pytest.warns(UserWarning, match="skipped corrupt data"):
        batch = next(iter(stream))
    assert batch["image"].shape == (16, 8, 64, 64)


def test_resharding_a_whole_data_set_drops_splits_the_source_no_longer_has(release, tmp_path):
    import shutil

    out = tmp_path / "reshard"
    write_shards(release, out)
    assert "unlabeled" in read_manifest(out)["splits"]
    smaller = tmp_path / "smaller"
    shutil.copytree(release, smaller)
    shutil.rmtree(smaller / "unlabeled_DSA")
    with pytest.warns(UserWarning, match="'unlabeled' is not in the new source"):
        manifest = write_shards(smaller, out)
    assert "unlabeled" not in manifest["splits"] and "unlabeled" not in read_manifest(out)["splits"]
    assert not list((out / "unlabeled").glob("*.tar"))
    verify_shards(out)
    # sharding one split on purpose still merges into the existing manifest
    merged = write_shards(release, out, splits=["unlabeled"])
    assert {"training", "validation", "test", "unlabeled"} <= set(merged["splits"])
