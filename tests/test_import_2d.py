"""`dias import`: 2D vessel data sets into the release layout, with field-of-view masks that travel
through shards and evaluation (every metric inside the FOV); DRIVE's published second-observer
numbers reproduced from its masks when a copy of DRIVE is found (docs/TESTING.md, "DRIVE")."""
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dias_dist import cli
from dias_dist.config import EvalConfig
from dias_dist.data import dias
from dias_dist.data.import_2d import import_dataset
from dias_dist.data.loader import eval_sequences
from dias_dist.data.shards import write_shards
from dias_dist.evaluation.evaluate import evaluate_sequences
from dias_dist.metrics import image_metrics

ROOT = Path(__file__).resolve().parents[1]
# docs/TESTING.md, "DRIVE": $DIAS_DRIVE_DIR, else the data folder laid beside the checkout (never inside it)
DRIVE = Path(os.environ.get("DIAS_DRIVE_DIR") or ROOT.parent / "shared" / "data" / "drive")


def _case(folder: Path, stem: str, rng, size=(40, 48), fov=True, colour_mask=False):
    """A colour 'fundus' image, a vessel mask (a bar) and a disc FOV mask, as separate files."""
    h, w = size
    for sub in ("images", "masks") + (("fov",) if fov else ()):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    rgb = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(folder / "images" / f"{stem}.png")
    mask = np.zeros((h, w), np.uint8)
    mask[h // 2 - 2:h // 2 + 2, :] = 255
    if colour_mask:
        Image.fromarray(np.stack([mask, mask * 0, mask * 0], -1)).save(folder / "masks" / f"{stem}.png")
    else:
        Image.fromarray(mask).save(folder / "masks" / f"{stem}.gif")
    if fov:
        yy, xx = np.mgrid[:h, :w]
        disc = ((yy - h / 2) ** 2 + (xx - w / 2) ** 2 <= (min(h, w) / 2 - 2) ** 2).astype(np.uint8) * 255
        Image.fromarray(disc).save(folder / "fov" / f"{stem}.png")


@pytest.fixture
def source(tmp_path):
    rng = np.random.default_rng(0)
    for stem in ("21", "22", "23", "24"):
        _case(tmp_path / "src" / "training", stem, rng)
    for stem in ("01", "02"):
        _case(tmp_path / "src" / "test", stem, rng)
    return tmp_path / "src"


def test_folders_split_with_validation_and_fov_in_the_release_layout(source, tmp_path):
    record = import_dataset(source, tmp_path / "out", fov="fov", val=1, seed=3, channel="green")
    assert record["counts"] == {"training": 3, "validation": 1, "test": 2}
    splits = {split: dias.read_split(tmp_path / "out", split) for split in ("training", "validation", "test")}
    assert [s.seq_id for s in splits["training"] + splits["validation"] + splits["test"]] == [0, 1, 2, 3, 4, 5]
    seq = splits["test"][0]
    assert seq.frames.shape == (1, 40, 48) and seq.fov is not None and seq.fov.dtype == np.uint8
    assert set(np.unique(seq.label)) == {0, 1} and 0 < seq.fov.mean() < 1
    stem = record["ids"][str(seq.seq_id)]["stem"]
    green = np.asarray(Image.open(source / "test" / "images" / f"{stem}.png"))[..., 1]
    assert np.array_equal(seq.frames[0], green)
    again = import_dataset(source, tmp_path / "out2", fov="fov", val=1, seed=3, channel="green")
    assert again["ids"] == record["ids"]  # the seeded choice is reproducible
    assert json.loads((tmp_path / "out" / "import.json").read_text())["channel"] == "green"


def test_random_and_list_splits(tmp_path):
    rng = np.random.default_rng(1)
    for stem in "abcdefghij":
        _case(tmp_path / "flat", stem, rng, fov=False)
    record = import_dataset(tmp_path / "flat", tmp_path / "r", split="random", fractions=(0.6, 0.2, 0.2), seed=1)
    assert record["counts"] == {"training": 6, "validation": 2, "test": 2}
    (tmp_path / "train.txt").write_text("a\nb\nc\n")
    (tmp_path / "test.txt").write_text("j\n")
    assert cli.main(["import", str(tmp_path / "flat"), str(tmp_path / "l"), "--split", "lists",
                     "--lists", f"{tmp_path / 'train.txt'},,{tmp_path / 'test.txt'}"]) == 0
    assert [s.seq_id for s in dias.read_split(tmp_path / "l", "test")] == [3]
    assert not (tmp_path / "l" / "test" / "fov").exists()


@pytest.mark.parametrize("fault, message", [
    ("missing_mask", "no mask for image"),
    ("orphan_mask", "no image of stem 'zz'"),
    ("duplicate", "duplicate name"),
    ("size", "differs from image"),
    ("colour_mask", "colour vessel mask"),
    ("empty_fov", "field of view is empty"),
    ("missing_fov", "no field-of-view mask for image"),
])
def test_every_mismatch_is_one_line_naming_the_file(source, tmp_path, capsys, fault, message):
    train = source / "training"
    if fault == "missing_mask":
        (train / "masks" / "22.gif").unlink()
    elif fault == "orphan_mask":
        Image.fromarray(np.zeros((40, 48), np.uint8)).save(train / "masks" / "zz.png")
    elif fault == "duplicate":
        Image.fromarray(np.zeros((40, 48), np.uint8)).save(train / "images" / "22.tif")
    elif fault == "size":
        Image.fromarray(np.zeros((41, 48), np.uint8)).save(train / "masks" / "22.gif")
    elif fault == "colour_mask":
        (train / "masks" / "22.gif").unlink()
        _case(train, "22", np.random.default_rng(5), colour_mask=True)
    elif fault == "empty_fov":
        Image.fromarray(np.zeros((40, 48), np.uint8)).save(train / "fov" / "22.png")
    elif fault == "missing_fov":
        (train / "fov" / "22.png").unlink()
    assert cli.main(["import", str(source), str(tmp_path / "out"), "--fov", "fov"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.partial-*"))


def test_an_existing_output_is_refused(source, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="exists and is not an empty folder"):
        import_dataset(source, tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_fov_travels_through_shards_and_evaluation_counts_only_its_pixels(source, tmp_path):
    import_dataset(source, tmp_path / "out", fov="fov")
    write_shards(tmp_path / "out", tmp_path / "shards")
    samples = list(eval_sequences(tmp_path / "shards", "test", num_workers=0))
    assert all(s["fov"] is not None and s["fov"].shape == (40, 48) for s in samples)
    # a prediction that is right inside the FOV and wrong outside it scores perfectly
    by_key = {s["key"]: s for s in samples}

    def probability(image):
        sample = next(s for s in by_key.values() if s["image"].shape == image.shape and np.array_equal(s["image"], image))
        label, fov = np.asarray(sample["label"]), np.asarray(sample["fov"])
        return np.where(fov == 1, label, 1 - label).astype(np.float32)

    rows = evaluate_sequences(probability, samples, EvalConfig(), out_dir=tmp_path / "ev", write_images=False)
    assert all(row["fov"] and row["dsc"] == 1.0 and row["acc"] == 1.0 and row["auc"] == 1.0 for row in rows)
    assert "fov" in (tmp_path / "ev" / "metrics.csv").read_text().splitlines()[0]


def test_fov_metrics_equal_the_metrics_of_the_pixels_inside():
    rng = np.random.default_rng(2)
    prob = rng.random((30, 30)).astype(np.float32)
    gt = (rng.random((30, 30)) > 0.8).astype(np.uint8)
    fov = np.zeros((30, 30), np.uint8)
    fov[5:25, 3:27] = 1
    inside = image_metrics(prob[5:25, 3:27], gt[5:25, 3:27])
    masked = image_metrics(prob, gt, fov=fov)
    for name in ("dsc", "acc", "sen", "spe", "iou", "auc"):
        assert masked[name] == pytest.approx(inside[name], abs=1e-12), name
    assert image_metrics(prob, gt)["acc"] != masked["acc"]
    with pytest.raises(ValueError, match="field-of-view mask is empty"):
        image_metrics(prob, gt, fov=np.zeros_like(fov))


@pytest.mark.skipif(not DRIVE.is_dir(), reason=f"DRIVE is not at {DRIVE} (the project's real-vessel benchmark, "
                                               "never copied into the repository)")
def test_drive_imports_and_its_second_observer_scores_the_published_numbers(tmp_path):
    """DRIVE's second observer against the first, inside the field of view: F1 0.789 and accuracy 0.947
    over the 20 test images (the numbers published with the data set)."""
    record = import_dataset(DRIVE, tmp_path / "drive", masks="vessel_masks", fov="fov_masks", val=2)
    assert record["counts"] == {"training": 18, "validation": 2, "test": 20}
    tp = fp = fn = tn = 0
    for seq in dias.read_split(tmp_path / "drive", "test"):
        stem = record["ids"][str(seq.seq_id)]["stem"]
        second = np.asarray(Image.open(DRIVE / "test" / "vessel_masks_2nd_observer" / f"{stem}.png").convert("L")) >= 128
        gt, fov = seq.label.astype(bool), seq.fov.astype(bool)
        row = image_metrics(second.astype(np.float32), seq.label, fov=seq.fov)
        assert 0.7 < row["dsc"] < 0.86 and row["acc"] > 0.93
        tp += np.count_nonzero(second & gt & fov)
        fp += np.count_nonzero(second & ~gt & fov)
        fn += np.count_nonzero(~second & gt & fov)
        tn += np.count_nonzero(~second & ~gt & fov)
    assert 2 * tp / (2 * tp + fp + fn) == pytest.approx(0.789, abs=5e-4)
    assert (tp + tn) / (tp + fp + fn + tn) == pytest.approx(0.947, abs=5e-4)


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.skipif(not DRIVE.is_dir(), reason=f"DRIVE is not at {DRIVE}")
def test_drive_end_to_end_import_shard_train_evaluate(tmp_path, capsys):
    """The README's DRIVE example at a tiny budget: import, shard, train (3 steps), evaluate the
    validation images inside their field of view."""
    import_dataset(DRIVE, tmp_path / "drive", masks="vessel_masks", fov="fov_masks", val=2)
    write_shards(tmp_path / "drive", tmp_path / "shards")
    from dias_dist import trainer
    from dias_dist.config import load_config

    cfg = load_config(ROOT / "configs" / "drive" / "fr_unet_cpu.yaml", [
        f"data.shards={tmp_path / 'shards'}", f"train.run_dir={tmp_path / 'runs'}", "train.run_name=drive",
        "model.params.width=2", "train.max_steps=3", "train.batch_size=4", "data.num_workers=0",
        "eval.val_every_epochs=1000", "eval.test_split=", "track.enabled=false"])
    trainer.run(cfg)
    capsys.readouterr()
    last = tmp_path / "runs" / "drive" / "checkpoints" / "last.pt"
    assert cli.main(["evaluate", str(last), "--split", "validation", "--out", str(tmp_path / "ev"), "--no-images"]) == 0
    assert "inside each image's field of view" in capsys.readouterr().out
    rows = (tmp_path / "ev" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[0].endswith(",fov") and all(row.endswith(",True") for row in rows[1:])


def test_dias_score_counts_the_field_of_view_only(tmp_path, capsys):
    rng = np.random.default_rng(4)
    for sub in ("pred", "labels", "fov"):
        (tmp_path / sub).mkdir()
    for name in ("a", "b"):
        label = (rng.random((24, 30)) > 0.8).astype(np.uint8)
        fov = np.zeros((24, 30), np.uint8)
        fov[4:20, 5:25] = 1
        np.save(tmp_path / "pred" / f"{name}.npy", np.where(fov == 1, label, 1 - label).astype(np.float32))
        Image.fromarray(label * 255).save(tmp_path / "labels" / f"{name}.png")
        Image.fromarray(fov * 255).save(tmp_path / "fov" / f"{name}.png")
    assert cli.main(["score", str(tmp_path / "pred"), str(tmp_path / "labels"), "--fov", str(tmp_path / "fov")]) == 0
    assert "inside each field of view" in capsys.readouterr().out
    rows = (tmp_path / "pred" / "scores.csv").read_text().splitlines()
    assert rows[0].endswith(",fov") and all(row.split(",")[1] == "1.0" for row in rows[1:])  # DSC 1 inside
    assert cli.main(["score", str(tmp_path / "pred"), str(tmp_path / "labels")]) == 0
    assert all(float(row.split(",")[1]) < 1 for row in (tmp_path / "pred" / "scores.csv").read_text().splitlines()[1:])
    (tmp_path / "fov" / "b.png").unlink()
    capsys.readouterr()
    assert cli.main(["score", str(tmp_path / "pred"), str(tmp_path / "labels"), "--fov", str(tmp_path / "fov")]) == 2
    err = capsys.readouterr().err
    assert "b.png: no field-of-view mask for this image" in err and len(err.strip().splitlines()) == 1
