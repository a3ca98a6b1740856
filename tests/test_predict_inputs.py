"""`dias predict` inputs: the frame order of a DICOM series whose files lack InstanceNumber (a documented
fallback with a warning, not "that frame last"), and the pixel and frame budget, checked from the headers
before any pixel is decoded (a tracemalloc peak far below the decoded size shows nothing was)."""
import json
import struct
import tracemalloc
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_predict import _dicom, tiny_checkpoint  # noqa: F401 — DICOM writer, module fixture

from dias_dist import cli
from dias_dist.predict.readers import DEFAULT_MAX_FRAMES, DEFAULT_MAX_PIXELS, Budget, read_series


def _single_frames(folder: Path, values, *, instances, times=None, content_times=None, names=None,
                   size=8) -> Path:
    """One size x size single-frame DICOM per value (constant frame), with InstanceNumber (None: absent),
    AcquisitionTime / ContentTime (None: absent) and file names as given."""
    from pydicom import dcmread

    folder.mkdir(parents=True)
    names = names or [f"f{i}.dcm" for i in range(len(values))]
    for index, value in enumerate(values):
        path = _dicom(np.full((1, size, size), value, np.uint8), folder / names[index], multiframe=False,
                      instance=instances[index] or 1)
        ds = dcmread(path)
        if instances[index] is None:
            del ds.InstanceNumber
        if times and times[index] is not None:
            ds.AcquisitionDate, ds.AcquisitionTime = "20260101", times[index]
        if content_times and content_times[index] is not None:
            ds.ContentDate, ds.ContentTime = "20260101", content_times[index]
        ds.save_as(path)
    return folder


def _values(series) -> list[int]:
    return [int(v) for v in np.round(series.frames[:, 0, 0] * 255)]


# ------------------------------------------------------------------------- DICOM frame order


