"""Value formatting for graphs: numbers as the lesson writes them, arrays as one line.

Examples:
    >>> import jax.numpy as jnp
    >>> fmt_num(6.0), fmt_num(1.4000001), short(jnp.ones((2, 3)))
    ('6', '1.4', 'f32[2,3] norm=2.449')
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["aval_str", "fmt_num", "plural", "short", "summarize"]

_DTYPE_SHORT = {"float32": "f32", "float64": "f64", "float16": "f16", "bfloat16": "bf16",
                "int32": "i32", "int64": "i64", "int16": "i16", "int8": "i8", "uint8": "u8",
                "uint32": "u32", "bool": "bool"}


def _dtype_short(dtype: Any) -> str:
    name = np.dtype(dtype).name
    return _DTYPE_SHORT.get(name, name)


def fmt_num(v: Any) -> str:
    """Format a scalar as the lesson writes it: ``6``, ``1.4``, ``-0.25``.

    Args:
        v: a scalar (number, NumPy or JAX scalar).

    Returns:
        The number with at most 6 significant digits (``nan``/``inf`` as Python prints them).
    """
    arr = np.asarray(v)
    if arr.dtype == bool:
        return str(bool(arr))
    if np.issubdtype(arr.dtype, np.integer):
        return str(int(arr))
    f = float(arr)
    if math.isnan(f) or math.isinf(f):
        return str(f)
    if f == 0.0:
        return "0"
    return f"{f:.6g}"


def aval_str(v: Any) -> str:
    """``f32[4,3]``: the short dtype and the shape of anything with ``dtype`` and ``shape``.

    Args:
        v: an array or abstract value.

    Returns:
        The string.
    """
    try:
        dtype = _dtype_short(v.dtype)
    except TypeError:  # extended dtypes such as PRNG keys
        dtype = str(v.dtype)
    return f"{dtype}[{','.join(str(d) for d in v.shape)}]"


def _as_numpy(v: Any) -> np.ndarray | None:
    """``v`` as a NumPy array, or ``None`` for values NumPy cannot hold (PRNG keys)."""
    try:
        return np.asarray(v)
    except (TypeError, ValueError):
        return None


def short(v: Any) -> str:
    """Compact value for diagrams: a number, or ``f32[4,3] norm=2.1``.

    Args:
        v: an array, a number, a tuple of them, or ``None`` (printed ``-``).

    Returns:
        The string.
    """
    if v is None:
        return "-"
    if isinstance(v, tuple):
        return "(" + ", ".join(short(x) for x in v) + ")"
    arr = _as_numpy(v)
    if arr is None:
        return aval_str(v)
    if arr.shape == ():
        return fmt_num(arr)
    if arr.size and np.issubdtype(arr.dtype, np.floating):
        return f"{aval_str(arr)} norm={float(np.linalg.norm(arr.astype(np.float64))):.4g}"
    return aval_str(arr)


def summarize(v: Any) -> str:
    """Summarise a value: a scalar as a number, an array as shape, dtype, norm, mean, min, max.

    Args:
        v: an array, a number, a tuple of arrays, or ``None``.

    Returns:
        A one-line string.

    Examples:
        >>> import jax.numpy as jnp
        >>> summarize(jnp.float32(1.4))
        '1.4'
        >>> summarize(jnp.array([[3.0, -4.0]]))
        'f32[1,2] norm=5 mean=-0.5 min=-4 max=3'
    """
    if v is None:
        return "-"
    if isinstance(v, tuple):
        return "(" + ", ".join(summarize(x) for x in v) + ")"
    arr = _as_numpy(v)
    if arr is None:
        return aval_str(v)
    if arr.shape == ():
        return fmt_num(arr)
    if arr.size == 0:
        return aval_str(arr) + " (empty)"
    if np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer):
        a64 = arr.astype(np.float64)
        with np.errstate(invalid="ignore", over="ignore"):  # inf and -inf: mean nan, said so
            stats = (f"norm={np.linalg.norm(a64):.4g} mean={a64.mean():.4g} "
                     f"min={a64.min():.4g} max={a64.max():.4g}")
        return f"{aval_str(arr)} {stats}"
    return aval_str(arr)


def plural(n: int, word: str) -> str:
    """``"1 op"``, ``"2 ops"``.

    Args:
        n: the count.
        word: the singular noun.

    Returns:
        The count and the noun.
    """
    return f"{n} {word}" if n == 1 else f"{n} {word}s"
