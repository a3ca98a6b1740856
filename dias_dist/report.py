"""``dias report [EXPERIMENT ...] [--filter F]``: the paper's comparison table (Tables II-IV) from finished MLflow runs.

Runs: the FINISHED runs that logged ``test_dsc`` in the named experiments (e.g. ``dias-supervised``,
``dias-weak``), narrowed by ``--filter``, an MLflow search expression such as
``"params.data.target = 'scribble_rdfa'"`` or ``"tags.study = 'weak'"`` (without an experiment the
filter searches every experiment except the reports' own). Each run becomes one row: run name,
model (param ``model.name``), method (param ``method.name``), the settings that tell the rows
apart (every parameter logged by all rows whose value is not the same in all of them, e.g.
``model.params.frames=first``), parameters in millions (tag ``num_params``) and the 8 test metrics
as mean±std (metrics ``test_<m>`` / ``test_<m>_std``). The best value of each column is marked
(bold in Markdown, listed in the CSV's ``best`` column): the maximum for all metrics except VC,
where the paper marks the LOWEST value as best (VC↓ in its tables; a VC below 1 would mean fewer
fragments than the ground truth, which the paper's convention does not single out). Ties are all
marked. Rows are sorted by ``--metric`` (best first).

Outputs in ``--out`` (default ``runs/reports/<experiments>``): ``report.md``, ``report.csv``,
``report_<metric>.png`` (bar chart, ±std error bars) and, when the runs include RPST stages (tags
``rpst.stage`` = teacher / round1 / round2 ... and ``rpst.num_labeled``), ``rpst_curve.png`` +
``rpst_curve.csv`` (test DSC over stage, one line per number of labelled sequences, the paper's
Fig. 9). Everything is logged as the artifacts of one report run in the experiment
``dias-reports`` (``--report-experiment``), tagged ``dias.report=true`` with the experiments and
filter it read, so the compared experiments hold only training runs.

Repeats: runs that differ only in ``train.seed`` or ``data.fold`` are one setting in a second table (appended to
``report.md``, ``report_settings.csv``): mean ± std over the runs per metric, and a paired Wilcoxon
signed-rank test of each setting against the best over the same test images (their per-image
``eval/test/metrics.csv``), which says whether a difference is beyond noise at ``--alpha``
(``dias_dist/report_stats.py``).
"""
from __future__ import annotations

import argparse
import hashlib
import math
import os
import re
from pathlib import Path

from dias_dist import report_stats
from dias_dist.evaluation.tables import format_mean_std, markdown_table, write_csv
from dias_dist.metrics import LOWER_IS_BETTER, METRIC_NAMES, METRIC_TITLES

REPORT_TAG = "dias.report"
REPORT_EXPERIMENT = "dias-reports"
# parameters that differ between any two runs without making them different experiments
NOT_SETTINGS = ("train.run_name", "train.run_dir", "train.resume", "train.progress", "train.log_every_steps")


def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI``, else ``sqlite:///<abs>/runs/mlflow.db`` (the trainer's default store)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path('runs/mlflow.db').resolve()}"


def store_fault(err: Exception) -> str:
    """The cause of an MLflow store failure in one short clause (the root cause of a refused or
    timed-out connection when MLflow's message holds one)."""
    text = " ".join(str(err).split())
    cause = re.search(r"(\[Errno -?\d+\][^\"')]*|Read timed out[^\"')]*|timed out)", text)
    return (cause.group(1).strip() if cause else text[:300]) + f" [{type(err).__name__}]"


def search_finished(client, experiment_ids: list[str], filter_string: str = "") -> list:
    """Every FINISHED run of ``experiment_ids`` matching MLflow search expression ``filter_string``."""
    query = "attributes.status = 'FINISHED'" + (f" and {filter_string}" if filter_string else "")
    runs, token = [], None
    while True:
        try:
            page = client.search_runs(experiment_ids, filter_string=query, max_results=1000, page_token=token)
        except Exception as err:  # noqa: BLE001 — MLflow raises its own exception types for a bad filter
            if not filter_string:
                raise
            raise ValueError(f"--filter {filter_string!r} is not an MLflow search expression "
                             f"({str(err).splitlines()[0][:300]}); example: \"params.data.target = 'scribble_rdfa'\"") from None
        runs.extend(page)
        token = page.token
        if not token:
            break
    return runs


