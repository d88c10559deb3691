"""Per-layer statistics of parameter-shaped pytrees: the one per-layer helper.

A *layer* is an element of a list or tuple (the layer dicts of
:func:`funcgrad.nn.init_mlp`), the value of a dict key (keys sorted), or, for anything
else, the whole tree. Every float leaf of a layer counts (``w``, ``b``, ``gamma`` and
``beta`` together). :func:`layer_squares` is the reduction ``funcgrad.train`` builds its
step metrics from; :func:`layer_stats` reports the flow statistics. Both reduce layer by
layer with plain reductions, so they cost a few microseconds per layer inside ``jit``.

Examples:
    >>> import jax.numpy as jnp
    >>> tree = [{"w": jnp.array([3.0, 4.0])}, {"w": jnp.ones(4), "b": jnp.zeros(2)}]
    >>> layer_names(tree), layer_squares(tree).tolist(), layer_norms(tree).tolist()
    (['0', '1'], [25.0, 4.0], [5.0, 2.0])
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["layer_names", "layer_norms", "layer_squares", "layer_stats"]


def _split_layers(tree: Any) -> list[tuple[str, Any]]:
    """``[(name, subtree)]``: list/tuple elements, dict values (sorted keys) or one layer."""
    if isinstance(tree, (list, tuple)):
        return [(str(i), t) for i, t in enumerate(tree)]
    if isinstance(tree, dict):
        return [(str(k), tree[k]) for k in sorted(tree)]
    return [("0", tree)]


def _float_leaves(tree: Any) -> list[jax.Array]:
    """The inexact leaves of ``tree`` (integer and boolean leaves carry no gradient)."""
    return [x for x in map(jnp.asarray, jax.tree.leaves(tree))
            if jnp.issubdtype(x.dtype, jnp.inexact)]


def _dtype(leaves: Sequence[jax.Array]) -> Any:
    """The accumulation dtype: at least float32 (float64 stays float64 under x64)."""
    dtype = functools.reduce(jnp.promote_types, [x.dtype for x in leaves], jnp.float32)
    return jnp.real(jnp.zeros((), dtype)).dtype  # complex64 -> float32


def _squares(leaves: Sequence[jax.Array], dtype: Any) -> jax.Array:
    """``Σ |x|²`` over ``leaves``, accumulated in ``dtype``."""
    total = jnp.zeros((), dtype)
    for x in leaves:
        # |x|^2 exactly as optax.tree.norm writes it, so that in a train step XLA reduces
        # the gradient once for this and for optax.clip_by_global_norm
        x = x.astype(jnp.promote_types(x.dtype, dtype))
        total = total + jnp.sum(jnp.square(x.real) + jnp.square(x.imag))
    return total


def layer_names(tree: Any) -> list[str]:
    """The names :func:`layer_stats` gives the layers of a parameter-shaped pytree.

    A list or tuple has one layer per element (``"0"``, ``"1"``, ...), a dict one per key
    (sorted); anything else is one layer ``"0"``.

    Args:
        tree: parameters, gradients or updates.

    Returns:
        One name per layer.

    Examples:
        >>> layer_names({"encoder": 1.0, "decoder": 2.0})
        ['decoder', 'encoder']
    """
    return [name for name, _ in _split_layers(tree)]


def layer_squares(tree: Any) -> jax.Array:
    """Per-layer sum of squares ``Σ x²`` of a parameter-shaped pytree. Works in jit.

    The one per-layer reduction: ``funcgrad.train``'s gradient, clipped-gradient and update
    norms and :func:`layer_norms` are built from it. Layers are split as in
    :func:`layer_names`; a layer without float leaves gives 0. Sums are accumulated in
    float32 (float64 leaves stay float64 when x64 is enabled); a ``nan`` or ``inf`` in a
    layer, or a sum beyond float32's range (about 1.8e19 squared), makes its entry
    non-finite.

    Args:
        tree: gradients, parameters or updates.

    Returns:
        A 1-D float array, one entry per layer.

    Examples:
        >>> import jax.numpy as jnp
        >>> layer_squares({"b": jnp.ones(3), "a": {"w": jnp.array([[1.0, 2.0]])}}).tolist()
        [5.0, 3.0]
    """
    per_layer = [_float_leaves(t) for _, t in _split_layers(tree)]
    dtype = _dtype([x for leaves in per_layer for x in leaves])
    if not per_layer:
        return jnp.zeros((0,), dtype)
    return jnp.stack([_squares(leaves, dtype) for leaves in per_layer])


def layer_norms(tree: Any) -> jax.Array:
    """L2 norm of each layer of a parameter-shaped pytree: ``sqrt(layer_squares(tree))``.

    A list or tuple gives one norm per element; a dict one per key (sorted); anything
    else a single norm.

    Args:
        tree: gradients, parameters or updates.

    Returns:
        A 1-D array of norms.

    Examples:
        >>> import jax.numpy as jnp
        >>> layer_norms([{"w": jnp.array([3.0, 4.0])}, {"w": jnp.ones(4)}]).tolist()
        [5.0, 2.0]
    """
    return jnp.sqrt(layer_squares(tree))


def _max_abs(leaves: Sequence[jax.Array], dtype: Any) -> jax.Array:
    """``max |x|`` over ``leaves`` (0 if empty); ``nan`` if any is ``nan``, else ``inf``
    if any is infinite: ``lax.max`` propagates ``nan``."""
    return functools.reduce(jnp.maximum, [jnp.max(jnp.abs(x).astype(dtype), initial=0)
                                          for x in leaves], jnp.zeros((), dtype))


def _scaled_squares(leaves: Sequence[jax.Array], top: jax.Array, dtype: Any) -> jax.Array:
    """``Σ (|x| / top)²`` over the finite elements: no float32 overflow or underflow."""
    scale = jnp.where(jnp.isfinite(top) & (top > 0), top, 1)
    return _squares([jnp.where(jnp.isfinite(x), jnp.abs(x).astype(dtype) / scale, 0)
                     for x in leaves], dtype)


class _Group(NamedTuple):
    """One tree's float leaves per layer, element counts, dtype and (if known) max |x|."""

    per_layer: list[list[jax.Array]]
    counts: jax.Array
    dtype: Any
    top: jax.Array | None = None


