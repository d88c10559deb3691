"""Gradient flow: per-layer gradient statistics, vanishing/exploding/dead flags, plots.

The lesson names the two ways deep training fails (vanishing and exploding gradients) and
says how to check: *plot gradient magnitudes across layers during training*. This module
makes the check one call inside ``jit`` and reproduces the lesson's cures as experiments.

* :func:`layer_stats` -- per layer: gradient norm, mean and max ``|g|``, fraction of exact
  zeros, and ``‖update‖ / ‖param‖``. Pure JAX, works inside ``jit`` and ``lax.scan``.
* :func:`diagnose` -- flags each layer ``vanishing``, ``exploding`` or ``dead``
  (thresholds documented there and in ``docs/gradient_flow.md``).
* :func:`saturation` / :func:`capture` -- the fraction of saturated sigmoid and tanh units,
  captured from the jaxpr of *any* function built from funcgrad primitives, without
  touching the model's code.
* :class:`History` -- accumulates stats on the device, fetches them every ``log_every``
  steps; :func:`funcgrad.train.fit` takes one (``flow=``).
* :func:`plot` -- PNG heatmap of gradient norm per layer over training, and the lesson's
  plot of gradient norm across the layers at chosen steps.
* :func:`find_nonfinite` -- names the first primitive whose value or gradient stops being
  finite (built on :func:`funcgrad.explain`).
* :func:`vanishing_experiment`, :func:`exploding_experiment` -- the lesson's claims,
  measured (``funcgrad flow`` on the command line).

Example:
    >>> import jax, jax.numpy as jnp
    >>> import funcgrad as fg
    >>> params = fg.nn.init_mlp(jax.random.PRNGKey(0), [4, 8, 8, 3], activation="sigmoid")
    >>> x, y = jnp.ones((5, 4)), jnp.zeros(5, jnp.int32)
    >>> loss = lambda p: fg.mean(fg.softmax_cross_entropy(
    ...     fg.nn.mlp(p, x, activation="sigmoid"), y))
    >>> stats = jax.jit(lambda p: layer_stats(jax.grad(loss)(p), p))(params)
    >>> stats["grad_norm"].shape
    (3,)
    >>> print(diagnose(stats))
    no flags (3 layers)
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._text import text_table

__all__ = [
    "DEFAULT_THRESHOLDS",
    "EXPLODING_CONFIGS",
    "SATURATING_OPS",
    "VANISHING_CONFIGS",
    "Captured",
    "Diagnosis",
    "History",
    "NetConfig",
    "NonFinite",
    "RunResult",
    "capture",
    "diagnose",
    "exploding_experiment",
    "find_nonfinite",
    "format_exploding_table",
    "format_vanishing_table",
    "layer_names",
    "layer_stats",
    "plot",
    "run_config",
    "saturated_fraction",
    "saturation",
    "vanishing_experiment",
]

#: The activations whose saturation :func:`saturation` measures.
SATURATING_OPS: tuple[str, ...] = ("sigmoid", "tanh")

#: Default thresholds of :func:`diagnose` (see its docstring for the reasoning).
DEFAULT_THRESHOLDS: dict[str, float] = {
    "vanishing_ratio": 1e-2,
    "vanishing_norm": 1e-8,
    "exploding_norm": 1e3,
    "exploding_update_ratio": 1.0,
    "dead_fraction": 0.9,
}

FLAGS: tuple[str, ...] = ("vanishing", "exploding", "dead")


# ----------------------------------------------------------------------------- layers
def _split_layers(tree: Any) -> list[tuple[str, Any]]:
    """``[(name, subtree)]``: list/tuple elements, dict values (sorted keys) or one layer."""
    if isinstance(tree, (list, tuple)):
        return [(str(i), t) for i, t in enumerate(tree)]
    if isinstance(tree, dict):
        return [(str(k), tree[k]) for k in sorted(tree)]
    return [("0", tree)]


def layer_names(tree: Any) -> list[str]:
    """The names :func:`layer_stats` gives the layers of a parameter-shaped pytree.

    A list or tuple has one layer per element (``"0"``, ``"1"``, ...), a dict one per key
    (sorted, as :func:`funcgrad.train.layer_norms`); anything else is one layer ``"0"``.

    Args:
        tree: parameters, gradients or updates.

    Returns:
        One name per layer.

    Example:
        >>> layer_names({"encoder": 1.0, "decoder": 2.0})
        ['decoder', 'encoder']
    """
    return [name for name, _ in _split_layers(tree)]


#: Above this many elements :func:`layer_stats` reduces layer by layer instead of through
#: one segment reduction, whose host-constant layer ids would then bloat the program.
_SEGMENT_LIMIT = 1 << 22


def _float_leaves(tree: Any) -> list[jax.Array]:
    return [jnp.ravel(x) for x in map(jnp.asarray, jax.tree.leaves(tree))
            if jnp.issubdtype(x.dtype, jnp.inexact)]


def _summaries(layers: Sequence[tuple[str, Any]]) -> dict[str, jax.Array]:
    """Per-layer norm, mean |x|, max |x| and fraction of exact zeros.

    All layers' elements go into one vector reduced by segment (a handful of reductions
    whatever the number of layers, so a 20-layer model compiles about as fast as a 2-layer
    one); very large models are reduced layer by layer. The norm is scaled by the largest
    finite element (float32 squares overflow above ~1.8e19); a ``nan`` anywhere in a layer
    makes its norm, mean and max ``nan``, an ``inf`` makes them ``inf``.
    """
    n = len(layers)
    per_layer = [_float_leaves(tree) for _, tree in layers]
    counts = [sum(int(x.size) for x in leaves) for leaves in per_layer]
    parts = [x for leaves in per_layer for x in leaves]
    dtype = functools.reduce(jnp.promote_types, [x.dtype for x in parts], jnp.float32)
    if sum(counts) <= _SEGMENT_LIMIT:
        flat = jnp.concatenate([x.astype(dtype) for x in parts]) if parts \
            else jnp.zeros(0, dtype)
        # a host constant: computing it in the program makes XLA constant-fold it slowly
        ids = np.repeat(np.arange(n, dtype=np.int32), counts)
        seg = functools.partial(jax.ops.segment_sum, segment_ids=ids, num_segments=n)
        segmax = functools.partial(jax.ops.segment_max, segment_ids=ids, num_segments=n)
        expand = lambda v: v[ids]
    else:
        flat = jnp.concatenate([x.astype(dtype) for x in parts])
        bounds = np.cumsum([0, *counts])
        pieces = lambda v: [v[bounds[i]:bounds[i + 1]] for i in range(n)]
        seg = lambda v: jnp.stack([jnp.sum(p) for p in pieces(v)])
        segmax = lambda v: jnp.stack([jnp.max(p, initial=0) for p in pieces(v)])
        expand = lambda v: jnp.repeat(v, np.asarray(counts), total_repeat_length=flat.size)
    count = jnp.maximum(jnp.asarray(counts, dtype), 1)
    a = jnp.abs(flat)
    nans = seg(jnp.isnan(a).astype(jnp.int32)) > 0
    infs = seg(jnp.isinf(a).astype(jnp.int32)) > 0
    finite_a = jnp.where(jnp.isfinite(a), a, 0)
    top = jnp.where(jnp.asarray(counts) > 0, segmax(finite_a), 0)  # empty: max is -inf
    scale = jnp.where(top > 0, top, 1)
    norm = jnp.sqrt(seg(jnp.square(finite_a / expand(scale)))) * scale
    bad = lambda v: jnp.where(nans, jnp.nan, jnp.where(infs, jnp.inf, v))
    return {"norm": bad(norm), "mean_abs": bad(seg(finite_a) / count), "max_abs": bad(top),
            "zero_fraction": seg((flat == 0).astype(dtype)) / count}


def _check_layers(fn: str, arg: str, tree: Any, expected: int) -> list[tuple[str, Any]]:
    layers = _split_layers(tree)
    if len(layers) != expected:
        raise ValueError(f"{fn}: argument {arg!r} has {len(layers)} layers; expected "
                         f"{expected} (as many as 'grads')")
    return layers


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

    Args:
        grads: gradients, a pytree shaped like the parameters.
        params: the parameters, or ``None``.
        updates: the optimizer's updates (what is added to the parameters), or ``None``.

    Returns:
        A dict of 1-D float arrays, each of length ``len(layer_names(grads))``.

    Raises:
        ValueError: if ``params`` or ``updates`` has another number of layers than
            ``grads``.

    Example:
        >>> import jax.numpy as jnp
        >>> s = layer_stats([{"w": jnp.array([3.0, 4.0])}, {"w": jnp.array([0.0, 1.0])}],
        ...                 params=[{"w": jnp.ones(2)}, {"w": jnp.ones(2)}],
        ...                 updates=[{"w": jnp.zeros(2)}, {"w": jnp.array([0.0, -0.1])}])
        >>> s["grad_norm"].tolist(), s["grad_zero_fraction"].tolist()
        ([5.0, 1.0], [0.0, 0.5])
        >>> [round(r, 4) for r in s["update_ratio"].tolist()]
        [0.0, 0.0707]
    """
    g_layers = _split_layers(grads)
    n = len(g_layers)
    g = _summaries(g_layers)
    out = {"grad_norm": g["norm"], "grad_mean_abs": g["mean_abs"],
           "grad_max_abs": g["max_abs"], "grad_zero_fraction": g["zero_fraction"]}
    if params is not None:
        out["param_norm"] = _summaries(_check_layers("layer_stats", "params", params, n))["norm"]
    if updates is not None:
        out["update_norm"] = _summaries(
            _check_layers("layer_stats", "updates", updates, n))["norm"]
    if params is not None and updates is not None:
        pn, un = out["param_norm"], out["update_norm"]
        out["update_ratio"] = jnp.where(pn > 0, un / jnp.where(pn > 0, pn, 1.0), jnp.nan)
    return out


