"""The registry of primitives: one frozen record per primitive, declared beside its rule.

Every primitive made with :func:`funcgrad.primitive` (the 23 built-ins and every user rule)
carries a :class:`Primitive` record. This module only collects them: importing it imports
the built-in primitive modules, and :data:`PRIMITIVES` is a read-only, live view of every
registered record. Tests, ``funcgrad check``, the docs' derivative table and the graph's
formula labels are all generated from it, so adding a primitive adds its checks.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import jax
import jax.numpy as jnp

from . import primitives as _primitives  # noqa: F401  (registers the built-ins)
from .primitives import _record
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

# The records are defined below the registry (primitives import nothing above them); their
# documented home is here.
Arg.__module__ = Primitive.__module__ = __name__

#: name -> :class:`Primitive`: a read-only, live view of every registered primitive (the
#: built-ins and every primitive made with :func:`funcgrad.primitive`).
PRIMITIVES: Mapping[str, Primitive] = MappingProxyType(_record._STORE)


def _is_shape(s: Any) -> bool:
    return isinstance(s, tuple) and all(isinstance(d, int) for d in s)


def sample_args(
    prim: Primitive, key: jax.Array, shapes: tuple[Any, ...] | None = None, dtype: Any = None
) -> tuple[Any, ...]:
    """Draw random arguments for ``prim`` inside its domain.

    Args:
        prim: the registry record.
        key: a PRNG key.
        shapes: one shape (or a pytree of shapes, for a pytree argument) per argument;
            defaults to the first registered sample.
        dtype: floating dtype of the float arguments (default float32).

    Returns:
        A tuple with one array (or pytree of arrays) per argument.

    Examples:
        >>> import jax
        >>> [a.shape for a in sample_args(PRIMITIVES["matmul"], jax.random.PRNGKey(0))]
        [(3, 4), (4, 2)]
    """
    shapes = prim.sample_shapes[0] if shapes is None else shapes
    dtype = jnp.float32 if dtype is None else dtype
    keys = jax.random.split(key, len(prim.args))
    out: list[Any] = []
    for arg, shape, k in zip(prim.args, shapes, keys, strict=True):
        if arg.kind == "labels":
            num_classes = prim.sample_shapes[0][0][-1] if not out else out[0].shape[-1]
            out.append(jax.random.randint(k, shape, 0, num_classes, dtype=jnp.int32))
            continue
        leaves, treedef = jax.tree.flatten(shape, is_leaf=_is_shape)
        subkeys = jax.random.split(k, len(leaves)) if len(leaves) > 1 else [k]
        drawn = [_draw(arg.domain, s, sk, dtype) for s, sk in zip(leaves, subkeys, strict=True)]
        out.append(jax.tree.unflatten(treedef, drawn))
    return tuple(out)


def _draw(domain: str, shape: Shape, key: jax.Array, dtype: Any) -> jax.Array:
    x = jax.random.normal(key, shape, dtype=jnp.float32)
    if domain == "positive":
        x = 0.5 + jnp.abs(x)
    elif domain == "nonzero":
        x = jnp.where(x >= 0, 0.5 + x, x - 0.5)
    elif domain == "unit":
        x = jax.random.uniform(key, shape, dtype=jnp.float32)
    return x.astype(dtype)


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