def collect_rows(runs: list) -> tuple[list[dict], list[dict]]:
    """(table rows, RPST points) from finished runs (report runs and runs without test metrics skipped)."""
    rows, rpst_points = [], []
    for run in runs:
        tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
        if tags.get(REPORT_TAG) == "true" or "test_dsc" not in metrics:
            continue
        num_params = tags.get("num_params", params.get("num_params"))
        row = {
            "run_id": run.info.run_id,
            "run_name": run.info.run_name or run.info.run_id[:8],
            "model": params.get("model.name", ""),
            "method": params.get("method.name", ""),
            "params_m": int(num_params) / 1e6 if num_params not in (None, "") else math.nan,
            "parent_run_id": tags.get("mlflow.parentRunId", ""),
            "params": dict(params),
        }
        for name in METRIC_NAMES:
            row[name] = metrics.get(f"test_{name}", math.nan)
            row[f"{name}_std"] = metrics.get(f"test_{name}_std", math.nan)
        rows.append(row)
        if "rpst.stage" in tags and "rpst.num_labeled" in tags:
            rpst_points.append({"stage": tags["rpst.stage"], "num_labeled": tags["rpst.num_labeled"],
                                "variant": rpst_variant(tags), "test_dsc": metrics["test_dsc"],
                                "run_id": run.info.run_id})
    add_settings(rows)
    return rows, rpst_points


def add_settings(rows: list[dict]) -> None:
    """``row["settings"]``: ``key=value`` of every parameter that all rows logged but not with one value
    (model and method names have columns of their own)."""
    if len(rows) < 2:
        for row in rows:
            row["settings"] = ""
        return
    common = set.intersection(*(set(row["params"]) for row in rows)) - {"model.name", "method.name"}
    differing = sorted(k for k in common if k not in NOT_SETTINGS and len({row["params"][k] for row in rows}) > 1)
    for row in rows:
        row["settings"] = " ".join(f"{key}={row['params'][key]}" for key in differing)


def mark_best(rows: list[dict]) -> None:
    """Add ``row["best"]`` = list of metric names where the row holds the column's best (ties all marked)."""
    for row in rows:
        row["best"] = []
    for name in METRIC_NAMES:
        values = [row[name] for row in rows if not math.isnan(row[name])]
        if not values:
            continue
        best = min(values) if name in LOWER_IS_BETTER else max(values)
        for row in rows:
            if row[name] == best:
                row["best"].append(name)


def sort_rows(rows: list[dict], metric: str) -> list[dict]:
    """Best-first by ``metric`` (ascending for VC); runs without the metric last."""
    sign = 1.0 if metric in LOWER_IS_BETTER else -1.0
    return sorted(rows, key=lambda r: (math.isnan(r[metric]), sign * r[metric] if not math.isnan(r[metric]) else 0.0))


def report_markdown(rows: list[dict], title: str, metric: str) -> str:
    """The paper-style table: run, model, method, settings, Params/M, DSC ... VC (best in bold)."""
    header = ["Run", "Model", "Method", "Settings", "Params / M"] + [
        METRIC_TITLES[n] + ("↓" if n in LOWER_IS_BETTER else "↑") for n in METRIC_NAMES]
    body = []
    for row in rows:
        cells = [row["run_name"], row["model"], row["method"], row["settings"].replace(" ", "<br>") or "-",
                 "-" if math.isnan(row["params_m"]) else f"{row['params_m']:.2f}"]
        for name in METRIC_NAMES:
            digits = 2 if name == "vc" else 4
            text = format_mean_std(row[name], row[f"{name}_std"], digits)
            cells.append(f"**{text}**" if name in row["best"] else text)
        body.append(cells)
    heading = f"# {title}: test metrics of {len(rows)} finished runs (sorted by {METRIC_TITLES[metric]}; best in bold)\n\n"
    return heading + markdown_table(header, body)


def stage_order(stage: str) -> tuple[int, str]:
    """teacher -> 0, roundN (and pseudoN) -> N as ``rpst.stage_round``, anything else after (alphabetically)."""
    from dias_dist.semi.rpst import stage_round  # late: the report needs no torch unless it has RPST runs

    try:
        return stage_round(stage), stage
    except ValueError:
        return 10**6, stage


