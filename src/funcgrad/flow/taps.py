"""Taps: the gradient reaching every primitive call, inside ``jit``, ``vmap`` and ``lax.scan``.

``funcgrad.tap_grad(fn)(*args)`` returns ``(value, grads, taps)``: ``jax.value_and_grad``'s
two results, and for every funcgrad primitive call in ``fn`` a :class:`Tap` record of the
cotangent that reaches the call's output (``dL/dnode``): its norm, largest magnitude,
count of non-finite elements, share of exact zeros and the flat index of the first
non-finite element. The records are keyed by the node names :func:`funcgrad.explain`
gives the same function.

How it works (pure JAX, no host callbacks): ``fn`` is traced to a jaxpr and evaluated by
the one walker (:mod:`funcgrad._jaxpr`). The output of every funcgrad primitive call
(recognised by its ``funcgrad.<name>`` scope) goes through an identity with a zero-valued
*probe* as a second input; the identity's backward rule passes the cotangent on unchanged
and returns its statistics as the probe's "gradient". The probes are differentiated
together with ``fn``'s arguments, so one backward pass yields gradients and records. A
``lax.scan``'s body is walked the same way inside a new ``lax.scan`` whose ``xs`` carry one
probe per iteration: its records gain a leading axis, one row per iteration, under the
body call's ``explain`` name with ``[:]`` for its ``[t]`` suffix (``tanh[:]``, ``h[:]``).
Scans nested in a scan body, and ``cond``/``while`` bodies, are not tapped; ``jit`` and
``jax.checkpoint`` calls are inlined (in the tapped program the checkpoint does not
rematerialise).

The same walk reads the forward pass: the saturated share of every ``sigmoid``/``tanh``
call's inputs and the dead share of every ``relu`` call's units (see
:func:`activation_stats`). :func:`tapped_value_and_grad` returns both for a training step.

Without taps nothing changes: the primitives and a step that does not ask for taps are
compiled exactly as before.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .. import _jaxpr
from . import _probe
from .saturation import SATURATING_OPS, saturated_fraction

__all__ = ["Tap", "activation_stats", "tap_grad", "tapped_value_and_grad"]

#: The activations whose units can die (output 0 for every example of a batch).
DEAD_OPS: tuple[str, ...] = ("relu",)


class Tap(NamedTuple):
    """The cotangent reaching one primitive call's output (``dL/dnode``).

    Inside a ``lax.scan`` body every field has a leading axis, one row per iteration;
    under ``vmap`` one row per example.

    Attributes:
        norm: its Euclidean norm (NaN or inf when it holds one).
        max_abs: its largest magnitude.
        nonfinite: how many elements are NaN or infinite (int32).
        zero_fraction: the share of elements that are exactly zero.
        first_nonfinite: the flat (C-order) index of the first non-finite element, or
            ``-1`` (int32). A call with several outputs counts them one after the other.
    """

    norm: jax.Array
    max_abs: jax.Array
    nonfinite: jax.Array
    zero_fraction: jax.Array
    first_nonfinite: jax.Array


def _record(stats: jax.Array) -> Tap:
    """A :class:`Tap` from a probe's gradient (any leading axes)."""
    return Tap(*_probe.unpack(stats))


# ------------------------------------------------------------------------ the plan
@dataclasses.dataclass
class _Call:
    """One funcgrad primitive call: its ``explain`` name and its probe's dtype (or None)."""

    name: str
    dtype: Any


