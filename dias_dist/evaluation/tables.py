"""Aggregation of per-image metric rows: mean and population std, CSV / Markdown writers, MLflow dict.

A row is a dict with identifying fields (``key``, ``id``, ``name``...) and the 8 metric values
of ``dias_dist.metrics.METRIC_NAMES``. Means and stds are kept at full precision; only the text
tables format them (4 decimals, as the paper).
"""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from dias_dist.metrics import METRIC_NAMES, METRIC_TITLES
from dias_dist.run.atomic import atomic_write


def summarize(rows: Sequence[dict]) -> dict[str, tuple[float, float]]:
    """{metric: (mean, population std)} over per-image rows (np.std, ddof=0, as the reference)."""
    if not rows:
        raise ValueError("no per-image metric rows to summarize (was the split empty or unlabelled?)")
    summary = {}
    for name in METRIC_NAMES:
        missing = [row.get("key", row.get("name", i)) for i, row in enumerate(rows) if name not in row]
        if missing:
            raise ValueError(f"metric {name!r} missing in rows {missing[:5]} (images without labels?)")
        values = np.array([row[name] for row in rows], dtype=np.float64)
        summary[name] = (float(values.mean()), float(values.std()))
    return summary


def flat_metrics(summary: dict[str, tuple[float, float]], prefix: str = "test") -> dict[str, float]:
    """{"dsc": (m, s)} -> {"test_dsc": m, "test_dsc_std": s} (the names the trainer logs to MLflow)."""
    flat = {}
    for name, (mean, std) in summary.items():
        flat[f"{prefix}_{name}"] = mean
        flat[f"{prefix}_{name}_std"] = std
    return flat


def format_mean_std(mean: float, std: float, digits: int = 4) -> str:
    """``0.7700±0.0525``; NaN/missing as ``-``."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f}±{std:.{digits}f}"


def markdown_table(header: Sequence[str], body: Iterable[Sequence[str]]) -> str:
    """A GitHub Markdown table from a header and rows of already formatted cells."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in body]
    return "\n".join(lines) + "\n"


def summary_markdown(summary: dict[str, tuple[float, float]], label: str = "mean±std") -> str:
    """One-row Markdown table in the paper's column order (DSC ... VC)."""
    header = [""] + [METRIC_TITLES[name] for name in METRIC_NAMES]
    body = [[label] + [format_mean_std(*summary[name]) for name in METRIC_NAMES]]
    return markdown_table(header, body)


def _write_atomic(path: Path, text: str) -> None:
    with atomic_write(path) as handle:
        handle.write(text)


def write_csv(rows: Sequence[dict], path: str | Path, columns: Sequence[str] | None = None) -> None:
    """Write dict rows as CSV (columns default: the first row's keys); full float precision."""
    path = Path(path)
    columns = list(columns or (rows[0].keys() if rows else []))
    with atomic_write(path, newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in row.items()})


def write_summary(summary: dict[str, tuple[float, float]], out_dir: str | Path, stem: str = "summary") -> list[Path]:
    """``<stem>.csv`` (metric, mean, std) and ``<stem>.md`` (the mean±std table) in ``out_dir``."""
    out_dir = Path(out_dir)
    csv_path, md_path = out_dir / f"{stem}.csv", out_dir / f"{stem}.md"
    write_csv([{"metric": name, "mean": mean, "std": std} for name, (mean, std) in summary.items()],
              csv_path, ["metric", "mean", "std"])
    _write_atomic(md_path, summary_markdown(summary))
    return [csv_path, md_path]
