"""Method registry: a plain dict from name to Method class, filled by explicit imports.

A new method is one file, one line here and one YAML under configs/.
"""
from __future__ import annotations

import inspect

from torch import nn

from dias_dist.config import MethodConfig, ModelConfig
from dias_dist.models import INIT_ARGS, constructor_args

from .base import IGNORE_INDEX, Method

METHODS: dict[str, type[Method]] = {}

from .supervised import Supervised  # noqa: E402

METHODS["supervised"] = Supervised

from .pce import PCE  # noqa: E402
from .em import EM  # noqa: E402
from .rloss import RLoss  # noqa: E402
from .ivm import IVM  # noqa: E402
from .dmpls import DMPLS  # noqa: E402
from .sscr import SSCR  # noqa: E402

METHODS["pce"] = PCE
METHODS["em"] = EM
METHODS["rloss"] = RLoss
METHODS["ivm"] = IVM
METHODS["dmpls"] = DMPLS
METHODS["sscr"] = SSCR


def build_method(name: str, **params) -> Method:
    """Instantiate registered method ``name``; unknown names/params are ValueErrors."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; registered methods: {', '.join(sorted(METHODS))}")
    cls = METHODS[name]
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(f"method {name!r} has no parameter(s) {', '.join(unknown)}; valid: {', '.join(accepted)}")
    method = cls(**params)
    setattr(method, INIT_ARGS, constructor_args(cls, params))  # what MLflow logs as method.params.*
    return method


def build_network(model: ModelConfig, method: MethodConfig) -> tuple[Method, nn.Module]:
    """The method of the ``method`` section and the network it trains, built from the ``model`` section
    (a method may add heads or a second network: ``Method.build_model``)."""
    built = build_method(method.name, **method.params)
    return built, built.build_model(model.name, dict(model.params))


__all__ = ["IGNORE_INDEX", "METHODS", "Method", "build_method", "build_network"]
