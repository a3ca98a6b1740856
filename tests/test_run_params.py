"""What a run logs to MLflow: resolved constructor arguments, no unused sections; study experiments;
the evaluation pictures (anatomy overlay, probability map) and the training curves."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from dias_dist.config import load_config
from dias_dist.curves import plot_curves
from dias_dist.evaluation.overlay import (ANATOMY_BRIGHTNESS, FN_COLOUR, FP_COLOUR, TP_COLOUR, anatomy_overlay,
                                          write_overlay_figure, write_probability_figure)
from dias_dist.methods import build_method
from dias_dist.run.params import resolved_params
from dias_dist.run.track import experiment_name, study_of, with_study


def _built(cfg):
    method = build_method(cfg.method.name, **cfg.method.params)
    return method, method.build_model(cfg.model.name, dict(cfg.model.params))


def test_params_hold_constructor_defaults_and_only_used_sections():
    cfg = load_config(None, ["model.name=vss_net", "model.params={width: 4}"])
    params = resolved_params(cfg, *_built(cfg))
    # the all-frames VSS-Net names its default, so Compare shows `all` next to `first`
    assert params["model.params.frames"] == "all" and params["model.params.width"] == "4"
    assert params["model.params.dropout"] == "0.2" and params["eval.select_metric"] == "auc"
    assert not [k for k in params if k.startswith(("rpst.", "track.", "method.params"))]
    assert "dist.deepspeed_config" not in params and params["optim.betas"] == "[0.9, 0.999]"
    assert all(isinstance(v, str) for v in params.values())
    # without built objects the YAML values are bound to the registered constructors: same answer
    assert resolved_params(cfg) == params


def test_params_log_what_the_constructor_received():
    # pCE builds its model with a 3-class head although model.params says nothing about classes
    cfg = load_config(None, ["method.name=pce", "model.name=unet", "model.params={width: 4}",
                             "dist.engine=deepspeed"])
    method, model = _built(cfg)
    params = resolved_params(cfg, method, model)
    assert params["model.params.num_classes"] == "3" and params["method.params.dice"] == "True"
    assert "dist.deepspeed_config" in params
    # SSCR wraps two networks: the registered one inside is found
    cfg = load_config(None, ["method.name=sscr", "model.name=unet", "model.params={width: 4}"])
    params = resolved_params(cfg, *_built(cfg))
    assert params["model.params.num_classes"] == "3" and params["method.params.lambda1"] == "1.0"
    assert resolved_params(cfg, semi=True)["rpst.labeled_prob"] == "0.5"


def test_study_picks_the_experiment_and_tag():
    default = load_config(None, [])
    assert study_of(default.track, default.method.name) == "supervised"
    weak = load_config(None, ["method.name=rloss"])
    assert study_of(weak.track, "rloss") == "weak" and experiment_name(weak.track, "rloss") == "dias-weak"
    semi = load_config(None, ["track.tags={study: semi}"])
    assert experiment_name(semi.track, "supervised") == "dias-semi"
    named = with_study(load_config(None, ["method.name=em", "track.experiment=table3", "track.tags={a: 1}"]))
    assert named.track.experiment == "table3" and named.track.tags == {"a": 1, "study": "weak"}


def test_anatomy_overlay_colours_on_the_minimum_intensity_projection(tmp_path):
    rng = np.random.default_rng(0)
    frames = rng.normal(size=(8, 20, 24)).astype(np.float32)
    frames[:, :, :12] += 2.0  # the left half is brighter in every frame
    gt = np.zeros((20, 24), np.uint8)
    gt[5, 2:20] = 1
    pred = np.zeros((20, 24), bool)
    pred[5, 2:10] = True  # TP
    pred[15, 3] = True  # FP
    rgb = anatomy_overlay(frames, pred, gt)
    assert tuple(rgb[5, 4]) == TP_COLOUR and tuple(rgb[5, 15]) == FN_COLOUR and tuple(rgb[15, 3]) == FP_COLOUR
    grey = rgb[10]  # a row without labels: grey, darker on the right, never brighter than the dimmed white
    assert (grey[:, 0] == grey[:, 1]).all() and (grey[:, 0] == grey[:, 2]).all()
    assert grey[:12, 0].mean() > grey[12:, 0].mean() + 40 and grey.max() <= round(255 * ANATOMY_BRIGHTNESS)
    with pytest.raises(ValueError, match="one size"):
        anatomy_overlay(frames, pred[:10], gt)

    write_overlay_figure(rgb, tmp_path / "o.png", "s1: DSC 0.615")
    write_probability_figure(rng.random((20, 24)), tmp_path / "p.png", "s1: vessel probability")
    for name in ("o.png", "p.png"):
        image = np.asarray(Image.open(tmp_path / name).convert("RGB"))
        assert image.shape[1] >= 300  # a 24 px map is upscaled so that its title and legend are readable
    colours = {tuple(c) for c in np.asarray(Image.open(tmp_path / "o.png").convert("RGB")).reshape(-1, 3)}
    assert {FN_COLOUR, FP_COLOUR} <= colours


def test_curves_show_losses_and_the_learning_rate(tmp_path):
    records = [{"kind": "train", "step": s, "loss_total": 1.0 / s, "loss_ce": 0.5 / s, "lr": 1e-3 * s}
               for s in range(1, 6)]
    records += [{"kind": "val", "step": 5, "epoch": 1, "val_dsc": 0.5, "val_vc": 3.0, "best_val_score": 0.5}]
    written = plot_curves(records, tmp_path / "with_lr")
    assert [p.name for p in written] == ["loss_curve.png", "val_curve.png"]
    without = plot_curves([{k: v for k, v in r.items() if k != "lr"} for r in records[:5]], tmp_path / "no_lr")
    width = {path.parent.name: Image.open(path).size[0] for path in (written[0], without[0])}
    assert width["with_lr"] > 1.5 * width["no_lr"]  # a second panel: the learning rate
