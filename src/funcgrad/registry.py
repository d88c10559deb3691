"""The registry of primitives: one frozen record per primitive.

Tests, ``funcgrad check``, the docs' derivative table and the graph's formula labels are
all generated from :data:`PRIMITIVES`, so adding a primitive here adds its checks.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import jax
import jax.numpy as jnp

from .primitives import _record
from .primitives import activations as _act
from .primitives import arithmetic as _ar
from .primitives import linear as _lin
from .primitives import losses as _loss
from .primitives import normalization as _norm
from .primitives import reductions as _red
from .primitives._record import (
    BROADCAST_PAIRS,
    UNARY_SHAPES,
    Arg,
    Primitive,
    register,
    unregister,
)

__all__ = ["Arg", "Primitive", "PRIMITIVES", "sample_args", "derivative_table", "register",
           "unregister", "BROADCAST_PAIRS", "UNARY_SHAPES"]

Shape = tuple[int, ...]


def sample_args(
    prim: Primitive, key: jax.Array, shapes: tuple[Shape, ...] | None = None, dtype: Any = None
) -> tuple[jax.Array, ...]:
    """Draw random arguments for ``prim`` inside its domain.

    Args:
        prim: the registry record.
        key: a PRNG key.
        shapes: one shape per argument; defaults to the first registered sample.
        dtype: floating dtype of the float arguments (default float32).

    Returns:
        A tuple of arrays, one per argument.
    """
    shapes = prim.sample_shapes[0] if shapes is None else shapes
    dtype = jnp.float32 if dtype is None else dtype
    keys = jax.random.split(key, len(prim.args))
    out = []
    for arg, shape, k in zip(prim.args, shapes, keys, strict=True):
        if arg.kind == "labels":
            num_classes = prim.sample_shapes[0][0][-1] if not out else out[0].shape[-1]
            out.append(jax.random.randint(k, shape, 0, num_classes, dtype=jnp.int32))
            continue
        x = jax.random.normal(k, shape, dtype=jnp.float32)
        if arg.domain == "positive":
            x = 0.5 + jnp.abs(x)
        elif arg.domain == "nonzero":
            x = jnp.where(x >= 0, 0.5 + x, x - 0.5)
        elif arg.domain == "unit":
            x = jax.random.uniform(k, shape, dtype=jnp.float32)
        out.append(x.astype(dtype))
    return tuple(out)


_X = (Arg("x"),)
_XY = (Arg("x"), Arg("y"))

_entries = [
    Primitive("add", _ar.add, _ar.add_reference, "d(x+y)/dx = 1, d(x+y)/dy = 1", "none",
              _XY, BROADCAST_PAIRS, category="arithmetic"),
    Primitive("sub", _ar.sub, _ar.sub_reference, "d(x-y)/dx = 1, d(x-y)/dy = -1", "none",
              _XY, BROADCAST_PAIRS, category="arithmetic"),
    Primitive("mul", _ar.mul, _ar.mul_reference, "d(xy)/dx = y, d(xy)/dy = x", "x, y",
              _XY, BROADCAST_PAIRS, category="arithmetic"),
    Primitive("div", _ar.div, _ar.div_reference, "d(x/y)/dx = 1/y, d(x/y)/dy = -x/y^2",
              "x, y", (Arg("x"), Arg("y", domain="nonzero")), BROADCAST_PAIRS,
              category="arithmetic", precision="IEEE 754 at y = 0 (inf or nan)"),
    Primitive("neg", _ar.neg, _ar.neg_reference, "d(-x)/dx = -1", "none", _X, UNARY_SHAPES,
              category="arithmetic"),
    Primitive("square", _ar.square, _ar.square_reference, "d(x^2)/dx = 2x", "x", _X,
              UNARY_SHAPES, category="arithmetic"),
    Primitive("power", _ar.power, _ar.power_reference, "d(x^p)/dx = p*x^(p-1)", "x",
              (Arg("x", domain="positive"),), UNARY_SHAPES, params={"p": 2.5},
              category="arithmetic", kinks="p = 0: derivative exactly 0",
              precision="non-integer p: domain x > 0"),
    Primitive("exp", _ar.exp, _ar.exp_reference, "d(e^x)/dx = e^x", "output y = e^x", _X,
              UNARY_SHAPES, category="arithmetic"),
    Primitive("log", _ar.log, _ar.log_reference, "d(log x)/dx = 1/x", "x",
              (Arg("x", domain="positive"),), UNARY_SHAPES, category="arithmetic",
              precision="IEEE 754: log(0) = -inf, log(x<0) = nan"),
    Primitive("sum", _red.sum, _red.sum_reference, "d(sum x)/dx_i = 1", "none", _X,
              UNARY_SHAPES, category="reduction"),
    Primitive("mean", _red.mean, _red.mean_reference, "d(mean x)/dx_i = 1/n", "none", _X,
              UNARY_SHAPES, category="reduction"),
    Primitive("matmul", _lin.matmul, _lin.matmul_reference,
              "d(AB): A_bar = G B^T, B_bar = A^T G", "a, b", (Arg("a"), Arg("b")),
              (((3, 4), (4, 2)), ((2, 3, 4), (4, 5)), ((2, 3, 4), (2, 4, 5)),
               ((1, 3, 4), (2, 4, 2)), ((4,), (4, 3))), category="linear"),
    Primitive("dense", _lin.dense, _lin.dense_reference,
              "d(xw+b): x_bar = G w^T, w_bar = x^T G, b_bar = sum_rows G", "x, w",
              (Arg("x"), Arg("w"), Arg("b")),
              (((5, 3), (3, 2), (2,)), ((2, 5, 3), (3, 4), (4,)), ((3,), (3, 2), (2,))),
              category="linear"),
    Primitive("relu", _act.relu, _act.relu_reference, "relu'(x) = 1 if x > 0 else 0",
              "output y (mask y > 0)", _X, UNARY_SHAPES, category="activation",
              kinks="relu'(0) = 0"),
    Primitive("sigmoid", _act.sigmoid, _act.sigmoid_reference,
              "sigmoid'(x) = f(x)(1 - f(x)) = f(x)f(-x)", "derivative f(x)f(-x)", _X,
              UNARY_SHAPES, category="activation",
              precision="stable form f(x)f(-x): nonzero in float32 at x = 17 (textbook "
                        "f(1-f) is 0 there)"),
    Primitive("tanh", _act.tanh, _act.tanh_reference, "tanh'(x) = 1 - f(x)^2",
              "output y", _X, UNARY_SHAPES, category="activation",
              precision="evaluated as (1 - y)(1 + y)"),
    Primitive("softplus", _act.softplus, _act.softplus_reference,
              "softplus'(x) = sigmoid(x)", "sigmoid(x)", _X, UNARY_SHAPES,
              category="activation", precision="max(x,0) + log1p(e^-|x|): no overflow"),
    Primitive("leaky_relu", _act.leaky_relu, _act.leaky_relu_reference,
              "1 if x > 0 else slope", "output y (mask y > 0)", _X, UNARY_SHAPES,
              params={"negative_slope": 0.1}, category="activation",
              kinks="leaky_relu'(0) = slope"),
    Primitive("squared_error", _loss.squared_error, _loss.squared_error_reference,
              "dL/dy = 2(y - target), dL/dtarget = -2(y - target)", "y - target",
              (Arg("y"), Arg("target")), BROADCAST_PAIRS, category="loss"),
    Primitive("mean_squared_error", _loss.mean_squared_error,
              _loss.mean_squared_error_reference, "dL/dy = 2(y - target)/n", "y - target",
              (Arg("y"), Arg("target")), BROADCAST_PAIRS, category="loss"),
    Primitive("softmax_cross_entropy", _loss.softmax_cross_entropy,
              _loss.softmax_cross_entropy_reference,
              "dL/dlogits = softmax(logits) - onehot(label); labels: no gradient",
              "softmax probabilities, labels", (Arg("logits"), Arg("labels", kind="labels")),
              (((4, 5), (4,)), ((2, 3, 5), (2, 3)), ((5,), ())), category="loss",
              precision="-inf logits on non-target classes: finite loss, exactly 0 gradient"),
    Primitive("sigmoid_binary_cross_entropy", _loss.sigmoid_binary_cross_entropy,
              _loss.sigmoid_binary_cross_entropy_reference,
              "dL/dx = sigmoid(x) - z, dL/dz = -x", "logits, labels",
              (Arg("logits"), Arg("labels", domain="unit")), BROADCAST_PAIRS,
              category="loss", precision="max(x,0) - xz + log1p(e^-|x|): finite at +-1e4"),
    Primitive("batch_norm", _norm.batch_norm, _norm.batch_norm_reference,
              "x_bar = (gamma r / N)(N G - sum G - xhat sum(G xhat)), gamma_bar = sum G xhat, "
              "beta_bar = sum G", "xhat, 1/sqrt(var+eps), gamma",
              (Arg("x"), Arg("gamma"), Arg("beta")),
              (((6, 3), (3,), (3,)), ((5, 2, 3), (2, 3), (2, 3))), category="normalization"),
]

for _p in _entries:
    if _p.name not in _record._STORE:
        register(_p)

#: name -> :class:`Primitive`: a read-only, live view of every registered primitive (the
#: built-ins and every primitive made with :func:`funcgrad.primitive`).
PRIMITIVES: Mapping[str, Primitive] = MappingProxyType(_record._STORE)


def derivative_table() -> str:
    """The registry as a Markdown table (the docs' derivative table is built from this).

    Returns:
        One row per primitive: name, derivative, residuals saved, kinks and precision notes.

    Examples:
        >>> print(derivative_table().splitlines()[0])
        | primitive | derivative (backward rule) | residuals saved | kinks | precision notes |
    """
    header = ("primitive", "derivative (backward rule)", "residuals saved", "kinks",
              "precision notes")
    rows = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for p in PRIMITIVES.values():
        cells = [f"`{p.name}`", p.formula, p.residuals, p.kinks or "none",
                 p.precision or ""]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows)
