"""Run configuration: nested dataclasses are the schema, YAML files hold values only.

``load_config(path, overrides)`` reads a YAML file, applies dotted ``key=value`` overrides
(``optim.lr=3e-4``), and validates everything against the dataclasses below. Unknown keys,
wrong types and missing required values raise ``ValueError`` naming the file, the key and the
valid keys. ``model.params`` and ``method.params`` are free-form dicts passed as keyword
arguments to the registered constructor, whose signature is their schema (checked by
``dias_dist.models.build_model`` / ``dias_dist.methods.build_method``).
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from dias_dist.atomic import atomic_write
from dias_dist.data import location, timeouts

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
    experiment: str = ""  # "" = dias-<study>: supervised | weak | semi (see dias_dist.track)
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


# Lower bounds of numeric keys: a bad value is named here, not by the function that would trip on it.
MINIMUMS = {
    "data.patch_size_px": 1, "data.patches_per_sequence": 1, "data.shuffle_buffer": 0, "data.num_workers": 0,
    "data.num_labeled": 0, "train.epochs": 1, "train.steps_per_epoch": 1, "train.batch_size": 1,
    "train.grad_accum": 1, "train.max_steps": 0, "train.log_every_steps": 1, "train.checkpoint_every_steps": 0,
    "eval.patch_size_px": 1, "eval.stride_px": 1, "eval.batch_size": 1, "eval.val_every_epochs": 1,
}


# Keys whose value must have a form: a function returning what is wrong, or None.
FORMS = {"data.shards": location.problem, "data.read_timeout_s": timeouts.problem,
         "data.download_budget_s": timeouts.problem}


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
            low = MINIMUMS.get(prefix + f.name)
            if low is not None and kwargs[f.name] < low:
                raise ValueError(f"{source}: {prefix + f.name} must be >= {low}, got {kwargs[f.name]!r}")
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
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ValueError(f"{path}: not valid YAML ({err})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: top level must be a mapping of sections")
    apply_overrides(data, list(overrides))
    if overrides:
        source += " + overrides"
    return from_dict(Config, data, source)


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
