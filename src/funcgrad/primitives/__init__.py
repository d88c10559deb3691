"""The custom VJP layer: every funcgrad primitive with its hand-written backward rule.

Nothing in this package, docstring examples included, calls JAX's autodiff entry points
(grad, vjp, jvp, linearize, jacrev and friends): those are the checker's oracle, not the
rules' implementation. Every primitive is made with :func:`primitive`, the same public
factory users call for their own rules; examples run a rule directly with
``<primitive>.vjp(...)``.
"""

from ._broadcast import unbroadcast
from ._define import RuleError, primitive
from .activations import leaky_relu, relu, sigmoid, softplus, tanh
from .arithmetic import add, div, exp, log, mul, neg, power, square, sub
from .linear import dense, matmul
from .losses import (
    mean_squared_error,
    sigmoid_binary_cross_entropy,
    softmax_cross_entropy,
    squared_error,
)
from .normalization import batch_norm
from .reductions import mean, sum

__all__ = [
    "add", "sub", "mul", "div", "neg", "square", "power", "exp", "log",
    "sum", "mean",
    "matmul", "dense",
    "relu", "sigmoid", "tanh", "softplus", "leaky_relu",
    "squared_error", "mean_squared_error", "softmax_cross_entropy",
    "sigmoid_binary_cross_entropy",
    "batch_norm",
    "unbroadcast",
    "primitive",
    "RuleError",
]
