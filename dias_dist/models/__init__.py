"""Model registry: a plain dict from ``lower_snake`` name to class, filled by explicit imports.

Every model is single-device code (no .cuda(), no torch.distributed) and returns raw logits
(B, num_classes, H, W) with no final activation. Each class declares ``input_layout``:

- ``"frames"``   : x_BTHW  (B, T, H, W)     the T frames are the input channels ("DR + 2D")
- ``"sequence"`` : x_B1THW (B, 1, T, H, W)  the sequence as a volume (3D and 3D->2D models)

Loaders always produce (B, T, H, W); ``to_layout`` reshapes for the model.
Legend for shape suffixes: B batch, T frames, C channels, H/W height/width.
"""
from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

INIT_ARGS = "init_args"  # attribute of a built model or method: its constructor's arguments as received

MODELS: dict[str, type[nn.Module]] = {}

# Explicit imports, one line per model file.
from .vss_net import VSSNet  # noqa: E402
from .fr_unet import FRUNet  # noqa: E402
from .unet import UNet  # noqa: E402
from .res_unet import ResUNet  # noqa: E402
from .unet_nested import UNetNested  # noqa: E402
from .att_unet import AttUNet  # noqa: E402
from .cs2_net import CS2Net  # noqa: E402
from .maa_net import MAANet  # noqa: E402

MODELS["vss_net"] = VSSNet
MODELS["fr_unet"] = FRUNet
MODELS["unet"] = UNet
MODELS["res_unet"] = ResUNet
MODELS["unet_nested"] = UNetNested
MODELS["att_unet"] = AttUNet
MODELS["cs2_net"] = CS2Net
MODELS["maa_net"] = MAANet

# 3D (DR head), 3D->2D baselines and the weak methods' 2D backbones
from .unet_3d import UNet3D  # noqa: E402
from .res_unet_3d import ResUNet3D  # noqa: E402
from .unet_nested_3d import UNetNested3D  # noqa: E402
from .att_unet_3d import AttUNet3D  # noqa: E402
from .cs2_net_3d import CS2Net3D  # noqa: E402
from .fr_unet_3d import FRUNet3D  # noqa: E402
from .ipn import IPN  # noqa: E402
from .psc import PSC  # noqa: E402
from .svs_net import SVSNet  # noqa: E402
from .st_unet import STUNet  # noqa: E402
from .unet_cct import UNetCCT  # noqa: E402
from .unet_dp import UNetDP  # noqa: E402

MODELS["unet_3d"] = UNet3D
MODELS["res_unet_3d"] = ResUNet3D
MODELS["unet_nested_3d"] = UNetNested3D
MODELS["att_unet_3d"] = AttUNet3D
MODELS["cs2_net_3d"] = CS2Net3D
MODELS["fr_unet_3d"] = FRUNet3D
MODELS["ipn"] = IPN
MODELS["psc"] = PSC
MODELS["svs_net"] = SVSNet
MODELS["st_unet"] = STUNet
MODELS["unet_cct"] = UNetCCT
MODELS["unet_dp"] = UNetDP

LAYOUTS = ("frames", "sequence")


def build_model(name: str, **params) -> nn.Module:
    """Instantiate registered model ``name`` with ``params``; unknown names/params are ValueErrors."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; registered models: {', '.join(sorted(MODELS))}")
    cls = MODELS[name]
    sig = inspect.signature(cls.__init__)
    accepted = [p for p in sig.parameters if p != "self"]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(f"model {name!r} has no parameter(s) {', '.join(unknown)}; valid: {', '.join(accepted)}")
    try:
        model = cls(**params)
    except (ValueError, TypeError, RuntimeError, ZeroDivisionError) as err:  # a size the layers cannot take
        shown = ", ".join(f"{k}={v!r}" for k, v in params.items()) or "(none)"
        raise ValueError(f"model {name!r} cannot be built from model.params {shown} "
                         f"({type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''})") from None
    setattr(model, INIT_ARGS, constructor_args(cls, params))  # what MLflow logs as model.params.*
    return model


def constructor_args(cls: type, params: dict) -> dict[str, Any]:
    """``params`` bound to ``cls.__init__`` with every default filled in (``**kwargs`` spread out): what an
    object built from ``params`` received (``build_model`` and ``methods.build_method`` record it as
    ``init_args``; ``dias_dist.run.params`` logs it)."""
    signature = inspect.signature(cls.__init__)
    bound = signature.bind_partial(None, **params)  # None stands for self
    bound.apply_defaults()
    args: dict[str, Any] = {}
    for index, (name, value) in enumerate(bound.arguments.items()):
        kind = signature.parameters[name].kind
        if index == 0:
            continue  # self
        if kind is inspect.Parameter.VAR_KEYWORD:
            args.update(value)
        elif kind is not inspect.Parameter.VAR_POSITIONAL:
            args[name] = value
    return args


def input_layout(model: nn.Module) -> str:
    """The input layout of a (possibly wrapped) model: 'frames' or 'sequence'."""
    inner = getattr(model, "module", model)
    layout = getattr(inner, "input_layout", None)
    if layout not in LAYOUTS:
        raise ValueError(f"{type(inner).__name__} does not declare input_layout in {LAYOUTS}")
    return layout


def to_layout(x_BTHW: torch.Tensor, layout: str) -> torch.Tensor:
    """(B, T, H, W) loader output -> the tensor a model of ``layout`` takes."""
    if x_BTHW.dim() != 4:
        raise ValueError(f"expected loader images of shape (B, T, H, W), got {tuple(x_BTHW.shape)}")
    if layout == "frames":
        return x_BTHW
    if layout == "sequence":
        return x_BTHW.unsqueeze(1)
    raise ValueError(f"unknown input layout {layout!r}; valid: {LAYOUTS}")


def as_frames(x: torch.Tensor) -> torch.Tensor:
    """Model input in either layout -> (B, T, H, W) (used by losses that need the raw frames)."""
    if x.dim() == 5:
        return x[:, 0]
    if x.dim() == 4:
        return x
    raise ValueError(f"expected (B,T,H,W) or (B,1,T,H,W), got {tuple(x.shape)}")


SOFTMAX_CHOICES = ("limited", "full")


def vessel_probability(logits_BCHW: torch.Tensor, softmax: str = "limited") -> torch.Tensor:
    """Vessel probability (B, H, W) from logits with 2 or 3 channels. ``softmax="limited"`` (the
    reference): softmax over the background/vessel channels 0..1 only, as DIAS does for 3-channel
    heads; ``"full"``: softmax over every channel, so mass a 3-channel head keeps on its third
    ("unannotated") channel is not renormalised into the two classes (the same for 2 channels)."""
    if logits_BCHW.dim() != 4 or logits_BCHW.shape[1] < 2:
        raise ValueError(f"expected logits (B, C>=2, H, W), got {tuple(logits_BCHW.shape)}")
    if softmax not in SOFTMAX_CHOICES:
        raise ValueError(f"softmax {softmax!r}: choose one of {', '.join(SOFTMAX_CHOICES)}")
    channels = logits_BCHW if softmax == "full" else logits_BCHW[:, :2]
    return torch.softmax(channels.float(), dim=1)[:, 1]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