def plot_bars(rows: list[dict], metric: str, path: Path, title: str = "") -> None:
    """Bar chart of ``metric`` mean with ±std error bars, one bar per run, in table order."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(rows) + 2), 4))
    names = [row["run_name"] for row in rows]
    means = [row[metric] for row in rows]
    stds = [0.0 if math.isnan(row[f"{metric}_std"]) else row[f"{metric}_std"] for row in rows]
    colours = ["tab:orange" if metric in row["best"] else "tab:blue" for row in rows]
    bars = ax.bar(range(len(rows)), means, yerr=stds, capsize=3, color=colours)
    ax.bar_label(bars, fmt="%.2f" if metric == "vc" else "%.3f", fontsize=7, label_type="center", color="white")
    ax.set_xticks(range(len(rows)), names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel(f"test {METRIC_TITLES[metric]} (mean ± std over images)")
    best_word = "lowest" if metric in LOWER_IS_BETTER else "highest"
    ax.set_title(f"{title + chr(10) if title else ''}test {METRIC_TITLES[metric]} by run ({best_word} in orange)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def rpst_variant(tags: dict) -> str:
    """Label of an RPST job's settings that change its curve ("" for the paper's defaults):
    students without strong augmentation or freshly initialised get lines of their own."""
    parts = []
    if tags.get("rpst.strong_augment", "True").lower() in ("false", "0"):
        parts.append("no SDA")
    if tags.get("rpst.student_init", "teacher") != "teacher":
        parts.append(f"init {tags['rpst.student_init']}")
    return ", ".join(parts)


def plot_rpst(points: list[dict], path: Path) -> list[dict]:
    """Fig. 9: test DSC over RPST stage, one line per ``rpst.num_labeled`` (and per variant, see
    ``rpst_variant``); returns the plotted points. Runs without test metrics (pseudo-labelling) are skipped."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = sorted({p["stage"] for p in points}, key=stage_order)
    fig, ax = plt.subplots(figsize=(5, 4))
    ordered = []
    groups = sorted({(p["num_labeled"], p.get("variant", "")) for p in points}, key=lambda g: (len(g[0]), g))
    for num_labeled, variant in groups:
        line = sorted((p for p in points if p["num_labeled"] == num_labeled and p.get("variant", "") == variant),
                      key=lambda p: stage_order(p["stage"]))
        ordered.extend(line)
        ax.plot([stages.index(p["stage"]) for p in line], [p["test_dsc"] for p in line], marker="o",
                label=f"L = {num_labeled}" + (f" ({variant})" if variant else ""))
    ax.set_xticks(range(len(stages)), stages)
    ax.set_xlabel("stage")
    ax.set_ylabel("test DSC")
    ax.set_title("RPST: teacher vs student rounds")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return ordered


def select_runs(client, experiments: list[str], filter_string: str, tracking_uri: str,
                report_experiment: str) -> list:
    """The finished runs of ``experiments`` (all but ``report_experiment`` when none) matching ``filter_string``."""
    if experiments:
        ids = []
        for name in experiments:
            found = client.get_experiment_by_name(name)
            if found is None:
                names = sorted(e.name for e in client.search_experiments())
                raise ValueError(f"no experiment {name!r} in {tracking_uri}; experiments: {', '.join(names) or 'none'}")
            ids.append(found.experiment_id)
    elif filter_string:
        ids = [e.experiment_id for e in client.search_experiments() if e.name != report_experiment]
    else:
        raise ValueError("name an EXPERIMENT (e.g. dias-supervised) or give --filter")
    return search_finished(client, ids, filter_string) if ids else []


