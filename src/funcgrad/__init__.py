"""funcgrad: a JAX functional autodiff library with hand-written custom VJP rules.

The public namespace re-exports the primitives (``funcgrad.relu``, ``funcgrad.dense``,
...), :func:`primitive` for your own rules, the registry :data:`PRIMITIVES`,
:func:`hessian`, :func:`explain` and training's :func:`fit`.

Everything loads on first use (PEP 562 ``__getattr__``): ``import funcgrad`` imports
neither JAX nor optax, so ``funcgrad --help`` answers at once, and ``funcgrad.fit`` or
``funcgrad.relu`` import exactly what they need the first time they are touched.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Subpackages and modules, loaded on first attribute access.
_SUBMODULES = ("checkpoint", "data", "experiments", "explain", "flow", "nn", "parallel",
               "primitives", "registry", "tensorboard", "testing", "train", "transforms")

#: Public name -> the module that defines it.
_NAMES: dict[str, str] = {
    **dict.fromkeys(
        ("add", "batch_norm", "dense", "div", "exp", "leaky_relu", "log", "matmul", "mean",
         "mean_squared_error", "mul", "neg", "power", "relu", "sigmoid",
         "sigmoid_binary_cross_entropy", "softmax_cross_entropy", "softplus", "square",
         "squared_error", "sub", "sum", "tanh", "unbroadcast", "primitive", "RuleError"),
        "primitives"),
    "PRIMITIVES": "registry",
    "Primitive": "registry",
    "hessian": "transforms",
    "Graph": "explain",
    "TrainState": "train",
    "fit": "train",
    "optimizer": "train",
    "tap_grad": "flow.taps",
    "enable_compilation_cache": "_cache",
}

__all__ = [
    "Graph",
    "PRIMITIVES",
    "Primitive",
    "RuleError",
    "TrainState",
    "__version__",
    "add",
    "batch_norm",
    "checkpoint",
    "data",
    "dense",
    "div",
    "enable_compilation_cache",
    "exp",
    "experiments",
    "explain",
    "fit",
    "flow",
    "hessian",
    "leaky_relu",
    "log",
    "matmul",
    "mean",
    "mean_squared_error",
    "mul",
    "neg",
    "nn",
    "optimizer",
    "parallel",
    "power",
    "primitive",
    "registry",
    "relu",
    "sigmoid",
    "sigmoid_binary_cross_entropy",
    "softmax_cross_entropy",
    "softplus",
    "square",
    "squared_error",
    "sub",
    "sum",
    "tanh",
    "tap_grad",
    "tensorboard",
    "testing",
    "train",
    "transforms",
    "unbroadcast",
]


if TYPE_CHECKING:  # what static tools (type checkers, the API docs) see; never executed
    from . import (
        checkpoint,
        data,
        experiments,
        explain,
        flow,
        nn,
        parallel,
        registry,
        tensorboard,
        testing,
        train,
        transforms,
    )
    from ._cache import enable_compilation_cache
    from .explain import Graph
    from .flow.taps import tap_grad
    from .primitives import (
        RuleError,
        add,
        batch_norm,
        dense,
        div,
        exp,
        leaky_relu,
        log,
        matmul,
        mean,
        mean_squared_error,
        mul,
        neg,
        power,
        primitive,
        relu,
        sigmoid,
        sigmoid_binary_cross_entropy,
        softmax_cross_entropy,
        softplus,
        square,
        squared_error,
        sub,
        sum,
        tanh,
        unbroadcast,
    )
    from .registry import PRIMITIVES, Primitive
    from .train import TrainState, fit, optimizer
    from .transforms import hessian


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        value = importlib.import_module(f"{__name__}.{name}")
    elif name in _NAMES:
        value = getattr(importlib.import_module(f"{__name__}.{_NAMES[name]}"), name)
    else:
        raise AttributeError(f"module 'funcgrad' has no attribute {name!r}")
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    # the public names and the module's dunders; not this file's own imports (importlib,
    # typing) nor the private modules loaded on the way
    return sorted({*__all__, *_SUBMODULES, *(n for n in globals() if n.startswith("__"))})
