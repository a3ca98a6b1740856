"""`dias predict`: every input kind gives the map the PNG frames give, the map equals `dias evaluate`'s,
DICOM Segmentation output reads back, and every bad input is a clear error that does not stop a batch."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dias_dist import cli
from dias_dist.run import checkpoint
from dias_dist.config import load_config, to_dict
from dias_dist.data import dias
from dias_dist.models import build_model
from dias_dist.predict.model import load_trained_model, series_probability
from dias_dist.predict.readers import expand_inputs, read_series

ROOT = Path(__file__).resolve().parents[1]
XA = "1.2.840.10008.5.1.4.1.1.12.1"  # X-Ray Angiographic Image Storage


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A checkpoint as training writes it: reduced-width VSS-Net weights + the resolved config."""
    torch.manual_seed(0)
    cfg = load_config(ROOT / "configs" / "debug.yaml", ["model.params.width=2", "eval.batch_size=32"])
    network = build_model(cfg.model.name, **cfg.model.params)
    path = tmp_path_factory.mktemp("ckpt") / "final.pt"
    checkpoint.save(path, {"model": network.state_dict(), "config": to_dict(cfg), "step": 3})
    return path


@pytest.fixture(scope="module")
def phantom_series(tiny_shards, tmp_path_factory):
    """(frame folder of the first test sequence, its uint8 frames (T, H, W), its shard key)."""
    files = dias.list_sequences(tiny_shards.parent / "src", "test")[0]
    folder = tmp_path_factory.mktemp("series") / "frames"
    folder.mkdir()
    for index, path in enumerate(files.frames):  # natural order needed: frame10 after frame9
        shutil.copy(path, folder / f"frame{index}.png")
    return folder, dias.read_sequence(files).frames, f"s{files.seq_id:05d}"


