"""Run configuration: nested dataclasses are the schema, YAML files hold values only.

``load_config(path, overrides)`` reads a YAML file, applies dotted ``key=value`` overrides
(``optim.lr=3e-4``), and validates everything against the dataclasses below. Unknown keys,
wrong types and missing required values raise ``ValueError`` naming the file, the key and the
valid keys. ``model.params`` and ``method.params`` are free-form dicts passed as keyword
arguments to the registered constructor, whose signature is their schema (checked by
``dias_dist.models.build_model`` / ``dias_dist.methods.build_method``).

Every numeric key has a range (``RANGES``, ``LIST_RANGES``, ``MODEL_PARAM_RANGES`` for the model sizes),
checked by ``from_dict`` wherever a config comes from (a file, overrides, a checkpoint); ``load_config``
also caps the file's size and its values with aliases expanded, and bounds the sizes by host memory
(``check_memory``). ``train.run_name`` is one folder name; ``eval.select_metric`` a metric.
"""
from __future__ import annotations

import dataclasses
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from dias_dist.data import folds, location, timeouts
from dias_dist.run.atomic import atomic_write

if TYPE_CHECKING:
    import torch

MISSING_REQUIRED = "???"  # a YAML value that must be supplied by an override
# The repository's configs/ (dias_dist/configs links to it, so an installed package ships them too).
PACKAGED_CONFIGS = Path(__file__).resolve().parent / "configs"


@dataclass(kw_only=True)
class DataConfig:
    """Where the shards are and how training patches are drawn from them."""

    shards: str = "shards/demo"  # folder written by `dias shard` (holds manifest.json), or its URL: http(s)://, s3://, gs://, file://, pipe:CMD {}
    patch_size_px: int = 64
    patches_per_sequence: int = 64  # K random patches cut from each decoded sequence
    shuffle_buffer: int = 2048  # patches held in the shuffle buffer
    num_workers: int = 2  # loader worker processes per rank
    target: str = "label"  # label | scribble_rdfa | scribble_sale | pseudo (which map supervises)
    num_labeled: int = 0  # >0: use only the first N training sequences (RPST teacher)
    num_folds: int = 0  # K >= 2: K-fold cross-validation over the training sequences (data/folds.py); 0 = none
    fold: int = 0  # with num_folds: train on the other folds, validate on this one (0..K-1)
    fold_groups: str = ""  # JSON {sequence id: patient}: a patient's sequences share a fold ("" = each its own)
    augment: str = "weak"  # weak | none
    on_corrupt: str = "raise"  # raise | skip (a counted skip with a warning)
    verify: bool = True  # sha256 of each shard checked against the manifest at its first use (per process)
    cache_dir: str = ""  # remote shards: keep a local copy here (downloaded on first use); "" = stream them into memory at each use
    read_timeout_s: float = timeouts.DEFAULT.read_timeout_s  # remote shards: an attempt fails after this long without a byte (60)
    download_budget_s: float = timeouts.DEFAULT.budget_s  # remote shards: the most one file may take, retries included (3600)


@dataclass(kw_only=True)
class ModelConfig:
    """A registered model (``dias models`` lists them) and its constructor arguments."""

    name: str = "vss_net"
    params: dict = field(default_factory=dict)


@dataclass(kw_only=True)
class MethodConfig:
    """A registered training method (supervised, pce, em, rloss, ivm, dmpls, sscr) and its arguments."""

    name: str = "supervised"
    params: dict = field(default_factory=dict)


@dataclass(kw_only=True)
class OptimConfig:
    """AdamW + per-iteration cosine schedule with linear warm-up (docs/REFERENCE.md §1)."""

    lr: float = 5e-4
    weight_decay: float = 0.01  # not applied to 1-D parameters and biases
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    warmup_epochs: float = 10.0
    warmup_lr: float = 5e-7
    min_lr: float = 5e-6
    grad_clip: float = 0.0  # 0 = no clipping (the reference does not clip)


