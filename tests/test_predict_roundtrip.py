"""Round trips (issue 25, part 5): `dias score` reads a `dias predict` output folder directly, and the MLflow
pyfunc model takes the uint8 / uint16 frames DSA systems store as well as float32, saying so in its metadata."""
import csv

import numpy as np
import pytest
import yaml
from PIL import Image
from test_predict import tiny_checkpoint  # noqa: F401 — module fixture: a width-2 VSS-Net checkpoint

from dias_dist import cli
from dias_dist.run import checkpoint


def test_score_reads_predict_output_folders(tiny_checkpoint, tmp_path):
    rng = np.random.default_rng(0)
    inputs, labels = tmp_path / "in", tmp_path / "labels"
    inputs.mkdir()
    labels.mkdir()
    for name in ("a", "b"):
        np.save(inputs / f"{name}.npy", rng.integers(60, 200, (4, 48, 48)).astype(np.uint8))
        Image.fromarray((rng.random((48, 48)) > 0.8).astype(np.uint8) * 255).save(labels / f"{name}.png")
    assert cli.main(["predict", str(tiny_checkpoint), str(inputs), "--out", str(tmp_path / "pred")]) == 0
    (tmp_path / "pred" / "stray.txt").write_text("not a prediction")  # other entries are ignored
    assert cli.main(["score", str(tmp_path / "pred"), str(labels), "--out", str(tmp_path / "scores.csv")]) == 0
    with open(tmp_path / "scores.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["name"] for row in rows] == ["a", "b"]
    from dias_dist.metrics import image_metrics

    prob = np.load(tmp_path / "pred" / "a" / "prob.npy").astype(np.float32)
    label = (np.asarray(Image.open(labels / "a.png")) >= 100).astype(np.uint8)
    assert float(rows[0]["dsc"]) == pytest.approx(image_metrics(prob, label, 0.5, False)["dsc"])


def test_score_ignores_folders_predict_did_not_write(tmp_path, capsys):
    (tmp_path / "pred" / "x").mkdir(parents=True)
    np.save(tmp_path / "pred" / "x" / "prob.npy", np.zeros((4, 4), np.float32))  # no marker
    (tmp_path / "labels").mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "labels" / "x.png")
    assert cli.main(["score", str(tmp_path / "pred"), str(tmp_path / "labels")]) == 2
    assert "no dias predict result folders" in capsys.readouterr().err


@pytest.fixture(scope="module")
def pyfunc_folder(tiny_checkpoint, tmp_path_factory):
    """The saved pyfunc model's folder."""
    from dias_dist.predict.mlflow_model import save_pyfunc

    folder = tmp_path_factory.mktemp("pyfunc")
    config = folder / "config.yaml"
    config.write_text(yaml.safe_dump(checkpoint.load(tiny_checkpoint)["config"]))
    save_pyfunc(tiny_checkpoint, config, folder / "model")
    return folder / "model"


@pytest.fixture(scope="module")
def pyfunc_model(pyfunc_folder):
    import mlflow.pyfunc

    return mlflow.pyfunc.load_model(str(pyfunc_folder))


def test_pyfunc_takes_uint8_uint16_and_float32_frames(pyfunc_model):
    frames = np.random.default_rng(1).integers(40, 220, (4, 48, 48)).astype(np.uint8)
    as_uint8 = pyfunc_model.predict(frames)
    as_uint16 = pyfunc_model.predict(frames.astype(np.uint16) * 257)
    as_float = pyfunc_model.predict((frames / 255.0).astype(np.float32))
    assert as_uint8.dtype == np.float32 and as_uint8.shape == (48, 48)
    # one map: the per-series z-score removes the scale (float16 rounding as in the shards: 1e-3)
    np.testing.assert_allclose(as_uint8, as_float, atol=1e-3)
    np.testing.assert_allclose(as_uint16, as_float, atol=1e-3)


@pytest.mark.filterwarnings("ignore:.*validate_serving_input.*:FutureWarning")  # the check MLflow runs at logging
def test_pyfunc_takes_frames_after_a_json_round_trip_and_its_input_example_validates(pyfunc_model, pyfunc_folder):
    from mlflow.models import convert_input_example_to_serving_input, validate_serving_input

    from dias_dist.predict.pyfunc_model import input_example

    frames = np.random.default_rng(2).integers(40, 220, (4, 48, 48)).astype(np.uint8)
    # JSON (mlflow models serve) gives the uint8 values back as int64: one map with the uint8 input
    np.testing.assert_array_equal(pyfunc_model.predict(frames.astype(np.int64)), pyfunc_model.predict(frames))
    # what MLflow checks when the model is logged: its own input example, through JSON
    served = validate_serving_input(str(pyfunc_folder), convert_input_example_to_serving_input(input_example()))
    assert np.asarray(served).shape == input_example().shape[1:]


def test_pyfunc_metadata_says_what_it_expects_and_other_inputs_are_named(pyfunc_model):
    meta = pyfunc_model.metadata
    assert meta.metadata["input_dtypes"] == ["uint8", "uint16", "float32", "float64"]
    assert meta.metadata["input_shape"] == [-1, -1, -1] and "uint8" in meta.metadata["input"]
    assert meta.signature.outputs.inputs[0].shape == (-1, -1)
    assert {p.name for p in meta.signature.params} == {"tile", "stride", "batch_size", "device"}
    for bad in (np.full((4, 8, 8), -1, np.int64), np.full((4, 8, 8), 70000, np.int32), np.zeros((4, 8, 8), bool),
                np.zeros((8, 8), np.uint8), np.zeros((2, 8, 8, 3), np.uint8)):
        with pytest.raises(ValueError, match=r"dias model input must be frames \(T, H, W\).*got dtype"):
            pyfunc_model.predict(bad)