@dataclasses.dataclass
class _Plan:
    """The primitive calls of a traced function, in the walker's order."""

    calls: list[_Call]
    scans: list[tuple[int, list[_Call]]]  # per unrolled top-level scan: (length, body calls)
    order: list[str] = dataclasses.field(default_factory=list)  # every name, walker order

    def ordered(self, forward: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """``forward`` with each dict's keys in execution order (pytrees sort them)."""
        return {kind: {n: values[n] for n in self.order if n in values}
                for kind, values in forward.items()}


def _float_dtype(avals: Sequence[Any]) -> Any:
    floats = [a.dtype for a in avals if jnp.issubdtype(a.dtype, jnp.floating)]
    return _probe.stats_dtype(floats) if floats else None


_SUFFIX = re.compile(r"\[\d+\](?='*$)")


def _plan(closed_value: Any, leaf_names: Sequence[str]) -> _Plan:
    """Name every primitive call as :func:`funcgrad.explain` names it."""
    with jax.ensure_compile_time_eval():  # the walk of ids runs eagerly, even inside jit
        return _plan_eagerly(closed_value, leaf_names)


def _plan_eagerly(closed_value: Any, leaf_names: Sequence[str]) -> _Plan:
    from ..explain.build import skeleton
    from ..explain.tracing import record

    lengths = [int(s.eqn.params["length"]) for s in record(closed_value, 0).steps
               if s.eqn.primitive == "scan"]
    prog = record(closed_value, max([_jaxpr.UNROLL_LIMIT, *lengths]))
    sk = skeleton(prog, leaf_names)
    plan = _Plan([], [])
    loops: dict[int, tuple[tuple[int, ...], list[_Call]]] = {}
    for k, step in enumerate(prog.steps):
        loop = step.eqn.loop
        if len(loop) == 1 and loop[0] not in loops:
            loops[loop[0]] = (step.eqn.iteration, [])
        if step.eqn.funcgrad is None or len(loop) > 1:
            continue
        name = sk.node_of_step[k].name
        call = _Call(name, _float_dtype(step.eqn.out_avals))
        if not loop:
            plan.calls.append(call)
            plan.order.append(call.name)
        elif loops[loop[0]][0] == step.eqn.iteration:
            loops[loop[0]][1].append(_Call(_SUFFIX.sub("[:]", name), call.dtype))
            plan.order.append(loops[loop[0]][1][-1].name)
    top = [n for n in lengths if n > 0]
    if len(top) != len(loops):
        raise NotImplementedError(
            f"tap_grad: found {len(top)} lax.scan calls with iterations but {len(loops)} "
            "scan bodies with operations; a scan whose body is empty cannot be tapped")
    plan.scans = [(n, calls) for n, (_, calls) in zip(top, loops.values(), strict=True)]
    return plan


# ------------------------------------------------------------------------- the walk
def _dead_fraction(y: jax.Array) -> jax.Array:
    """Share of units (last axis) whose output is ``<= 0`` for every example (leading axes)."""
    y = jnp.asarray(y)
    if y.ndim == 0:
        return (y <= 0).astype(jnp.float32)
    return jnp.mean(jnp.all(y <= 0, axis=tuple(range(y.ndim - 1))).astype(jnp.float32))


class _Tapper(_jaxpr.Visitor):
    """Evaluates; taps each primitive call's output and reads the activations' forward."""

    def __init__(self, calls: list[_Call], probes: list[Any] | None, eps: float | None,
                 scans: list[tuple[int, list[_Call]]] | None = None,
                 scan_probes: list[list[Any]] | None = None) -> None:
        self.calls, self.probes, self.eps = calls, probes, eps
        self.scans, self.scan_probes = scans, scan_probes
        self.k = self.s = 0
        self.forward: dict[str, dict[str, Any]] = {"saturation": {}, "dead": {}}

    def equation(self, eqn: _jaxpr.Equation, invals: list[Any]) -> list[Any]:
        if (eqn.primitive == "scan" and self.scans is not None
                and eqn.params.get("length", 0) > 0):
            return self._scan(eqn, invals)
        outs = eqn.bind(*invals)
        if eqn.funcgrad is None:
            return outs
        call = self.calls[self.k]
        probe = None if self.probes is None else self.probes[self.k]
        self.k += 1
        if self.eps is not None:
            if eqn.funcgrad in SATURATING_OPS:
                x = invals[eqn.num_consts]
                self.forward["saturation"][call.name] = saturated_fraction(
                    eqn.funcgrad, x, self.eps)
            elif eqn.funcgrad in DEAD_OPS:
                self.forward["dead"][call.name] = _dead_fraction(outs[0])
        if probe is None:
            return outs
        fl = [i for i, o in enumerate(outs) if jnp.issubdtype(o.dtype, jnp.floating)]
        tapped = _probe.identity(tuple(outs[i] for i in fl), probe)
        outs = list(outs)
        for i, t in zip(fl, tapped, strict=True):
            outs[i] = t
        return outs

    def _scan(self, eqn: _jaxpr.Equation, invals: list[Any]) -> list[Any]:
        """Walk the body inside a new ``lax.scan`` whose ``xs`` carry per-iteration probes."""
        assert self.scans is not None
        length, calls = self.scans[self.s]
        probes = None if self.scan_probes is None else self.scan_probes[self.s]
        self.s += 1
        p = eqn.params
        body, nc, ncarry = p["jaxpr"], p["num_consts"], p["num_carry"]
        consts, carry, xs = invals[:nc], invals[nc:nc + ncarry], invals[nc + ncarry:]
        eps = self.eps

        def step(c: list[Any], x: tuple[list[Any], Any]) -> tuple[list[Any], Any]:
            x_t, probes_t = x
            inner = _Tapper(calls, probes_t, eps)
            outs = _jaxpr.walk(body, [*consts, *c, *x_t], inner, unroll_limit=0)
            return list(outs[:ncarry]), (list(outs[ncarry:]), inner.forward)

        carry, (ys, forward) = jax.lax.scan(step, list(carry), (list(xs), probes),
                                            length=length, reverse=p["reverse"])
        for kind, values in forward.items():
            self.forward[kind].update(values)
        return [*carry, *ys]


# ------------------------------------------------------------------------ the public API
def _argnums(argnums: int | Sequence[int], n: int, fn_name: str) -> tuple[int, ...]:
    nums = (argnums,) if isinstance(argnums, int) else tuple(argnums)
    if not nums or any(isinstance(i, bool) or not isinstance(i, int) or not -n <= i < n
                       for i in nums):
        raise ValueError(f"{fn_name}: argument 'argnums' must be an int or a tuple of ints "
                         f"indexing the {n} positional arguments; got {argnums!r}")
    return tuple(i % n for i in nums)


def _check_value(avals: Sequence[Any], has_aux: bool, who: str) -> None:
    ok = len(avals) == 1 and avals[0].shape == () and jnp.issubdtype(avals[0].dtype,
                                                                      jnp.floating)
    if not ok:
        got = ", ".join(f"{a.dtype}{list(a.shape)}" for a in avals)
        want = "(a real scalar, aux)" if has_aux else "one real scalar (a loss)"
        raise ValueError(f"{who}: fn must return {want}; it returned {got or 'nothing'}")


def _zeros(calls: list[_Call], lead: tuple[int, ...] = ()) -> list[Any]:
    return [None if c.dtype is None else jnp.zeros((*lead, _probe.FIELDS), c.dtype) for c in calls]


def _records(calls: list[_Call], grads: list[Any], into: dict[str, Tap]) -> None:
    for c, g in zip(calls, grads, strict=True):
        if g is not None:
            into[c.name] = _record(g)


def _value_grads_taps(fn: Callable, args: tuple, argnums: int | Sequence[int],
                      has_aux: bool, taps: bool, eps: float | None, who: str
                      ) -> tuple[Any, Any, dict[str, Tap], dict[str, dict[str, Any]]]:
    """``(value, grads, taps, forward)``: the walk of ``fn`` with probes, differentiated."""
    from ..explain.arguments import flatten_arguments

    nums = _argnums(argnums, len(args), who)
    counts = [len(jax.tree.leaves(a)) for a in args]
    leaves, leaf_names, flat_fn = flatten_arguments(fn, args, {})
    starts = np.cumsum([0, *counts])
    diff = [j for i in nums for j in range(starts[i], starts[i + 1])]
    specs = [jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)) for x in leaves]
    closed, out_shape = jax.make_jaxpr(flat_fn, return_shape=True)(*specs)
    value_only = (lambda *xs: flat_fn(*xs)[0]) if has_aux else flat_fn
    closed_value = jax.make_jaxpr(value_only)(*specs)
    _check_value(closed_value.out_avals, has_aux, who)
    plan = _plan(closed_value, leaf_names)

    def run(diff_leaves: list[Any], probes: list[Any], scan_probes: list[list[Any]]
            ) -> tuple[Any, Any]:
        full = list(leaves)
        for j, x in zip(diff, diff_leaves, strict=True):
            full[j] = x
        tapper = _Tapper(plan.calls, probes if taps else None, eps, plan.scans,
                         scan_probes if taps else None)
        outs = _jaxpr.walk(closed, full, tapper, unroll_limit=0)
        out = jax.tree.unflatten(jax.tree.structure(out_shape), outs)
        value, aux = out if has_aux else (out, None)
        return value, (aux, tapper.forward)

    probes = _zeros(plan.calls) if taps else []
    scan_probes = [_zeros(c, (n,)) for n, c in plan.scans] if taps else []
    (value, (aux, forward)), (g, gp, gs) = jax.value_and_grad(
        run, argnums=(0, 1, 2), has_aux=True)([leaves[j] for j in diff], probes, scan_probes)
    records: dict[str, Tap] = {}
    if taps:
        _records(plan.calls, gp, records)
        for (_, calls), grads in zip(plan.scans, gs, strict=True):
            _records(calls, grads, records)
    grads = []
    for i in nums:
        sub = [g[diff.index(j)] for j in range(starts[i], starts[i + 1])]
        grads.append(jax.tree.unflatten(jax.tree.structure(args[i]), sub))
    grads_out = grads[0] if isinstance(argnums, int) else tuple(grads)
    return (value, aux) if has_aux else value, grads_out, records, plan.ordered(forward)


