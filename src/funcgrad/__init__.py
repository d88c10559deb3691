"""funcgrad: a JAX functional autodiff library with hand-written custom VJP rules.

The public namespace re-exports the primitives (``funcgrad.relu``, ``funcgrad.dense``,
...), the registry :data:`PRIMITIVES` and :func:`hessian`.
"""

from . import checkpoint, data, flow, nn, parallel, testing, train
from .graph import Graph, explain
from .primitives import (
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

__version__ = "0.1.0"

__all__ = [
    "Graph",
    "PRIMITIVES",
    "TrainState",
    "checkpoint",
    "data",
    "fit",
    "flow",
    "nn",
    "optimizer",
    "parallel",
    "testing",
    "train",
    "Primitive",
    "__version__",
    "add",
    "batch_norm",
    "dense",
    "div",
    "exp",
    "explain",
    "hessian",
    "leaky_relu",
    "log",
    "matmul",
    "mean",
    "mean_squared_error",
    "mul",
    "neg",
    "power",
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
    "unbroadcast",
]
