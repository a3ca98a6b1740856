"""MLflow parent run and end-of-sweep summary (table + plots) for ``dias_dist.sweep``."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

SUMMARY_METRICS = ("val_dsc", "val_auc", "test_dsc", "test_auc", "test_cldice")


def open_parent_run(tracking_uri: str, experiment: str, name: str, exp_dir: Path, spec) -> str:
    """Create (or, when resuming, reuse) the sweep's MLflow parent run; return its id.

    The id is kept in ``<exp_dir>/parent_run_id`` so a restarted sweep keeps logging under the same parent.
    """
    from dias_dist.run.track import experiment_id, open_store, source_tags

    exp_dir.mkdir(parents=True, exist_ok=True)
    id_file = exp_dir / "parent_run_id"
    client = open_store(tracking_uri)  # re-pointed first if its folder moved since the sweep started
    if id_file.exists():
        run_id = id_file.read_text().strip()
        try:
            client.get_run(run_id)
            return run_id
        except Exception:  # store was wiped: start a new parent
            pass
    exp_id = experiment_id(client, experiment, tracking_uri)  # artifacts next to a SQLite store's db
    run = client.create_run(exp_id, run_name=name, tags={**source_tags(), "dias.sweep": spec.kind})
    for key, value in dataclasses.asdict(spec).items():
        client.log_param(run.info.run_id, f"sweep.{key}", str(value)[:500])
    id_file.write_text(run.info.run_id)
    return run.info.run_id


def _best(history, key: str):
    values = [v for v in history.get(key, []) if v is not None and math.isfinite(v)]
    return max(values) if values else None


def collect_rows(grid) -> tuple[list[dict], list[dict]]:
    """Per-trial summary rows and error rows from a Tune ResultGrid."""
    rows, errors = [], []
    for result in grid:
        params = {k: v for k, v in (result.config or {}).items() if k != "spec"}
        history: dict[str, list] = {}
        df = result.metrics_dataframe
        if df is not None:
            for key in SUMMARY_METRICS:
                if key in df.columns:
                    history[key] = [float(x) for x in df[key].tolist() if x == x]
        row = {**params, "status": "error" if result.error else "ok", "reports": len(history.get("val_dsc", []))}
        for key in SUMMARY_METRICS:
            row[f"best_{key}"] = _best(history, key)
        row["val_dsc_history"] = history.get("val_dsc", [])
        rows.append(row)
        if result.error:
            errors.append({**params, "error": f"{type(result.error).__name__}: {result.error}"[:2000]})
    return rows, errors


def _markdown(rows: list[dict]) -> str:
    from dias_dist.evaluation.tables import markdown_table

    if not rows:
        return "(no trials)\n"
    keys = [k for k in rows[0] if k != "val_dsc_history"]
    fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else ("" if v is None else str(v))  # noqa: E731
    return markdown_table(keys, ([fmt(r.get(k)) for k in keys] for r in rows))


def _plot(rows: list[dict], spec, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(spec.param_space)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    if spec.kind == "rpst":
        for row in rows:
            hist = row["val_dsc_history"]
            label = ", ".join(f"{k.split('.')[-1]}={row.get(k)}" for k in keys)
            ax.plot(range(len(hist)), hist, marker="o", label=label)
        ax.set_xlabel("stage (0 = teacher, r = round r)")
        ax.set_ylabel("validation DSC")
        ax.set_title("RPST: validation DSC over rounds")
        ax.legend(fontsize=8)
    elif len(keys) == 2:
        xs = sorted({r.get(keys[0]) for r in rows}, key=str)
        ys = sorted({r.get(keys[1]) for r in rows}, key=str)
        grid = [[math.nan] * len(xs) for _ in ys]
        for r in rows:
            v = r.get("best_val_dsc")
            grid[ys.index(r.get(keys[1]))][xs.index(r.get(keys[0]))] = math.nan if v is None else v
        im = ax.imshow(grid, origin="lower", cmap="viridis")
        ax.set_xticks(range(len(xs)), [str(x) for x in xs])
        ax.set_yticks(range(len(ys)), [str(y) for y in ys])
        ax.set_xlabel(keys[0])
        ax.set_ylabel(keys[1])
        for j, row in enumerate(grid):
            for i, v in enumerate(row):
                ax.text(i, j, "fail" if math.isnan(v) else f"{v:.3f}", ha="center", va="center", color="w")
        fig.colorbar(im, label="best validation DSC")
        ax.set_title(f"{keys[0].split('.')[-1]} x {keys[1].split('.')[-1]}: best validation DSC")
    else:
        labels = [", ".join(str(r.get(k)) for k in keys) for r in rows]
        ax.bar(range(len(rows)), [r.get("best_val_dsc") or 0 for r in rows])
        ax.set_xticks(range(len(rows)), labels, rotation=45, ha="right", fontsize=7)
        ax.set_ylabel("best validation DSC")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def log_summary(grid, spec, tracking_uri: str, parent_run_id: str, exp_dir: Path) -> dict:
    """Print the sweep table, write it + plot under ``exp_dir``, log both to the MLflow parent run."""
    import json

    from mlflow.tracking import MlflowClient

    rows, errors = collect_rows(grid)
    table = _markdown(rows)
    exp_dir.mkdir(parents=True, exist_ok=True)
    (exp_dir / "summary.md").write_text(table)
    (exp_dir / "summary.json").write_text(json.dumps({"rows": rows, "errors": errors}, indent=1, default=str))
    plot = exp_dir / "summary.png"
    _plot(rows, spec, plot)
    print(table)
    for err in errors:
        print(f"[tune] trial failed: {err}")
    client = MlflowClient(tracking_uri)
    try:
        for f in ("summary.md", "summary.json", "summary.png"):
            client.log_artifact(parent_run_id, str(exp_dir / f))
        finished = [r["best_val_dsc"] for r in rows if r.get("best_val_dsc") is not None]
        if finished:
            client.log_metric(parent_run_id, "best_val_dsc", max(finished))
        client.log_metric(parent_run_id, "num_failed_trials", len(errors))
        client.set_terminated(parent_run_id, "FAILED" if errors and len(errors) == len(rows) else "FINISHED")
    except Exception as err:  # tracking down: the files on disk still hold everything
        print(f"[tune] warning: could not log the summary to MLflow ({err}); see {exp_dir}")
    return {"rows": rows, "errors": errors, "parent_run_id": parent_run_id, "dir": str(exp_dir)}
