"""CPU choices made by measurement, not by a table: which ConvGRU arrangement ("batched", "stepped"
or "split", ``dias_dist.models.convgru``) runs a given network fastest at the shapes in use, with and
without autograd, on this machine.

The arrangements compute the same cell with the same parameters (tests/test_convgru.py); which
GEMM shapes run faster depends on the CPU (vector width, AMX, cache sizes), so a fixed table measured
on one CPU is wrong on another. ``choose`` times the whole network (forward, plus backward when
``grad``) under each arrangement at the shape it will see, keeps the fastest, and caches the result
in ``cache_file()`` per CPU model, torch version, thread count, network, shape and candidate set, so each machine
measures once (``dias tune-cpu`` does it ahead of time). ``apply`` makes the choice the process-wide
"auto" arrangement (``convgru.PREFERRED_ARRANGEMENT``); the trainer calls ``tune_network`` on rank 0
and logs what was chosen and the timings, ``dias evaluate`` and ``dias predict`` call
``tune_for_inference`` (no-grad, their tile batch) and print / record the choice.

``DIAS_CPU_CHOICES=table`` turns measuring off (the measured table in ``convgru`` stands: the test
suite uses it, so that its numbers do not depend on a timing); ``DIAS_CACHE_DIR`` moves the cache.
A corrupted cache file is ignored with a warning and rewritten.
"""
from __future__ import annotations

import json
import os
import platform
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from dias_dist.models import input_layout, to_layout
from dias_dist.models.convgru import ARRANGEMENT_CHOICES, PREFERRED_ARRANGEMENT, ConvGRU

CACHE_NAME = "cpu_choices.json"
CHOICE_ENV, CACHE_ENV = "DIAS_CPU_CHOICES", "DIAS_CACHE_DIR"
CANDIDATES = tuple(a for a in ARRANGEMENT_CHOICES if a != "auto")


def cache_file() -> Path:
    """``$DIAS_CACHE_DIR/cpu_choices.json``, else ``$XDG_CACHE_HOME/dias_dist/...``, else ``~/.cache/dias_dist/...``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]) / CACHE_NAME
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "dias_dist" / CACHE_NAME


def cpu_model() -> str:
    """The processor's model name from /proc/cpuinfo, else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_key() -> str:
    """What a measurement holds for: CPU model, torch version and the number of threads."""
    return f"{cpu_model()} | torch {torch.__version__} | {torch.get_num_threads()} threads"


def measuring() -> bool:
    """Whether choices are measured (``DIAS_CPU_CHOICES`` = measure, the default) or taken from the table."""
    value = os.environ.get(CHOICE_ENV, "measure")
    if value not in ("measure", "table"):
        raise ValueError(f"{CHOICE_ENV}={value!r}: use measure or table")
    return value == "measure"


def load_cache(path: Path | None = None) -> dict:
    """The cache's entries; a missing file is empty, an unreadable or malformed one is ignored with a warning."""
    path = path or cache_file()
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or not all(isinstance(v, dict) and v.get("choice") in CANDIDATES
                                                 for v in data.values()):
            raise ValueError("not a mapping of measured choices")
        return data
    except (OSError, ValueError) as err:
        warnings.warn(f"{path}: ignoring the CPU-choice cache ({err}); it is measured again and rewritten",
                      RuntimeWarning, stacklevel=2)
        return {}


def save_cache(entries: dict, path: Path | None = None) -> None:
    """Write ``entries`` atomically (a temporary file renamed into place); a failure is one warning."""
    path = path or cache_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(entries, indent=1, sort_keys=True))
        tmp.replace(path)
    except OSError as err:
        warnings.warn(f"{path}: the CPU-choice cache cannot be written ({err}); choices are measured again next time",
                      RuntimeWarning, stacklevel=2)


def has_convgru(model: nn.Module) -> bool:
    return any(isinstance(module, ConvGRU) for module in model.modules())


def _time_once(model: nn.Module, example: torch.Tensor, grad: bool) -> float:
    start = time.perf_counter()
    if grad:
        model.zero_grad(set_to_none=True)
        model(example).float().sum().backward()
    else:
        with torch.no_grad():
            model(example)
    return time.perf_counter() - start


def measure(model: nn.Module, example: torch.Tensor, grad: bool, repeats: int = 3) -> dict[str, float]:
    """{arrangement: seconds}: the minimum of ``repeats`` interleaved runs of the network under each
    arrangement (after one warm-up run each), forward only or forward + backward. The network's
    parameters, buffers (BatchNorm statistics), gradients and mode are as they were afterwards."""
    with torch.random.fork_rng(devices=[]):  # dropout in the timed runs leaves the caller's RNG as it was
        return _measure(model, example, grad, repeats)


