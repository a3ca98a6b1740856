"""`dias score`, `dias baseline`, evaluate_sequences / evaluate_split, tables and overlays."""
import csv
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from dias_dist import cli
from dias_dist.config import EvalConfig
from dias_dist.evaluation import baseline, evaluate, tables
from dias_dist.evaluation.overlay import error_overlay
from dias_dist.evaluation.score import read_probability, score_folders
from dias_dist.metrics import METRIC_NAMES, image_metrics

REPO = Path(__file__).resolve().parents[1]


def _vessel_label(height=24, width=28, seed=0):
    label = np.zeros((height, width), np.uint8)
    label[height // 2, 2:width - 2] = 1
    label[3:height - 3, width // 3] = 1
    label[2 + seed % 3, 2:6] = 1
    return label


def _save_png(array, path):
    Image.fromarray(array).save(path)


# ---------------------------------------------------------------------------- tables / overlays

def test_summarize_population_std_and_flat_names():
    rows = [{"key": "a", **{m: 0.5 for m in METRIC_NAMES}}, {"key": "b", **{m: 1.0 for m in METRIC_NAMES}}]
    rows[1]["vc"] = 2.0
    summary = tables.summarize(rows)
    assert summary["dsc"] == pytest.approx((0.75, 0.25))  # ddof=0: std of {0.5, 1} is 0.25
    assert summary["vc"] == pytest.approx((1.25, 0.75))
    flat = tables.flat_metrics(summary)
    assert flat["test_dsc"] == pytest.approx(0.75) and flat["test_vc_std"] == pytest.approx(0.75)
    assert set(flat) == {f"test_{m}" for m in METRIC_NAMES} | {f"test_{m}_std" for m in METRIC_NAMES}
    assert "| mean±std | 0.7500±0.2500 |" in tables.summary_markdown(summary)
    with pytest.raises(ValueError, match="no per-image"):
        tables.summarize([])
    with pytest.raises(ValueError, match="'acc' missing"):
        tables.summarize([{"key": "x", "dsc": 1.0}])


def test_overlay_colours_follow_fig7():
    pred = np.array([[1, 0], [1, 0]], bool)
    gt = np.array([[1, 1], [0, 0]], bool)
    rgb = error_overlay(pred, gt)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 2, 3)
    assert rgb[0, 0].tolist() == [255, 255, 255]  # TP white
    assert rgb[0, 1].tolist() == [255, 0, 0]  # FN red
    assert rgb[1, 0].tolist() == [0, 255, 0]  # FP green
    assert rgb[1, 1].tolist() == [0, 0, 0]  # TN black


# ---------------------------------------------------------------------------- dias score

def test_score_npy_and_png_predictions(tmp_path, capsys):
    pred_dir, label_dir = tmp_path / "pred", tmp_path / "labels"
    pred_dir.mkdir(), label_dir.mkdir()
    rng = np.random.default_rng(0)
    expected = {}
    for index, kind in enumerate(["npy", "png8", "png16"]):
        label = _vessel_label(seed=index)
        prob = np.clip(label * 0.7 + rng.random(label.shape) * 0.4, 0, 1).astype(np.float32)
        name = f"s{index:05d}"
        if kind == "npy":
            np.save(pred_dir / f"{name}.npy", prob)
        elif kind == "png8":
            prob = np.round(prob * 255).astype(np.uint8)
            _save_png(prob, pred_dir / f"{name}.png")
            prob = prob / np.float32(255)
        else:
            prob = np.round(prob * 65535).astype(np.uint16)
            _save_png(prob, pred_dir / f"{name}.png")
            prob = prob / np.float32(65535)
        _save_png(label * 255, label_dir / f"{name}.png")  # 0/255 label
        expected[name] = image_metrics(prob.astype(np.float32), label)
    out_csv = tmp_path / "scores.csv"
    assert cli.main(["score", str(pred_dir), str(label_dir), "--out", str(out_csv)]) == 0
    printed = capsys.readouterr().out
    assert "3 images scored" in printed and "| mean±std |" in printed
    with open(out_csv) as handle:
        written = list(csv.DictReader(handle))
    assert [row["name"] for row in written] == sorted(expected)
    for row in written:
        for metric in METRIC_NAMES:
            assert float(row[metric]) == pytest.approx(expected[row["name"]][metric], rel=1e-6)


def test_score_01_labels_and_dti(tmp_path):
    pred_dir, label_dir = tmp_path / "pred", tmp_path / "labels"
    pred_dir.mkdir(), label_dir.mkdir()
    label = _vessel_label()
    prob = label * np.float32(0.4)  # weak everywhere on the vessel ...
    prob[label.shape[0] // 2, 5] = 0.9  # ... with one strong seed in the tree
    prob[2, 3] = 0.9  # ... and one in the separate short stub
    np.save(pred_dir / "a.npy", prob)
    _save_png(label, label_dir / "a.png")  # a 0/1 mask
    plain = score_folders(pred_dir, label_dir)[0]
    with_dti = score_folders(pred_dir, label_dir, dti=True)[0]
    assert plain["sen"] < 0.1 and with_dti["dsc"] == pytest.approx(1.0)


def test_score_mismatched_names_and_sizes_are_clear_errors(tmp_path, capsys):
    pred_dir, label_dir = tmp_path / "pred", tmp_path / "labels"
    pred_dir.mkdir(), label_dir.mkdir()
    np.save(pred_dir / "a.npy", np.zeros((8, 8), np.float32))
    np.save(pred_dir / "b.npy", np.zeros((8, 8), np.float32))
    _save_png(np.zeros((8, 8), np.uint8), label_dir / "a.png")
    _save_png(np.zeros((8, 8), np.uint8), label_dir / "c.png")
    assert cli.main(["score", str(pred_dir), str(label_dir)]) == 2
    err = capsys.readouterr().err
    assert "no label in" in err and "'b'" not in err and "for b" in err and "no prediction in" in err and "for c" in err
    (pred_dir / "b.npy").unlink()
    (label_dir / "c.png").unlink()
    _save_png(np.zeros((9, 8), np.uint8), label_dir / "a.png")
    with pytest.raises(ValueError, match=r"size mismatch for 'a'.*8x8.*8x9"):
        score_folders(pred_dir, label_dir)


def test_read_probability_rejects_bad_files(tmp_path):
    np.save(tmp_path / "range.npy", np.full((4, 4), 1.5, np.float32))
    np.save(tmp_path / "ints.npy", np.ones((4, 4), np.int64))
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match=r"range.npy.*\[0, 1\]"):
        read_probability(tmp_path / "range.npy")
    with pytest.raises(ValueError, match="ints.npy.*2-D float"):
        read_probability(tmp_path / "ints.npy")
    with pytest.raises(ValueError, match="rgb.png.*single-channel"):
        read_probability(tmp_path / "rgb.png")


# ---------------------------------------------------------------------------- evaluation over a split

def _fake_sequences(num=3, frames=4, size=(40, 36)):
    """Dark vessels on a bright background, z-scored-like; labels {0,1}; keys s00000..."""
    samples = []
    for index in range(num):
        label = _vessel_label(*size, seed=index)
        rng = np.random.default_rng(index)
        image = 1.0 - 2.0 * label[None] * rng.uniform(0.6, 1.0, (frames, 1, 1)) + 0.1 * rng.standard_normal((frames, *size))
        samples.append({"key": f"s{index:05d}", "id": index, "image": image.astype(np.float32), "label": label,
                        "meta": {}})
    return samples


@pytest.fixture
def fake_loader(monkeypatch):
    """Install ``eval_sequences`` (documented loader interface) serving in-memory samples."""
    served = {}

    def eval_sequences(shard_dir, split, **options):  # options: cache_dir, num_workers, ...
        return iter(served[split])

    import dias_dist.data.loader as module

    monkeypatch.setattr(module, "eval_sequences", eval_sequences)
    return served


def test_minip_probability_is_otsu_threshold():
    sample = _fake_sequences(1)[0]
    prob = baseline.minip_probability(sample["image"])
    from skimage.filters import threshold_otsu
    minip = sample["image"].min(axis=0)
    np.testing.assert_array_equal(prob >= 0.5, minip <= threshold_otsu(minip))
    assert prob.min() >= 0 and prob.max() <= 1
    assert image_metrics(prob, sample["label"])["dsc"] > 0.9


def test_baseline_cli_writes_tables_and_images(tmp_path, fake_loader, capsys):
    fake_loader["test"] = _fake_sequences(3)
    (tmp_path / "shards").mkdir()
    out = tmp_path / "out"
    assert cli.main(["baseline", str(tmp_path / "shards"), "--out", str(out)]) == 0
    assert "MinIP-Otsu baseline" in capsys.readouterr().out
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [row["key"] for row in rows] == ["s00000", "s00001", "s00002"]
    assert (out / "summary.md").read_text().count("±") == 1 + 8  # label cell + 8 metrics
    overlay = np.asarray(Image.open(out / "overlay" / "s00001.png"))
    prob = np.load(out / "prob" / "s00001.npy")
    assert overlay.shape[0] > 40 and overlay.shape[2] in (3, 4)  # upscaled, with title and legend
    assert prob.shape == (40, 36) and prob.dtype == np.float32
    # the written probability map re-scores to the same numbers with `dias score`
    label_dir = tmp_path / "labels"
    label_dir.mkdir()
    for sample in fake_loader["test"]:
        _save_png(sample["label"] * 255, label_dir / f"{sample['key']}.png")
    rescored = score_folders(out / "prob", label_dir)
    assert [r["dsc"] for r in rescored] == pytest.approx([float(r["dsc"]) for r in rows])


class _TinyPixelModel(nn.Module):
    input_layout = "frames"

    def __init__(self):
        super().__init__()
        self.head = nn.Conv2d(4, 2, 1)
        with torch.no_grad():  # vessel logit high where frames are dark
            self.head.weight.zero_()
            self.head.weight[1] = -2.0
            self.head.bias.zero_()

    def forward(self, x_BTHW):
        return self.head(x_BTHW)


def test_evaluate_split_matches_direct_metrics(tmp_path, fake_loader):
    fake_loader["validation"] = _fake_sequences(2)
    model = _TinyPixelModel().train()
    cfg = EvalConfig(patch_size_px=16, stride_px=8, batch_size=5)
    rows = evaluate.evaluate_split(model, tmp_path, "validation", cfg, device="cpu", out_dir=tmp_path / "ev")
    assert model.training  # mode restored
    for row, sample in zip(rows, fake_loader["validation"]):
        with torch.no_grad():
            logits = model(torch.from_numpy(sample["image"])[None])
        direct = torch.softmax(logits, 1)[0, 1].numpy()  # a pixel-local model: tiling changes nothing
        expected = image_metrics(direct, sample["label"])
        assert row["key"] == sample["key"]
        for metric in METRIC_NAMES:
            assert row[metric] == pytest.approx(expected[metric], rel=1e-5)
    assert sorted(p.name for p in (tmp_path / "ev" / "prob").iterdir()) == ["s00000.npy", "s00001.npy"]
    fake_loader["empty"] = []
    with pytest.raises(ValueError, match="holds no sequences"):
        evaluate.evaluate_split(model, tmp_path, "empty", cfg, device="cpu")


_TWO_RANK_SCRIPT = textwrap.dedent("""
    import sys, json, numpy as np
    from dias_dist import dist
    from dias_dist.config import EvalConfig
    from dias_dist.evaluation.evaluate import evaluate_sequences
    from dias_dist.evaluation.baseline import minip_probability
    sys.path.insert(0, sys.argv[2])
    from test_score import _fake_sequences
    dist.init("gloo", "cpu")
    samples = _fake_sequences(5)
    mine = samples[dist.rank()::dist.world_size()]  # disjoint shares of unequal size (3 and 2)
    rows = evaluate_sequences(minip_probability, mine, EvalConfig(), out_dir=sys.argv[1])
    if dist.is_main():
        print("KEYS", json.dumps([r["key"] for r in rows]))
    dist.teardown()
""")


@pytest.mark.slow
def test_two_ranks_evaluate_each_image_once(tmp_path):
    script = tmp_path / "two_rank_eval.py"
    script.write_text(_TWO_RANK_SCRIPT)
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run([str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc-per-node=2",
                             str(script), str(out), str(REPO / "tests")], capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    keys_line = [line for line in result.stdout.splitlines() if line.startswith("KEYS")]
    assert keys_line and keys_line[0] == 'KEYS ["s00000", "s00001", "s00002", "s00003", "s00004"]'
    assert len(list(csv.DictReader(open(out / "metrics.csv")))) == 5
    assert len(list((out / "overlay").glob("*.png"))) == 5 and len(list((out / "prob").glob("*.npy"))) == 5