def _dicom(frames, path, *, photometric="MONOCHROME2", bits=8, slope=None, intercept=None, instance=1,
           series_uid=None, multiframe=True, pixel_data=True):
    """Write frames uint (T, H, W) as an X-ray angiography DICOM (multi-frame, or one frame per call)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = XA
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = XA, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.SeriesInstanceUID = series_uid or "1.2.826.0.1.3680043.8.498.2"
    ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = "P1", "Phantom^Test", "", ""
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.ReferringPhysicianName, ds.StudyID = \
        "20260101", "120000", "", "", "1"
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber, ds.Manufacturer = "XA", 1, instance, "test"
    ds.Rows, ds.Columns = frames.shape[1:]
    if multiframe:
        ds.NumberOfFrames = frames.shape[0]
        ds.FrameTime = 66.7
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    ds.ImagerPixelSpacing = [0.2, 0.25]
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = slope, intercept, "US"
    if pixel_data:
        ds.PixelData = frames.astype(np.uint8 if bits == 8 else np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def _reference(tiny_checkpoint, frames_uint8):
    return series_probability(load_trained_model(str(tiny_checkpoint)), frames_uint8 / 255.0)


def test_png_dicom_and_npy_inputs_give_the_same_map(tiny_checkpoint, phantom_series, tmp_path):
    folder, frames, _ = phantom_series
    model = load_trained_model(str(tiny_checkpoint))
    png = series_probability(model, read_series(folder).frames)
    singles = tmp_path / "singles"
    singles.mkdir()
    order = np.random.default_rng(0).permutation(len(frames))  # file names must not decide the order
    for rank, index in enumerate(order):
        _dicom(frames[index:index + 1], singles / f"img{rank}.dcm", instance=int(index) + 1, multiframe=False)
    np.save(tmp_path / "frames.npy", frames)
    inputs = {
        "multi-frame": _dicom(frames, tmp_path / "multi.dcm"),
        "MONOCHROME1": _dicom(255 - frames, tmp_path / "mono1.dcm", photometric="MONOCHROME1"),
        "16-bit rescaled": _dicom(frames.astype(np.uint16) * 257, tmp_path / "b16.dcm", bits=16, slope=2,
                                  intercept=-100),
        "single-frame series": singles,
        "npy": tmp_path / "frames.npy",
    }
    for what, path in inputs.items():
        series = read_series(path)
        assert series.frames.shape == frames.shape, what
        np.testing.assert_allclose(series_probability(model, series.frames), png, atol=1e-3, err_msg=what)
    assert read_series(inputs["multi-frame"]).frame_time_ms == pytest.approx(66.7)


def test_compressed_dicom_decodes_and_an_undecodable_syntax_is_named(phantom_series, tmp_path):
    from pydicom import dcmread
    from pydicom.uid import JPEGLSLossless, RLELossless

    _, frames, _ = phantom_series
    for name, syntax in (("rle", RLELossless), ("jpegls", JPEGLSLossless)):
        ds = dcmread(_dicom(frames, tmp_path / "plain.dcm"))
        ds.compress(syntax)
        ds.save_as(tmp_path / f"{name}.dcm")
        np.testing.assert_allclose(read_series(tmp_path / f"{name}.dcm").frames, frames / 255.0, err_msg=name)
    ds = dcmread(tmp_path / "rle.dcm")
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.201"  # HTJ2K: no wheel-shipped decoder here
    ds.save_as(tmp_path / "htj2k.dcm")
    with pytest.raises(ValueError, match=r"htj2k.dcm: cannot decode .*transfer syntax High-Throughput JPEG 2000"):
        read_series(tmp_path / "htj2k.dcm")


def test_dias_predict_equals_dias_evaluate(tiny_checkpoint, tiny_shards, phantom_series, tmp_path):
    folder, frames, key = phantom_series
    assert cli.main(["evaluate", str(tiny_checkpoint), "--split", "test", "--out", str(tmp_path / "eval"),
                     f"data.shards={tiny_shards}"]) == 0
    # the paper's uniform tile average, as dias evaluate (dias predict's default is the Gaussian blend)
    assert cli.main(["predict", str(tiny_checkpoint), str(folder), "--out", str(tmp_path / "pred"),
                     "--blend", "uniform"]) == 0
    evaluated = np.load(tmp_path / "eval" / "prob" / f"{key}.npy")
    predicted = np.load(tmp_path / "pred" / "frames" / "prob.npy")
    assert predicted.dtype == np.float16
    np.testing.assert_allclose(predicted.astype(np.float32), evaluated, atol=1e-3)  # float16 storage
    np.testing.assert_allclose(_reference(tiny_checkpoint, frames), evaluated, atol=1e-6)
    out = tmp_path / "pred" / "frames"
    mask = np.asarray(Image.open(out / "mask.png"))
    np.testing.assert_array_equal(mask, (evaluated >= 0.5).astype(np.uint8) * 255)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["vessel_area_px"] == int((mask > 0).sum()) and summary["tile"] == 64 and summary["stride"] == 32
    overlay = np.asarray(Image.open(out / "overlay.png"))  # plain and windowed MinIP side by side, caption above
    assert overlay.ndim == 3 and overlay.shape[2] == 3 and overlay.shape[1] >= 2 * frames.shape[2]


def test_dicom_seg_reads_back_and_matches_the_mask(tiny_checkpoint, phantom_series, tmp_path):
    import highdicom as hd

    _, frames, _ = phantom_series
    source = _dicom(frames, tmp_path / "in" / "angio.dcm") if (tmp_path / "in").mkdir() is None else None
    assert cli.main(["predict", str(tiny_checkpoint), str(source), "--out", str(tmp_path / "out"),
                     "--threshold", "0.45"]) == 0
    out = tmp_path / "out" / "angio"
    mask = np.asarray(Image.open(out / "mask.png")) > 0
    seg = hd.seg.segread(out / "seg.dcm")
    assert seg.SegmentSequence[0].SegmentLabel == "vessel"
    np.testing.assert_array_equal(seg.pixel_array.astype(bool).reshape(mask.shape), mask)
    referenced = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
    from pydicom import dcmread

    assert referenced == dcmread(source).SOPInstanceUID
    summary = json.loads((out / "summary.json").read_text())
    assert summary["threshold"] == 0.45 and summary["frame_time_ms"] == pytest.approx(66.7)
    assert summary["vessel_area_mm2"] == pytest.approx(mask.sum() * 0.2 * 0.25)


def test_bad_inputs_are_named_and_do_not_stop_the_batch(tiny_checkpoint, phantom_series, tmp_path, capsys):
    folder, frames, _ = phantom_series
    batch = tmp_path / "batch"
    shutil.copytree(folder, batch / "good")
    sizes = batch / "sizes"
    shutil.copytree(folder, sizes)
    Image.fromarray(np.zeros((40, 48), np.uint8)).save(sizes / "frame1.png")
    colour = batch / "colour"
    shutil.copytree(folder, colour)
    rgb = np.stack([frames[0], frames[0] // 2, frames[0]], axis=-1)
    Image.fromarray(rgb).save(colour / "frame0.png")
    (batch / "empty").mkdir()
    text = batch / "notes"
    text.mkdir()
    (text / "frame0.png").write_text("not an image")
    np.save(batch / "four_d.npy", np.zeros((1, 2, 32, 32), np.float32))
    nan = np.zeros((2, 32, 32), np.float32)
    nan[0, 0, :5] = np.nan
    np.save(batch / "nan.npy", nan)
    _dicom(frames, batch / "nopixels.dcm", pixel_data=False)
    assert cli.main(["predict", str(tiny_checkpoint), str(batch), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "7 series failed" in err
    expected = {
        "sizes": "frame1.png: frame size 48x40 differs from frame0.png 64x64",
        "colour": "frame0.png: colour image (PIL mode RGB)",
        "empty": "empty: empty folder",
        "notes": "frame0.png: not a readable image",
        "four_d.npy": "four_d.npy: expected a (T, H, W) array, got shape (1, 2, 32, 32)",
        "nan.npy": "nan.npy: 5 NaN or infinite values",
        "nopixels.dcm": "nopixels.dcm: DICOM without pixel data",
    }
    for name, message in expected.items():
        assert message in err, name
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good"]  # no partial folders
    assert (tmp_path / "out" / "good" / "mask.png").is_file()


def test_grey_rgb_frames_convert_with_a_warning_and_mixed_series_are_refused(phantom_series, tmp_path):
    _, frames, _ = phantom_series
    grey = tmp_path / "grey"
    grey.mkdir()
    for index, frame in enumerate(frames):
        Image.fromarray(np.repeat(frame[..., None], 3, axis=2)).save(grey / f"f{index}.png")
    with pytest.warns(UserWarning, match="RGB image with equal channels read as grayscale"):
        np.testing.assert_array_equal(read_series(grey).frames, frames / 255.0)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    _dicom(frames[:1], mixed / "a.dcm", multiframe=False, series_uid="1.2.3.4")
    _dicom(frames[1:2], mixed / "b.dcm", multiframe=False, series_uid="1.2.3.5")
    with pytest.raises(ValueError, match=r"mixed: files of 2 series in one folder \(SeriesInstanceUID 1.2.3.4, 1.2.3.5\)"):
        read_series(mixed)


def test_frames_sort_naturally_and_inputs_expand(tmp_path):
    series = tmp_path / "series"
    series.mkdir()
    for index in (10, 2, 1):
        Image.fromarray(np.full((8, 8), index, np.uint8)).save(series / f"frame{index}.png")
    assert [p.name for p in read_series(series).files] == ["frame1.png", "frame2.png", "frame10.png"]
    batch = tmp_path / "batch"
    batch.mkdir()
    shutil.copytree(series, batch / "a")
    np.save(batch / "b.npy", np.zeros((2, 8, 8), np.uint8))
    assert expand_inputs([str(batch)]) == [batch / "a", batch / "b.npy"]
    assert expand_inputs([str(tmp_path / "ba*")]) == [batch / "a", batch / "b.npy"]
    assert expand_inputs([str(series)]) == [series]
    dias_split = tmp_path / "release_split"
    dias_split.mkdir()
    for seq in (1, 2):
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(dias_split / f"image_s{seq}_i0.png")
    with pytest.raises(ValueError, match=r"release_split: frames of 2 sequences \(s1, s2\) in one folder"):
        read_series(dias_split)
    with pytest.raises(ValueError, match="nothing.npy'?: no such file"):
        expand_inputs([str(tmp_path / "nothing.npy")])


def test_tile_options(tiny_checkpoint, phantom_series, tmp_path):
    folder, frames, _ = phantom_series
    model = load_trained_model(str(tiny_checkpoint))
    whole = series_probability(model, frames / 255.0, tile=0)
    assert whole.shape == frames.shape[1:] and np.all((whole >= 0) & (whole <= 1))
    assert cli.main(["predict", str(tiny_checkpoint), str(folder), "--out", str(tmp_path / "o"), "--tile", "0"]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "o" / "frames" / "prob.npy").astype(np.float32), whole, atol=1e-3)
    assert cli.main(["predict", str(tiny_checkpoint), str(folder), "--out", str(tmp_path / "o"),
                     "--tile", "32", "--stride", "48"]) == 2


def test_bf16_flag_autocasts_on_cpu_and_is_recorded(tiny_checkpoint, phantom_series, tmp_path):
    """--bf16 runs the network under bf16 autocast on a CPU (the summary says so) and gives the fp32
    map to bf16 precision; without it a CPU-trained model predicts in fp32."""
    import json

    folder, _, _ = phantom_series
    for flag, out in (([], "fp32"), (["--bf16"], "bf16")):
        # uniform blend: the tolerance below was measured on the averaged map (a Gaussian-weighted corner
        # pixel rests on one tile of this untrained width-2 network: 0.085 there)
        assert cli.main(["predict", str(tiny_checkpoint), str(folder), "--out", str(tmp_path / out), *flag,
                         "--blend", "uniform"]) == 0
    fp32, bf16 = (np.load(tmp_path / out / "frames" / "prob.npy").astype(np.float32) for out in ("fp32", "bf16"))
    summaries = [json.loads((tmp_path / out / "frames" / "summary.json").read_text()) for out in ("fp32", "bf16")]
    assert [s["bf16_autocast"] for s in summaries] == [False, True]
    assert not np.array_equal(fp32, bf16)  # autocast really changed the arithmetic
    np.testing.assert_allclose(bf16, fp32, atol=0.05)


@pytest.mark.parametrize("has_bf16", [True, False])
def test_fast_is_stride_48_plus_bf16_where_the_cpu_has_it(tiny_checkpoint, phantom_series, tmp_path, monkeypatch,
                                                          has_bf16):
    import json

    from dias_dist.predict import cli as predict_cli

    folder, _, _ = phantom_series
    monkeypatch.setattr(predict_cli, "cpu_has_bf16", lambda: has_bf16)
    assert cli.main(["predict", str(tiny_checkpoint), str(folder), "--out", str(tmp_path / "o"), "--fast",
                     "--device", "cpu"]) == 0
    summary = json.loads((tmp_path / "o" / "frames" / "summary.json").read_text())
    assert (summary["tile"], summary["stride"], summary["bf16_autocast"]) == (64, 48, has_bf16)
    assert cli.main(["predict", str(tiny_checkpoint), str(folder), "--out", str(tmp_path / "p"), "--fast",
                     "--tile", "32"]) == 2


@pytest.mark.slow
def test_training_logs_a_pyfunc_model_that_predicts_like_the_checkpoint(tiny_shards, phantom_series, tmp_path):
    """rank 0 logs checkpoints + the pyfunc model; a fresh process loads runs:/<id>/model without the
    run folder and predicts what the checkpoint predicts; the registered version and `dias evaluate`
    take MLflow URIs too."""
    import subprocess
    import sys

    from dias_dist import trainer

    folder, frames, key = phantom_series
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = load_config(ROOT / "configs" / "debug.yaml", [
        f"data.shards={tiny_shards}", f"train.run_dir={tmp_path / 'runs'}", "train.run_name=m", "train.max_steps=2",
        "eval.val_every_epochs=1000", "model.params.width=2", "track.enabled=true", f"track.tracking_uri={store}",
        "track.register_as=tiny-vss"])
    run_id = trainer.run(cfg)["run_id"]
    reference = _reference(tmp_path / "runs" / "m" / "checkpoints" / "final.pt", frames)
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=store)
    assert {a.path for a in client.list_artifacts(run_id, "checkpoints")} == {"checkpoints/final.pt"}
    shutil.move(tmp_path / "runs", tmp_path / "elsewhere")  # the model must not need the run folder
    np.save(tmp_path / "frames.npy", (frames / 255.0).astype(np.float32))
    code = ("import sys, mlflow, numpy as np; m = mlflow.pyfunc.load_model(sys.argv[1]); "
            "assert m.metadata.metadata['input_shape'] == [-1, -1, -1]; "
            "np.save(sys.argv[3], m.predict(np.load(sys.argv[2])))")
    env = {**__import__("os").environ, "MLFLOW_TRACKING_URI": store, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", code, f"runs:/{run_id}/model", str(tmp_path / "frames.npy"),
                    str(tmp_path / "fresh.npy")], check=True, cwd=tmp_path, env=env, timeout=900)
    # float32 input: a z-scored value may round to the neighbouring float16 (as the shards store it)
    np.testing.assert_allclose(np.load(tmp_path / "fresh.npy"), reference, atol=1e-3)
    assert cli.main(["predict", "models:/tiny-vss/1", str(folder), "--out", str(tmp_path / "pred"),
                     "--tracking-uri", store, "--blend", "uniform"]) == 0  # the reference's blend
    np.testing.assert_allclose(np.load(tmp_path / "pred" / "frames" / "prob.npy").astype(np.float32), reference,
                               atol=1e-3)
    assert cli.main(["evaluate", f"runs:/{run_id}/model", "--tracking-uri", store, "--out", str(tmp_path / "ev"),
                     f"data.shards={tiny_shards}"]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "ev" / "prob" / f"{key}.npy"), reference, atol=1e-6)


def test_mlflow_download_leaves_the_process_tracking_environment_as_it_was(tmp_path, monkeypatch):
    """MLflow's set_tracking_uri exports MLFLOW_TRACKING_URI; a lookup must not leave it behind, or later
    runs in the same process (a sweep, a notebook) would log to the wrong store."""
    from dias_dist.run.artifacts import download_checkpoint

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    with pytest.raises(ValueError, match="runs:/0123456789abcdef/model"):
        download_checkpoint("runs:/0123456789abcdef/model", tmp_path / "dl",
                            tracking_uri=f"sqlite:///{tmp_path / 'store.db'}")
    assert "MLFLOW_TRACKING_URI" not in __import__("os").environ
    assert "MLFLOW_REGISTRY_URI" not in __import__("os").environ
