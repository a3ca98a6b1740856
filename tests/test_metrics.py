"""Metrics against hand-computed cases (docs/REFERENCE.md §5), empty masks, fragments, exact AUC."""
import itertools

import numpy as np
import pytest

from dias_dist import metrics


def _brute_force_auc(gt, prob):
    """P(score_pos > score_neg) + 0.5 P(tie) over all positive/negative pairs."""
    pos = prob[gt == 1]
    neg = prob[gt == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_confusion_and_ratios_hand_computed():
    gt = np.array([[1, 1, 0, 0],
                   [1, 0, 0, 0],
                   [0, 0, 0, 1]], dtype=np.uint8)
    prob = np.array([[0.9, 0.2, 0.7, 0.0],
                     [0.6, 0.1, 0.0, 0.0],
                     [0.0, 0.0, 0.5, 0.49]], dtype=np.float32)
    # binary at 0.5: (0,0) TP, (0,1) FN, (0,2) FP, (1,0) TP, (2,2) FP, (2,3) FN  -> TP2 FP2 FN2 TN6
    assert metrics.confusion_counts(prob >= 0.5, gt.astype(bool)) == (2, 2, 2, 6)
    m = metrics.image_metrics(prob, gt)
    assert m["dsc"] == pytest.approx(4 / 8)
    assert m["acc"] == pytest.approx(8 / 12)
    assert m["sen"] == pytest.approx(2 / 4)
    assert m["spe"] == pytest.approx(6 / 8)
    assert m["iou"] == pytest.approx(2 / 6)
    assert m["auc"] == pytest.approx(_brute_force_auc(gt.ravel(), prob.ravel()))
    # components (8-conn): pred {(0,0),(1,0)}, {(0,2)}, {(2,2)} = 3; gt {(0,0),(0,1),(1,0)}, {(2,3)} = 2
    assert m["vc"] == pytest.approx((3 + 1) / (2 + 1))
    assert set(m) == set(metrics.METRIC_NAMES)


def test_auc_sklearn_doc_example_and_ties():
    assert metrics.roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)
    assert metrics.roc_auc(np.array([0, 1]), np.array([0.5, 0.5])) == pytest.approx(0.5)
    assert metrics.roc_auc(np.array([1, 0, 0]), np.array([0.3, 0.3, 0.1])) == pytest.approx(0.75)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_matches_brute_force_with_many_ties(seed):
    rng = np.random.default_rng(seed)
    gt = (rng.random(300) < 0.3).astype(np.uint8)
    prob = np.round(rng.random(300) * 0.6 + 0.4 * gt, 1).astype(np.float32)  # coarse: many ties
    assert metrics.roc_auc(gt, prob) == pytest.approx(_brute_force_auc(gt, prob), abs=1e-12)


def test_auc_reference_special_cases():
    assert metrics.roc_auc(np.zeros(5), np.linspace(0, 1, 5)) == 1.0  # gt all background
    assert metrics.roc_auc(np.array([0, 1, 0]), np.zeros(3)) == 1.0  # prediction all zero
    assert metrics.roc_auc(np.ones(4), np.linspace(0, 1, 4)) == 1.0  # one class only
    # an inverted prediction is 0, not clamped
    assert metrics.roc_auc(np.array([0, 1]), np.array([0.9, 0.1])) == 0.0


def test_both_masks_empty_is_perfect_and_never_nan():
    m = metrics.image_metrics(np.zeros((6, 6), np.float32), np.zeros((6, 6), np.uint8))
    assert m == {"dsc": 1.0, "acc": 1.0, "sen": 1.0, "spe": 1.0, "iou": 1.0, "auc": 1.0, "cldice": 1.0, "vc": 1.0}


def test_empty_prediction_with_vessel():
    gt = np.zeros((6, 6), np.uint8)
    gt[2, 1:5] = 1
    gt[5, 5] = 1
    m = metrics.image_metrics(np.full((6, 6), 0.2, np.float32), gt)
    assert not any(np.isnan(v) for v in m.values())
    assert m["dsc"] == 0.0 and m["sen"] == 0.0 and m["iou"] == 0.0 and m["cldice"] == 0.0
    assert m["spe"] == 1.0
    assert m["acc"] == pytest.approx(31 / 36)
    assert m["vc"] == pytest.approx(1 / 3)  # 0 + 1 over 2 + 1
    assert m["auc"] == pytest.approx(0.5)  # constant non-zero score: every pair ties