# ----------------------------------------------------------------------------- diagnose
def _ranges(indices: Sequence[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2, 5"``."""
    parts, start, prev = [], None, None
    for i in list(indices) + [None]:
        if start is None:
            start = prev = i
            continue
        if i is not None and i == prev + 1:
            prev = i
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = i
    return ", ".join(parts)


@dataclasses.dataclass(frozen=True)
class Diagnosis:
    """Per-layer flags from :func:`diagnose`.

    Attributes:
        names: the layer names.
        flags: for each layer, the set of flags that fired (``"vanishing"``,
            ``"exploding"``, ``"dead"``); empty when the layer looks healthy.
        thresholds: the thresholds used.
    """

    names: tuple[str, ...]
    flags: tuple[frozenset[str], ...]
    thresholds: Mapping[str, float] = dataclasses.field(default_factory=dict)

    @property
    def any(self) -> bool:
        """Whether any flag fired on any layer."""
        return any(self.flags)

    def layers(self, flag: str) -> list[int]:
        """Indices of the layers that carry ``flag``.

        Args:
            flag: ``"vanishing"``, ``"exploding"`` or ``"dead"``.

        Returns:
            The layer indices, ascending.
        """
        if flag not in FLAGS:
            raise ValueError(f"Diagnosis.layers: unknown flag {flag!r}; expected one of "
                             f"{list(FLAGS)}")
        return [i for i, f in enumerate(self.flags) if flag in f]

    def short(self) -> str:
        """A compact summary such as ``"vanishing 0-9; dead 3"``, or ``"-"``."""
        parts = [f"{flag} {_ranges(self.layers(flag))}" for flag in FLAGS if self.layers(flag)]
        return "; ".join(parts) or "-"

    def to_dict(self) -> dict[str, list[int]]:
        """``{"vanishing": [...], "exploding": [...], "dead": [...]}`` (JSON-ready)."""
        return {flag: self.layers(flag) for flag in FLAGS}

    def __str__(self) -> str:
        if not self.any:
            return f"no flags ({len(self.names)} layers)"
        n = len(self.names)
        return "; ".join(f"{flag} in layer{'s' if len(ix) > 1 else ''} {_ranges(ix)} of {n}"
                         for flag in FLAGS if (ix := self.layers(flag)))


def diagnose(
    stats: Mapping[str, Any],
    *,
    vanishing_ratio: float = DEFAULT_THRESHOLDS["vanishing_ratio"],
    vanishing_norm: float = DEFAULT_THRESHOLDS["vanishing_norm"],
    exploding_norm: float = DEFAULT_THRESHOLDS["exploding_norm"],
    exploding_update_ratio: float = DEFAULT_THRESHOLDS["exploding_update_ratio"],
    dead_fraction: float = DEFAULT_THRESHOLDS["dead_fraction"],
    names: Sequence[str] | None = None,
) -> Diagnosis:
    """Flag each layer as vanishing, exploding or dead from :func:`layer_stats` output.

    Runs on the host (NumPy) on fetched statistics. A layer is

    * **vanishing** if its gradient norm is below ``vanishing_ratio`` times the largest
      finite layer norm (the layer learns that many times slower under SGD), or below
      ``vanishing_norm`` in absolute terms (``lr · g`` is then below the float32 spacing of
      weights of size ~0.1, about 7e-9, for any learning rate up to 1: the update rounds
      away);
    * **exploding** if its gradient norm is not finite, or above ``exploding_norm``, or if
      ``update_ratio`` (when present) is above ``exploding_update_ratio`` -- one step would
      change the layer by more than its own size. ``exploding_norm`` depends on the loss's
      scale: a mean cross-entropy gives layer norms of order 1 in a healthy network;
    * **dead** if more than ``dead_fraction`` of its gradient elements are exactly zero
      (relu units that never fire pass back exact zeros).

    Args:
        stats: a mapping with 1-D ``grad_norm`` and, optionally, ``grad_zero_fraction``
            and ``update_ratio`` (device or host arrays).
        vanishing_ratio: relative threshold for vanishing.
        vanishing_norm: absolute threshold for vanishing.
        exploding_norm: absolute threshold for exploding.
        exploding_update_ratio: threshold on ``‖update‖ / ‖param‖``.
        dead_fraction: threshold on the fraction of exact zeros.
        names: layer names (default ``"0"``, ``"1"``, ...).

    Returns:
        A :class:`Diagnosis`.

    Raises:
        ValueError: if ``grad_norm`` is missing or not 1-D, or a threshold is not positive.

    Example:
        >>> import numpy as np
        >>> d = diagnose({"grad_norm": np.array([1e-6, 1e-3, 0.5, np.inf]),
        ...               "grad_zero_fraction": np.array([0.0, 0.95, 0.0, 0.0])})
        >>> print(d)
        vanishing in layers 0-1 of 4; exploding in layer 3 of 4; dead in layer 1 of 4
    """
    thresholds = {"vanishing_ratio": vanishing_ratio, "vanishing_norm": vanishing_norm,
                  "exploding_norm": exploding_norm,
                  "exploding_update_ratio": exploding_update_ratio,
                  "dead_fraction": dead_fraction}
    for key, value in thresholds.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
            raise ValueError(f"diagnose: {key} must be a number > 0; got {value!r}")
    if "grad_norm" not in stats:
        raise ValueError(f"diagnose: argument 'stats' needs a 'grad_norm' entry (from "
                         f"layer_stats); got keys {sorted(stats)}")
    norm = np.asarray(jax.device_get(stats["grad_norm"]), np.float64)
    if norm.ndim != 1:
        raise ValueError(f"diagnose: stats['grad_norm'] must be 1-D (one entry per layer); "
                         f"got shape {norm.shape}")
    n = len(norm)
    names = tuple(str(i) for i in range(n)) if names is None else tuple(names)
    if len(names) != n:
        raise ValueError(f"diagnose: argument 'names' has {len(names)} entries; expected {n}")

    def per_layer(key: str) -> np.ndarray | None:
        if key not in stats:
            return None
        arr = np.asarray(jax.device_get(stats[key]), np.float64)
        if arr.shape != (n,):
            raise ValueError(f"diagnose: stats[{key!r}] has shape {arr.shape}; expected "
                             f"({n},) like grad_norm")
        return arr

    zeros, ratio = per_layer("grad_zero_fraction"), per_layer("update_ratio")
    finite = np.isfinite(norm)
    largest = float(np.max(norm[finite])) if finite.any() else 0.0
    flags = []
    for i in range(n):
        f = set()
        if not finite[i] or norm[i] > exploding_norm or (
                ratio is not None and np.isfinite(ratio[i]) and ratio[i] > exploding_update_ratio):
            f.add("exploding")
        if finite[i] and (norm[i] < vanishing_norm or norm[i] < vanishing_ratio * largest):
            f.add("vanishing")
        if zeros is not None and zeros[i] > dead_fraction:
            f.add("dead")
        flags.append(frozenset(f))
    return Diagnosis(names, tuple(flags), thresholds)


# ----------------------------------------------------------------------------- saturation
@dataclasses.dataclass(frozen=True)
class Captured:
    """One call of a saturating activation found by :func:`capture`.

    Attributes:
        op: the funcgrad primitive (``"sigmoid"`` or ``"tanh"``).
        scope: the ``jax.named_scope`` it ran in (``"layer_3"`` inside
            :func:`funcgrad.nn.mlp`), or ``""``.
        index: its position among the captured calls, in execution order.
        x: its input, the pre-activation.
    """

    op: str
    scope: str
    index: int
    x: jax.Array


def saturated_fraction(op: str, x: Any, eps: float = 0.01) -> jax.Array:
    """The share of elements of ``x`` where ``op`` is saturated. Works in jit.

    A unit is saturated when its local derivative is below ``eps`` times the activation's
    largest derivative (the one at 0): ``σ'(x)/σ'(0) = 4σ(x)σ(−x) < eps`` for sigmoid, and
    ``tanh'(x)/tanh'(0) = 1 − tanh²(x) < eps`` for tanh. With ``eps = 0.01`` that is
    ``|x| > 5.99`` for sigmoid and ``|x| > 2.99`` for tanh: the unit passes back less than
    1% of the gradient it could.

    Args:
        op: ``"sigmoid"`` or ``"tanh"``.
        x: pre-activations.
        eps: relative derivative threshold in ``(0, 1)``.

    Returns:
        A float32 scalar in ``[0, 1]``.

    Example:
        >>> import jax.numpy as jnp
        >>> float(saturated_fraction("sigmoid", jnp.array([0.0, 5.9, -6.1, 20.0])))
        0.5
        >>> float(saturated_fraction("tanh", jnp.array([0.0, 2.9, -3.1, 20.0])))
        0.5
    """
    if op not in SATURATING_OPS:
        raise ValueError(f"saturated_fraction: unknown op {op!r}; expected one of "
                         f"{list(SATURATING_OPS)}")
    if not 0 < eps < 1:
        raise ValueError(f"saturated_fraction: eps must be in (0, 1); got {eps!r}")
    a = jnp.abs(jnp.asarray(x, jnp.float32))
    if op == "tanh":
        a = 2 * a  # 1 - tanh²(x) = sech²(x) = 4 e^(-2|x|) / (1 + e^(-2|x|))²
    e = jnp.exp(-a)
    rel = 4 * e / jnp.square(1 + e)  # 4σ(a)σ(-a), without overflow
    return jnp.mean((rel < eps).astype(jnp.float32))


def _eval_capture(jaxpr: Any, consts: Sequence[Any], args: Sequence[Any], scope: str,
                  ops: frozenset[str], found: list[Captured]) -> list[Any]:
    """Evaluate a jaxpr equation by equation, recording the inputs of ``ops`` calls."""
    from .graph import (
        _CUSTOM_VJP_PRIMITIVES,
        _INLINE_PRIMITIVES,
        _custom_vjp_info,
        _is_dropvar,
        _is_literal,
        _join_scope,
        _registry_name,
        _sub_jaxpr,
    )

    env: dict[Any, Any] = {}

    def read(a: Any) -> Any:
        return a.val if _is_literal(a) else env[a]

    for v, c in zip(jaxpr.constvars, consts, strict=True):
        env[v] = c
    for v, a in zip(jaxpr.invars, args, strict=True):
        env[v] = a
    for eqn in jaxpr.eqns:
        invals = [read(a) for a in eqn.invars]
        name = eqn.primitive.name
        eqn_scope = _join_scope(scope, str(eqn.source_info.name_stack))
        sub = _sub_jaxpr(eqn.params) if name in _INLINE_PRIMITIVES else None
        if sub is not None:
            outs = _eval_capture(sub[0], sub[1], invals, eqn_scope, ops, found)
        else:
            if name in _CUSTOM_VJP_PRIMITIVES:
                reg = _registry_name(_custom_vjp_info(eqn.params)[0])
                if reg in ops:
                    x = invals[eqn.params.get("num_consts", 0)]
                    found.append(Captured(reg, eqn_scope, len(found), x))
            params = eqn.primitive.get_bind_params(eqn.params)
            manager = getattr(getattr(eqn, "ctx", None), "manager", None)
            with manager if manager is not None else contextlib.nullcontext():
                if isinstance(params, tuple):  # older JAX: (subfuns, params)
                    out = eqn.primitive.bind(*params[0], *invals, **params[1])
                else:
                    out = eqn.primitive.bind(*invals, **params)
            outs = list(out) if eqn.primitive.multiple_results else [out]
        for v, o in zip(eqn.outvars, outs, strict=True):
            if not _is_dropvar(v):
                env[v] = o
    return [read(a) for a in jaxpr.outvars]


def _check_ops(fn: str, ops: Sequence[str]) -> frozenset[str]:
    ops = (ops,) if isinstance(ops, str) else tuple(ops)
    bad = [o for o in ops if o not in SATURATING_OPS]
    if bad or not ops:
        raise ValueError(f"{fn}: argument 'ops' must name some of {list(SATURATING_OPS)}; "
                         f"got {list(ops)}")
    return frozenset(ops)


def capture(fn: Callable[..., Any], *args: Any, ops: Sequence[str] = SATURATING_OPS,
            **kwargs: Any) -> tuple[Any, list[Captured]]:
    """Run ``fn`` and capture the inputs of its sigmoid and tanh calls, without editing it.

    ``fn`` is traced to a jaxpr; every funcgrad primitive appears there as one
    ``custom_vjp_call``, which is mapped back to the registry (as :func:`funcgrad.explain`
    does). The jaxpr is then evaluated equation by equation and the inputs of the ``ops``
    calls are kept. Calls inside ``jax.jit`` functions and ``jax.checkpoint`` are seen;
    calls inside ``lax.scan``/``cond``/``while`` bodies are not. Works inside ``jit``.

    Args:
        fn: a function built from funcgrad primitives.
        *args: its arguments (arrays or pytrees of arrays; bind other options with
            ``functools.partial``).
        ops: which activations to capture, a subset of :data:`SATURATING_OPS`.
        **kwargs: keyword arguments for ``fn`` (arrays or pytrees of arrays).

    Returns:
        ``(fn's output, [Captured, ...])`` with the calls in execution order.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> import funcgrad as fg
        >>> params = fg.nn.init_mlp(jax.random.PRNGKey(0), [2, 4, 4, 1], activation="tanh")
        >>> out, calls = capture(lambda p, x: fg.nn.mlp(p, x, activation="tanh"),
        ...                      params, jnp.ones((3, 2)))
        >>> [(c.op, c.scope, c.x.shape) for c in calls]
        [('tanh', 'layer_0', (3, 4)), ('tanh', 'layer_1', (3, 4))]
    """
    opset = _check_ops("capture", ops)
    flat, in_tree = jax.tree.flatten((args, kwargs))

    def flat_fn(*leaves: Any) -> Any:
        a, k = jax.tree.unflatten(in_tree, leaves)
        return fn(*a, **k)

    closed, out_shape = jax.make_jaxpr(flat_fn, return_shape=True)(*flat)
    found: list[Captured] = []
    outs = _eval_capture(closed.jaxpr, closed.consts, flat, "", opset, found)
    return jax.tree.unflatten(jax.tree.structure(out_shape), outs), found


def saturation(fn: Callable[..., Any], *args: Any, eps: float = 0.01,
               ops: Sequence[str] = SATURATING_OPS, **kwargs: Any) -> jax.Array:
    """Fraction of saturated units of every sigmoid/tanh call in ``fn``. Works in jit.

    Uses :func:`capture` (no change to the model) and :func:`saturated_fraction` (the
    definition of saturated).

    Args:
        fn: a function built from funcgrad primitives, e.g. ``lambda p, x: mlp(p, x)``.
        *args: its arguments.
        eps: relative derivative threshold (0.01: ``|x| > 5.99`` for sigmoid, ``> 2.99``
            for tanh).
        ops: which activations to measure.
        **kwargs: keyword arguments for ``fn``.

    Returns:
        A 1-D float32 array, one entry per captured call in execution order (for
        :func:`funcgrad.nn.mlp` one per hidden layer); empty if there is none.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> import funcgrad as fg
        >>> f = lambda x: fg.sigmoid(fg.mul(x, 10.0))
        >>> saturation(f, jnp.array([0.0, 0.1, 1.0, -2.0])).tolist()
        [0.5]
    """
    _, calls = capture(fn, *args, ops=ops, **kwargs)
    if not calls:
        return jnp.zeros((0,), jnp.float32)
    return jnp.stack([saturated_fraction(c.op, c.x, eps) for c in calls])


# ----------------------------------------------------------------------------- history
def _jsonable(value: Any) -> Any:
    """NumPy values to JSON-ready Python (non-finite floats become ``None``)."""
    arr = np.asarray(value)
    if arr.dtype == bool:
        return arr.tolist()
    if np.issubdtype(arr.dtype, np.integer):
        return arr.tolist()
    flat = [float(f"{v:.5g}") if math.isfinite(v) else None
            for v in arr.astype(np.float64).ravel().tolist()]
    if arr.ndim == 0:
        return flat[0]
    return np.array(flat, dtype=object).reshape(arr.shape).tolist()


class History:
    """Per-step statistics, kept on the device and fetched every ``log_every`` steps.

    :meth:`append` stores the (device) arrays of one step, or of K steps stacked on a
    leading axis (from ``lax.scan``), without a host transfer. Once ``log_every`` steps
    are pending, they are fetched in one ``jax.device_get`` and appended to
    :attr:`records`; :meth:`fetch` does that on demand. :meth:`measure` is the function to
    call inside a jitted step (:func:`funcgrad.train.fit` does, given ``flow=history``).

    Attributes:
        log_every: pending steps that trigger a fetch.
        apply_fn: ``apply_fn(params, x)``; when set, :meth:`measure` also records the
            ``saturation`` of its sigmoid/tanh layers on the step's batch.
        eps: saturation threshold (see :func:`saturated_fraction`).
        on_fetch: called with the list of new host records after every fetch.
        records: host records, ``{"step": int, key: np.ndarray, ...}``, in step order.
        fetches: how many host transfers have happened.

    Example:
        >>> import jax.numpy as jnp
        >>> h = History(log_every=2)
        >>> for step in range(5):
        ...     h.append({"grad_norm": jnp.array([1.0, 0.1]) * step}, step)
        >>> len(h.records), h.fetches, len(h)
        (4, 2, 5)
        >>> h.array("grad_norm").shape
        (5, 2)
    """

    def __init__(self, log_every: int = 50, *, apply_fn: Callable | None = None,
                 eps: float = 0.01,
                 on_fetch: Callable[[list[dict[str, Any]]], None] | None = None) -> None:
        if not isinstance(log_every, int) or isinstance(log_every, bool) or log_every < 1:
            raise ValueError(f"History: log_every must be an int >= 1; got {log_every!r}")
        self.log_every = log_every
        self.apply_fn = apply_fn
        self.eps = eps
        self.on_fetch = on_fetch
        self.records: list[dict[str, Any]] = []
        self.fetches = 0
        self._pending: list[tuple[np.ndarray, dict[str, Any], bool]] = []
        self._pending_steps = 0
        self._next_step = 0

    def measure(self, params: Any, grads: Any, updates: Any = None,
                batch: Any = None) -> dict[str, jax.Array]:
        """The statistics of one step, computed inside jit.

        Args:
            params: parameters before the step.
            grads: their gradients.
            updates: the optimizer's updates, or ``None``.
            batch: the step's batch ``(x, ...)``; with :attr:`apply_fn` set, saturation is
                measured on ``x``.

        Returns:
            :func:`layer_stats` output, plus ``saturation`` when measurable.
        """
        stats = layer_stats(grads, params, updates)
        if self.apply_fn is not None and batch is not None:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            stats["saturation"] = saturation(self.apply_fn, params, x, eps=self.eps)
        return stats

    def append(self, stats: Mapping[str, Any], steps: int | Sequence[int] | None = None
               ) -> None:
        """Store one step's statistics (or K stacked steps') without a host transfer.

        Args:
            stats: a dict of arrays (device arrays stay on the device until fetched).
            steps: the step number (then ``stats`` is one step), or a sequence of K step
                numbers (then every array has a leading axis of length K); default: the
                step after the last one appended.
        """
        if steps is None:
            steps = self._next_step
        stacked = np.ndim(steps) > 0
        steps_arr = np.atleast_1d(np.asarray(steps, np.int64))
        if stacked:
            for key, value in stats.items():
                if np.shape(value)[:1] != (len(steps_arr),):
                    raise ValueError(f"History.append: stats[{key!r}] has shape "
                                     f"{np.shape(value)}; expected a leading axis of length "
                                     f"{len(steps_arr)} (one row per step in 'steps')")
        self._pending.append((steps_arr, dict(stats), stacked))
        self._pending_steps += len(steps_arr)
        self._next_step = int(steps_arr[-1]) + 1
        if self._pending_steps >= self.log_every:
            self.fetch()

    def fetch(self) -> list[dict[str, Any]]:
        """Transfer the pending steps to the host (one ``device_get``).

        Returns:
            The new records (also appended to :attr:`records`); empty if none pending.
        """
        if not self._pending:
            return []
        host = jax.device_get([s for _, s, _ in self._pending])
        new: list[dict[str, Any]] = []
        for (steps_arr, _, stacked), stats in zip(self._pending, host, strict=True):
            for j, step in enumerate(steps_arr):
                rec: dict[str, Any] = {"step": int(step)}
                for key, value in stats.items():
                    rec[key] = np.asarray(value[j] if stacked else value)
                new.append(rec)
        self._pending, self._pending_steps = [], 0
        self.records.extend(new)
        self.fetches += 1
        if self.on_fetch is not None:
            self.on_fetch(new)
        return new

    def __len__(self) -> int:
        return len(self.records) + self._pending_steps

    @property
    def steps(self) -> np.ndarray:
        """The step numbers of all records (fetches pending steps first)."""
        self.fetch()
        return np.array([r["step"] for r in self.records], np.int64)

    def keys(self) -> list[str]:
        """The statistics recorded (fetches pending steps first)."""
        self.fetch()
        return [k for k in (self.records[0] if self.records else {}) if k != "step"]

    def array(self, key: str) -> np.ndarray:
        """One statistic over time, shape ``(steps, ...)`` (fetches pending steps first).

        Args:
            key: e.g. ``"grad_norm"``.

        Returns:
            The stacked values.
        """
        self.fetch()
        if not self.records or key not in self.records[0]:
            raise KeyError(f"History.array: no statistic {key!r}; recorded: {self.keys()}")
        return np.stack([r[key] for r in self.records])

    def to_dict(self) -> dict[str, Any]:
        """The history as JSON-ready lists: ``{"steps": [...], key: [[...], ...]}``."""
        return {"steps": self.steps.tolist(),
                **{k: _jsonable(self.array(k)) for k in self.keys()}}


# ----------------------------------------------------------------------------- plots
def _prefix(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    if p.is_dir() or str(path).endswith(("/", os.sep)):
        return p / "flow"
    return p.with_suffix("") if p.suffix.lower() == ".png" else p


def _grid(n: int) -> tuple[int, int]:
    cols = min(n, 3)
    return math.ceil(n / cols), cols


def _default_steps(steps: np.ndarray) -> list[int]:
    if len(steps) == 0:
        return []
    picks = [steps[0], steps[len(steps) // 4], steps[len(steps) // 2], steps[-1]]
    return sorted({int(s) for s in picks})


def plot_if_available(history: History | Mapping[str, History], path: str | os.PathLike[str],
                      **kwargs: Any) -> list[Path]:
    """Like :func:`plot`, but return ``[]`` instead of raising when matplotlib is missing.

    Args:
        history: as in :func:`plot`.
        path: as in :func:`plot`.
        **kwargs: options of :func:`plot`.

    Returns:
        The paths written, or ``[]`` without matplotlib.
    """
    try:
        return plot(history, path, **kwargs)
    except ImportError:
        return []


def plot(history: History | Mapping[str, History], path: str | os.PathLike[str], *,
         key: str = "grad_norm", steps: Sequence[int] | None = None,
         title: str | None = None) -> list[Path]:
    """Draw gradient flow as PNG pictures (needs matplotlib).

    Writes ``<prefix>_heatmap.png`` (``log10`` of ``key`` per layer over training, one
    panel per history; non-finite values grey), ``<prefix>_layers.png`` (``key`` across
    the layers at the chosen steps, log scale: the lesson's plot) and, when the histories
    hold a scalar ``loss``, ``<prefix>_loss.png``.

    Args:
        history: a :class:`History`, or a mapping ``name -> History`` for side-by-side
            panels.
        path: a directory (pictures are named ``flow_*.png``) or a file prefix
            (``out/run`` gives ``out/run_heatmap.png``; a ``.png`` suffix is dropped).
        key: the per-layer statistic to draw.
        steps: the steps of the across-layers plot (default: first, 1/4, 1/2 and last);
            the nearest recorded step is used.
        title: a title over the figures.

    Returns:
        The paths written.

    Raises:
        ImportError: if matplotlib is not installed.
    """
    from matplotlib import colormaps
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    hists = {"": history} if isinstance(history, History) else dict(history)
    if not hists:
        raise ValueError("plot: argument 'history' is empty; expected a History or a "
                         "non-empty mapping of them")
    for name, h in hists.items():
        if not isinstance(h, History) or len(h) == 0:
            what = "an empty History" if isinstance(h, History) else type(h).__name__
            raise ValueError(f"plot: history {name!r} must be a non-empty History; got "
                             f"{what}")
    prefix = _prefix(path)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    data = {name: (h.steps, h.array(key).astype(np.float64)) for name, h in hists.items()}
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = {n: np.where(np.isfinite(v) & (v > 0), np.log10(v), np.nan)
                for n, (_, v) in data.items()}
    finite = np.concatenate([v[np.isfinite(v)] for v in logs.values()] + [np.zeros(0)])
    # one colour scale for all panels, robust to the few huge values just before a run
    # diverges (values beyond it take the end colours)
    vmin, vmax = (float(np.percentile(finite, 0.5)), float(np.percentile(finite, 99.5))) \
        if finite.size else (-1.0, 1.0)
    if vmax <= vmin:
        vmin, vmax = vmin - 1, vmax + 1
    rows, cols = _grid(len(hists))

    # 1. heatmap: layer x step
    fig = Figure(figsize=(4.6 * cols, 3.3 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    cmap = colormaps["viridis"].with_extremes(bad="0.75")
    image = None
    for ax, (name, (st, _)) in zip(axes, data.items(), strict=False):
        lg = logs[name]
        image = ax.imshow(np.ma.masked_invalid(lg.T), aspect="auto", origin="lower",
                          cmap=cmap, norm=Normalize(vmin, vmax), interpolation="nearest",
                          extent=(st[0] - 0.5, st[-1] + 0.5, -0.5, lg.shape[1] - 0.5))
        ax.set(xlabel="step", ylabel="layer", title=name or f"{key} per layer")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        bad = np.nonzero(~np.isfinite(data[name][1]).all(axis=1))[0]
        if bad.size:
            ax.text(0.98, 0.96, f"non-finite from step {int(st[bad[0]])}", ha="right",
                    va="top", transform=ax.transAxes, fontsize="small")
    for ax in axes[len(data):]:
        ax.set_visible(False)
    if image is not None:
        fig.colorbar(image, ax=list(axes[:len(data)]), label=f"log10 {key}", extend="both")
    if title:
        fig.suptitle(title)
    written.append(prefix.with_name(prefix.name + "_heatmap.png"))
    fig.savefig(written[-1], dpi=90)

    # 2. the lesson's plot: gradient magnitude across the layers at chosen steps
    fig = Figure(figsize=(4.6 * cols, 3.3 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False, sharey=True).ravel()
    for ax, (name, (st, values)) in zip(axes, data.items(), strict=False):
        chosen = _default_steps(st) if steps is None else list(steps)
        for s in chosen:
            j = int(np.argmin(np.abs(st - s)))
            v = np.where(np.isfinite(values[j]) & (values[j] > 0), values[j], np.nan)
            ax.plot(np.arange(len(v)), v, "o-", ms=3, label=f"step {int(st[j])}")
        ax.set_yscale("log")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set(xlabel="layer (input → output)", ylabel=key, title=name or f"{key} across layers")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    for ax in axes[len(data):]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    written.append(prefix.with_name(prefix.name + "_layers.png"))
    fig.savefig(written[-1], dpi=90)

    # 3. loss curves, when recorded
    losses = {n: h for n, h in hists.items() if "loss" in h.keys()}
    if losses:
        fig = Figure(figsize=(6.4, 3.8), layout="constrained")
        ax = fig.subplots()
        firsts, lows = [], []
        for h in losses.values():
            loss = h.array("loss").astype(np.float64)
            ok = loss[np.isfinite(loss) & (loss > 0)]
            if ok.size:
                firsts.append(ok[0])
                lows.append(ok.min())
        for name, h in losses.items():
            st, loss = h.steps, h.array("loss").astype(np.float64)
            line, = ax.plot(st, np.where(np.isfinite(loss) & (loss > 0), loss, np.nan),
                            label=name or "loss")
            bad = np.nonzero(~np.isfinite(loss))[0]
            if bad.size:
                ax.axvline(st[bad[0]], color=line.get_color(), ls=":", lw=1)
        ax.set(xlabel="step", ylabel="training loss (minibatch)", yscale="log",
               title=(title + ": " if title else "") + "loss (dotted: first non-finite step)")
        if firsts:  # a diverging run would flatten the others: cut at 10x the first losses
            ax.set_ylim(0.5 * min(lows), 10 * max(firsts))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
        written.append(prefix.with_name(prefix.name + "_loss.png"))
        fig.savefig(written[-1], dpi=90)
    return written


# ----------------------------------------------------------------------------- non-finite
@dataclasses.dataclass(frozen=True)
class NonFinite:
    """Where a computation first stops being finite (from :func:`find_nonfinite`).

    Attributes:
        phase: ``"input"`` (an argument already is), ``"forward"`` (the node's value) or
            ``"backward"`` (the gradient the node's rule passes to one of its inputs).
        node: the node's name in :func:`funcgrad.explain`'s graph.
        op: the operation (a funcgrad primitive's registry name such as ``"log"``).
        primitive: whether ``op`` is a funcgrad primitive.
        inputs: the node's input names.
        detail: a summary of the offending value.
        input: for ``"backward"``, the input whose gradient is not finite.
    """

    phase: str
    node: str
    op: str
    primitive: bool
    inputs: tuple[str, ...]
    detail: str
    input: str = ""

    def __str__(self) -> str:
        what = f"funcgrad primitive {self.op!r}" if self.primitive else f"operation {self.op!r}"
        if self.phase == "input":
            return f"input {self.node!r} is not finite: {self.detail}"
        if self.phase == "forward":
            return (f"forward: {what} (node {self.node!r}, inputs {list(self.inputs)}) "
                    f"returned a non-finite value: {self.detail}")
        return (f"backward: {what} (node {self.node!r}) passed a non-finite gradient to "
                f"its input {self.input!r}: {self.detail}")


def _all_finite(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, tuple):
        return all(_all_finite(v) for v in value)
    arr = np.asarray(value)
    return not np.issubdtype(arr.dtype, np.inexact) or bool(np.all(np.isfinite(arr)))


def find_nonfinite(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> NonFinite | None:
    """Name the first operation whose forward value, or backward gradient, is not finite.

    Traces ``fn`` with :func:`funcgrad.explain` (one node per funcgrad primitive call, in
    topological order). The forward pass is scanned in order: the first node whose value
    holds ``inf`` or ``nan`` is reported. If every value is finite, the backward pass is
    scanned in the order backpropagation runs (output to inputs): the first node whose
    rule turns a finite incoming gradient into a non-finite one for an input is reported.

    Args:
        fn: a function returning a scalar loss, as for :func:`funcgrad.explain`.
        *args: its arguments.
        **kwargs: its keyword arguments.

    Returns:
        A :class:`NonFinite`, or ``None`` when every value and gradient is finite.

    Example:
        >>> import jax.numpy as jnp
        >>> import funcgrad as fg
        >>> loss = lambda x: fg.sum(fg.log(fg.relu(x)))
        >>> r = find_nonfinite(loss, jnp.array([1.0, -1.0, 2.0]))
        >>> r.phase, r.op
        ('forward', 'log')
        >>> find_nonfinite(loss, jnp.array([1.0, 3.0])) is None
        True
    """
    from .graph import explain, summarize

    graph = explain(fn, *args, **kwargs)
    for node in graph.all_nodes:
        if not _all_finite(node.value):
            phase = "input" if node.kind in ("input", "const") else "forward"
            return NonFinite(phase, node.name, node.op, node.primitive, node.input_names,
                             summarize(node.value))
    for node in reversed(graph.all_nodes):
        if node.kind not in ("op", "group") or node.grad is None \
                or not _all_finite(node.grad):
            continue
        for src in dict.fromkeys(node.inputs):
            if src.grad is None:
                continue
            share = graph.edge_grad(src, node)
            if not _all_finite(share):
                return NonFinite("backward", node.name, node.op, node.primitive,
                                 node.input_names, summarize(share), src.name)
    return None


# ----------------------------------------------------------------------------- experiments
@dataclasses.dataclass(frozen=True)
class NetConfig:
    """One network and optimizer setting of the lesson's experiments.

    Attributes:
        name: a label for tables and plots.
        activation: hidden activation (a name in :data:`funcgrad.nn.ACTIVATIONS`).
        init: ``"he"``, ``"glorot"`` or ``"normal"``.
        scale: the init gain (He/Glorot) or standard deviation (normal).
        depth_scaled: multiply the init gain by ``1/sqrt(depth)`` (residual branches).
        residual: skip connections between hidden layers.
        batch_norm: batch-normalise hidden layers.
        learning_rate: SGD step size.
        clip_norm: ``clip_by_global_norm`` threshold, or ``None``.
    """

    name: str
    activation: str = "relu"
    init: str = "he"
    scale: float = 1.0
    depth_scaled: bool = False
    residual: bool = False
    batch_norm: bool = False
    learning_rate: float = 0.05
    clip_norm: float | None = None


#: The vanishing-gradient experiment: 20-layer, 32-wide MLPs on the digits.
VANISHING_CONFIGS: tuple[NetConfig, ...] = (
    NetConfig("sigmoid, normal(1) init", "sigmoid", "normal", 1.0),
    NetConfig("sigmoid, Glorot init", "sigmoid", "glorot"),
    NetConfig("tanh, Glorot init", "tanh", "glorot"),
    NetConfig("relu, He init", "relu", "he"),
    NetConfig("relu, He, residual", "relu", "he", residual=True),
    NetConfig("relu, He/sqrt(depth), residual", "relu", "he", depth_scaled=True,
              residual=True),
    NetConfig("sigmoid, normal(1), batch norm", "sigmoid", "normal", 1.0, batch_norm=True),
)

#: The exploding-gradient experiment: the same MLP shape, relu, He init with gain 1.5.
EXPLODING_CONFIGS: tuple[NetConfig, ...] = (
    NetConfig("He x1.5, lr 0.05", "relu", "he", 1.5, learning_rate=0.05),
    NetConfig("He x1.5, lr 0.05, clip 1.0", "relu", "he", 1.5, learning_rate=0.05,
              clip_norm=1.0),
    NetConfig("He x1.5, lr 1e-4", "relu", "he", 1.5, learning_rate=1e-4),
    NetConfig("He x1, lr 0.05", "relu", "he", 1.0, learning_rate=0.05),
)


@dataclasses.dataclass
class RunResult:
    """What :func:`run_config` measured.

    Attributes:
        config: the :class:`NetConfig`.
        settings: depth, width, steps, batch size, seed, probe size.
        init: :func:`layer_stats` (plus ``saturation`` and ``loss``) on the fixed probe
            batch before training, as NumPy arrays.
        final: the same after training.
        init_flags: :func:`diagnose` of ``init``.
        final_flags: :func:`diagnose` of ``final``.
        history: per-step minibatch statistics with ``loss`` and ``finite``.
        first_nonfinite: the first step whose loss or gradient was not finite, or
            ``None``. Steps are plain SGD steps: nothing is skipped.
    """

    config: NetConfig
    settings: dict[str, Any]
    init: dict[str, np.ndarray]
    final: dict[str, np.ndarray]
    init_flags: Diagnosis
    final_flags: Diagnosis
    history: History
    first_nonfinite: int | None

    @staticmethod
    def _ratio(stats: Mapping[str, np.ndarray]) -> float:
        g = stats["grad_norm"]
        return float(g[0] / g[-1]) if g[-1] != 0 else float("nan")

    @property
    def init_ratio(self) -> float:
        """First layer's gradient norm over the last layer's, before training."""
        return self._ratio(self.init)

    @property
    def final_ratio(self) -> float:
        """First layer's gradient norm over the last layer's, after training."""
        return self._ratio(self.final)

    def to_dict(self) -> dict[str, Any]:
        """Everything as JSON-ready values (non-finite numbers become ``None``)."""
        return {
            "config": dataclasses.asdict(self.config),
            "settings": self.settings,
            "first_to_last_ratio": {"init": _jsonable(self.init_ratio),
                                    "final": _jsonable(self.final_ratio)},
            "init": {k: _jsonable(v) for k, v in self.init.items()},
            "final": {k: _jsonable(v) for k, v in self.final.items()},
            "flags": {"init": self.init_flags.to_dict(), "final": self.final_flags.to_dict()},
            "first_nonfinite_step": self.first_nonfinite,
            # per step: the per-layer norms and the loss (the other statistics are kept for
            # the probe batch above, which keeps the file small)
            "history": {k: v for k, v in self.history.to_dict().items()
                        if k in ("steps", "grad_norm", "loss", "finite")},
        }


@functools.cache
def _digits() -> tuple[np.ndarray, np.ndarray]:
    """The digits' training split, standardised as ``funcgrad train`` does."""
    from . import data

    ds = data.digits(seed=0)
    mu, sd = ds.x_train.mean(axis=0), ds.x_train.std(axis=0) + 0.1
    return ((ds.x_train - mu) / sd).astype(np.float32), ds.y_train.astype(np.int32)


@functools.cache
def _programs(activation: str, residual: bool, clipped: bool) -> tuple[Callable, Callable]:
    """Two jitted programs: probe statistics, and ``k`` plain SGD steps in one scan.

    Cached on the structure only: the learning rate, clip threshold and init are values
    (``inject_hyperparams`` leaves), so configurations differing only there share them,
    and the probe program is compiled once for the measurements before and after.
    """
    import optax

    from . import nn, train

    def apply_fn(p: Any, x: jax.Array) -> jax.Array:
        return nn.mlp(p, x, activation=activation, residual=residual)

    loss_fn = train.classification_loss(apply_fn)
    tx = train.optimizer(0.1, clip_norm=1.0 if clipped else None)

    def grads_at(p: Any, batch: Any) -> tuple[jax.Array, Any]:
        (loss, _), g = jax.value_and_grad(loss_fn, has_aux=True)(p, batch)
        return loss, g

    def probe_stats(p: Any, opt: Any, probe: Any) -> dict[str, jax.Array]:
        loss, g = grads_at(p, probe)
        updates, _ = tx.update(g, opt, p)
        stats = layer_stats(g, p, updates)
        stats["saturation"] = saturation(apply_fn, p, probe[0])
        stats["loss"] = loss
        return stats

    def steps(params: Any, opt: Any, x: jax.Array, y: jax.Array, rows: jax.Array
              ) -> tuple[Any, Any, dict[str, jax.Array]]:
        ones = jnp.ones(rows.shape[1], jnp.float32)

        def body(carry: Any, idx: jax.Array) -> tuple[Any, dict[str, jax.Array]]:
            p, o = carry
            loss, g = grads_at(p, (x[idx], y[idx], ones))
            updates, o = tx.update(g, o, p)
            stats = layer_stats(g)
            stats["loss"] = loss
            stats["finite"] = jnp.isfinite(loss) & jnp.all(jnp.isfinite(stats["grad_norm"]))
            return (optax.apply_updates(p, updates), o), stats

        (p, o), per_step = jax.lax.scan(body, (params, opt), rows)
        return p, o, per_step

    return jax.jit(probe_stats), jax.jit(steps)


def run_config(
    config: NetConfig,
    *,
    depth: int = 20,
    width: int = 32,
    steps: int = 300,
    batch_size: int = 64,
    seed: int = 0,
    probe_size: int = 512,
    data: tuple[np.ndarray, np.ndarray] | None = None,
) -> RunResult:
    """Train one configuration with plain SGD and measure its gradient flow.

    The MLP has ``depth`` dense layers (``depth - 1`` hidden layers of ``width`` units).
    Minibatches are drawn with replacement from ``data`` by a fixed key; statistics are
    measured on a fixed probe batch (the first ``probe_size`` examples) before and after
    ``steps`` steps, and on every minibatch during training (kept in a :class:`History`).
    Steps are never skipped, so a run that diverges shows its first non-finite step.

    Args:
        config: the network and optimizer.
        depth: number of dense layers, >= 2.
        width: hidden width.
        steps: SGD steps.
        batch_size: minibatch size.
        seed: seed of the init and of the minibatch draw.
        probe_size: examples in the probe batch.
        data: ``(x, y)``; default the standardised digits' training split.

    Returns:
        A :class:`RunResult`.
    """
    from . import nn, train

    for arg, value, low in (("depth", depth, 2), ("width", width, 1), ("steps", steps, 1),
                            ("batch_size", batch_size, 1), ("probe_size", probe_size, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"run_config: {arg} must be an int >= {low}; got {value!r}")
    x, y = _digits() if data is None else (np.asarray(data[0], np.float32),
                                           np.asarray(data[1], np.int32))
    sizes = [x.shape[1]] + [width] * (depth - 1) + [int(y.max()) + 1]
    scale = config.scale / math.sqrt(depth) if config.depth_scaled else config.scale
    key_init, key_data = jax.random.split(jax.random.PRNGKey(seed))
    params = nn.init_mlp(key_init, sizes, activation=config.activation, init=config.init,
                         scale=scale, residual=config.residual, batch_norm=config.batch_norm)
    tx = train.optimizer(config.learning_rate, clip_norm=config.clip_norm)
    opt = tx.init(params)
    rows = jax.random.randint(key_data, (steps, batch_size), 0, len(x))
    n = min(probe_size, len(x))
    probe = (x[:n], y[:n], np.ones(n, np.float32))
    probe_fn, steps_fn = _programs(config.activation, config.residual,
                                   config.clip_norm is not None)
    init = probe_fn(params, opt, probe)
    trained, opt, per_step = steps_fn(params, opt, x, y, rows)
    final = probe_fn(trained, opt, probe)
    history = History(log_every=steps)
    history.append(per_step, steps=range(steps))
    init, final = jax.device_get((init, final))
    init = {k: np.asarray(v) for k, v in init.items()}
    final = {k: np.asarray(v) for k, v in final.items()}
    finite = history.array("finite")
    bad = np.nonzero(~finite)[0]
    settings = {"depth": depth, "width": width, "steps": steps, "batch_size": batch_size,
                "seed": seed, "probe_size": n, "optimizer": "plain SGD (momentum 0)",
                "init_scale": scale}
    return RunResult(config, settings, init, final, diagnose(init), diagnose(final),
                     history, int(history.steps[bad[0]]) if bad.size else None)


def vanishing_experiment(configs: Sequence[NetConfig] = VANISHING_CONFIGS,
                         **kwargs: Any) -> list[RunResult]:
    """The lesson's vanishing-gradient experiment: one :func:`run_config` per network.

    Expected (fixed seeds, default sizes): the sigmoid network is flagged vanishing in
    its early layers; relu/He, the depth-scaled residual and the batch-norm networks are
    not flagged. The plain He-init residual network is not vanishing but exploding: its
    branches double the signal's variance per block (see ``docs/gradient_flow.md``).

    Args:
        configs: the networks.
        **kwargs: passed to :func:`run_config` (``depth``, ``width``, ``steps``, ...).

    Returns:
        One :class:`RunResult` per configuration.
    """
    return [run_config(c, **kwargs) for c in configs]


def exploding_experiment(configs: Sequence[NetConfig] = EXPLODING_CONFIGS,
                         **kwargs: Any) -> list[RunResult]:
    """The lesson's exploding-gradient experiment and its three cures.

    Expected: with a large init gain and no clipping the loss stops being finite within a
    few steps; ``clip_by_global_norm``, a lower learning rate or a proper (He x1) init keep
    it finite and falling.

    Args:
        configs: the settings.
        **kwargs: passed to :func:`run_config`.

    Returns:
        One :class:`RunResult` per configuration.
    """
    return [run_config(c, **kwargs) for c in configs]


def _num(v: float) -> str:
    return "nan" if not math.isfinite(v) else f"{v:.2g}" if abs(v) < 1e4 and abs(v) >= 0.1 \
        else f"{v:.1e}"


def _after(r: RunResult) -> str:
    """Flags after training; a run that diverged shows that instead (its flags would only
    describe NaN parameters)."""
    return "diverged (NaN)" if r.first_nonfinite is not None else r.final_flags.short()


def _sat(stats: Mapping[str, np.ndarray]) -> str:
    s = stats.get("saturation")
    return "-" if s is None or s.size == 0 else f"{100 * float(np.mean(s)):.0f}%"


def format_vanishing_table(results: Sequence[RunResult]) -> str:
    """The vanishing experiment's table: first/last gradient ratio, flags, saturation.

    Args:
        results: from :func:`vanishing_experiment`.

    Returns:
        A plain-text table.
    """
    if not results:
        return "(no results)"
    n = results[0].settings["steps"]
    rows = [[r.config.name, _num(r.init_ratio), r.init_flags.short(), _sat(r.init),
             _num(r.final_ratio), _after(r), _sat(r.final),
             f"{_num(float(r.init['loss']))} -> {_num(float(r.final['loss']))}",
             "-" if r.first_nonfinite is None else str(r.first_nonfinite)]
            for r in results]
    return text_table(rows, ["network", "g0/gL init", "flags init", "sat init",
                         f"g0/gL {n}", f"flags after {n}", f"sat {n}", "probe loss",
                         "non-finite at"])


def format_exploding_table(results: Sequence[RunResult]) -> str:
    """The exploding experiment's table: loss, gradient norm, first non-finite step.

    Args:
        results: from :func:`exploding_experiment`.

    Returns:
        A plain-text table.
    """
    if not results:
        return "(no results)"
    n = results[0].settings["steps"]
    rows = []
    for r in results:
        loss = r.history.array("loss").astype(np.float64)
        tail = loss[-min(20, len(loss)):]
        rows.append([r.config.name, _num(float(r.init["loss"])),
                     _num(float(np.max(r.init["grad_norm"]))),
                     "-" if r.first_nonfinite is None else str(r.first_nonfinite),
                     _num(float(np.mean(tail))), _num(float(r.final["loss"])),
                     r.init_flags.short(), _after(r)])
    return text_table(rows, ["run", "loss step 0", "max layer |g| step 0", "non-finite at",
                         f"loss last 20 of {n}", "probe loss after", "flags step 0",
                         f"flags after {n}"])
