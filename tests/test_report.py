"""`dias report`: runs in a temporary sqlite MLflow store -> table rows, best markers, files, report run."""
import csv

import pytest

from dias_dist import cli
from dias_dist.metrics import METRIC_NAMES

mlflow = pytest.importorskip("mlflow")


def _log_run(client, experiment_id, name, model, values, *, num_params=1_000_000, tags=None, finish=True,
             params=None):
    run = client.create_run(experiment_id, run_name=name, tags={"num_params": str(num_params), **(tags or {})})
    run_id = run.info.run_id
    client.log_param(run_id, "model.name", model)
    client.log_param(run_id, "method.name", "supervised")
    for key, value in (params or {}).items():
        client.log_param(run_id, key, value)
    for metric, (mean, std) in values.items():
        client.log_metric(run_id, f"test_{metric}", mean)
        client.log_metric(run_id, f"test_{metric}_std", std)
    if finish:
        client.set_terminated(run_id, "FINISHED")
    return run_id


def _values(dsc, acc, vc):
    base = {m: (0.5, 0.01) for m in METRIC_NAMES}
    base.update(dsc=(dsc, 0.05), acc=(acc, 0.01), vc=(vc, 9.0))
    return base


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory):
    """One sqlite store per module (creating the schema is the slow part)."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    return uri, mlflow.MlflowClient(tracking_uri=uri), root


@pytest.fixture
def store(mlflow_store, request):
    """A fresh experiment (named after the test) in the shared store."""
    uri, client, root = mlflow_store
    name = request.node.name
    experiment_id = client.create_experiment(name, artifact_location=(root / name).as_uri())
    return uri, client, experiment_id, name


@pytest.mark.slow
def test_report_table_best_markers_files_and_report_run(tmp_path, store, capsys):
    uri, client, experiment_id, experiment = store
    _log_run(client, experiment_id, "unet", "unet", _values(0.77, 0.97, 63.6), num_params=31_040_000)
    _log_run(client, experiment_id, "vss", "vss_net", _values(0.80, 0.96, 53.9), num_params=18_690_000)
    _log_run(client, experiment_id, "frunet", "fr_unet", _values(0.78, 0.97, 70.0), num_params=7_370_000)
    _log_run(client, experiment_id, "crashed", "unet", _values(0.99, 0.99, 1.0), finish=False)  # not FINISHED
    parent = client.create_run(experiment_id, run_name="rpst-parent").info.run_id  # no test metrics
    for num_labeled, dscs in (("10", (0.70, 0.72, 0.73)), ("20", (0.74, 0.75, 0.755))):
        for stage, dsc in zip(("teacher", "round1", "round2"), dscs):
            _log_run(client, experiment_id, f"rpst-{num_labeled}-{stage}", "vss_net", _values(dsc, 0.95, 80.0),
                     tags={"mlflow.parentRunId": parent, "rpst.stage": stage, "rpst.num_labeled": num_labeled})
    # a student without strong augmentation gets a line of its own; pseudo-labelling runs (no test
    # metrics) are not points
    _log_run(client, experiment_id, "rpst-10-round1-nosda", "vss_net", _values(0.71, 0.95, 80.0),
             tags={"mlflow.parentRunId": parent, "rpst.stage": "round1", "rpst.num_labeled": "10",
                   "rpst.strong_augment": "False"})
    pseudo = client.create_run(experiment_id, run_name="rpst-10-pseudo1",
                               tags={"mlflow.parentRunId": parent, "rpst.stage": "pseudo1", "rpst.num_labeled": "10"})
    client.set_terminated(pseudo.info.run_id, "FINISHED")
    client.set_terminated(parent, "FINISHED")

    out = tmp_path / "report"
    assert cli.main(["report", experiment, "--tracking-uri", uri, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "**0.8000±0.0500**" in printed and "logged as MLflow run" in printed

    rows = list(csv.DictReader(open(out / "report.csv")))
    assert len(rows) == 3 + 7  # crashed, parent and pseudo-labelling runs are not rows
    assert [r["run_name"] for r in rows[:3]] == ["vss", "frunet", "unet"]  # sorted by DSC, best first
    by_name = {r["run_name"]: r for r in rows}
    assert "dsc" in by_name["vss"]["best"].split() and "vc" in by_name["vss"]["best"].split()  # VC: lowest
    assert "acc" in by_name["unet"]["best"].split() and "acc" in by_name["frunet"]["best"].split()  # tie: both
    assert "vc" not in by_name["frunet"]["best"].split()
    assert float(by_name["unet"]["params_m"]) == pytest.approx(31.04)
    assert by_name["vss"]["model"] == "vss_net" and float(by_name["vss"]["dsc_std"]) == pytest.approx(0.05)

    markdown = (out / "report.md").read_text()
    assert "| vss | vss_net | supervised | - | 18.69 | **0.8000±0.0500** |" in markdown
    assert "**53.90±9.00**" in markdown and "**70.00" not in markdown
    assert (out / "report_dsc.png").stat().st_size > 1000 and (out / "rpst_curve.png").stat().st_size > 1000
    curve = list(csv.DictReader(open(out / "rpst_curve.csv")))
    assert [(c["num_labeled"], c["stage"]) for c in curve[:3]] == [("10", "teacher"), ("10", "round1"), ("10", "round2")]
    assert (curve[3]["num_labeled"], curve[3]["variant"], curve[3]["stage"]) == ("10", "no SDA", "round1")
    assert len(curve) == 7 and float(curve[6]["test_dsc"]) == pytest.approx(0.755)

    # the report run lives in its own experiment, never among the runs it compares
    assert not client.search_runs([experiment_id], filter_string="tags.`dias.report` = 'true'")
    reports = client.get_experiment_by_name("dias-reports")
    report_runs = client.search_runs([reports.experiment_id],
                                     filter_string=f"tags.`report.experiments` = '{experiment}'")
    assert len(report_runs) == 1 and report_runs[0].info.status == "FINISHED"
    assert report_runs[0].data.params["num_runs"] == "10"
    artifacts = {a.path for a in client.list_artifacts(report_runs[0].info.run_id, "report")}
    assert {"report/report.md", "report/report.csv", "report/report_dsc.png", "report/rpst_curve.png"} <= artifacts

    # a second report (by VC, no logging) does not count the report run as a row
    assert cli.main(["report", experiment, "--tracking-uri", uri, "--out", str(out / "vc"), "--metric", "vc",
                     "--no-log"]) == 0
    rows_vc = list(csv.DictReader(open(out / "vc" / "report.csv")))
    assert len(rows_vc) == 10 and rows_vc[0]["run_name"] == "vss"  # lowest VC first


def test_report_user_errors(store, capsys):
    uri, client, experiment_id, experiment = store
    assert cli.main(["report", "nope", "--tracking-uri", uri]) == 2
    assert "no experiment 'nope'" in capsys.readouterr().err
    assert cli.main(["report", experiment, "--tracking-uri", uri]) == 2
    assert "no FINISHED runs with test metrics" in capsys.readouterr().err
    assert cli.main(["report", experiment, "--tracking-uri", uri, "--metric", "f1"]) == 2
    assert "'f1' is not a metric" in capsys.readouterr().err


def test_report_filter_across_experiments_and_settings_column(tmp_path, mlflow_store):
    """A Table III-style selection: two experiments, narrowed by an MLflow filter; the rows are told
    apart by the parameters whose values differ (model.params.frames), not by shared ones."""
    uri, client, root = mlflow_store
    ids = [client.create_experiment(name, artifact_location=(root / name).as_uri()) for name in ("study-a", "study-b")]
    common = {"data.target": "scribble_rdfa", "optim.lr": "0.001"}
    _log_run(client, ids[0], "all", "vss_net", _values(0.80, 0.9, 1.5), params={**common, "model.params.frames": "all"})
    _log_run(client, ids[1], "first", "vss_net", _values(0.70, 0.9, 1.5),
             params={**common, "model.params.frames": "first"})
    _log_run(client, ids[1], "sale", "vss_net", _values(0.90, 0.9, 1.5),
             params={**common, "data.target": "scribble_sale", "model.params.frames": "all"})

    out = tmp_path / "filtered"
    assert cli.main(["report", "study-a", "study-b", "--tracking-uri", uri, "--out", str(out),
                     "--filter", "params.data.target = 'scribble_rdfa'"]) == 0
    rows = list(csv.DictReader(open(out / "report.csv")))
    assert [(r["run_name"], r["settings"]) for r in rows] == [("all", "model.params.frames=all"),
                                                              ("first", "model.params.frames=first")]
    assert "study-a + study-b where params.data.target = 'scribble_rdfa'" in (out / "report.md").read_text()

    # a filter alone searches every experiment (here: the three runs' two), never the reports' own
    assert cli.main(["report", "--tracking-uri", uri, "--out", str(out / "all"), "--no-log",
                     "--filter", "params.`model.params.frames` = 'all'"]) == 0
    rows = list(csv.DictReader(open(out / "all" / "report.csv")))
    assert [(r["run_name"], r["settings"]) for r in rows] == [("sale", "data.target=scribble_sale"),
                                                              ("all", "data.target=scribble_rdfa")]


def test_report_selection_errors(mlflow_store, capsys):
    uri, client, root = mlflow_store
    assert cli.main(["report", "--tracking-uri", uri]) == 2
    assert "name an EXPERIMENT" in capsys.readouterr().err
    assert cli.main(["report", "--tracking-uri", uri, "--filter", "params.x ==== 1"]) == 2
    assert "is not an MLflow search expression" in capsys.readouterr().err
    assert cli.main(["report", "dias-reports", "--tracking-uri", uri]) == 2
    assert "holds report runs" in capsys.readouterr().err
