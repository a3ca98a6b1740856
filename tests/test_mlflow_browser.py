"""The MLflow comparison a person sees: two tiny demo runs (all frames vs the first frame), the real
``mlflow ui`` on 127.0.0.1, its run-comparison page in headless Chromium (Debian's ``chromium`` and
``chromium-driver``, driven by Selenium). The page must show both runs with their differing
``model.params.frames`` and their ``test_dsc``; ``dias report`` must tell the same two rows apart.

The screenshot is kept as a test artifact: ``$DIAS_TEST_ARTIFACTS`` (default ``test-artifacts/`` in
the repository) / ``mlflow_compare.png``; ``docs/mlflow-compare.png`` is one such screenshot.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from dias_dist import trainer
from dias_dist.config import load_config
from dias_dist.report import build_report

pytestmark = pytest.mark.slow  # multi-process / cluster / browser / benchmark: not in the fast tier

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="headless browser test needs Debian's `chromium` and `chromium-driver` packages "
           "(scripts/test.sh installs them in CI; elsewhere: apt-get install -y chromium chromium-driver)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _train_two_runs(shards: Path, root: Path, uri: str) -> dict[str, str]:
    """The README demo's two configs, a few steps each: {frames option: run id}."""
    run_ids = {}
    for config, frames in (("vss_net_cpu", "all"), ("vss_net_first_cpu", "first")):
        cfg = load_config(ROOT / "configs" / "demo" / f"{config}.yaml", [
            f"data.shards={shards}", "data.num_workers=0", "train.epochs=1", "train.steps_per_epoch=2",
            "train.batch_size=4", "train.progress=false", f"train.run_dir={root / 'runs'}", "eval.batch_size=32",
            "eval.select_from_epoch=0", f"track.tracking_uri={uri}"])
        run_ids[frames] = trainer.run(cfg)["run_id"]
    return run_ids


