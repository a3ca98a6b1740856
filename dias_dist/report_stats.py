"""Repeats in ``dias report``: runs that differ only in seed or fold become one setting, and settings are
compared image by image with a paired test (Wilcoxon signed-rank, ``scipy.stats.wilcoxon``).

A setting is a group of report rows (``dias_dist.report.collect_rows``) whose model, method and logged
parameters agree except for the keys in ``REPEAT_KEYS`` (the seed, the fold) and the run's own
bookkeeping (``report.NOT_SETTINGS``, ``track.*``). Per setting:

- ``n``: runs in it; ``<metric>`` / ``<metric>_std``: mean and sample std (ddof=1; NaN for one run) over
  its runs of each run's test mean (``test_<metric>``): the spread between repeats, not between images.
- per image: the test split's per-image rows each run logged (artifact ``eval/test/metrics.csv``, written
  by ``evaluation.evaluate``), averaged over the setting's runs image by image (only images every run has).
- the paired test against the best setting (by ``--metric``): over the images both settings scored,
  ``p`` of the two-sided Wilcoxon signed-rank test of the per-image differences; ``beyond noise`` when
  ``p < alpha``. Identical values everywhere give p = 1; fewer than ``MIN_PAIRED`` images, no test.
"""
from __future__ import annotations

import csv
import math
import tempfile
from pathlib import Path

import numpy as np

from dias_dist.evaluation.tables import format_mean_std, markdown_table
from dias_dist.metrics import LOWER_IS_BETTER, METRIC_NAMES, METRIC_TITLES

REPEAT_KEYS = ("train.seed", "data.fold")  # parameters that make a repeat, not another setting
IMAGE_METRICS_ARTIFACT = "eval/test/metrics.csv"
MIN_PAIRED = 5  # fewer paired images: no test (the smallest two-sided p of 5 pairs is already 0.0625)


def setting_key(row: dict, ignore: tuple[str, ...]) -> tuple:
    """What a row's setting is: model, method and every parameter but the ``ignore`` and repeat keys."""
    params = {k: v for k, v in row["params"].items()
              if k not in ignore and k not in REPEAT_KEYS and not k.startswith("track.")}
    return row["model"], row["method"], tuple(sorted(params.items()))


def group_rows(rows: list[dict], ignore: tuple[str, ...] = ()) -> list[list[dict]]:
    """Rows grouped by ``setting_key`` (first-seen order of the groups and of the rows in each)."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(setting_key(row, ignore), []).append(row)
    return list(groups.values())


def image_metrics(client, run_id: str, artifact: str = IMAGE_METRICS_ARTIFACT) -> dict[str, dict[str, float]] | None:
    """{image key: {metric: value}} from a run's per-image table, or None when the run logged none."""
    with tempfile.TemporaryDirectory(prefix="dias-report-") as tmp:
        try:
            path = client.download_artifacts(run_id, artifact, tmp)
        except Exception:  # noqa: BLE001 — MLflow raises its own types for a missing artifact
            return None
        with open(path, newline="") as handle:
            table = list(csv.DictReader(handle))
    out = {}
    for row in table:
        try:
            out[row["key"]] = {name: float(row[name]) for name in METRIC_NAMES}
        except (KeyError, ValueError):  # an unlabelled split: no metrics per image
            return None
    return out or None


def mean_per_image(tables: list[dict | None]) -> dict[str, dict[str, float]]:
    """Per image and metric, the mean over runs; only images that every run scored ({} if any run has none)."""
    if not tables or any(t is None for t in tables):
        return {}
    keys = sorted(set.intersection(*(set(t) for t in tables)))
    return {key: {m: float(np.mean([t[key][m] for t in tables])) for m in METRIC_NAMES} for key in keys}


