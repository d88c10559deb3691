"""Shape and dtype plumbing shared by every primitive.

``unbroadcast`` is the one place in funcgrad where NumPy broadcasting is undone in a
backward pass. The other helpers turn user input into arrays and raise errors that name
the primitive, the argument, and the expected and actual shape or dtype.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Shape = tuple[int, ...]


def unbroadcast(g: jax.Array, shape: Sequence[int]) -> jax.Array:
    """Sum a cotangent over the axes that broadcasting added or stretched.

    Broadcasting copies an input along new leading axes and along axes of size 1. The
    transpose of a copy is a sum, so the cotangent of an input of ``shape`` is ``g`` summed
    over those axes.

    Args:
        g: cotangent of the broadcast result.
        shape: the shape of the input before it was broadcast.

    Returns:
        An array of exactly ``shape``.

    Examples:
        >>> import jax.numpy as jnp
        >>> unbroadcast(jnp.ones((2, 3, 4)), (3, 1)).tolist()
        [[8.0], [8.0], [8.0]]
    """
    shape = tuple(shape)
    if g.shape == shape:
        return g
    lead = g.ndim - len(shape)
    if lead < 0 or any(n not in (1, m) for n, m in zip(shape, g.shape[lead:], strict=True)):
        raise ValueError(f"unbroadcast: argument 'g' of shape {g.shape} is not a broadcast of "
                         f"shape {shape}; cannot sum it back to that shape")
    axes = list(range(lead))
    for i, n in enumerate(shape):
        if n == 1 and g.shape[lead + i] != 1:
            axes.append(lead + i)
    out = jnp.sum(g, axis=tuple(axes), keepdims=False) if axes else g
    return out.reshape(shape)


def broadcast_shapes(name: str, argnames: Sequence[str], *shapes: Shape) -> Shape:
    """Broadcast shapes, or raise a ``ValueError`` that names the primitive and all shapes."""
    try:
        return tuple(np.broadcast_shapes(*shapes))
    except ValueError:
        listed = ", ".join(f"{a}.shape={s}" for a, s in zip(argnames, shapes, strict=True))
        raise ValueError(
            f"{name}: shapes do not broadcast together: {listed}. Each trailing dimension "
            "must be equal or 1 (NumPy broadcasting)."
        ) from None


def _is_array_like(x: Any) -> bool:
    return isinstance(x, (jax.Array, np.ndarray, np.generic, int, float, bool)) or hasattr(
        x, "__jax_array__"
    )


def as_float(name: str, argname: str, x: Any, dtype: Any = None) -> jax.Array:
    """Return ``x`` as a floating-point JAX array.

    Integers and booleans are promoted to JAX's default float dtype, as ``jnp.exp`` does.
    Complex inputs and non-numeric inputs raise a ``TypeError`` naming the argument.
    """
    if not _is_array_like(x):
        raise TypeError(
            f"{name}: argument '{argname}' must be an array or a number; got {type(x).__name__}"
        )
    arr = jnp.asarray(x)
    if dtype is not None:
        return arr.astype(dtype)
    if jnp.issubdtype(arr.dtype, jnp.complexfloating):
        raise TypeError(
            f"{name}: argument '{argname}' must have a real floating dtype; got {arr.dtype}"
        )
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        arr = arr.astype(jnp.result_type(float))
    return arr


def promote_floats(name: str, argnames: Sequence[str], *xs: Any) -> tuple[jax.Array, ...]:
    """Convert inputs to arrays of one common floating dtype (JAX's promotion rules)."""
    arrs = [as_float(name, a, x) for a, x in zip(argnames, xs, strict=True)]
    dtype = jnp.result_type(*arrs)
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.result_type(float)
    return tuple(a.astype(dtype) for a in arrs)


def as_labels(name: str, argname: str, x: Any) -> jax.Array:
    """Return integer class labels as an array, or raise a ``TypeError`` naming the dtype."""
    if not _is_array_like(x):
        raise TypeError(
            f"{name}: argument '{argname}' must be an integer array of class labels; "
            f"got {type(x).__name__}"
        )
    arr = jnp.asarray(x)
    if not jnp.issubdtype(arr.dtype, jnp.integer):
        raise TypeError(
            f"{name}: argument '{argname}' must have an integer dtype (class indices); "
            f"got {arr.dtype} with shape {arr.shape}. Convert with labels.astype(jnp.int32), "
            "or use one-hot targets with a different loss."
        )
    return arr