def test_prediction_on_empty_ground_truth():
    prob = np.zeros((5, 5), np.float32)
    prob[1:3, 1:3] = 0.9
    m = metrics.image_metrics(prob, np.zeros((5, 5), np.uint8))
    assert m["dsc"] == 0.0 and m["iou"] == 0.0 and m["cldice"] == 0.0
    assert m["sen"] == 1.0  # nothing to miss
    assert m["spe"] == pytest.approx(21 / 25)
    assert m["vc"] == pytest.approx(2.0)  # (1 + 1) / (0 + 1)
    assert m["auc"] == 1.0  # reference rule: gt all background


def test_two_fragments_of_one_vessel():
    """A 1-px vessel of length 10, predicted with a 2-pixel gap: two fragments."""
    gt = np.zeros((5, 14), np.uint8)
    gt[2, 2:12] = 1
    prob = gt.astype(np.float32) * 0.9
    prob[2, 6:8] = 0.1
    m = metrics.image_metrics(prob, gt)
    assert metrics.count_components(prob >= 0.5) == 2
    assert m["vc"] == pytest.approx(3 / 2)
    # skeleton of a 1-px line is the line: Tprec = 8/8, Tsens = 8/10
    assert m["cldice"] == pytest.approx(2 * 1.0 * 0.8 / 1.8)
    assert m["dsc"] == pytest.approx(16 / 18)
    assert m["sen"] == pytest.approx(0.8)
    assert m["iou"] == pytest.approx(0.8)


def test_cldice_thick_vessel_uses_skeletons():
    """A 3-px thick bar vs a prediction covering only its centre row: clDice near 1, Dice 1/2."""
    gt = np.zeros((9, 20), bool)
    gt[3:6, 2:18] = True
    pred = np.zeros_like(gt)
    pred[4, 2:18] = True
    skel_gt = metrics.skeletonize(gt)
    # Zhang-Suen keeps 14 centre-row pixels (cols 2..15) and one corner-bound pixel at (3, 16)
    assert np.count_nonzero(skel_gt) == 15 and np.count_nonzero(skel_gt[4, 2:16]) == 14 and skel_gt[3, 16]
    # Tprec = |skel(pred) & gt| / |skel(pred)| = 16/16; Tsens = |skel(gt) & pred| / 15 = 14/15
    assert metrics.cldice(pred, gt) == pytest.approx(2 * (14 / 15) / (1 + 14 / 15))
    tp, fp, fn, _ = metrics.confusion_counts(pred, gt)
    assert 2 * tp / (2 * tp + fp + fn) == pytest.approx(32 / 64)


def test_vc_eight_connectivity_counts_diagonals_as_one():
    gt = np.zeros((4, 4), bool)
    gt[0, 0] = gt[1, 1] = gt[2, 2] = True
    pred = np.zeros((4, 4), bool)
    pred[0, 0] = pred[2, 2] = True
    assert metrics.count_components(gt) == 1
    assert metrics.vascular_connectivity(pred, gt) == pytest.approx(3 / 2)


def test_dti_eight_connected_hysteresis_grows_in_every_direction():
    prob = np.zeros((7, 7), np.float32)
    prob[3, 3] = 0.8  # strong seed
    prob[2, 2] = prob[1, 1] = 0.4  # weak, diagonal and above/left of the seed (a forward raster pass misses it)
    prob[4, 3] = prob[5, 3] = 0.35  # weak, below
    prob[6, 6] = 0.45  # weak island, not connected to a seed
    prob[0, 6] = 0.6  # isolated strong pixel
    out = metrics.dual_threshold(prob, high=0.5, low=0.3)
    expected = np.zeros((7, 7), bool)
    expected[[3, 2, 1, 4, 5, 0], [3, 2, 1, 3, 3, 6]] = True
    np.testing.assert_array_equal(out, expected)
    m_dti = metrics.image_metrics(prob, expected.astype(np.uint8), dti=True)
    assert m_dti["dsc"] == 1.0
    m_plain = metrics.image_metrics(prob, expected.astype(np.uint8), dti=False)
    assert m_plain["dsc"] < 1.0


def test_bad_inputs_are_value_errors():
    with pytest.raises(ValueError, match="same shape"):
        metrics.image_metrics(np.zeros((4, 4)), np.zeros((4, 5)))
    with pytest.raises(ValueError, match=r"\{0, 1\}"):
        metrics.image_metrics(np.zeros((4, 4)), np.full((4, 4), 255, np.uint8))
    with pytest.raises(ValueError, match="DTI thresholds"):
        metrics.dual_threshold(np.zeros((3, 3)), high=0.3, low=0.5)