@dataclass(kw_only=True)
class TrainConfig:
    """Length of training, batch geometry, precision and run bookkeeping."""

    epochs: int = 100
    steps_per_epoch: int = 312  # optimizer steps per epoch (20,000 patches / 64)
    batch_size: int = 64  # global batch, split evenly across ranks
    grad_accum: int = 1  # micro-batches per optimizer step
    max_steps: int = 0  # >0: stop after this many steps (tests, smoke runs)
    seed: int = 1234
    device: str = "auto"  # auto | cpu | cuda
    amp: bool = True  # bf16 autocast on GPU
    cpu_bf16: bool = False  # bf16 autocast on CPU too: ~1.7x faster on CPUs with AVX512-BF16/AMX, may be slower without
    channels_last: bool = False
    deterministic: bool = False
    log_every_steps: int = 10
    checkpoint_every_steps: int = 0  # 0 = once per epoch
    run_dir: str = "runs"
    run_name: str = ""  # "" = <model>-<method>-<timestamp>
    resume: str = "never"  # never | auto | PATH to a checkpoint
    overwrite: bool = False  # true: an existing run folder of the same name is emptied first (resume must be never)
    progress: bool = True

    def bf16_autocast(self, device: torch.device | str) -> bool:
        """Whether training and evaluation on ``device`` run under bf16 autocast:
        ``amp`` on CUDA, ``cpu_bf16`` on CPU, never elsewhere."""
        kind = device if isinstance(device, str) else device.type
        return bool(self.amp) if kind == "cuda" else bool(self.cpu_bf16) if kind == "cpu" else False


@dataclass(kw_only=True)
class EvalConfig:
    """The paper's sliding-window evaluation protocol (docs/REFERENCE.md §5)."""

    patch_size_px: int = 64
    stride_px: int = 32
    batch_size: int = 64  # tiles per forward pass
    threshold: float = 0.5
    dti: bool = False  # dual-threshold iteration post-processing (FR-UNet)
    val_every_epochs: int = 1
    select_metric: str = "auc"  # best checkpoint by this validation metric
    select_from_epoch: int = 10  # reference: "best" tracked only from epoch 10 on
    test_checkpoint: str = "best"  # best | final
    test_split: str = "test"
    overlays: bool = True
    cpu_bf16: bool = False  # bf16 autocast for evaluation/prediction on CPU even after fp32 training (AVX512-BF16/AMX)
    compile: bool = False  # torch.compile the evaluation/prediction forward: 1.13x on CPU after ~15 s of compiling
    blend: str = "uniform"  # tile overlap: uniform (the paper's average) | gaussian (seam-free; dias predict's default)
    softmax: str = "limited"  # 3-channel heads: limited (softmax over channels 0..1, the reference) | full (all channels)


@dataclass(kw_only=True)
class DistConfig:
    """Process group and engine. Only dias_dist.dist / dias_dist.engine read this."""

    engine: str = "ddp"  # ddp | deepspeed
    backend: str = "auto"  # auto (nccl on GPU, gloo on CPU) | nccl | gloo
    deepspeed_config: str = "configs/deepspeed/zero1.json"
    find_unused_parameters: bool = False
    sync_batchnorm: bool = True  # world size > 1 on GPU: BatchNorm statistics over the global batch


@dataclass(kw_only=True)
class TrackConfig:
    """MLflow tracking (rank 0 only); metrics.jsonl in the run folder is the source of truth."""

    enabled: bool = True
    tracking_uri: str = ""  # "" = $MLFLOW_TRACKING_URI or sqlite:///<run_dir>/mlflow.db
    experiment: str = ""  # "" = dias-<study>: supervised | weak | semi (see dias_dist.run.track)
    parent_run_id: str = ""  # nest this run under a parent (RPST rounds, Tune sweeps)
    tags: dict = field(default_factory=dict)
    register_as: str = ""  # register the logged model under this name in the MLflow model registry
    system_metrics: bool = False  # CPU/memory/GPU utilisation as system/... metrics (also MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING=true)


@dataclass(kw_only=True)
class RPSTConfig:
    """Random-patch self-training (paper §IV-C, Algorithm 1); read only by dias_dist.semi."""

    unlabeled_split: str = "unlabeled"
    num_unlabeled: int = 0  # 0 = all unlabeled sequences
    labeled_prob: float = 0.5  # P: probability that a patch comes from a labelled sequence
    strong_augment: bool = True  # paper: strong aug on pseudo-labelled patches (reference HEAD: off)
    rounds: int = 1  # re-label + re-train rounds after the teacher
    student_init: str = "teacher"  # teacher (reference) | fresh (ST++)
    teacher_epochs: int = 0  # 0 = train.epochs
    student_epochs: int = 0  # 0 = train.epochs


