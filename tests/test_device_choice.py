"""Devices said out loud (issue 26 §2): train.device=cuda fails at once with the reason, auto falls back
to the CPU but warns where nvidia-smi says a GPU is there, and a run prints and logs its device, world
size, backend and precision. The GPU-less machine here is simulated with monkeypatch (torch.cuda,
torch.version.cuda, shutil.which, CUDA_VISIBLE_DEVICES)."""
from __future__ import annotations

import glob
import shutil
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from test_trainer import fake_data, tiny_cfg  # noqa: F401 - fake_data is a fixture

from dias_dist import cli, dist, trainer
from dias_dist.config import load_config

ROOT = Path(__file__).resolve().parents[1]
TOO_OLD = ("The NVIDIA driver on your system is too old (found version 12080). Please update your GPU driver by\n"
           "downloading and installing a new version from the URL: http://www.nvidia.com/Download/index.aspx")


@pytest.fixture
def cuda_build(monkeypatch):
    """A CUDA 13.0 build of torch that finds no usable GPU; ``init_error`` is what torch.cuda.init raises."""
    state = SimpleNamespace(init_error="No CUDA GPUs are available", driver=0, smi="/usr/bin/nvidia-smi")

    def init():
        raise RuntimeError(state.init_error)

    def driver():
        if not state.driver:
            raise RuntimeError("libcuda.so.1: cannot open shared object file")
        return state.driver

    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "init", init)
    monkeypatch.setattr(torch._C, "_cuda_getDriverVersion", driver, raising=False)
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: state.smi if name == "nvidia-smi" else None)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    return state


def _cuda_error() -> str:
    with pytest.raises(ValueError) as err:
        dist.init("auto", "cuda")
    message = str(err.value)
    assert "\n" not in message and message.startswith("train.device=cuda but CUDA is not usable: ")
    return message


def test_cuda_on_a_cpu_build_of_torch_names_the_build(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    message = _cuda_error()
    assert f"torch {torch.__version__} is a CPU build (torch.version.cuda is None)" in message


def test_cuda_with_a_driver_too_old_for_this_torch_names_driver_and_minimum(cuda_build):
    cuda_build.init_error, cuda_build.driver = TOO_OLD, 12080
    message = _cuda_error()
    assert "the NVIDIA driver is too old for torch" in message and "(CUDA 13.0, driver >= 580)" in message
    assert "the driver supports CUDA 12.8" in message and "found version 12080" in message


def test_cuda_with_no_visible_device_names_cuda_visible_devices(cuda_build, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert _cuda_error().endswith("no device visible: CUDA_VISIBLE_DEVICES=''")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert _cuda_error().endswith("no device visible: CUDA_VISIBLE_DEVICES='-1'")


def test_cuda_without_driver_or_gpu_says_so(cuda_build):
    cuda_build.smi = None
    cuda_build.init_error = "Found no NVIDIA driver on your system. Please check that you have an NVIDIA GPU"
    message = _cuda_error()
    assert "no NVIDIA GPU or driver on this machine (nvidia-smi is not on PATH): Found no NVIDIA driver" in message


def test_auto_falls_back_to_cpu_and_warns_only_where_nvidia_smi_is(cuda_build):
    cuda_build.init_error, cuda_build.driver = TOO_OLD, 12080
    with pytest.warns(RuntimeWarning, match=r"train.device=auto: nvidia-smi is on PATH but CUDA is not usable, "
                                             r"training on the CPU: the NVIDIA driver is too old"):
        assert dist.init("auto", "auto") == torch.device("cpu")
    cuda_build.smi = None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no nvidia-smi: a CPU machine, the fallback is expected and silent
        assert dist.init("auto", "auto") == torch.device("cpu")


def test_full_configs_ask_for_cuda_and_fail_at_once_on_this_cpu(tmp_path, capsys, monkeypatch):
    """configs/full/*.yaml set train.device=cuda: without a usable GPU `dias train` exits 2 with one line and
    creates nothing (dist.init is the first thing a run does)."""
    for path in sorted(glob.glob(str(ROOT / "configs" / "full" / "*.yaml"))):
        assert load_config(path).train.device == "cuda", path
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    run_dir = tmp_path / "runs"
    code = cli.main(["train", str(ROOT / "configs" / "full" / "fr_unet.yaml"), f"data.shards={tmp_path / 'none'}",
                     f"train.run_dir={run_dir}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("dias train: error: train.device=cuda but CUDA is not usable: ")
    assert not run_dir.exists()


def test_precision_names_the_engines_arithmetic():
    from dias_dist import devices

    assert devices.precision(SimpleNamespace(use_amp=False)) == "fp32"
    assert devices.precision(SimpleNamespace(use_amp=True)) == "bf16 autocast"
    assert devices.precision(SimpleNamespace(use_amp=False, bf16=True)) == "bf16 (DeepSpeed bf16 weights)"


def test_run_prints_and_logs_device_world_size_backend_precision(tmp_path, fake_data, capsys):  # noqa: F811
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = trainer.run(tiny_cfg(tmp_path, "train.max_steps=2", "track.enabled=true", f"track.tracking_uri={uri}",
                                  "track.experiment=devices"))
    out = capsys.readouterr().out.splitlines()
    facts = dict(line.split(None, 1) for line in out[out.index("[dias] run t") + 1:] if line.startswith("  "))
    assert {k: facts[k] for k in ("device", "world_size", "backend", "precision", "engine")} == {
        "device": "cpu", "world_size": "1", "backend": "none", "precision": "fp32", "engine": "ddp"}, out
    tags = MlflowClient(uri).get_run(result["run_id"]).data.tags
    assert {k: tags[k] for k in ("device", "world_size", "backend", "precision")} == {
        "device": "cpu", "world_size": "1", "backend": "none", "precision": "fp32"}
