"""`dias score` reads every valid mask or probability file as what it is, and refuses the ambiguous ones."""
import numpy as np
import pytest
from PIL import Image

from dias_dist import cli
from dias_dist.evaluation.score import read_label, read_probability, score_folders


def _label(size=24):
    label = np.zeros((size, size), np.uint8)
    label[size // 2, 2:-2] = 1
    label[3:-3, size // 3] = 1
    return label


def _folders(tmp_path):
    pred_dir, label_dir = tmp_path / "pred", tmp_path / "labels"
    pred_dir.mkdir(), label_dir.mkdir()
    return pred_dir, label_dir


def test_a_perfect_01_png_prediction_scores_one(tmp_path, capsys):
    pred_dir, label_dir = _folders(tmp_path)
    Image.fromarray(_label()).save(pred_dir / "a.png")  # the label itself, 0/1, as prediction
    Image.fromarray(_label() * 255).save(label_dir / "a.png")
    assert cli.main(["score", str(pred_dir), str(label_dir)]) == 0
    assert "| mean±std | 1.0000±0.0000 |" in capsys.readouterr().out
    Image.fromarray(_label() * 255).save(pred_dir / "a.png")  # 0/255 is a 0-255 probability of 0 and 1
    assert score_folders(pred_dir, label_dir)[0]["dsc"] == pytest.approx(1.0)


def test_png_values_that_fit_no_rule_are_errors_and_pred_scale_overrides(tmp_path):
    class_ids = _label() * 2
    class_ids[0, 0] = 1
    Image.fromarray(class_ids).save(tmp_path / "ids.png")
    with pytest.raises(ValueError, match=r"ids.png: values \[0, 1, 2\] are neither a 0/1 mask.*--pred-scale"):
        read_probability(tmp_path / "ids.png")
    assert read_probability(tmp_path / "ids.png", pred_scale=2).max() == 1.0
    Image.fromarray((_label() * 200).astype(np.uint16)).save(tmp_path / "small16.png")
    with pytest.raises(ValueError, match="small16.png: 16-bit PNG holding only values up to 200"):
        read_probability(tmp_path / "small16.png")
    np.testing.assert_allclose(read_probability(tmp_path / "small16.png", pred_scale=200), _label())
    with pytest.raises(ValueError, match="small16.png: --pred-scale 100 must be > 0 and at least the largest value 200"):
        read_probability(tmp_path / "small16.png", pred_scale=100)


def test_nnunet_npz_probabilities_class_one_channel(tmp_path):
    pred_dir, label_dir = _folders(tmp_path)
    vessel = np.clip(_label() * 0.8 + 0.1, 0, 1).astype(np.float32)
    np.savez(pred_dir / "a.npz", probabilities=np.stack([1 - vessel, vessel])[:, None])  # (C, 1, H, W)
    np.savez(pred_dir / "b.npz", probabilities=np.stack([1 - vessel, vessel]))  # (C, H, W)
    for name in ("a", "b"):
        Image.fromarray(_label()).save(label_dir / f"{name}.png")
    np.testing.assert_array_equal(read_probability(pred_dir / "a.npz"), vessel)
    assert [row["dsc"] for row in score_folders(pred_dir, label_dir)] == [pytest.approx(1.0)] * 2
    np.savez(tmp_path / "other.npz", softmax=vessel)
    with pytest.raises(ValueError, match="other.npz: no 'probabilities' array \\(keys: softmax\\)"):
        read_probability(tmp_path / "other.npz")


def test_class_id_labels_are_an_error_not_all_background(tmp_path, capsys):
    pred_dir, label_dir = _folders(tmp_path)
    ids = _label() * 2
    ids[1, 1:4] = 1
    Image.fromarray(ids).save(label_dir / "a.png")
    np.save(pred_dir / "a.npy", (ids > 0).astype(np.float32))
    assert cli.main(["score", str(pred_dir), str(label_dir)]) == 2
    assert "a.png: label values [0, 1, 2] all lie below --label-threshold 100" in capsys.readouterr().err
    assert cli.main(["score", str(pred_dir), str(label_dir), "--label-threshold", "1"]) == 0
    assert "| mean±std | 1.0000±0.0000 |" in capsys.readouterr().out


def test_all_zero_label_warns(tmp_path):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "empty.png")
    with pytest.warns(UserWarning, match="empty.png: label has no vessel pixel"):
        assert not read_label(tmp_path / "empty.png").any()


def test_nan_in_a_prediction_is_named(tmp_path):
    prob = np.full((6, 6), 0.5, np.float32)
    prob[0, :3] = np.nan
    np.save(tmp_path / "nan.npy", prob)
    with pytest.raises(ValueError, match=r"nan.npy: 3 of 36 probabilities are NaN"):
        read_probability(tmp_path / "nan.npy")
