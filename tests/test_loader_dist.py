"""Training and evaluation streams: batches, alignment of maps under augmentation, mixing, and the
multi-process contract under torchrun (2 ranks x 2 workers, gloo)."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from dias_dist.data.loader import TrainSource, eval_sequences, train_batches
from dias_dist.data.shards import write_samples

SIDE = 80


def make_shards(out, split, ids, *, min_shards=1, seed=0):
    """Samples whose frame 1 holds the sequence id and whose label is (frame 0 > 0): both checkable in patches."""
    rng = np.random.default_rng(seed)

    def samples():
        for seq_id in ids:
            frames = np.zeros((8, SIDE, SIDE), np.float16)
            frames[0] = rng.choice([-1.0, 1.0], (SIDE, SIDE))
            frames[1] = seq_id
            frames[2] = np.arange(SIDE)[:, None]  # row index: orientation marker
            yield {"__key__": f"s{seq_id:05d}", "frames.npy": frames,
                   "label.png": ((frames[0] > 0) * 255).astype(np.uint8), "meta.json": {"id": seq_id}}

    write_samples(samples(), out, split, num_samples=len(ids), min_shards=min_shards)
    return out


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("loader")
    make_shards(out, "training", range(6), min_shards=2)
    make_shards(out, "pseudo", range(100, 104), min_shards=1, seed=1)
    make_shards(out, "test", range(200, 205), min_shards=3)
    return out


def ids_of(batch):
    return batch["image"][:, 1, 0, 0].round().long().tolist()


def test_batches_shapes_and_alignment(shard_dir):
    stream = iter(train_batches(TrainSource(str(shard_dir)), batch_size=32, patch_size=16, patches_per_sequence=8,
                                shuffle_buffer=64, num_workers=0, seed=3))
    orientations = set()
    for _ in range(5):
        batch = next(stream)
        assert batch["image"].shape == (32, 8, 16, 16) and batch["image"].dtype.is_floating_point
        assert str(batch["image"].dtype) == "torch.float32" and str(batch["target"].dtype) == "torch.int64"
        assert batch["target"].shape == (32, 16, 16) and not batch["is_pseudo"].any()
        assert (batch["target"] == (batch["image"][:, 0] > 0).long()).all()  # maps follow the image
        rows = batch["image"][:, 2]
        orientations.update(tuple(np.sign(np.diff(r.numpy(), axis=a)).mean().round().astype(int) for a in (0, 1))
                            for r in rows)
    assert len(orientations) == 4  # flips / rot90 move the row-index ramp into all four directions


def test_num_sequences_keeps_the_first_n(shard_dir):
    stream = iter(train_batches(TrainSource(str(shard_dir), num_sequences=2), batch_size=64, patch_size=16,
                                patches_per_sequence=4, shuffle_buffer=16, num_workers=0))
    seen = {i for _ in range(4) for i in ids_of(next(stream))}
    assert seen == {0, 1}


def test_sources_mix_by_weight(shard_dir):
    sources = [TrainSource(str(shard_dir), weight=3.0),
               TrainSource(str(shard_dir), split="pseudo", weight=1.0, is_pseudo=True)]
    stream = iter(train_batches(sources, batch_size=64, patch_size=16, patches_per_sequence=4, shuffle_buffer=256,
                                num_workers=0, seed=1))
    flags, ids = [], []
    for _ in range(20):
        batch = next(stream)
        flags += batch["is_pseudo"].tolist()
        ids += ids_of(batch)
    assert 0.18 < np.mean(flags) < 0.32
    assert all((i >= 100) == f for i, f in zip(ids, flags))


def test_workers_draw_different_streams(shard_dir):
    # one shard: both workers read the same sequences, so only their seeds can make the batches differ
    loader = train_batches(TrainSource(str(shard_dir), split="pseudo"), batch_size=16, patch_size=16,
                           patches_per_sequence=2, shuffle_buffer=8, num_workers=2, seed=0)
    stream = iter(loader)
    first, second = next(stream), next(stream)  # one from each worker
    assert not np.array_equal(first["image"].numpy(), second["image"].numpy())


def test_eval_every_sequence_once_single_process(shard_dir):
    keys = [s["key"] for s in eval_sequences(shard_dir, "test", num_workers=2)]
    assert sorted(keys) == [f"s{i:05d}" for i in range(200, 205)]
    sample = next(iter(eval_sequences(shard_dir, "test", num_workers=0)))
    assert sample["image"].shape == (8, SIDE, SIDE) and str(sample["image"].dtype) == "torch.float32"
    assert sample["label"].shape == (SIDE, SIDE) and sample["id"] == 200
    assert len(eval_sequences(shard_dir, "test", num_workers=2)) == len(eval_sequences(shard_dir, "test", num_workers=0)) == 5
    wanted = eval_sequences(shard_dir, "test", num_workers=0, keys={"s00201", "s00204", "s99999"})
    assert len(wanted) == 2 and [s["key"] for s in wanted] == ["s00201", "s00204"]


SCRIPT = textwrap.dedent("""
    import json, sys
    from dias_dist import dist
    from dias_dist.data.loader import TrainSource, eval_sequences, train_batches
    shard_dir, out = sys.argv[1], sys.argv[2]
    dist.init("gloo", "cpu")
    stream = iter(train_batches(TrainSource(shard_dir), batch_size=16, patch_size=16, patches_per_sequence=2,
                                shuffle_buffer=8, num_workers=2, seed=0))
    train = [next(stream)["image"][:, :, 0, 0].tolist() for _ in range(2)]
    sequences = eval_sequences(shard_dir, "test", num_workers=2)
    keys, share = [s["key"] for s in sequences], len(sequences)
    gathered = dist.all_gather_object({"train": train, "keys": keys, "share": share})
    if dist.is_main():
        json.dump(gathered, open(out, "w"))
    dist.teardown()
