"""Per-image segmentation metrics of the DIAS paper (docs/REFERENCE.md §5), and DTI post-processing.

Every metric is computed on ONE image, from ``prob`` float (H, W) vessel probability in [0, 1] and
``gt`` (H, W) {0, 1} (bool / any int dtype), over all of its pixels, or, when a field-of-view mask
``fov`` (H, W) {0, 1} is given, inside it only (the DRIVE protocol, docs/DECISIONS.md "Field of view"):
the confusion counts, Acc, Spe and AUC count FOV pixels only, and clDice and VC see both maps with
everything outside the FOV set to background. DIAS has no FOV (the whole image counts).
The binary map is ``prob >= threshold`` (0.5), or the DTI map when ``dti=True``. Aggregation over
images (mean and population std) lives in ``dias_dist.evaluation.tables``. Nothing is rounded here.

Empty masks never give NaN. The conventions (a metric whose ratio has an empty denominator):

- DSC = 2TP / (2TP + FP + FN) and IOU = TP / (TP + FP + FN): prediction and ground truth both empty
  -> 1 (perfect agreement); exactly one empty -> 0 (the formula already gives 0).
- Sen = TP / (TP + FN): no vessel in the ground truth -> 1 (no vessel pixel could be missed).
- Spe = TN / (TN + FP): no background in the ground truth -> 1 (no background pixel could be hit).
- Acc = (TP + TN) / N is always defined.
- AUC: the reference rule — ground truth all background or prediction all zero -> 1. We extend the
  same rule to ground truth all vessel (one class only: the ROC curve is undefined; sklearn raises).
- clDice: both masks empty -> 1; exactly one empty -> 0; a zero skeleton/ratio sum -> 0.
- VC = (#components(pred) + 1) / (#components(gt) + 1), 8-connectivity, the +1 being the background
  label as in the reference's ``cv2.connectedComponentsWithStats`` count; always defined. The ideal
  is 1; fragmentation raises it (the paper marks lower as better).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.morphology import skeletonize

#: metric keys in the paper's column order (Tables II-IV)
METRIC_NAMES = ("dsc", "acc", "sen", "spe", "iou", "auc", "cldice", "vc")
#: display names for tables
METRIC_TITLES = {"dsc": "DSC", "acc": "Acc", "sen": "Sen", "spe": "Spe", "iou": "IOU",
                 "auc": "AUC", "cldice": "clDice", "vc": "VC"}
#: metrics where lower is better (VC: fragmentation); every other one is better higher
LOWER_IS_BETTER = frozenset({"vc"})

DTI_HIGH = 0.5  # FR-UNet config `threshold`
DTI_LOW = 0.3  # FR-UNet config `threshold_low`

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def _check_pair(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"{name_a} {a.shape} and {name_b} {b.shape} must be 2-D maps of the same shape")


def binary_gt(gt: np.ndarray) -> np.ndarray:
    """(H, W) ground truth with values in {0, 1} (any dtype) -> bool (H, W); other values are errors."""
    gt = np.asarray(gt)
    if gt.dtype == bool:
        return gt
    if gt.size and (gt.min() < 0 or gt.max() > 1):
        raise ValueError(f"ground truth must hold values in {{0, 1}}, got range [{gt.min()}, {gt.max()}]")
    return gt.astype(bool)


def confusion_counts(pred_bin: np.ndarray, gt: np.ndarray) -> tuple[int, int, int, int]:
    """(TP, FP, FN, TN) over all pixels of bool maps pred_bin (H, W) and gt (H, W)."""
    _check_pair(pred_bin, gt, "prediction", "ground truth")
    pred_bin = pred_bin.astype(bool, copy=False)
    gt = gt.astype(bool, copy=False)
    tp = int(np.count_nonzero(pred_bin & gt))
    num_pred = int(np.count_nonzero(pred_bin))
    num_gt = int(np.count_nonzero(gt))
    fp = num_pred - tp
    fn = num_gt - tp
    tn = pred_bin.size - tp - fp - fn
    return tp, fp, fn, tn


def roc_auc(gt: np.ndarray, prob: np.ndarray) -> float:
    """Exact ROC AUC of scores ``prob`` (any shape, float) for labels ``gt`` (same shape, {0,1}).

    Mann-Whitney form with mid-ranks for tied scores, which equals the trapezoidal ROC area that
    ``sklearn.metrics.roc_auc_score`` computes (ties count one half). Not binned.
    Reference rule: ``gt`` all 0 or ``prob`` all 0 -> 1.0; also ``gt`` all 1 -> 1.0 (see module doc).
    """
    labels = binary_gt(np.asarray(gt)).ravel()
    scores = np.asarray(prob).ravel()
    if not np.issubdtype(scores.dtype, np.floating):
        scores = scores.astype(np.float64)
    if labels.shape != scores.shape:
        raise ValueError(f"roc_auc: gt has {labels.size} values, prob has {scores.size}")
    num_pos = int(np.count_nonzero(labels))
    num_neg = labels.size - num_pos
    if num_pos == 0 or num_neg == 0 or not np.any(scores):
        return 1.0
    # sort in the scores' own dtype (ties are ties in that dtype, as for sklearn on the same array)
    order = np.argsort(scores)
    sorted_scores = scores[order]
    starts_group = np.empty(scores.size, dtype=bool)
    starts_group[0] = True
    np.not_equal(sorted_scores[1:], sorted_scores[:-1], out=starts_group[1:])
    group_starts = np.flatnonzero(starts_group)
    group_sizes = np.diff(np.append(group_starts, scores.size))
    group_of_sorted = np.cumsum(starts_group) - 1
    pos_per_group = np.bincount(group_of_sorted, weights=labels[order], minlength=group_starts.size)
    # 1-based mid-rank of a tie group: (#smaller scores) + (size + 1) / 2
    mid_rank = group_starts + (group_sizes + 1) / 2.0
    rank_sum_pos = float(np.dot(pos_per_group, mid_rank))
    u_statistic = rank_sum_pos - num_pos * (num_pos + 1) / 2.0
    return u_statistic / (num_pos * num_neg)


def cldice(pred_bin: np.ndarray, gt: np.ndarray) -> float:
    """Centreline Dice (Shit et al. 2021) of bool maps (H, W); skeletons by skimage ``skeletonize``.

    Tprec = |skel(pred) ∩ gt| / |skel(pred)|, Tsens = |skel(gt) ∩ pred| / |skel(gt)|,
    clDice = 2·Tprec·Tsens / (Tprec + Tsens). Empty-mask rules in the module docstring.
    """
    _check_pair(pred_bin, gt, "prediction", "ground truth")
    pred_bin = pred_bin.astype(bool, copy=False)
    gt = gt.astype(bool, copy=False)
    pred_any, gt_any = bool(pred_bin.any()), bool(gt.any())
    if not pred_any and not gt_any:
        return 1.0
    if not pred_any or not gt_any:
        return 0.0
    skel_pred = skeletonize(pred_bin)
    skel_gt = skeletonize(gt)
    len_pred = np.count_nonzero(skel_pred)
    len_gt = np.count_nonzero(skel_gt)
    topo_precision = np.count_nonzero(skel_pred & gt) / len_pred if len_pred else 0.0
    topo_sensitivity = np.count_nonzero(skel_gt & pred_bin) / len_gt if len_gt else 0.0
    if topo_precision + topo_sensitivity == 0:
        return 0.0
    return float(2.0 * topo_precision * topo_sensitivity / (topo_precision + topo_sensitivity))


def count_components(mask: np.ndarray) -> int:
    """Number of 8-connected foreground components of a bool map (H, W) (background not counted)."""
    _, num = ndimage.label(mask.astype(bool, copy=False), structure=_EIGHT_CONNECTED)
    return int(num)


def vascular_connectivity(pred_bin: np.ndarray, gt: np.ndarray) -> float:
    """VC = (#components(pred) + 1) / (#components(gt) + 1) with 8-connectivity (bool maps (H, W))."""
    _check_pair(pred_bin, gt, "prediction", "ground truth")
    return (count_components(pred_bin) + 1) / (count_components(gt) + 1)


def dual_threshold(prob: np.ndarray, high: float = DTI_HIGH, low: float = DTI_LOW) -> np.ndarray:
    """DTI (FR-UNet) done to its intent: 8-connected hysteresis on prob (H, W) -> bool (H, W).

    Keeps every 8-connected component of {prob >= low} that holds a pixel with prob >= high
    (the fixed point of growing {prob >= high} into 8-adjacent {prob >= low} pixels).
    """
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"DTI thresholds need 0 <= low <= high <= 1, got low={low}, high={high}")
    prob = np.asarray(prob)
    candidates = prob >= low
    labels, num = ndimage.label(candidates, structure=_EIGHT_CONNECTED)
    if num == 0:
        return candidates
    seeded = np.zeros(num + 1, dtype=bool)
    seeded[labels[prob >= high]] = True  # {prob >= high} lies inside the candidates: label 0 is never seeded
    return seeded[labels]