def _python_ints_as_floats(args: tuple) -> tuple:
    """A Python ``int`` is a number to differentiate (the lesson's ``x = 2``), as in explain."""
    return jax.tree.map(lambda a: float(a) if type(a) is int else a, args)


def tap_grad(fn: Callable[..., Any], argnums: int | Sequence[int] = 0,
             has_aux: bool = False, names: Sequence[str] | None = None
             ) -> Callable[..., tuple[Any, Any, dict[str, Tap]]]:
    """Like ``jax.value_and_grad``, plus a :class:`Tap` record for every primitive call.

    Args:
        fn: a function returning a real scalar (with ``has_aux``: ``(scalar, aux)``),
            built from funcgrad primitives and any other JAX operations.
        argnums: which positional arguments to differentiate (an int or a tuple).
        has_aux: whether ``fn`` returns ``(value, aux)``.
        names: keep only the taps of these nodes (default: all); the program then
            computes only those (XLA drops the rest).

    Returns:
        ``g(*args) -> (value, grads, taps)``: ``value`` (``(value, aux)`` with
        ``has_aux``) and ``grads`` as ``jax.value_and_grad`` gives them, and ``taps``,
        ``{node name: Tap}`` for every funcgrad primitive call with a floating output,
        named as :func:`funcgrad.explain` names the nodes. Works under ``jit`` and ``vmap``;
        calls inside a ``lax.scan`` body get one row per iteration.

    Raises:
        ValueError: if ``argnums`` does not index the positional arguments, or (when
            called) a name in ``names`` is not a node of ``fn``.
        TypeError: if an argument is not made of arrays and numbers, or ``names`` is a
            string rather than a collection of them.

    Examples:
        >>> import funcgrad as fg
        >>> loss = lambda x, w, target: fg.squared_error(fg.mul(x, w), target)
        >>> value, grad_w, taps = tap_grad(loss, argnums=1)(2.0, 3.0, 2.0)
        >>> float(value), float(grad_w), sorted(taps)
        (16.0, 16.0, ['L', 'mul'])
        >>> float(taps["mul"].norm), int(taps["mul"].first_nonfinite)   # dL/dy = 8
        (8.0, -1)
        >>> sorted(tap_grad(loss, argnums=1, names=["mul"])(2.0, 3.0, 2.0)[2])
        ['mul']
    """
    if isinstance(names, str):
        raise TypeError(f"tap_grad: argument 'names' must be a collection of node names; "
                        f"got the string {names!r} (write [{names!r}])")
    wanted = None if names is None else tuple(names)

    def run(*args: Any) -> tuple[Any, Any, dict[str, Tap]]:
        value, grads, records, _ = _value_grads_taps(fn, args, argnums, has_aux, True,
                                                     None, "tap_grad")
        if wanted is not None:
            unknown = [n for n in wanted if n not in records]
            if unknown:
                raise ValueError(f"tap_grad: argument 'names' holds {unknown}, not nodes of "
                                 f"{getattr(fn, '__name__', 'fn')}; its nodes are "
                                 f"{sorted(records)}")
            records = {n: records[n] for n in wanted}
        return value, grads, records

    compiled = jax.jit(run)  # one program; inside an outer jit it is simply inlined

    def tapped(*args: Any) -> tuple[Any, Any, dict[str, Tap]]:
        return compiled(*_python_ints_as_floats(args))

    return tapped


