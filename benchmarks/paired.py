"""Paired differences over seeds, summarised for the DRIVE tables (issue 24 §3 and §4).

A comparison run at k seeds gives k paired differences d_s = A_s - B_s (same seed, same data). The
summary states their mean, their standard deviation and a two-sided one-sample t-test of mean 0
(df = k - 1). With 3 seeds the test is weak (|t| must exceed 4.30 for p < 0.05), so the tables show it
next to the sign count instead of replacing it.

    paired([0.01, 0.02, 0.03]) -> {"n": 3, "mean": 0.02, "std": 0.01, "t": 3.46..., "p": 0.074...}
"""
from __future__ import annotations

import statistics

from scipy import stats  # scikit-image's own dependency

SIGNIFICANCE = 0.05


def paired(diffs: list[float]) -> dict:
    """Mean, std, t and two-sided p of paired differences; ``t``/``p`` are None below 2 seeds or when the
    differences are equal (std below 1e-12: rounding, not spread)."""
    n = len(diffs)
    if n == 0:
        raise ValueError("paired(): no differences")
    mean = statistics.fmean(diffs)
    std = statistics.stdev(diffs) if n > 1 else None
    if std is None or std < 1e-12:
        return {"n": n, "mean": mean, "std": std, "t": None, "p": None}
    test = stats.ttest_1samp(diffs, 0.0)
    return {"n": n, "mean": mean, "std": std, "t": float(test.statistic), "p": float(test.pvalue)}


def describe(summary: dict) -> str:
    """``+0.0200 ± 0.0100, t(2) = 3.46, p = 0.074`` (or just the mean for one seed)."""
    text = f"{summary['mean']:+.4f}"
    if summary["std"] is not None:
        text += f" ± {summary['std']:.4f}"
    if summary["t"] is not None:
        text += f", t({summary['n'] - 1}) = {summary['t']:.2f}, p = {summary['p']:.3f}"
    return text


def significant(summary: dict) -> bool:
    return summary["p"] is not None and summary["p"] < SIGNIFICANCE
