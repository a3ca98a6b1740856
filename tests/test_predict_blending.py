"""Pictures a person can read (issue 25, part 4): Gaussian tile blending (dias predict's default; an option
of dias evaluate, whose default stays the paper's uniform average), flip TTA, the --min-size clean-up and
the overlay (plain and windowed MinIP, outline, series name, threshold, legend, Okabe-Ito colours)."""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from test_predict import tiny_checkpoint  # noqa: F401 — module fixture: a width-2 VSS-Net checkpoint

from dias_dist import cli
from dias_dist.config import load_config
from dias_dist.evaluation.tiling import sliding_window_probability, tile_weights
from dias_dist.predict import overlay
from dias_dist.predict.postprocess import parse_min_size, remove_small


def _border_model(tiles):
    """A network with the usual border effect: confident (0.9) in the tile centre, unsure (0.5) at its edges."""
    size = tiles.shape[-1]
    ramp = torch.minimum(torch.arange(size), torch.arange(size).flip(0)).float() / (size / 2)
    inside = torch.minimum(ramp[:, None], ramp[None, :]).clamp(max=1.0)
    return (0.5 + 0.4 * inside).expand(tiles.shape[0], size, size)


@pytest.mark.parametrize("blend", ["uniform", "gaussian"])
def test_a_constant_model_gives_an_exactly_constant_map(blend):
    image = torch.randn(8, 150, 130)
    prob = sliding_window_probability(lambda t: torch.full((t.shape[0], 64, 64), 0.73), image, blend=blend)
    assert prob.shape == (150, 130)
    assert float(prob.max() - prob.min()) < 1e-6 and float(prob.mean()) == pytest.approx(0.73, abs=1e-6)


def test_gaussian_blending_removes_the_tile_seams():
    """Uniform averaging of a model with border effects jumps where a tile begins (a seam); the Gaussian
    weights let a tile enter with almost no weight: the largest step between neighbouring pixels shrinks
    more than tenfold."""
    image = torch.zeros(8, 200, 200)
    steps = {}
    for blend in ("uniform", "gaussian"):
        prob = sliding_window_probability(_border_model, image, blend=blend)[:160, :160]  # away from the pad
        steps[blend] = float(max(prob.diff(dim=0).abs().max(), prob.diff(dim=1).abs().max()))
    assert steps["uniform"] > 0.05
    assert steps["gaussian"] < steps["uniform"] / 10


def test_tile_weights_are_positive_and_peak_in_the_centre():
    weights = tile_weights(64, "gaussian")
    assert float(weights.min()) > 0 and float(weights[31:33, 31:33].min()) == pytest.approx(float(weights.max()), rel=1e-3)
    assert torch.equal(tile_weights(8, "uniform"), torch.ones(8, 8))
    with pytest.raises(ValueError, match="blend 'x': choose one of uniform, gaussian"):
        tile_weights(8, "x")


def test_evaluate_keeps_uniform_and_offers_gaussian(tiny_checkpoint, tiny_shards, tmp_path):
    from pathlib import Path

    assert load_config(Path(__file__).resolve().parents[1] / "configs" / "debug.yaml").eval.blend == "uniform"
    with pytest.raises(ValueError, match="eval.blend.*must be uniform or gaussian"):
        load_config(Path(__file__).resolve().parents[1] / "configs" / "debug.yaml", ["eval.blend=smooth"])
    maps = {}
    for extra, name in (([], "uniform"), (["eval.blend=gaussian"], "gaussian")):
        assert cli.main(["evaluate", str(tiny_checkpoint), "--out", str(tmp_path / name), "--no-images",
                         f"data.shards={tiny_shards}", *extra]) == 0
        maps[name] = (tmp_path / name / "metrics.csv").read_text()
    assert maps["uniform"] != maps["gaussian"]


def test_predict_blends_with_gaussian_weights_by_default_and_records_it(tiny_checkpoint, tmp_path):
    frames = np.random.default_rng(0).integers(60, 200, (4, 80, 80)).astype(np.uint8)
    np.save(tmp_path / "run.npy", frames)
    probs = {}
    for flags, out in (([], "default"), (["--blend", "uniform"], "uniform")):
        assert cli.main(["predict", str(tiny_checkpoint), str(tmp_path / "run.npy"), "--out", str(tmp_path / out),
                         *flags]) == 0
        probs[out] = np.load(tmp_path / out / "run" / "prob.npy")
        assert json.loads((tmp_path / out / "run" / "summary.json").read_text())["blend"] == \
            ("gaussian" if out == "default" else "uniform")
    assert not np.array_equal(probs["default"], probs["uniform"])