def _measure(model: nn.Module, example: torch.Tensor, grad: bool, repeats: int) -> dict[str, float]:
    saved = ConvGRU.arrangement
    was_training = model.training
    buffers = [buffer.detach().clone() for buffer in model.buffers()]  # BatchNorm statistics move in training mode
    model.train(grad)
    best = {name: float("inf") for name in CANDIDATES}
    try:
        for name in CANDIDATES:  # warm-up: allocator, oneDNN primitive caches
            ConvGRU.arrangement = name
            _time_once(model, example, grad)
        for _ in range(repeats):
            for name in CANDIDATES:
                ConvGRU.arrangement = name
                best[name] = min(best[name], _time_once(model, example, grad))
    finally:
        ConvGRU.arrangement = saved
        model.train(was_training)
        model.zero_grad(set_to_none=True)
        with torch.no_grad():
            for buffer, value in zip(model.buffers(), buffers):
                buffer.copy_(value)
    return best


def choose(model: nn.Module, example: torch.Tensor, grad: bool, *, repeats: int = 3,
           path: Path | None = None) -> dict | None:
    """The fastest arrangement of ``model`` at ``example``'s shape: ``{"choice", "timings_s", "cached",
    "key"}`` from the cache or measured now (and cached); None for a network without a ConvGRU or
    when measuring is off."""
    if not has_convgru(model) or not measuring():
        return None
    key = (f"{machine_key()} | {type(model).__name__} {sum(p.numel() for p in model.parameters())} params | "
           f"{'train' if grad else 'eval'} {tuple(example.shape)} {example.dtype} | {'/'.join(CANDIDATES)}")
    entries = load_cache(path)
    if key in entries:
        return {**entries[key], "cached": True, "key": key}
    timings = measure(model, example, grad, repeats)
    entry = {"choice": min(timings, key=timings.get), "timings_s": timings}
    entries[key] = entry
    save_cache(entries, path)
    return {**entry, "cached": False, "key": key}


def apply(choice: str, grad: bool) -> None:
    """Make ``choice`` the process-wide CPU arrangement of "auto" for ``grad`` (training) or inference."""
    if choice not in CANDIDATES:
        raise ValueError(f"ConvGRU arrangement {choice!r}: choose one of {', '.join(CANDIDATES)}")
    PREFERRED_ARRANGEMENT[("cpu", bool(grad))] = choice


def examples_for(model: nn.Module, *, frames: int, train_batch: int, patch: int, eval_batch: int,
                 tile: int) -> dict[bool, torch.Tensor]:
    """{True: a training micro-batch (train_batch, frames, patch, patch), False: an evaluation batch of
    tiles (eval_batch, frames, tile, tile)}, random, in ``model``'s input layout."""
    generator = torch.Generator().manual_seed(0)  # the caller's RNG is not drawn from
    return {True: _random_input(model, generator, train_batch, frames, patch),
            False: _random_input(model, generator, eval_batch, frames, tile)}


def _random_input(model: nn.Module, generator: torch.Generator, batch: int, frames: int, size: int) -> torch.Tensor:
    """Random (batch, frames, size, size) drawn from ``generator``, in ``model``'s input layout."""
    return to_layout(torch.randn(batch, frames, size, size, generator=generator), input_layout(model))


def tune_network(model: nn.Module, examples: dict[bool, torch.Tensor]) -> dict[str, str]:
    """Choose (``choose``) and ``apply`` the arrangement for each ``{grad: example input}``; returns
    MLflow-ready tags ``{"convgru_train": "stepped (batched 1.20 s, stepped 0.95 s, measured)", ...}``."""
    tags = {}
    for grad, example in examples.items():
        result = choose(model, example, grad)
        if result is None:
            continue
        apply(result["choice"], grad)
        times = ", ".join(f"{name} {seconds:.3g} s" for name, seconds in sorted(result["timings_s"].items()))
        tags[f"convgru_{'train' if grad else 'eval'}"] = (f"{result['choice']} ({times}, "
                                                          f"{'cached' if result['cached'] else 'measured'})")
    return tags


def tune_for_inference(model: nn.Module, device: torch.device, *, frames: int, batch: int, tile: int) -> dict[str, str]:
    """``dias evaluate`` / ``dias predict``: on a CPU, choose and apply the no-grad arrangement for a batch
    of tiles (batch, frames, tile, tile) in ``model``'s layout; ``{}`` on a GPU, for the whole image at
    once (``tile`` 0: its size varies) or when nothing is measured. Returns ``tune_network``'s tags."""
    if device.type != "cpu" or tile <= 0 or not has_convgru(model) or not measuring():
        return {}
    example = _random_input(model, torch.Generator().manual_seed(0), batch, frames, tile)
    return tune_network(model, {False: example})