def _norms(groups: Sequence[_Group]) -> list[jax.Array]:
    """Per-layer ``‖x‖₂`` of each group that neither overflows nor underflows in float32.

    One plain sum of squares per layer (:func:`layer_squares`' reduction) is exact
    enough unless a layer's sum is not finite (an ``inf``/``nan`` inside, or overflow) or
    so small that flushed subnormal squares could matter (below ``count · 1e-30``). Only
    then, under one ``lax.cond`` for all the groups (a cond per tree costs a step of a
    small model as much as the reductions themselves), every layer is summed again scaled
    by its ``max |x|`` (``top``, computed there unless given) and the scale multiplied
    back; a layer that holds a ``nan`` or ``inf`` gets that value.
    """
    squares = [_plain_squares(g) for g in groups]
    risky = [_risky(sq, g) for sq, g in zip(squares, groups, strict=True)]
    anything = functools.reduce(jnp.logical_or, [jnp.any(r) for r in risky])
    return jax.lax.cond(anything, lambda _: [_scaled_norms(g) for g in groups],
                        lambda _: [jnp.sqrt(sq) for sq in squares], None)


#: Above this many elements the updates stay out of :func:`_norms`' ``lax.cond``.
UPDATES_IN_COND_LIMIT = 1 << 18


def _selected_norms(group: _Group) -> jax.Array:
    """:func:`_norms` of one group without a ``lax.cond``: both sums, selected per layer.

    For a large tree that XLA would otherwise never write to memory, such as the updates
    that ``optax.apply_updates`` fuses into the new parameters. Handing it to a
    ``lax.cond`` writes it out, which cost a 784-1024-1024-10 step about 10%; two more
    reductions that XLA can fuse cost about 1%. For a small tree the write is cheap and
    the extra reductions are not (``UPDATES_IN_COND_LIMIT``).
    """
    sq = _plain_squares(group)
    return jnp.where(_risky(sq, group), _scaled_norms(group), jnp.sqrt(sq))


def _plain_squares(g: _Group) -> jax.Array:
    return jnp.stack([_squares(leaves, g.dtype) for leaves in g.per_layer])


def _risky(squares: jax.Array, g: _Group) -> jax.Array:
    """Layers whose plain sum may be wrong: not finite, or small enough for flushed
    subnormal squares to matter (an all-zero layer's 0 is exact, where ``top`` says so)."""
    risky = ~jnp.isfinite(squares) | (squares < g.counts * 1e-30)
    return risky & (g.top != 0) if g.top is not None else risky


def _scaled_norms(g: _Group) -> jax.Array:
    """Per-layer norms summed scaled by ``max |x|`` (``top``, computed unless given)."""
    t = g.top if g.top is not None else jnp.stack([_max_abs(x, g.dtype) for x in g.per_layer])
    sums = jnp.stack([_scaled_squares(leaves, m, g.dtype)
                      for leaves, m in zip(g.per_layer, t, strict=True)])
    norms = jnp.where(jnp.isfinite(t) & (t > 0), jnp.sqrt(sums) * t, 0)
    return jnp.where(jnp.isfinite(t), norms, t)


def _checked_layers(tree: Any, fn: str, arg: str, expected: int | None) -> _Group:
    """The float leaves of each layer, the element count of each (at least 1), the dtype."""
    layers = _split_layers(tree)
    if expected is not None and len(layers) != expected:
        raise ValueError(f"{fn}: argument {arg!r} must have {expected} layers (as many as "
                         f"'grads'); got {len(layers)}")
    per_layer = [_float_leaves(t) for _, t in layers]
    dtype = _dtype([x for leaves in per_layer for x in leaves])
    counts = jnp.asarray([max(sum(int(x.size) for x in leaves), 1) for leaves in per_layer],
                         dtype)
    return _Group(per_layer, counts, dtype)