def binarize(prob: np.ndarray, threshold: float = 0.5, dti: bool = False) -> np.ndarray:
    """Binary vessel map bool (H, W): ``prob >= threshold``, or DTI (high=threshold, low=0.3)."""
    if dti:
        return dual_threshold(prob, high=threshold, low=DTI_LOW)
    return np.asarray(prob) >= threshold


def image_metrics(prob: np.ndarray, gt: np.ndarray, threshold: float = 0.5, dti: bool = False, *,
                  pred_bin: np.ndarray | None = None, fov: np.ndarray | None = None) -> dict[str, float]:
    """The 8 metrics of one image: prob float (H, W) in [0, 1], gt (H, W) in {0, 1} -> {name: float}.

    AUC uses the soft ``prob``; all other metrics the binary map (threshold or DTI). ``pred_bin``:
    that map when the caller already has it (it must be ``binarize(prob, threshold, dti)``).
    ``fov``: (H, W) {0, 1} field of view; the metrics then count its pixels only (module docstring).
    """
    prob = np.asarray(prob)
    gt_bool = binary_gt(gt)
    _check_pair(prob, gt_bool, "probability map", "ground truth")
    if pred_bin is None:
        pred_bin = binarize(prob, threshold, dti)
    else:
        _check_pair(np.asarray(pred_bin), gt_bool, "binary map", "ground truth")
    pred_bin = np.asarray(pred_bin, dtype=bool)
    if fov is not None:
        inside = binary_gt(fov)
        _check_pair(inside, gt_bool, "field of view", "ground truth")
        if not inside.any():
            raise ValueError("field-of-view mask is empty: no pixel to score")
        pred_bin, gt_bool = pred_bin & inside, gt_bool & inside
        tp, fp, fn, _ = confusion_counts(pred_bin, gt_bool)
        tn = int(np.count_nonzero(inside)) - tp - fp - fn
        auc = roc_auc(gt_bool[inside], prob[inside])
    else:
        tp, fp, fn, tn = confusion_counts(pred_bin, gt_bool)
        auc = roc_auc(gt_bool, prob)
    overlap_denominator = 2 * tp + fp + fn
    return {
        "dsc": 2 * tp / overlap_denominator if overlap_denominator else 1.0,
        "acc": (tp + tn) / (tp + fp + fn + tn),
        "sen": tp / (tp + fn) if tp + fn else 1.0,
        "spe": tn / (tn + fp) if tn + fp else 1.0,
        "iou": tp / (tp + fp + fn) if tp + fp + fn else 1.0,
        "auc": auc,
        "cldice": cldice(pred_bin, gt_bool),
        "vc": vascular_connectivity(pred_bin, gt_bool),
    }
