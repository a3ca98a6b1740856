"""`dias report` over repeats: runs differing only in seed / fold become one setting (mean ± std over runs),
and a paired Wilcoxon test over the same test images says whether a setting differs from the best beyond noise.
Runs are made directly in a temporary sqlite MLflow store (no training)."""
import csv
import math

import numpy as np
import pytest

from dias_dist import cli
from dias_dist.metrics import METRIC_NAMES

mlflow = pytest.importorskip("mlflow")

KEYS = [f"s{i:05d}" for i in range(12)]


def _log_run(client, experiment_id, tmp_path, name, per_image_dsc, params):
    """A finished run with test_<m> means and an eval/test/metrics.csv of per-image rows."""
    run_id = client.create_run(experiment_id, run_name=name).info.run_id
    client.log_param(run_id, "model.name", "unet")
    client.log_param(run_id, "method.name", "supervised")
    client.log_param(run_id, "train.run_name", name)  # bookkeeping: never a setting
    for key, value in params.items():
        client.log_param(run_id, key, value)
    folder = tmp_path / name / "test"
    folder.mkdir(parents=True)
    with open(folder / "metrics.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, ["key", "id", *METRIC_NAMES])
        writer.writeheader()
        for i, (key, dsc) in enumerate(zip(KEYS, per_image_dsc)):
            writer.writerow({"key": key, "id": i, **{m: 0.5 for m in METRIC_NAMES}, "dsc": dsc})
    client.log_artifact(run_id, str(folder), "eval")
    for metric in METRIC_NAMES:
        client.log_metric(run_id, f"test_{metric}", float(np.mean(per_image_dsc)) if metric == "dsc" else 0.5)
        client.log_metric(run_id, f"test_{metric}_std", 0.01)
    client.set_terminated(run_id, "FINISHED")
    return run_id


@pytest.fixture
def store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment("repeats", artifact_location=(tmp_path / "art").as_uri())
    return uri, client, experiment_id


def test_report_groups_seeds_and_folds_and_tests_differences_over_images(store, tmp_path, capsys):
    uri, client, experiment_id = store
    rng = np.random.default_rng(0)
    base = rng.uniform(0.6, 0.8, len(KEYS))  # how hard each image is: shared by all settings (paired)
    # setting A (lr 0.001): 3 seeds; B (lr 0.01): clearly worse on every image; C (lr 0.002): A + noise of
    # both signs; D (lr 0.005): 2 folds, the same images
    for seed in (1, 2, 3):
        _log_run(client, experiment_id, tmp_path, f"a-seed{seed}", base + 0.01 * seed,
                 {"optim.lr": "0.001", "train.seed": str(seed)})
        _log_run(client, experiment_id, tmp_path, f"b-seed{seed}", base - 0.1 + 0.01 * seed,
                 {"optim.lr": "0.01", "train.seed": str(seed)})
        _log_run(client, experiment_id, tmp_path, f"c-seed{seed}", base + 0.02 + rng.normal(0, 0.02, len(KEYS)),
                 {"optim.lr": "0.002", "train.seed": str(seed)})
    for fold in (0, 1):
        _log_run(client, experiment_id, tmp_path, f"d-fold{fold}", base - 0.05 + 0.01 * fold,
                 {"optim.lr": "0.005", "train.seed": "1", "data.fold": str(fold)})

    out = tmp_path / "report"
    assert cli.main(["report", "repeats", "--tracking-uri", uri, "--out", str(out), "--no-log"]) == 0
    printed = capsys.readouterr().out
    assert "Settings over repeats" in printed and "beyond noise" in printed

    settings = list(csv.DictReader(open(out / "report_settings.csv")))
    assert len(settings) == 4  # 11 runs, 4 settings: seeds and folds are repeats
    by_lr = {s["settings"]: s for s in settings}
    a, b, c, d = (by_lr[f"optim.lr={lr}"] for lr in ("0.001", "0.01", "0.002", "0.005"))
    assert [a["n"], b["n"], c["n"], d["n"]] == ["3", "3", "3", "2"]
    # mean and sample std over the runs' test means
    means_a = [float(np.mean(base + 0.01 * s)) for s in (1, 2, 3)]
    assert float(a["dsc"]) == pytest.approx(np.mean(means_a))
    assert float(a["dsc_std"]) == pytest.approx(np.std(means_a, ddof=1))
    assert "train.seed" not in a["settings"] and "data.fold" not in d["settings"]

    best = settings[0]
    assert best["beyond_noise"] == "best" and best["settings"] in ("optim.lr=0.001", "optim.lr=0.002")
    # B is worse on all 12 images: the smallest two-sided p of 12 pairs, 2/4096
    assert b["beyond_noise"] == "yes" and float(b["p"]) == pytest.approx(2 / 4096) and b["images"] == "12"
    assert d["beyond_noise"] == "yes"
    # A vs C (or C vs A): differences of both signs, no verdict of a difference
    other = c if best is a else a
    assert other["beyond_noise"] == "no" and float(other["p"]) > 0.05

    # the same p from scipy directly: the report does not hand-write the test
    from scipy.stats import wilcoxon

    per_d = np.mean([base - 0.05 + 0.01 * f for f in (0, 1)], axis=0)
    per_best = {}
    for row in client.search_runs([experiment_id]):
        if row.data.params["optim.lr"] == best["settings"].partition("=")[2]:
            path = client.download_artifacts(row.info.run_id, "eval/test/metrics.csv", str(tmp_path / row.info.run_id))
            per_best[row.info.run_id] = [float(r["dsc"]) for r in csv.DictReader(open(path))]
    per_best = np.mean(list(per_best.values()), axis=0)
    assert float(d["p"]) == pytest.approx(wilcoxon(per_best, per_d).pvalue)


def test_report_runs_without_per_image_table_get_no_test_and_bad_alpha_is_one_line(store, tmp_path, capsys):
    uri, client, experiment_id = store
    for name, lr, dsc in (("x", "0.1", 0.7), ("y", "0.2", 0.6)):
        run_id = client.create_run(experiment_id, run_name=name).info.run_id
        client.log_param(run_id, "model.name", "unet")
        client.log_param(run_id, "optim.lr", lr)
        for metric in METRIC_NAMES:
            client.log_metric(run_id, f"test_{metric}", dsc)
        client.set_terminated(run_id, "FINISHED")
    out = tmp_path / "report"
    assert cli.main(["report", "repeats", "--tracking-uri", uri, "--out", str(out), "--no-log"]) == 0
    rows = list(csv.DictReader(open(out / "report_settings.csv")))
    assert [r["beyond_noise"] for r in rows] == ["best", "-"] and rows[1]["images"] == "0"
    assert math.isnan(float(rows[0]["dsc_std"]))  # one run: no spread over repeats
    capsys.readouterr()
    assert cli.main(["report", "repeats", "--tracking-uri", uri, "--out", str(out), "--no-log", "--alpha", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--alpha must be in (0, 1), got 2.0" in err[0]