def _summaries(group: _Group) -> tuple[_Group, dict[str, jax.Array]]:
    """Per-layer mean ``|x|``, max ``|x|`` and fraction of exact zeros of a group (the
    group gains its ``top``, for :func:`_norms`).

    Plain reductions over each leaf, one pass over the data. A ``nan`` anywhere in a layer
    makes its mean and max ``nan``; an ``inf`` (and no ``nan``) makes them ``inf``.
    """
    per_layer, counts, dtype, _ = group
    top = jnp.stack([_max_abs(leaves, dtype) for leaves in per_layer])
    total = jnp.stack([sum((jnp.sum(jnp.abs(x).astype(dtype)) for x in leaves),
                           jnp.zeros((), dtype)) for leaves in per_layer])
    zeros = jnp.stack([sum((jnp.sum(x == 0, dtype=dtype) for x in leaves),
                           jnp.zeros((), dtype)) for leaves in per_layer])
    mean = jnp.where(jnp.isfinite(top), total / counts, top)
    return group._replace(top=top), {"mean_abs": mean, "max_abs": top,
                                     "zero_fraction": zeros / counts}


def layer_stats(grads: Any, params: Any = None, updates: Any = None) -> dict[str, jax.Array]:
    """Per-layer gradient statistics, as 1-D arrays with one entry per layer. Works in jit.

    Layers are the elements of a list/tuple of parameters (the layer dicts of
    :func:`funcgrad.nn.init_mlp`), or the values of a dict (sorted keys); every float leaf
    of a layer counts (``w``, ``b``, ``gamma``, ``beta`` together).

    Keys of the result:

    * ``grad_norm`` -- ``‖g‖₂`` of the layer (computed scaled by ``max |g|``, so it does
      not overflow in float32 before the gradient itself does);
    * ``grad_mean_abs``, ``grad_max_abs`` -- mean and maximum of ``|g|``;
    * ``grad_zero_fraction`` -- the share of gradient elements that are exactly 0 (dead
      relu units give whole zero columns);
    * with ``params``: ``param_norm``; with ``updates``: ``update_norm``; with both:
      ``update_ratio = ‖update‖ / ‖param‖`` (``nan`` for a layer whose parameters are all
      zero: the ratio is undefined there).

    A ``nan`` in a layer makes its norm, mean and max ``nan``; an ``inf`` makes them
    ``inf``.

    Args:
        grads: gradients, a pytree shaped like the parameters.
        params: the parameters, or ``None``.
        updates: the optimizer's updates (what is added to the parameters), or ``None``.

    Returns:
        A dict of 1-D float arrays, each of length ``len(layer_names(grads))``.

    Raises:
        ValueError: if ``params`` or ``updates`` has another number of layers than
            ``grads``.

    Examples:
        >>> import jax.numpy as jnp
        >>> s = layer_stats([{"w": jnp.array([3.0, 4.0])}, {"w": jnp.array([0.0, 1.0])}],
        ...                 params=[{"w": jnp.ones(2)}, {"w": jnp.ones(2)}],
        ...                 updates=[{"w": jnp.zeros(2)}, {"w": jnp.array([0.0, -0.1])}])
        >>> s["grad_norm"].tolist(), s["grad_zero_fraction"].tolist()
        ([5.0, 1.0], [0.0, 0.5])
        >>> [round(r, 4) for r in s["update_ratio"].tolist()]
        [0.0, 0.0707]
    """
    g = _checked_layers(grads, "layer_stats", "grads", None)
    if not g.per_layer:
        empty = jnp.zeros((0,), g.dtype)
        return {"grad_norm": empty, "grad_mean_abs": empty, "grad_max_abs": empty,
                "grad_zero_fraction": empty}
    g, summary = _summaries(g)
    n = len(g.per_layer)
    named = [("grad_norm", g)] + [
        (key, _checked_layers(tree, "layer_stats", arg, n))
        for key, tree, arg in (("param_norm", params, "params"),
                               ("update_norm", updates, "updates")) if tree is not None]
    # large updates stay out of the cond (see _selected_norms)
    apart = updates is not None and sum(
        int(x.size) for leaves in named[-1][1].per_layer for x in leaves
    ) > UPDATES_IN_COND_LIMIT
    groups = [group for _, group in named]
    norms = [*_norms(groups[:-1]), _selected_norms(groups[-1])] if apart else _norms(groups)
    out = {"grad_norm": norms[0], "grad_mean_abs": summary["mean_abs"],
           "grad_max_abs": summary["max_abs"], "grad_zero_fraction": summary["zero_fraction"]}
    out.update({key: norm for (key, _), norm in zip(named[1:], norms[1:], strict=True)})
    if params is not None and updates is not None:
        pn, un = out["param_norm"], out["update_norm"]
        out["update_ratio"] = jnp.where(pn > 0, un / jnp.where(pn > 0, pn, 1.0), jnp.nan)
    return out