def build_report(experiments: str | list[str] = (), *, tracking_uri: str, metric: str = "dsc",
                 filter_string: str = "", out_dir: str | Path | None = None, log_to_mlflow: bool = True,
                 report_experiment: str = REPORT_EXPERIMENT, alpha: float = 0.05) -> dict:
    """Write the report files; returns ``{"rows", "settings", "files", "report_run_id"}`` (``settings``: runs
    that differ only in seed or fold averaged, with the paired test against the best; ``report_stats.py``)."""
    from dias_dist.run.track import experiment_id, open_store

    experiments = [experiments] if isinstance(experiments, str) else list(experiments)
    if metric not in METRIC_NAMES:
        raise ValueError(f"--metric {metric!r} is not a metric; choose from {', '.join(METRIC_NAMES)}")
    if report_experiment in experiments:
        raise ValueError(f"{report_experiment!r} holds report runs, not runs to compare")
    client = open_store(tracking_uri)  # re-pointed first if its folder moved since its runs were logged
    runs = select_runs(client, experiments, filter_string, tracking_uri, report_experiment)
    rows, rpst_points = collect_rows(runs)
    title = " + ".join(experiments) or "all experiments"
    if filter_string:
        title += f" where {filter_string}"
    if not rows:
        raise ValueError(f"{title}: no FINISHED runs with test metrics (test_dsc)")
    mark_best(rows)
    rows = sort_rows(rows, metric)
    settings = report_stats.aggregate(rows, client, metric, alpha, NOT_SETTINGS)

    slug = "+".join(experiments) or "all"
    if filter_string:
        slug += "-" + hashlib.sha1(filter_string.encode()).hexdigest()[:8]
    out = Path(out_dir) if out_dir else Path("runs") / "reports" / re.sub(r"[^\w.+-]+", "_", slug)
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "report.md", out / "report.csv", out / f"report_{metric}.png", out / "report_settings.csv"]
    (out / "report.md").write_text(report_markdown(rows, title, metric)
                                   + report_stats.settings_markdown(settings, metric, alpha))
    write_csv(settings, out / "report_settings.csv", report_stats.settings_columns())
    columns = ["run_name", "model", "method", "settings", "params_m"] + [
        c for n in METRIC_NAMES for c in (n, f"{n}_std")]
    write_csv([{**row, "best": " ".join(row["best"])} for row in rows], out / "report.csv",
              columns + ["best", "run_id", "parent_run_id"])
    plot_bars(rows, metric, out / f"report_{metric}.png", title)
    if rpst_points:
        curve = plot_rpst(rpst_points, out / "rpst_curve.png")
        write_csv(curve, out / "rpst_curve.csv", ["num_labeled", "variant", "stage", "test_dsc", "run_id"])
        files += [out / "rpst_curve.png", out / "rpst_curve.csv"]

    report_run_id = ""
    if log_to_mlflow:
        tags = {REPORT_TAG: "true", "report.metric": metric, "report.experiments": ", ".join(experiments) or "all",
                "report.filter": filter_string or "-", "mlflow.note.content": f"`dias report` of {title}"}
        run = client.create_run(experiment_id(client, report_experiment, tracking_uri),
                                run_name=f"report-{slug}-{metric}", tags=tags)
        report_run_id = run.info.run_id
        client.log_param(report_run_id, "num_runs", len(rows))
        for path in files:
            client.log_artifact(report_run_id, str(path), "report")
        client.set_terminated(report_run_id, "FINISHED")
    return {"rows": rows, "settings": settings, "files": files, "report_run_id": report_run_id}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("experiments", metavar="EXPERIMENT", nargs="*",
                        help="MLflow experiment(s) to compare (e.g. dias-supervised, dias-weak); "
                             "none: every experiment, narrowed by --filter")
    parser.add_argument("--filter", default="", dest="filter_string",
                        help="MLflow search expression, e.g. \"params.data.target = 'scribble_rdfa'\" or "
                             "\"tags.study = 'weak'\"")
    parser.add_argument("--metric", default="dsc", help=f"sort / bar-chart metric: {', '.join(METRIC_NAMES)}")
    parser.add_argument("--out", default=None, help="output folder (default runs/reports/<experiments>)")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow store (default $MLFLOW_TRACKING_URI, else sqlite:///runs/mlflow.db)")
    parser.add_argument("--report-experiment", default=REPORT_EXPERIMENT,
                        help=f"experiment that receives the report run (default {REPORT_EXPERIMENT})")
    parser.add_argument("--alpha", type=float, default=0.05,
                        help="significance level of the paired Wilcoxon test against the best setting (default 0.05)")
    parser.add_argument("--no-log", action="store_true", help="do not log the report to MLflow")


def main(args: argparse.Namespace) -> int:
    """A store that cannot be reached or read (a server that is down, a bad URI) is one ValueError line:
    MLflow's own errors carry the URL and the cause (connection refused, timed out); its HTTP retries
    are few and short (``track.py`` sets MLFLOW_HTTP_REQUEST_MAX_RETRIES / _TIMEOUT unless set)."""
    from mlflow.exceptions import MlflowException

    tracking_uri = args.tracking_uri or default_tracking_uri()
    try:
        result = build_report(args.experiments, tracking_uri=tracking_uri,
                              metric=args.metric, filter_string=args.filter_string, out_dir=args.out,
                              log_to_mlflow=not args.no_log, report_experiment=args.report_experiment,
                              alpha=args.alpha)
    except MlflowException as err:
        raise ValueError(f"MLflow store {tracking_uri} cannot be used ({store_fault(err)})") from None
    print(result["files"][0].read_text(), end="")
    print("wrote " + ", ".join(str(p) for p in result["files"]))
    if result["report_run_id"]:
        print(f"logged as MLflow run {result['report_run_id']} in experiment {args.report_experiment}")
    return 0