def tapped_value_and_grad(fn: Callable[..., Any], *, has_aux: bool = True,
                          taps: bool = True, activations: bool = True,
                          eps: float = 0.01) -> Callable[..., tuple[Any, Any, dict]]:
    """``jax.value_and_grad(fn, has_aux=...)`` with taps and activation statistics.

    For a training step: ``fn(params, batch)`` is differentiated with respect to
    ``params``. One forward and one backward pass give the loss, the gradients, the
    :class:`Tap` records and the forward statistics of :func:`activation_stats`.

    Args:
        fn: ``fn(params, *rest) -> loss`` (or ``(loss, aux)`` with ``has_aux``).
        has_aux: whether ``fn`` returns ``(loss, aux)``.
        taps: record the :class:`Tap` of every primitive call.
        activations: record the saturated share of sigmoid/tanh inputs and the dead share
            of relu units.
        eps: saturation threshold (see :func:`~funcgrad.flow.saturated_fraction`).

    Returns:
        ``g(params, *rest) -> (value, grads, extra)`` with ``extra`` holding ``"taps"``
        (``{name: Tap}``, empty without ``taps``), ``"saturation"`` and ``"dead"``
        (``{name: fraction}`` in execution order, empty without ``activations``). Call it
        inside the jitted step: dicts returned from a ``jit`` have their keys sorted. With
        neither ``taps`` nor ``activations`` it is ``jax.value_and_grad`` itself (the same
        compiled program as before), so a step can call it unconditionally.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import funcgrad as fg
        >>> params = fg.nn.init_mlp(jax.random.PRNGKey(0), [2, 4, 1], activation="tanh")
        >>> loss = lambda p, x: fg.mean(fg.nn.mlp(p, x, activation="tanh"))
        >>> g = tapped_value_and_grad(loss, has_aux=False)
        >>> value, grads, extra = jax.jit(g)(params, jnp.ones((3, 2)))
        >>> sorted(extra), list(extra["saturation"])
        (['dead', 'saturation', 'taps'], ['tanh'])
    """
    if not taps and not activations:  # the plain program, untouched
        plain = jax.value_and_grad(fn, has_aux=has_aux)

        def untapped(*args: Any) -> tuple[Any, Any, dict]:
            value, grads = plain(*args)
            return value, grads, {"taps": {}, "saturation": {}, "dead": {}}
        return untapped

    def run(*args: Any) -> tuple[Any, Any, dict]:
        value, grads, records, forward = _value_grads_taps(
            fn, args, 0, has_aux, taps, eps if activations else None,
            "tapped_value_and_grad")
        return value, grads, {"taps": records, **forward}

    return run