class MlflowUI:
    """``mlflow ui`` on a free port of 127.0.0.1, in its own process group (stopped as a whole)."""

    def __init__(self, uri: str, log: Path):
        self.port = _free_port()
        self.log = log
        env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
        mlflow = Path(sys.executable).with_name("mlflow")
        self.process = subprocess.Popen(
            [str(mlflow), "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", "1"], stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow ui exited with {self.process.returncode}: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        raise TimeoutError(f"mlflow ui did not answer within {timeout_s:.0f} s: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def _browser():

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1400,1250", "--hide-scrollbars"):
        options.add_argument(flag)
    # the packaged driver: Selenium must not try to download one
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


METRIC_LINK = "//a[@title='Plot chart'][normalize-space()='{}']"  # a metric's name in the metrics grid


def _cell_top(element) -> str:
    """The ``top`` offset of the grid cell holding ``element``: the same for a metric's name and values."""
    return element.find_element(By.XPATH, "./ancestor-or-self::div[contains(@style, 'top:')][1]").value_of_css_property("top")


def _metric_values(driver, metric: str) -> list[str]:
    """The values of ``metric`` left to right (= run order) from MLflow's virtualised metrics grid: the
    value grid (the scrollable one; the name grid follows it) is scrolled until the name is in view,
    then the value cells at the name's row offset are read."""
    grids = driver.find_elements(By.CSS_SELECTOR, "div.ReactVirtualized__Grid")
    values_grid = next(g for g in grids if not g.find_elements(By.XPATH, ".//a[@title='Plot chart']"))
    scroll = "arguments[0].scrollTop = arguments[1];"
    for offset in range(0, 20_000, 135):  # the name grid renders only the rows near its scroll position
        names = driver.find_elements(By.XPATH, METRIC_LINK.format(metric))
        if names:
            break
        driver.execute_script(scroll, values_grid, offset)
        time.sleep(0.1)
    else:
        raise AssertionError(f"metric {metric} is not on the page")
    top = _cell_top(names[0])
    # For the screenshot: the metric's row second from the top. MLflow's name column follows the value
    # grid one scroll event late (a wheel turn in a real browser sends many small ones), so a last
    # 1-pixel step brings it level.
    target = max(0.0, float(top[:-2]) - 45)
    for position in (target, target + 1):
        driver.execute_script(scroll, values_grid, position)
        time.sleep(0.3)
    cells = [c for c in values_grid.find_elements(By.XPATH, ".//div[contains(@style, 'top:')]")
             if c.value_of_css_property("top") == top]
    return [c.text.strip() for c in sorted(cells, key=lambda c: float(c.value_of_css_property("left")[:-2]))]


def _close_assistant(driver) -> None:
    for close in driver.find_elements(By.XPATH, "//button[@aria-label='Close']"):  # the assistant side panel
        close.click()


def _compare_page(driver, url: str, experiment_id: str, run_names: list[str], shot: Path) -> dict:
    """The README's clicks from step 2 on (the experiment's run table, in MLflow's "Model training"
    view): tick the runs, Compare; Parameters "Show diff only", fold Visualizations. Screenshot; return
    what the page shows: ``{"runs": [run id per column], "frames": [...], "test_dsc": [...]}``."""
    wait = WebDriverWait(driver, 60)
    driver.get(f"{url}/#/experiments/{experiment_id}/runs?workflowType=machine_learning")
    for name in run_names:
        row = wait.until(lambda d: d.find_elements(By.XPATH, f"//div[@role='row'][.//a[normalize-space()='{name}']]"))[0]
        row.find_element(By.XPATH, ".//input[@type='checkbox']").click()
    _close_assistant(driver)
    wait.until(lambda d: d.find_elements(By.XPATH, "//button[normalize-space()='Compare']"))[0].click()

    frames_row = "//tr[th[normalize-space()='model.params.frames']]/td"
    wait.until(lambda d: d.find_elements(By.XPATH, frames_row))
    _close_assistant(driver)
    driver.find_element(By.XPATH, "//button[@aria-label='Parameters - Show diff only']").click()
    wait.until(lambda d: not d.find_elements(By.XPATH, "//tr[th[normalize-space()='train.seed']]"))
    driver.find_element(By.XPATH, "//div[@role='button'][normalize-space()='Visualizations']").click()
    shown = {
        "runs": [c.text.strip() for c in driver.find_elements(By.XPATH, "//tr[th[normalize-space()='Run ID:']]/th")][1:],
        "frames": [c.text.strip() for c in driver.find_elements(By.XPATH, frames_row)],
        "test_dsc": _metric_values(driver, "test_dsc"),
    }
    driver.save_screenshot(str(shot))
    return shown


@needs_chromium
def test_mlflow_compare_page_in_chromium(tiny_shards, tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    client.search_experiments()  # creates the store's tables before two processes use it
    ui = MlflowUI(uri, tmp_path / "mlflow_ui.log")  # boots while the runs train
    driver = None
    try:
        started = time.monotonic()
        run_ids = _train_two_runs(tiny_shards, tmp_path, uri)
        trained = time.monotonic()
        runs = {frames: client.get_run(run_id) for frames, run_id in run_ids.items()}
        experiment_id = runs["all"].info.experiment_id
        assert client.get_experiment(experiment_id).name == "dias-demo"
        # the all-frames run logs its constructor default, so the two runs differ in a parameter
        assert {f: run.data.params["model.params.frames"] for f, run in runs.items()} == {"all": "all", "first": "first"}

        artifacts = Path(os.environ.get("DIAS_TEST_ARTIFACTS", ROOT / "test-artifacts"))
        artifacts.mkdir(parents=True, exist_ok=True)
        shot = artifacts / "mlflow_compare.png"
        ui.wait()
        ready = time.monotonic()
        driver = _browser()
        page = _compare_page(driver, ui.url, experiment_id, ["demo-vss_net", "demo-vss_net-first"], shot)
    finally:
        if driver is not None:
            driver.quit()
        ui.stop()

    assert sorted(page["runs"]) == sorted(run_ids.values()), page
    for column, run_id in enumerate(page["runs"]):
        run = client.get_run(run_id)
        assert page["frames"][column] == run.data.params["model.params.frames"], page
        # the page rounds to 3 decimals
        assert float(page["test_dsc"][column]) == pytest.approx(run.data.metrics["test_dsc"], abs=6e-4), page
    assert sorted(page["frames"]) == ["all", "first"]
    assert shot.stat().st_size > 20_000
    print(f"screenshot: {shot}; training {trained - started:.0f} s, then waiting for mlflow ui "
          f"{ready - trained:.0f} s, browser {time.monotonic() - ready:.0f} s")

    # `dias report` tells the same two rows apart by the setting that differs
    result = build_report("dias-demo", tracking_uri=uri, out_dir=tmp_path / "report")
    settings = {row["run_name"]: row["settings"] for row in result["rows"]}
    assert settings == {"demo-vss_net": "model.params.frames=all", "demo-vss_net-first": "model.params.frames=first"}
    assert client.get_run(result["report_run_id"]).info.experiment_id != experiment_id
