"""The arguments of an explained function: named leaves and a function of the leaves."""

from __future__ import annotations

import inspect
import keyword
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["flatten_arguments"]


def _key_str(k: Any) -> str:
    if isinstance(k, jax.tree_util.DictKey):
        key = k.key
        if isinstance(key, str) and key.isidentifier() and not keyword.iskeyword(key):
            return f".{key}"
        return f"[{key!r}]"
    if isinstance(k, jax.tree_util.GetAttrKey):
        return f".{k.name}"
    if isinstance(k, jax.tree_util.SequenceKey):
        return f"[{k.idx}]"
    if isinstance(k, jax.tree_util.FlattenedIndexKey):
        return f"[{k.key}]"
    return jax.tree_util.keystr((k,))


def _is_array_leaf(x: Any) -> bool:
    return isinstance(x, (jax.Array, np.ndarray, np.generic, bool, int, float, complex)) \
        or hasattr(x, "__jax_array__")


def _bind_arguments(fn: Callable[..., Any], args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> tuple[list[tuple[str, Any]], Callable]:
    """[(argument name, value)] and a function of those values that calls ``fn``."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        sig = None
    if sig is None:
        items = [(f"arg{i}", a) for i, a in enumerate(args)] + list(kwargs.items())
        n = len(args)

        def call(values: Sequence[Any]) -> Any:
            return fn(*values[:n], **dict(zip(kwargs, values[n:], strict=True)))

        return items, call
    bound = sig.bind(*args, **kwargs)
    items = list(bound.arguments.items())

    def call_bound(values: Sequence[Any]) -> Any:
        b = inspect.BoundArguments(sig, dict(zip([k for k, _ in items], values, strict=True)))
        return fn(*b.args, **b.kwargs)

    return items, call_bound


def flatten_arguments(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
                      caller: str = "explain"
                      ) -> tuple[list[Any], list[str], Callable[..., Any]]:
    """Validate, flatten and name the arguments of ``fn``.

    Each leaf is named after ``fn``'s parameter and its pytree path (``params[0].w``). A
    Python ``int`` becomes a float: the lesson's ``x = 2`` is a number to differentiate.

    Args:
        fn: the function.
        args: its positional arguments.
        kwargs: its keyword arguments.
        caller: the public function named in error messages.

    Returns:
        ``(leaves, leaf names, flat_fn)`` where ``flat_fn(*leaves)`` calls ``fn``.

    Raises:
        TypeError: if a leaf is not an array or a number; the message names the argument.
    """
    items, call = _bind_arguments(fn, args, kwargs)
    leaves: list[Any] = []
    names: list[str] = []
    treedefs = []
    for argname, value in items:
        with_path, treedef = jax.tree_util.tree_flatten_with_path(value)
        for path, leaf in with_path:
            pname = argname + "".join(_key_str(k) for k in path)
            if not _is_array_leaf(leaf):
                where = f" (at {pname})" if path else ""
                raise TypeError(
                    f"{caller}: argument {argname!r} must be an array, a number or a pytree of "
                    f"them; got a {type(leaf).__name__} ({leaf!r}){where}. Pass non-array "
                    "options through functools.partial or a closure instead.")
            if isinstance(leaf, int) and not isinstance(leaf, bool):
                leaf = float(leaf)
            leaves.append(jnp.asarray(leaf))
            names.append(pname)
        treedefs.append((treedef, len(with_path)))

    def flat_fn(*flat: Any) -> Any:
        values, k = [], 0
        for treedef, count in treedefs:
            values.append(jax.tree_util.tree_unflatten(treedef, flat[k:k + count]))
            k += count
        return call(values)

    return leaves, names, flat_fn
