"""Training curves as PNGs, drawn by rank 0 at the end of a run from ``metrics.jsonl`` records.

``loss_curve.png``: the loss terms (left) and the learning rate (right, log scale: warm-up and
cosine decay span decades). ``val_curve.png``: the validation metrics in [0, 1] (left) and VC
(right: a ratio of component counts, unbounded, best at 1) so that the bounded metrics stay readable.
"""
from __future__ import annotations

from pathlib import Path

from dias_dist.metrics import METRIC_TITLES


FEW_POINTS = 20  # short runs get a marker at every point: a single logged step is otherwise invisible


def _plot(ax, records: list[dict], key: str, **style) -> None:
    points = [(r["step"], r[key]) for r in records if key in r]
    if len(points) <= FEW_POINTS:
        style.setdefault("marker", ".")
    ax.plot([p[0] for p in points], [p[1] for p in points], **style)


def _step_axis(ax, records: list[dict]) -> None:
    """x from step 0 to the last logged step, integer ticks (also when a short run logged one step)."""
    from matplotlib.ticker import MaxNLocator

    last = max((r["step"] for r in records), default=1)
    ax.set_xlim(0, last + max(1.0, 0.03 * last))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("optimizer step")


def _titles() -> dict[str, str]:
    return {f"val_{name}": title for name, title in METRIC_TITLES.items()}


def plot_curves(records: list[dict], out_dir: Path) -> list[Path]:
    """Write the PNGs that ``records`` have data for into ``out_dir``; return their paths.

    records: ``metrics.jsonl`` objects (``{"kind": "train"|"val"|"test", "step", ...}``).
    """
    from matplotlib.figure import Figure  # no pyplot: no global figure state, no GUI backend

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []

    train = [r for r in records if r["kind"] == "train"]
    losses = sorted({k for r in train for k in r if k.startswith("loss_")})
    if losses:
        has_lr = any("lr" in r for r in train)
        fig = Figure(figsize=(11 if has_lr else 6, 4))
        axes = fig.subplots(1, 2 if has_lr else 1, squeeze=False)
        ax = axes[0][0]
        for key in losses:
            _plot(ax, train, key, label=key.removeprefix("loss_"), linewidth=2 if key == "loss_total" else 1)
        ax.set(ylabel="loss (mean over ranks)", title="Training losses")
        ax.legend(fontsize=8, title="term")
        ax.grid(alpha=0.3)
        if has_lr:
            ax = axes[0][1]
            _plot(ax, train, "lr", color="tab:purple")
            ax.set(ylabel="learning rate", title="Learning rate (warm-up, cosine decay)",
                   yscale="log")
            ax.grid(alpha=0.3, which="both")
        for ax in axes[0]:
            _step_axis(ax, train)
        fig.tight_layout()
        fig.savefig(out_dir / "loss_curve.png", dpi=100)
        written.append(out_dir / "loss_curve.png")

    val = [r for r in records if r["kind"] == "val"]
    keys = sorted({k for r in val for k in r if k.startswith("val_") and not k.endswith("_std")})
    if keys:
        titles = _titles()
        unbounded = [k for k in keys if k == "val_vc"]
        panels = [[k for k in keys if k not in unbounded]] + ([unbounded] if unbounded else [])
        fig = Figure(figsize=(5.5 * len(panels) + 1, 4))
        axes = fig.subplots(1, len(panels), squeeze=False)
        for ax, panel in zip(axes[0], panels):
            for key in panel:
                _plot(ax, val, key, marker=".", label=titles.get(key, key))
            if panel is panels[0]:
                ax.set(ylabel="validation metric (mean over images)", title="Validation metrics (higher is better)",
                       ylim=(-0.02, 1.02))
                ax.legend(fontsize=8, ncol=2)
            else:
                ax.axhline(1.0, color="grey", linestyle="--", linewidth=1, label="ideal")
                ax.set(ylabel="VC", title="Validation VC (closer to 1 is better)")
                ax.legend(fontsize=8)
            ax.grid(alpha=0.3)
            _step_axis(ax, val)
        fig.tight_layout()
        fig.savefig(out_dir / "val_curve.png", dpi=100)
        written.append(out_dir / "val_curve.png")
    return written