def test_a_file_without_instance_number_falls_back_to_acquisition_time_with_a_warning(tmp_path):
    """Before: the frame of the file without InstanceNumber was moved last ([10, 30, 40, 20]). Now the
    series is ordered by acquisition time (file names deliberately in the reverse order)."""
    folder = _single_frames(tmp_path / "s", [10, 20, 30, 40], instances=[1, None, 3, 4],
                            times=["120000", "120001.5", "120002", "120003"],
                            names=["d.dcm", "c.dcm", "b.dcm", "a.dcm"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        series = read_series(folder)
    assert _values(series) == [10, 20, 30, 40]
    assert [str(w.message) for w in caught] == [f"{folder}: 1 of 4 files lack InstanceNumber (c.dcm); frames "
                                                "ordered by AcquisitionDate+AcquisitionTime, then file name"]
    assert series.frame_order == ("AcquisitionDate+AcquisitionTime, then file name "
                                  "(InstanceNumber missing in 1 of 4 files)")


def test_without_instance_number_or_a_common_time_the_file_name_decides_with_a_warning(tmp_path):
    folder = _single_frames(tmp_path / "s", [10, 20, 30], instances=[None, 2, 3], times=["120000", None, "120002"],
                            names=["img2.dcm", "img10.dcm", "img1.dcm"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        series = read_series(folder)
    assert _values(series) == [30, 10, 20]  # img1, img2, img10
    assert [str(w.message).split("; ")[1] for w in caught] == ["frames ordered by file name"]
    content = _single_frames(tmp_path / "c", [10, 20, 30], instances=[None, None, None],
                             content_times=["090000", "085959", "090001"])
    with pytest.warns(UserWarning, match=r"3 of 3 files lack InstanceNumber .*ContentDate\+ContentTime"):
        assert _values(read_series(content)) == [20, 10, 30]


def test_complete_instance_numbers_decide_without_a_warning(tmp_path):
    folder = _single_frames(tmp_path / "s", [10, 20, 30], instances=[3, 1, 2], times=["120001", "120002", "120003"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        series = read_series(folder)
    assert _values(series) == [20, 30, 10] and series.frame_order == "InstanceNumber"


def test_the_fallback_order_is_recorded_in_the_summary(tiny_checkpoint, tmp_path):
    folder = _single_frames(tmp_path / "in" / "s", [10, 20, 30, 40], instances=[1, None, 3, 4],
                            times=["120000", "120001", "120002", "120003"], size=64)
    with pytest.warns(UserWarning, match="lack InstanceNumber"):
        assert cli.main(["predict", str(tiny_checkpoint), str(folder), "--out", str(tmp_path / "out")]) == 0
    summary = json.loads((tmp_path / "out" / "s" / "summary.json").read_text())
    assert summary["frame_order"].startswith("AcquisitionDate+AcquisitionTime, then file name")


# ---------------------------------------------------------------------------- pixel / frame budget


def _constant_png(path: Path, width: int, height: int, *, rows: int | None = None) -> Path:
    """An 8-bit grayscale PNG of zeros, written row by row (never the whole image in memory); ``rows``:
    write only that many rows of pixel data (a header that claims more than the file holds)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer, row, idat = zlib.compressobj(9), b"\0" * (width + 1), []
    for _ in range(height if rows is None else rows):
        idat.append(packer.compress(row))
    idat.append(packer.flush())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", b"".join(idat)) + chunk(b"IEND", b""))
    return path


def _refused_without_decoding(path, match, budget=None, peak_mb=30):
    """read_series refuses ``path`` with ``match``; the peak of Python/NumPy allocations stays under
    ``peak_mb`` MB (a decoded 9000x9000 frame alone is 81 MB, as float64 648 MB)."""
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=match):
            read_series(path, *([budget] if budget else []))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < peak_mb * 2**20, f"{peak / 2**20:.0f} MB allocated"


def test_a_9000_square_png_is_refused_from_its_header(tmp_path):
    """Before: a 78 KB PNG of 9000x9000 was decoded (81 MB) and scaled to float64 (648 MB)."""
    png = _constant_png(tmp_path / "big" / "frame0.png", 9000, 9000)
    assert png.stat().st_size < 200_000
    _refused_without_decoding(png.parent, rf"big/frame0.png: 9000x9000 = 81000000 pixels per frame \(width x "
                                          rf"height\) exceeds --max-pixels {DEFAULT_MAX_PIXELS}")


def test_pils_decompression_bomb_refusal_is_one_line_with_the_budget(tmp_path):
    png = _constant_png(tmp_path / "bomb" / "frame0.png", 20000, 20000, rows=1)
    _refused_without_decoding(png.parent, r"bomb/frame0.png: Image size \(400000000 pixels\) exceeds limit .*"
                                          rf"\(--max-pixels {DEFAULT_MAX_PIXELS}\)$")


ASSETS = Path(__file__).resolve().parent / "assets"


@pytest.mark.parametrize("syntax", ["explicit", "jpegls"])
def test_a_dicom_header_claiming_16000_square_is_refused_before_decoding(tmp_path, syntax):
    """The issue's 3 KB JPEG-LS DICOM: ``assets/constant_16000x16000.jls`` is the 2 KB JPEG-LS stream of a
    16000x16000 frame of zeros (``jpeg_ls.encode(np.zeros((16000, 16000), np.uint8))``; encoding it takes
    1.3 GB, decoding it 1.6 GB, which predict did before, and 2 GB more as float64). And an uncompressed
    header claiming 16000x16000 over 8 KB of pixel data."""
    from pydicom import dcmread
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGLSLossless

    ds = dcmread(_dicom(np.zeros((2, 64, 64), np.uint8), tmp_path / "small.dcm"))
    if syntax == "jpegls":
        ds.PixelData = encapsulate([(ASSETS / "constant_16000x16000.jls").read_bytes()])
        ds["PixelData"].VR, ds["PixelData"].is_undefined_length = "OB", True
        ds.file_meta.TransferSyntaxUID = JPEGLSLossless
        ds.NumberOfFrames = 1
    ds.Rows = ds.Columns = 16000
    ds.save_as(tmp_path / "huge.dcm")
    assert (tmp_path / "huge.dcm").stat().st_size < 10_000
    _refused_without_decoding(tmp_path / "huge.dcm", r"huge.dcm: 16000x16000 = 256000000 pixels per frame \(width "
                                                     rf"x height\) exceeds --max-pixels {DEFAULT_MAX_PIXELS}")


def test_frame_counts_are_refused_from_headers(tmp_path):
    """A DICOM declaring 10000 frames, a DICOM series of 65 files, a frame folder of 65 PNGs and a .npy of
    65 frames (before: all read whole), and a .npy header claiming 4x16000x16000 with no data."""
    from pydicom import dcmread

    ds = dcmread(_dicom(np.zeros((2, 8, 8), np.uint8), tmp_path / "two.dcm"))
    ds.NumberOfFrames = 10000
    ds.save_as(tmp_path / "many.dcm")
    _refused_without_decoding(tmp_path / "many.dcm",
                              rf"many.dcm: 10000 frames exceed --max-frames {DEFAULT_MAX_FRAMES}")
    series = tmp_path / "dicoms"
    series.mkdir()
    for index in range(65):
        _dicom(np.zeros((1, 8, 8), np.uint8), series / f"i{index}.dcm", multiframe=False, instance=index + 1)
    _refused_without_decoding(series, r"dicoms: 65 frames exceed --max-frames 64")
    frames = tmp_path / "frames"
    frames.mkdir()
    for index in range(65):
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(frames / f"f{index}.png")
    _refused_without_decoding(frames, r"frames: 65 frames exceed --max-frames 64")
    np.save(tmp_path / "long.npy", np.zeros((65, 8, 8), np.uint8))
    _refused_without_decoding(tmp_path / "long.npy", r"long.npy: 65 frames exceed --max-frames 64")
    assert read_series(tmp_path / "long.npy", Budget(max_frames=65)).frames.shape == (65, 8, 8)
    header = np.lib.format
    with open(tmp_path / "claims.npy", "wb") as handle:
        header.write_array_header_1_0(handle, {"descr": "<f8", "fortran_order": False, "shape": (4, 16000, 16000)})
        handle.write(b"\0" * 64)
    _refused_without_decoding(tmp_path / "claims.npy", r"claims.npy: 16000x16000 = 256000000 pixels per frame")
    assert read_series(frames, Budget(max_pixels=64, max_frames=65)).frames.shape == (65, 8, 8)
    with pytest.raises(ValueError, match=r"f0.png: 8x8 = 64 pixels per frame \(width x height\) exceeds "
                                         r"--max-pixels 63"):
        read_series(frames, Budget(max_pixels=63, max_frames=65))


def test_budget_flags_on_the_command_line(tiny_checkpoint, tmp_path, capsys):
    """Over budget: a failed series (one line naming file and sizes, the batch goes on, exit 1); the
    flags raise the budget; a budget < 1 or above PIL's decompression-bomb limit is refused (exit 2)."""
    inputs = tmp_path / "in"
    rng = np.random.default_rng(0)
    np.save(_mkdir(inputs) / "long.npy", rng.integers(0, 256, (65, 64, 64), dtype=np.uint8))
    np.save(inputs / "ok.npy", rng.integers(0, 256, (3, 64, 64), dtype=np.uint8))
    _constant_png(inputs / "big" / "frame0.png", 3000, 3000)
    predict = ["predict", str(tiny_checkpoint), str(inputs), "--out"]
    assert cli.main([*predict, str(tmp_path / "a")]) == 1
    err = capsys.readouterr().err
    assert "2 series failed" in err
    assert f"{inputs / 'long.npy'}: 65 frames exceed --max-frames 64" in err
    assert f"{inputs / 'big' / 'frame0.png'}: 3000x3000 = 9000000 pixels per frame (width x height) exceeds " \
           "--max-pixels 4194304" in err
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["ok"]
    assert cli.main([*predict, str(tmp_path / "b"), "--max-frames", "65", "--max-pixels", "100"]) == 1
    err = capsys.readouterr().err
    assert "3 series failed" in err and "64x64 = 4096 pixels per frame (width x height) exceeds --max-pixels 100" in err
    assert cli.main(["predict", str(tiny_checkpoint), str(inputs / "long.npy"), "--out", str(tmp_path / "c"),
                     "--max-frames", "65"]) == 0
    for flags, message in ((["--max-pixels", "0"], "--max-pixels 0 --max-frames 64: both must be >= 1"),
                           (["--max-pixels", str(10**9)], "--max-pixels 1000000000 exceeds PIL's decompression-bomb")):
        assert cli.main([*predict, str(tmp_path / "d"), *flags]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True)
    return path