@dataclass(kw_only=True)
class Config:
    """A whole run. ``dataclasses.asdict(cfg)`` is what gets saved and logged."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    track: TrackConfig = field(default_factory=TrackConfig)
    rpst: RPSTConfig = field(default_factory=RPSTConfig)


# --------------------------------------------------------------------------------------------
# loading and validation


def _valid_keys(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _check_type(value: Any, annotation: Any, where: str, source: str) -> Any:
    """Return ``value`` converted to ``annotation`` (resolved by ``typing.get_type_hints``) where
    lossless, else raise ValueError."""
    origin = typing.get_origin(annotation)
    if annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif annotation is str:
        if isinstance(value, str):
            if value == MISSING_REQUIRED:
                raise ValueError(f"{source}: {where} is required but has no value (set it with {where}=...)")
            return value
    elif annotation in (dict, list) or origin in (dict, list):
        base = origin or annotation
        if isinstance(value, base):
            return value
    else:
        return value
    name = getattr(annotation, "__name__", str(annotation))
    raise ValueError(f"{source}: {where} must be {name}, got {type(value).__name__} {value!r}")


@dataclass(frozen=True)
class Range:
    """The values a numeric config key may take: ``low``..``high`` (None = unbounded), ends included
    unless ``open_low`` / ``open_high``. Floats must also be finite (NaN, inf and YAML's 1e999 are refused)."""

    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False

    def problem(self, value: float) -> str | None:
        """What is wrong with ``value`` (a phrase such as ``must be >= 1``), or None when it is in range."""
        if isinstance(value, float) and not math.isfinite(value):
            return f"must be a finite number {self.describe()}".rstrip()
        low_bad = self.low is not None and (value <= self.low if self.open_low else value < self.low)
        high_bad = self.high is not None and (value >= self.high if self.open_high else value > self.high)
        return f"must be {self.describe(low_bad, high_bad)}" if low_bad or high_bad else None

    def describe(self, low_bad: bool = True, high_bad: bool = True) -> str:
        """``in (0, 1)`` for a narrow range, else the violated side alone: ``>= 1``, ``<= 2147483647``."""
        if self.low is not None and self.high is not None and self.high < INT_MAX:
            return (f"in {'(' if self.open_low else '['}{_number(self.low)}, "
                    f"{_number(self.high)}{')' if self.open_high else ']'}")
        if low_bad and self.low is not None:
            return f"{'>' if self.open_low else '>='} {_number(self.low)}"
        if high_bad and self.high is not None:
            return f"{'<' if self.open_high else '<='} {_number(self.high)}"
        return ""


def _number(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


INT_MAX = 2**31 - 1  # counts and sizes: beyond this something is wrong (and torch/numpy would overflow)
POSITIVE, NON_NEGATIVE, PROBABILITY = Range(1, INT_MAX), Range(0, INT_MAX), Range(0.0, 1.0)
NON_NEGATIVE_REAL = Range(0.0)  # finite and >= 0: clipping, warm-up length
RATE = Range(0.0, 1.0)  # AdamW learning rates and decay: a step of lr per weight, p *= 1 - lr * weight_decay

# The range of EVERY numeric key (tests/test_config_ranges.py checks that none is missing). Checked by
# ``from_dict``, i.e. for YAML files, overrides, derived configs and configs stored in checkpoints alike;
# sizes are further bounded by the host memory they need (``check_memory``, run by ``load_config``).
RANGES: dict[str, Range] = {
    "data.patch_size_px": Range(1, 16384), "data.patches_per_sequence": POSITIVE,
    "data.shuffle_buffer": NON_NEGATIVE, "data.num_workers": Range(0, 1024), "data.num_labeled": NON_NEGATIVE,
    "data.num_folds": Range(0, 1000), "data.fold": Range(0, 999),
    "data.read_timeout_s": Range(0.0, 7 * 86400.0, open_low=True), "data.download_budget_s": Range(0.0, 7 * 86400.0, open_low=True),
    "optim.lr": RATE, "optim.weight_decay": RATE, "optim.eps": Range(0.0, 1.0, open_low=True),
    "optim.warmup_epochs": NON_NEGATIVE_REAL, "optim.warmup_lr": RATE, "optim.min_lr": RATE,
    "optim.grad_clip": NON_NEGATIVE_REAL,
    "train.epochs": POSITIVE, "train.steps_per_epoch": POSITIVE, "train.batch_size": POSITIVE,
    "train.grad_accum": POSITIVE, "train.max_steps": NON_NEGATIVE, "train.seed": Range(0, 2**63 - 1),
    "train.log_every_steps": POSITIVE, "train.checkpoint_every_steps": NON_NEGATIVE,
    "eval.patch_size_px": Range(1, 16384), "eval.stride_px": Range(1, 16384), "eval.batch_size": POSITIVE,
    "eval.threshold": Range(0.0, 1.0, open_low=True, open_high=True), "eval.val_every_epochs": POSITIVE,
    "eval.select_from_epoch": NON_NEGATIVE,
    "rpst.num_unlabeled": NON_NEGATIVE, "rpst.labeled_prob": Range(0.0, 1.0, open_low=True, open_high=True),
    "rpst.rounds": Range(1, 1000),
    "rpst.teacher_epochs": NON_NEGATIVE, "rpst.student_epochs": NON_NEGATIVE,
}
# Numeric lists: every element in the range, and the list this long.
LIST_RANGES: dict[str, tuple[int, Range]] = {"optim.betas": (2, Range(0.0, 1.0, open_high=True))}
# Sizes and rates in the free-form ``model.params`` that the models share (their constructors check the
# rest; ``models.build_model`` turns a constructor's failure into one line naming model.params).
MODEL_PARAM_RANGES: dict[str, tuple[type, Range]] = {
    "width": (int, Range(1, 4096)), "num_frames": (int, Range(1, 1024)), "num_classes": (int, Range(2, 1024)),
    "feature_scale": (int, Range(1, 64)), "dropout": (float, PROBABILITY), "updown_dropout": (float, PROBABILITY),
}
MAX_CONFIG_BYTES = 1 << 20  # a YAML config file larger than this is refused before it is parsed
MAX_CONFIG_VALUES = 100_000  # values of a config counted with every alias expanded (a YAML alias bomb)


def run_name_problem(name: str) -> str | None:
    """``train.run_name`` must be "" (a generated name) or ONE folder name inside ``train.run_dir``."""
    if name in (".", "..") or any(sep in name for sep in ("/", "\\", "\0")) or Path(name).is_absolute():
        return "must be one folder name inside train.run_dir (no '/', not '.' or '..')"
    if len(name.encode()) > 255:
        return "is longer than a folder name may be (255 bytes)"
    return None


def select_metric_problem(name: str) -> str | None:
    """``eval.select_metric`` must be a metric the evaluation computes, one where higher is better."""
    from dias_dist.metrics import LOWER_IS_BETTER, METRIC_NAMES

    if name in LOWER_IS_BETTER:
        return (f"is a metric where lower is better, but the best checkpoint keeps the highest score; "
                f"choose one of {', '.join(m for m in METRIC_NAMES if m not in LOWER_IS_BETTER)}")
    if name not in METRIC_NAMES:
        return f"is not a metric; choose one of {', '.join(m for m in METRIC_NAMES if m not in LOWER_IS_BETTER)}"
    return None


# Keys whose string value must have a form: a function returning what is wrong, or None.
FORMS = {"data.shards": location.problem, "train.run_name": run_name_problem,
         "eval.select_metric": select_metric_problem,
         "eval.blend": lambda value: None if value in ("uniform", "gaussian") else "must be uniform or gaussian",
         "eval.softmax": lambda value: None if value in ("limited", "full") else "must be limited or full"}


def count_values(data: Any, where: str, source: str, limit: int = MAX_CONFIG_VALUES) -> int:
    """Number of values in nested dicts / lists ``data`` (containers, keys and leaves), counting a shared
    (aliased) one at every use; ValueError as soon as the values seen plus those waiting pass ``limit``,
    so an alias bomb is refused after at most ``limit`` steps."""
    count, stack = 0, [data]
    while stack:
        item = stack.pop()
        count += 1
        if isinstance(item, (dict, list, tuple)):
            if count + len(stack) + len(item) * (2 if isinstance(item, dict) else 1) > limit:
                raise ValueError(f"{source}: {where or 'the config'} holds more than {limit} values with its YAML "
                                 f"aliases expanded (an alias bomb?); the limit is {limit}")
            stack.extend([*item.keys(), *item.values()] if isinstance(item, dict) else item)
    return count


def _check_range(key: str, value: Any, source: str) -> None:
    """ValueError naming ``key`` when a numeric ``value`` is outside its range (RANGES, LIST_RANGES)."""
    if key in RANGES:
        fault = RANGES[key].problem(value)
        if fault:
            raise ValueError(f"{source}: {key} {fault}, got {value!r}")
    if key in LIST_RANGES:
        length, allowed = LIST_RANGES[key]
        if len(value) != length or any(isinstance(v, bool) or not isinstance(v, (int, float)) or allowed.problem(v)
                                       for v in value):
            raise ValueError(f"{source}: {key} must be {length} numbers, each {allowed.describe()}, got {value!r}")


def _check_model_params(params: dict, source: str) -> None:
    """Ranges of the size and rate keys of ``model.params`` (MODEL_PARAM_RANGES)."""
    for name, (kind, allowed) in MODEL_PARAM_RANGES.items():
        if name not in params:
            continue
        value = params[name]
        ok_type = (isinstance(value, int) if kind is int else isinstance(value, (int, float))) \
            and not isinstance(value, bool)
        fault = allowed.problem(value) if ok_type else f"must be {kind.__name__}"
        if fault:
            raise ValueError(f"{source}: model.params.{name} {fault}, got {value!r}")


def from_dict(cls, data: dict, source: str = "<dict>", prefix: str = ""):
    """Build dataclass ``cls`` from a nested dict; strict about keys and types."""
    if not isinstance(data, dict):
        raise ValueError(f"{source}: section '{prefix.rstrip('.') or '<root>'}' must be a mapping, got {data!r}")
    valid = _valid_keys(cls)
    unknown = sorted(set(data) - set(valid))
    if unknown:
        section = prefix.rstrip(".") or "<root>"
        raise ValueError(
            f"{source}: unknown key(s) {', '.join(prefix + k for k in unknown)} in section '{section}'; "
            f"valid keys: {', '.join(valid)}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value = data[f.name]
        annotation = hints[f.name]
        if dataclasses.is_dataclass(annotation):
            kwargs[f.name] = from_dict(annotation, value or {}, source, prefix + f.name + ".")
        else:
            kwargs[f.name] = _check_type(value, annotation, prefix + f.name, source)
            form = FORMS.get(prefix + f.name)
            fault = form(kwargs[f.name]) if form is not None and kwargs[f.name] != MISSING_REQUIRED else None
            if fault:
                raise ValueError(f"{source}: {prefix + f.name}={kwargs[f.name]!r} {fault}")
            if isinstance(kwargs[f.name], (dict, list)):
                count_values(kwargs[f.name], prefix + f.name, source)
            _check_range(prefix + f.name, kwargs[f.name], source)
            if prefix + f.name == "model.params":
                _check_model_params(kwargs[f.name], source)
    return cls(**kwargs)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optim.lr=3e-4"`` -> (["optim", "lr"], 3e-4); the value is parsed as YAML."""
    if "=" not in text:
        raise ValueError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise ValueError(f"override {text!r}: bad key {key!r}")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as err:
        raise ValueError(f"override {text!r}: value is not valid YAML ({err})") from None
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply dotted overrides to a nested dict (in place) and return it."""
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"override {text!r}: '{part}' is a value, not a section")
            node = child
        node[path[-1]] = value
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | tuple = ()) -> Config:
    """Read YAML ``path`` (None = defaults only), apply ``overrides``, validate, return a Config."""
    data: dict = {}
    source = "<defaults>"
    if path is not None:
        path = config_file(path)
        source = str(path)
        if not path.is_file():
            raise ValueError(f"config file {path} does not exist")
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ValueError(f"{path}: {size} bytes is more than a config file may hold ({MAX_CONFIG_BYTES} bytes)")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ValueError(f"{path}: not valid YAML ({err})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: top level must be a mapping of sections")
    apply_overrides(data, list(overrides))
    if overrides:
        source += " + overrides"
    count_values(data, "", source)  # before anything walks or copies it
    cfg = from_dict(Config, data, source)
    check_folds(cfg, source)
    check_memory(cfg, source)
    return cfg


def check_folds(cfg: Config, source: str = "config") -> None:
    """ValueError naming ``source`` when ``data.fold`` / ``data.num_folds`` do not make a fold (``data/folds.py``)."""
    try:
        folds.check(cfg.data.num_folds, cfg.data.fold)
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from None


def available_memory() -> int | None:
    """Bytes of host memory available now: psutil when installed, else /proc/meminfo, else sysconf; within a
    cgroup v2 memory limit (a container), what is left of the limit when that is less."""
    found = None
    try:
        import psutil

        found = int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001 - not installed or not supported here: try the next way
        try:
            lines = Path("/proc/meminfo").read_text().splitlines()
            found = next(int(line.split()[1]) * 1024 for line in lines if line.startswith("MemAvailable:"))
        except (OSError, ValueError, IndexError, StopIteration):
            try:
                found = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
            except (ValueError, OSError, AttributeError):
                pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            left = int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text())
            found = left if found is None else min(found, left)
    except (OSError, ValueError):
        pass
    return found


def memory_estimate(cfg: Config) -> dict[str, int]:
    """Host bytes the data path of a run holds at least, by the key that drives each part.

    A lower bound (model activations and the shards themselves are not counted): per loader worker
    (or the main process) a shuffle buffer of ``data.shuffle_buffer`` patches plus the patches of the
    sequence being cut (float16 (T, P, P) image + uint8 (P, P) target each); the training batches in
    flight (float32 (B, T, P, P) image + int64 (B, P, P) target, B = batch_size / grad_accum, two per
    worker prefetched plus the one in use); one evaluation batch of float32 (eval.batch_size, T, P, P) tiles.
    """
    frames = int(cfg.model.params.get("num_frames", 8))
    side, workers = cfg.data.patch_size_px, max(cfg.data.num_workers, 1)
    patch = frames * side * side * 2 + side * side
    micro = -(-cfg.train.batch_size // cfg.train.grad_accum)
    in_flight = 2 * cfg.data.num_workers + 1
    return {"data.shuffle_buffer": workers * (cfg.data.shuffle_buffer + cfg.data.patches_per_sequence) * patch,
            "train.batch_size": in_flight * micro * (frames * side * side * 4 + side * side * 8),
            "eval.batch_size": cfg.eval.batch_size * frames * cfg.eval.patch_size_px ** 2 * 4}


def check_memory(cfg: Config, source: str = "config", available: int | None = None) -> None:
    """ValueError naming the key that needs most when ``memory_estimate`` exceeds the available host memory."""
    available = available_memory() if available is None else available
    if not available:
        return
    parts = memory_estimate(cfg)
    need = sum(parts.values())
    if need > available:
        key = max(parts, key=parts.get)
        value = dict(flatten(to_dict(cfg)))[key]
        raise ValueError(f"{source}: {key}={value} needs at least {parts[key] / 2**30:.1f} GiB of host memory "
                         f"(the data path alone: {need / 2**30:.1f} GiB), but {available / 2**30:.1f} GiB is "
                         f"available; lower {key}")


def to_dict(cfg: Config) -> dict:
    """Plain nested dict of a Config (what is saved next to every run)."""
    return dataclasses.asdict(cfg)


def derive(cfg: Config, updates: dict[str, Any], source: str = "derived config") -> Config:
    """A copy of ``cfg`` with dotted-key ``updates`` (``{"train.epochs": 3}``), validated like a YAML file."""
    data = to_dict(cfg)
    for key, value in updates.items():
        section, name = key.split(".", 1)
        data[section][name] = value
    return from_dict(Config, data, source)


def flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    """{"optim": {"lr": 1}} -> {"optim.lr": 1}; an empty mapping yields no key (nothing to log)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    with atomic_write(path) as handle:
        handle.write(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def config_file(path: str | Path) -> Path:
    """``path`` when it exists (or is absolute), else the packaged config of that name: ``debug.yaml``
    and ``configs/debug.yaml`` both find ``configs/debug.yaml`` from any directory."""
    path = Path(path)
    if path.is_file() or path.is_absolute():
        return path
    parts = path.parts[1:] if path.parts[:1] == ("configs",) else path.parts
    packaged = PACKAGED_CONFIGS.joinpath(*parts)
    return packaged if packaged.is_file() else path