""")


@pytest.mark.slow
def test_two_ranks_two_workers(shard_dir, tmp_path):
    script = tmp_path / "ranks.py"
    script.write_text(SCRIPT)
    out = tmp_path / "out.json"
    torchrun = Path(sys.executable).with_name("torchrun")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run([str(torchrun), "--standalone", "--nproc-per-node", "2", str(script), str(shard_dir),
                             str(out)], env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = json.loads(out.read_text())
    assert rank0["train"] != rank1["train"]  # each rank draws its own samples
    keys = rank0["keys"] + rank1["keys"]
    assert sorted(keys) == [f"s{i:05d}" for i in range(200, 205)]  # 5 sequences in 3 shards: each exactly once
    assert set(rank0["keys"]).isdisjoint(rank1["keys"])
    assert [rank0["share"], rank1["share"]] == [len(rank0["keys"]), len(rank1["keys"])]  # progress-bar totals


def test_dihedral_views_equal_apply_weak():
    from dias_dist.data.augment import apply_weak
    from dias_dist.data.loader import _DIHEDRAL

    array = np.arange(2 * 3 * 5 * 5).reshape(2, 3, 5, 5)
    for (flip_h, flip_w, k), view in _DIHEDRAL.items():
        assert np.array_equal(view(array), apply_weak(array, flip_h, flip_w, k))
        assert np.array_equal(view(array[0, 0]), apply_weak(array[0, 0], flip_h, flip_w, k))


def test_patches_are_the_documented_draws(shard_dir):
    """Without a shuffle buffer, the stream is: shard draw, key permutation, K tops, K lefts, weak_params,
    apply_weak per patch -- the values the loader's view/gather code must reproduce bit for bit."""
    from dias_dist.data.augment import apply_weak, weak_params
    from dias_dist.data.shards import open_shard

    seed, batch, k, patch = 7, 8, 4, 16
    source = TrainSource(str(shard_dir))
    stream = iter(train_batches(source, batch_size=batch, patch_size=patch, patches_per_sequence=k,
                                shuffle_buffer=0, num_workers=0, seed=seed))
    shards = source.shard_keys()
    rng = np.random.default_rng([seed, 0, 0])

    def reference():
        while True:
            path, keys, entry = shards[int(rng.integers(len(shards)))]
            reader = open_shard(path, entry)
            for key in rng.permutation(keys):
                frames = reader.frames(key)
                label = reader.map(key, "label", frames.shape[1:])
                tops = rng.integers(0, SIDE - patch, k)
                lefts = rng.integers(0, SIDE - patch, k)
                flip_h, flip_w, turns = weak_params(rng, k)
                for i, (t, l) in enumerate(zip(tops, lefts)):
                    yield (apply_weak(frames[:, t:t + patch, l:l + patch], flip_h[i], flip_w[i], turns[i]),
                           apply_weak(label[t:t + patch, l:l + patch], flip_h[i], flip_w[i], turns[i]))

    expected = reference()
    for _ in range(6):
        got = next(stream)
        items = [next(expected) for _ in range(batch)]
        assert np.array_equal(got["image"].numpy(), np.stack([x[0] for x in items]).astype(np.float32))
        assert np.array_equal(got["target"].numpy(), np.stack([x[1] for x in items]).astype(np.int64))