def activation_stats(fn: Callable[..., Any], *args: Any, eps: float = 0.01
                     ) -> tuple[Any, dict[str, dict[str, jax.Array]]]:
    """Run ``fn`` once and read its activations' forward pass.

    For every ``sigmoid``/``tanh`` call, the share of its inputs that are saturated
    (:func:`~funcgrad.flow.saturated_fraction`); for every ``relu`` call, the share of its
    units (last axis) that output 0 for every example (leading axes). Keyed by the
    ``explain`` node names; inside a ``lax.scan`` body one row per iteration. Works in jit.

    Args:
        fn: a function built from funcgrad primitives.
        *args: its arguments.
        eps: saturation threshold.

    Returns:
        ``(fn's output, {"saturation": {name: fraction}, "dead": {name: fraction}})``.

    Examples:
        >>> import jax.numpy as jnp
        >>> import funcgrad as fg
        >>> f = lambda x: fg.sum(fg.relu(fg.sigmoid(fg.mul(x, 10.0)) - 0.5))
        >>> _, stats = activation_stats(f, jnp.array([[0.0, 1.0], [-1.0, 2.0]]))
        >>> {k: {n: float(v) for n, v in d.items()} for k, d in stats.items()}
        {'saturation': {'sigmoid': 0.75}, 'dead': {'relu': 0.5}}
    """
    from ..explain.arguments import flatten_arguments

    leaves, leaf_names, flat_fn = flatten_arguments(fn, args, {})
    specs = [jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)) for x in leaves]
    closed, out_shape = jax.make_jaxpr(flat_fn, return_shape=True)(*specs)
    plan = _plan(closed, leaf_names) if len(closed.out_avals) == 1 else None
    if plan is None:
        raise ValueError("activation_stats: fn must return one array")
    tapper = _Tapper(plan.calls, None, eps, plan.scans, None)
    outs = _jaxpr.walk(closed, leaves, tapper, unroll_limit=0)
    return (jax.tree.unflatten(jax.tree.structure(out_shape), outs),
            plan.ordered(tapper.forward))