def paired_test(a: dict[str, dict], b: dict[str, dict], metric: str) -> tuple[float, int]:
    """(two-sided Wilcoxon signed-rank p, number of paired images) of ``metric`` over the images both
    settings scored; (NaN, n) when n < ``MIN_PAIRED``; p = 1 when every difference is 0."""
    from scipy.stats import wilcoxon

    keys = sorted(set(a) & set(b))
    if len(keys) < MIN_PAIRED:
        return math.nan, len(keys)
    x = np.array([a[k][metric] for k in keys])
    y = np.array([b[k][metric] for k in keys])
    if np.all(x == y):
        return 1.0, len(keys)
    return float(wilcoxon(x, y).pvalue), len(keys)


def aggregate(rows: list[dict], client, metric: str = "dsc", alpha: float = 0.05,
              ignore: tuple[str, ...] = ()) -> list[dict]:
    """One dict per setting, best first by ``metric``: ``label`` (run names), ``n``, ``settings``, per
    metric mean / sample std over the runs, ``images`` (paired with the best), ``p``, ``beyond_noise``
    (``"yes"`` / ``"no"`` / ``"-"`` without a test, ``"best"`` for the reference)."""
    if not 0 < alpha < 1:
        raise ValueError(f"--alpha must be in (0, 1), got {alpha}")
    settings = []
    for group in group_rows(rows, ignore):
        out = {"label": ", ".join(r["run_name"] for r in group), "n": len(group), "model": group[0]["model"],
               "method": group[0]["method"], "run_ids": " ".join(r["run_id"] for r in group),
               "settings": " ".join(p for p in group[0].get("settings", "").split()
                                    if p.partition("=")[0] not in REPEAT_KEYS)}
        for name in METRIC_NAMES:
            values = np.array([r[name] for r in group], dtype=np.float64)
            values = values[~np.isnan(values)]
            out[name] = float(values.mean()) if values.size else math.nan
            out[f"{name}_std"] = float(values.std(ddof=1)) if values.size > 1 else math.nan
        out["per_image"] = mean_per_image([image_metrics(client, r["run_id"]) for r in group])
        settings.append(out)
    sign = 1.0 if metric in LOWER_IS_BETTER else -1.0
    settings.sort(key=lambda s: (math.isnan(s[metric]), sign * s[metric] if not math.isnan(s[metric]) else 0.0))
    best = settings[0]
    for s in settings:
        if s is best:
            s.update(p=math.nan, images=len(s["per_image"]), beyond_noise="best")
            continue
        p, n = paired_test(best["per_image"], s["per_image"], metric)
        s.update(p=p, images=n, beyond_noise="-" if math.isnan(p) else ("yes" if p < alpha else "no"))
    return settings


def settings_markdown(settings: list[dict], metric: str, alpha: float) -> str:
    """The repeats table: one row per setting, mean ± std over its runs, the paired test against the best."""
    title = METRIC_TITLES[metric]
    header = ["Setting", "Runs", "Model", "Method"] + [
        METRIC_TITLES[n] + ("↓" if n in LOWER_IS_BETTER else "↑") for n in METRIC_NAMES] + [
        f"paired images", f"p ({title} vs best)", f"beyond noise (p < {alpha:g})"]
    body = []
    for s in settings:
        names = s["label"].split(", ")
        runs = ", ".join(names[:3]) + (f" +{len(names) - 3} more" if len(names) > 3 else "")
        cells = [(s["settings"].replace(" ", "<br>") or "-") + f"<br>({runs})", str(s["n"]), s["model"], s["method"]]
        cells += [format_mean_std(s[n], s[f"{n}_std"], 2 if n == "vc" else 4) for n in METRIC_NAMES]
        cells += [str(s["images"]), "-" if math.isnan(s["p"]) else f"{s['p']:.3g}", s["beyond_noise"]]
        body.append(cells)
    heading = (f"\n## Settings over repeats (runs that differ only in {' / '.join(REPEAT_KEYS)}): mean ± std over "
               f"runs; Wilcoxon signed-rank test of per-image {title} against the best setting\n\n")
    return heading + markdown_table(header, body)


def settings_columns() -> list[str]:
    """Columns of ``report_settings.csv``."""
    return (["settings", "n", "model", "method"] + [c for n in METRIC_NAMES for c in (n, f"{n}_std")]
            + ["images", "p", "beyond_noise", "label", "run_ids"])