def test_tta_averages_the_flipped_predictions(tiny_checkpoint):
    from dias_dist.predict.model import load_trained_model, series_probability

    model = load_trained_model(str(tiny_checkpoint))
    frames = np.random.default_rng(1).uniform(0.2, 0.9, (4, 48, 40))
    plain = series_probability(model, frames, blend="uniform")
    mirrored = series_probability(model, frames[:, :, ::-1], blend="uniform")[:, ::-1]
    upside = series_probability(model, frames[:, ::-1, :], blend="uniform")[::-1]
    both = series_probability(model, frames[:, ::-1, ::-1], blend="uniform")[::-1, ::-1]
    tta = series_probability(model, frames, blend="uniform", tta=True)
    np.testing.assert_allclose(tta, (plain + mirrored + upside + both) / 4, atol=1e-6)


def test_min_size_removes_small_components_in_px_and_mm2(tiny_checkpoint, tmp_path, capsys):
    mask = np.zeros((20, 20), bool)
    mask[1:3, 1:3] = True  # 4 px
    mask[10:18, 10:12] = True  # 16 px
    cleaned, components, pixels = remove_small(mask, 5)
    assert (components, pixels) == (1, 4) and cleaned.sum() == 16 and not cleaned[1, 1]
    assert parse_min_size("20px") == (20.0, "px") and parse_min_size("1.5mm2") == (1.5, "mm2")
    assert parse_min_size(None) is None
    with pytest.raises(ValueError, match="--min-size '5 cm': expected a size such as 20px or 1.5mm2"):
        parse_min_size("5 cm")
    frames = np.random.default_rng(2).integers(60, 200, (4, 64, 64)).astype(np.uint8)
    np.save(tmp_path / "run.npy", frames)
    assert cli.main(["predict", str(tiny_checkpoint), str(tmp_path / "run.npy"), "--out", str(tmp_path / "a"),
                     "--min-size", "10000px", "--threshold", "0.3"]) == 0
    summary = json.loads((tmp_path / "a" / "run" / "summary.json").read_text())
    assert summary["vessel_area_px"] == 0 and summary["clean_up"]["removed_px"] > 0
    assert not np.asarray(Image.open(tmp_path / "a" / "run" / "mask.png")).any()
    # mm2 needs a spacing: a .npy has none
    assert cli.main(["predict", str(tiny_checkpoint), str(tmp_path / "run.npy"), "--out", str(tmp_path / "b"),
                     "--min-size", "2mm2"]) == 1
    assert "--min-size 2mm2 needs a pixel spacing" in capsys.readouterr().err


def test_overlay_shows_plain_and_windowed_minip_outline_name_threshold_and_legend():
    rng = np.random.default_rng(3)
    frames = rng.uniform(0.4, 0.9, (3, 40, 40))
    frames[:, 15:25, 10:30] = 0.1  # a dark vessel
    mask = np.zeros((40, 40), bool)
    mask[15:25, 10:30] = True
    removed = np.zeros((40, 40), bool)
    removed[2:5, 2:5] = True
    picture = overlay.predict_overlay(frames, mask, title="series-7", threshold=0.42, removed_hw=removed)
    colours = {tuple(c) for c in picture.reshape(-1, 3)}
    assert overlay.ORANGE in colours and overlay.BLUE in colours and (255, 0, 0) not in colours
    height, width = picture.shape[:2]
    scale = overlay.MIN_SIDE // 40
    assert width == 2 * 40 * scale + overlay.GAP
    # the left panel has no outline; the right one outlines the vessel but keeps its inside grey
    left, right = picture[-40 * scale:, :40 * scale], picture[-40 * scale:, 40 * scale + overlay.GAP:]
    assert overlay.ORANGE not in {tuple(c) for c in left.reshape(-1, 3)}
    inside = right[20 * scale, 20 * scale]
    assert inside[0] == inside[1] == inside[2]
    assert tuple(right[15 * scale, 20 * scale]) == overlay.ORANGE
    caption = picture[:height - 40 * scale]
    assert (caption < 128).any()  # the text is drawn


def test_overlay_text_names_series_and_threshold(monkeypatch):
    drawn = []
    from PIL import ImageDraw

    original = ImageDraw.ImageDraw.text
    monkeypatch.setattr(ImageDraw.ImageDraw, "text", lambda self, xy, text, *a, **k: (drawn.append(text),
                                                                                       original(self, xy, text, *a, **k)))
    overlay.predict_overlay(np.ones((2, 8, 8)), np.zeros((8, 8), bool), title="angio-3", threshold=0.5)
    assert drawn[0] == "angio-3" and "p >= 0.50" in drawn[1] and "vessel (model mask)" in drawn
