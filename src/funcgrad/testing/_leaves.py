"""The differentiable leaves of pytree arguments: what the checker differentiates."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

__all__: list[str] = []


def only_args(fn: Callable[..., Any], args: Sequence[Any],
              positions: Sequence[int]) -> Callable[..., Any]:
    """``fn`` as a function of the arguments at ``positions`` only, the others fixed.

    Args:
        fn: a function of all ``args``.
        args: the full argument list; entries at ``positions`` are placeholders.
        positions: the positions that become the new function's arguments, in order.

    Returns:
        ``g(*values)`` that calls ``fn`` with ``values`` substituted at ``positions``.

    Examples:
        >>> only_args(lambda a, b, c: a * 100 + b * 10 + c, [1, 2, 3], [2, 0])(9, 7)
        729
    """
    def g(*values: Any) -> Any:
        full = list(args)
        for i, v in zip(positions, values, strict=True):
            full[i] = v
        return fn(*full)
    return g


def _is_float(x: Any) -> bool:
    return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating)


def _as_array(x: Any) -> Any:
    try:
        return jnp.asarray(x)
    except TypeError:
        return x


class _Leaves:
    """The differentiable (floating) leaves of the selected arguments, with their paths."""

    def __init__(self, args: Sequence[Any], argnums: Sequence[int]):
        self.args, self.argnums = list(args), tuple(argnums)
        self.parts = []  # (pos, treedef, all leaves, float leaf indices)
        self.pos, self.paths, self.values = [], [], []
        for p in self.argnums:
            flat, treedef = jax.tree_util.tree_flatten_with_path(self.args[p])
            idx = [k for k, (_, leaf) in enumerate(flat) if _is_float(leaf)]
            self.parts.append((p, treedef, [leaf for _, leaf in flat], idx))
            for k in idx:
                self.pos.append(p)
                self.paths.append(jax.tree_util.keystr(flat[k][0]))
                self.values.append(flat[k][1])

    def function(self, fn: Callable[..., Any], cast: Any = None) -> Callable[..., list]:
        """``g(*leaves) -> [float output leaves]``; other float leaves cast to ``cast``."""
        def up(x):
            return x.astype(cast) if cast is not None and _is_float(x) else x

        base = [jax.tree.map(up, a) for a in self.args]

        def g(*leaves: Any) -> list:
            full, it = list(base), iter(leaves)
            for p, treedef, flat, idx in self.parts:
                new = [up(v) for v in flat]
                for k in idx:
                    new[k] = next(it)
                full[p] = jax.tree_util.tree_unflatten(treedef, new)
            return [o for o in jax.tree.leaves(fn(*full)) if _is_float(o)]
        return g
