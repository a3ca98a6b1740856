"""What a training run tells the person watching it, on rank 0 only (stdout; progress and warnings
stay on stderr, so a failing run's stderr holds just its error):

- ``start_block``: before the first step, where the run goes (run folder, MLflow run and the address
  of its page) and what it runs on (device, world size, backend, precision, engine, data, steps);
- ``validation_line``: one line per validation with the step and every validation metric;
- ``Progress`` (``dias_dist.progress``) prints plain periodic lines instead of a bar when stderr is no
  terminal (a log file, ``kubectl logs``), so logs hold no carriage-return updates.
"""
from __future__ import annotations

import sys
from pathlib import Path

from tqdm import tqdm

from dias_dist.run.track import sqlite_path

MLFLOW_UI_PORT = 5000  # ``mlflow ui``'s default


def run_page(uri: str, experiment_id: str, run_id: str) -> str:
    """Where a person opens the run: the server's page for an http(s) store, else the ``mlflow ui``
    command that serves the store followed by the page it will have."""
    page = f"#/experiments/{experiment_id}/runs/{run_id}"
    if uri.startswith(("http://", "https://")):
        return f"{uri.rstrip('/')}/{page}"
    store = sqlite_path(uri)
    serve = f"mlflow ui --backend-store-uri {uri}" if store is None else f"mlflow ui --backend-store-uri sqlite:///{store}"
    return f"{serve}  then http://127.0.0.1:{MLFLOW_UI_PORT}/{page}"


def start_block(facts: dict[str, str]) -> str:
    """The start block: a title line, then one aligned ``key value`` line per fact (in the given order)."""
    width = max(len(key) for key in facts)
    return "\n".join(f"  {key:<{width}} {value}" for key, value in facts.items())


def announce_start(run_name: str, facts: dict[str, str], *, enabled: bool) -> None:
    """Print ``[dias] run NAME`` and the start block (rank 0 only: ``enabled``)."""
    if enabled:
        print(f"[dias] run {run_name}\n{start_block(facts)}", file=sys.stdout, flush=True)


def validation_line(step: int, total_steps: int, epoch: int, values: dict[str, float], select_metric: str,
                    improved: bool) -> str:
    """``[dias] step S/T epoch E validation: dsc 0.7123 auc 0.9512 ... (best dsc 0.7123, new best)``.

    values: the logged validation values (``val_<metric>`` and ``best_val_score``)."""
    metrics = " ".join(f"{key[4:]} {value:.4f}" for key, value in values.items() if key.startswith("val_"))
    best = f"best {select_metric} {values['best_val_score']:.4f}" + (", new best" if improved else "")
    return f"[dias] step {step}/{total_steps} epoch {epoch} validation: {metrics} ({best})"


def say(line: str, *, enabled: bool) -> None:
    """One line on stdout (rank 0 only), written so that a progress bar on the terminal stays intact."""
    if not enabled:
        return
    tqdm.write(line, file=sys.stdout)
    sys.stdout.flush()


def absolute(location: str | Path) -> str:
    """A local path made absolute (a URL or ``pipe:`` command as it is): paths that go into MLflow and
    checkpoints must still mean the same file when read from another directory."""
    text = str(location)
    if not text or "://" in text or text.startswith("pipe:"):
        return text
    return str(Path(text).expanduser().absolute())
