"""The one jaxpr walker: evaluate a closed jaxpr equation by equation, calling a visitor.

Every tool that looks inside a traced function (:func:`funcgrad.explain`, the saturation
capture of :mod:`funcgrad.flow`, :func:`funcgrad.explain.find_nonfinite`) is a
:class:`Visitor` on :func:`walk`. The walker

* inlines nested calls (``jit``/``pjit``, ``closed_call``, ``core_call``,
  ``remat``/``checkpoint``), so a jitted function walks like the plain one and the named
  scopes of the outer calls carry into the inner equations;
* unrolls a ``lax.scan`` of at most ``unroll_limit`` iterations (default
  :data:`UNROLL_LIMIT`): its body is walked once per iteration (last to first for
  ``reverse=True``), the carry fed from one iteration to the next. The visitor also meets
  three small equations the walker makes up (see :func:`loop_equation`): ``scan_index``
  (``xs[t]``), ``scan_carry`` (the carry leaving iteration ``t``, labelled ``h[t]`` after
  the body's parameter name) and ``scan_stack`` (the per-iteration ``ys`` stacked). Every
  equation of iteration ``t`` has ``t`` in :attr:`Equation.iteration`. A longer scan is
  handed to the visitor as one ``scan`` equation;
* hands ``custom_vjp`` and ``custom_jvp`` calls to the visitor as one equation each;
* turns literals and closed-over constants into values through :meth:`Visitor.const`, and
  drops the outputs bound to dropped variables (``_``);
* recognises a funcgrad primitive **only** by the named scope ``funcgrad.<name>`` that the
  primitive's public function puts around its ``jax.custom_vjp`` call. Moving, vendoring or
  copying the package changes nothing: no source file or traceback is looked at.

The visitor decides what a "value" is. The default :class:`Visitor` evaluates (each
equation is bound to its inputs), but a visitor may just as well carry symbolic ids to
record the program's structure; :func:`funcgrad.explain` walks twice, once with ids and
once with values.

``jax.extend`` is imported lazily (inside functions), so importing this module is cheap.

Examples:
    >>> import jax, jax.numpy as jnp
    >>> import funcgrad as fg
    >>> class Ops(Visitor):
    ...     def __init__(self):
    ...         self.seen = []
    ...     def equation(self, eqn, invals):
    ...         self.seen.append((eqn.name, eqn.funcgrad is not None))
    ...         return eqn.bind(*invals)
    >>> f = jax.jit(lambda x: fg.sum(fg.relu(x)) * 2.0)
    >>> closed = jax.make_jaxpr(f)(jnp.array([1.0, -1.0]))
    >>> ops = Ops()
    >>> [float(v) for v in walk(closed, [jnp.array([1.0, -1.0])], ops)]
    [2.0]
    >>> ops.seen
    [('relu', True), ('sum', True), ('mul', False)]
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

__all__ = [
    "CALL_JAXPR_KEYS",
    "CUSTOM_JVP_PRIMITIVES",
    "CUSTOM_VJP_PRIMITIVES",
    "INLINE_PRIMITIVES",
    "LOOP_PRIMITIVES",
    "SCOPE_PREFIX",
    "UNROLL_LIMIT",
    "Equation",
    "Visitor",
    "funcgrad_name",
    "loop_equation",
    "sub_jaxpr",
    "walk",
]

#: The prefix of the named scope a funcgrad primitive runs its ``custom_vjp`` call under.
SCOPE_PREFIX = "funcgrad."

#: Call-like primitives whose body is inlined (their names across JAX versions).
INLINE_PRIMITIVES = frozenset(
    {"pjit", "jit", "closed_call", "core_call", "remat", "remat2", "checkpoint",
     "custom_lin_call"})
#: Scans longer than this are handed to visitors as one ``scan`` equation.
UNROLL_LIMIT = 16
#: The made-up equations of an unrolled scan: ``xs[t]``, the carry out of iteration ``t``,
#: and the stacked ``ys``.
LOOP_PRIMITIVES = frozenset({"scan_index", "scan_carry", "scan_stack"})
#: The ``jax.custom_vjp`` call primitives (JAX 0.4.x spelled it ``custom_vjp_call_jaxpr``).
CUSTOM_VJP_PRIMITIVES = frozenset({"custom_vjp_call", "custom_vjp_call_jaxpr"})
#: The ``jax.custom_jvp`` call primitives.
CUSTOM_JVP_PRIMITIVES = frozenset({"custom_jvp_call", "custom_jvp_call_jaxpr"})
#: Parameter names under which call primitives keep their body, best first, across JAX
#: versions (``jit``: ``jaxpr``; ``custom_vjp_call``/``custom_jvp_call``: ``call_jaxpr``;
#: older ``custom_vjp_call_jaxpr``: ``fun_jaxpr``).
CALL_JAXPR_KEYS: tuple[str, ...] = ("jaxpr", "call_jaxpr", "fun_jaxpr")


@functools.cache
def _atom_types() -> tuple[type, type]:
    """``(Literal, DropVar)``, imported on first use (``jax.extend`` costs ~37 ms)."""
    try:
        from jax.extend.core import DropVar, Literal
    except ImportError:  # pragma: no cover - JAX versions without these in jax.extend
        from jax._src.core import DropVar, Literal
    return Literal, DropVar


def funcgrad_name(name_stack: Any) -> str | None:
    """The funcgrad primitive named by the innermost scope of ``name_stack``, or ``None``.

    Args:
        name_stack: an equation's ``source_info.name_stack`` (or its string).

    Returns:
        ``"relu"`` for a stack ending in ``funcgrad.relu``; ``None`` otherwise.

    Examples:
        >>> funcgrad_name("layer_0/funcgrad.relu"), funcgrad_name("layer_0")
        ('relu', None)
    """
    last = str(name_stack).rsplit("/", 1)[-1]
    if last.startswith(SCOPE_PREFIX) and len(last) > len(SCOPE_PREFIX):
        return last[len(SCOPE_PREFIX):]
    return None


def sub_jaxpr(params: Mapping[str, Any]) -> tuple[Any, Sequence[Any]] | None:
    """The body of a call-like equation as ``(jaxpr, consts)``, or ``None`` if it has none.

    Args:
        params: the equation's parameters.

    Returns:
        The open jaxpr and its constants, from the first of :data:`CALL_JAXPR_KEYS` present.
    """
    for key in CALL_JAXPR_KEYS:
        sub = params.get(key)
        if sub is None:
            continue
        if hasattr(sub, "consts") and hasattr(sub, "jaxpr"):
            return sub.jaxpr, sub.consts
        if hasattr(sub, "eqns"):
            return sub, ()
    return None


def _debug_name(obj: Any) -> str:
    """The function name recorded in a jaxpr's or a function's ``debug_info`` (or ``""``)."""
    dbg = getattr(getattr(obj, "jaxpr", obj), "debug_info", None)
    if dbg is None:
        return ""
    info = getattr(dbg, "func_src_info", None) or ""
    name = info.split(" at ")[0] or str(getattr(dbg, "func_name", "") or "")
    return name.rsplit(".", 1)[-1]


def _call_name(params: Mapping[str, Any]) -> str:
    """The user-facing name of a ``custom_vjp``/``custom_jvp`` call (``"clip_grad"``)."""
    name = params.get("name")
    if isinstance(name, str) and name:
        return name
    for key in CALL_JAXPR_KEYS:
        if params.get(key) is not None:
            found = _debug_name(params[key])
            if found:
                return found
    return ""


def _join(outer: str, inner: str) -> str:
    return "/".join(p for p in (outer, inner) if p)


@dataclasses.dataclass(frozen=True, eq=False)
class Equation:
    """One equation met by :func:`walk`, as a :class:`Visitor` sees it.

    Attributes:
        primitive: the JAX primitive's name (``"custom_vjp_call"``, ``"sin"``).
        name: what to call the operation: the registry name of a funcgrad primitive
            (``"relu"``), the function's name for another ``custom_vjp``/``custom_jvp``
            call (``"clip_grad"``), else the JAX primitive's name.
        funcgrad: the funcgrad primitive's name when this is one (by its named scope),
            else ``None``.
        scope: the named-scope path it was traced in, outer calls' scopes included and
            the ``funcgrad.<name>`` tag left out (``"layer_0"``), or ``""``.
        in_avals: abstract values (shape, dtype) of the inputs.
        out_avals: abstract values of the outputs.
        params: the equation's parameters.
        bwd_name: for a ``custom_vjp`` call, the backward rule's function name, else ``""``.
        iteration: inside unrolled scans, the iteration of each enclosing scan, outermost
            first (``(3,)``); ``()`` outside scans.
        loop: one id per enclosing unrolled scan (distinct scans, distinct ids), matching
            ``iteration``.
        label: for a ``scan_carry`` equation, the carry's name at that iteration
            (``"h[3]"``), else ``""``.
    """

    primitive: str
    name: str
    funcgrad: str | None
    scope: str
    in_avals: tuple[Any, ...]
    out_avals: tuple[Any, ...]
    params: Mapping[str, Any] = dataclasses.field(repr=False)
    bwd_name: str = ""
    _eqn: Any = dataclasses.field(default=None, repr=False)
    iteration: tuple[int, ...] = ()
    loop: tuple[int, ...] = ()
    label: str = ""
    _impl: Callable[..., list[Any]] | None = dataclasses.field(default=None, repr=False)

    @property
    def num_consts(self) -> int:
        """How many leading inputs are constants closed over by a custom call (else 0)."""
        return int(self.params.get("num_consts", 0) or 0)

    @property
    def custom_vjp(self) -> bool:
        """Whether this is a ``jax.custom_vjp`` call (a funcgrad primitive or not)."""
        return self.primitive in CUSTOM_VJP_PRIMITIVES

    def bind(self, *invals: Any) -> list[Any]:
        """Evaluate the equation on ``invals`` (as ``jax.core.eval_jaxpr`` does).

        Args:
            *invals: one value (array or tracer) per input.

        Returns:
            The output values, always as a list.
        """
        if self._impl is not None:
            return self._impl(*invals)
        eqn = self._eqn
        params = eqn.primitive.get_bind_params(eqn.params)
        manager = getattr(getattr(eqn, "ctx", None), "manager", None)
        with manager if manager is not None else contextlib.nullcontext():
            if isinstance(params, tuple):  # older JAX: (subfuns, params)
                subfuns, params = params
                out = eqn.primitive.bind(*subfuns, *invals, **params)
            else:
                out = eqn.primitive.bind(*invals, **params)
        return list(out) if eqn.primitive.multiple_results else [out]


class Visitor:
    """What :func:`walk` calls. The default evaluates; subclasses override either hook."""

    def const(self, value: Any, literal: bool) -> Any:
        """The visitor's value for a constant: a literal (``2.0``) or a closed-over array.

        Args:
            value: the constant.
            literal: ``True`` for a literal written in an equation.

        Returns:
            What the walker hands on as that constant's value (default: ``value``).
        """
        return value

    def equation(self, eqn: Equation, invals: list[Any]) -> list[Any]:
        """Handle one equation and return its outputs (default: evaluate it).

        Args:
            eqn: the equation.
            invals: the visitor's values for its inputs.

        Returns:
            One value per output.
        """
        return eqn.bind(*invals)


@functools.lru_cache(maxsize=4096)
def _scope_and_tag(name_stack: str) -> tuple[str, str | None]:
    tag = funcgrad_name(name_stack)
    if tag is None:
        return name_stack, None
    return name_stack.rsplit("/", 1)[0] if "/" in name_stack else "", tag


def _equation(eqn: Any, scope: str, ctx: _Context) -> Equation:
    prim = eqn.primitive.name
    local_scope, funcgrad = str(eqn.source_info.name_stack), None
    if prim in CUSTOM_VJP_PRIMITIVES:
        local_scope, funcgrad = _scope_and_tag(local_scope)
    if funcgrad is not None:
        name = funcgrad
    elif prim in CUSTOM_VJP_PRIMITIVES or prim in CUSTOM_JVP_PRIMITIVES:
        name = _call_name(eqn.params).lstrip("_") or prim
    else:
        name = prim
    bwd = _debug_name(eqn.params.get("bwd")) if prim in CUSTOM_VJP_PRIMITIVES else ""
    return Equation(prim, name, funcgrad, _join(scope, local_scope),
                    tuple(v.aval for v in eqn.invars), tuple(v.aval for v in eqn.outvars),
                    eqn.params, bwd, eqn, ctx.iteration, ctx.loop)


@dataclasses.dataclass(frozen=True)
class _Context:
    """Where the walker is: the enclosing unrolled scans and the unroll limit."""

    unroll_limit: int
    ids: Iterator[int]
    iteration: tuple[int, ...] = ()
    loop: tuple[int, ...] = ()

    def enter(self, loop_id: int, t: int) -> _Context:
        return dataclasses.replace(self, iteration=(*self.iteration, t),
                                   loop=(*self.loop, loop_id))


def loop_equation(primitive: str, in_avals: Sequence[Any], out_aval: Any, scope: str,
                  impl: Callable[..., Any], iteration: tuple[int, ...] = (),
                  loop: tuple[int, ...] = (), label: str = "",
                  params: Mapping[str, Any] | None = None) -> Equation:
    """One made-up equation of an unrolled scan (``scan_index``/``scan_carry``/``scan_stack``).

    Args:
        primitive: its name, one of :data:`LOOP_PRIMITIVES`.
        in_avals: the inputs' abstract values.
        out_aval: the output's abstract value.
        scope: the named-scope path.
        impl: the function of the inputs it computes (one output).
        iteration: as :attr:`Equation.iteration`.
        loop: as :attr:`Equation.loop`.
        label: as :attr:`Equation.label`.
        params: its parameters (``{"index": t}`` for ``scan_index``).

    Returns:
        The :class:`Equation`; its :meth:`~Equation.bind` calls ``impl``.
    """
    return Equation(primitive, primitive, None, scope, tuple(in_avals), (out_aval,),
                    dict(params or {}), "", None, iteration, loop, label,
                    lambda *xs: [impl(*xs)])


def _carry_labels(body: Any, num_consts: int, num_carry: int) -> list[str]:
    """The carry's names from the body function's parameter names (``h``), else ``carry``."""
    dbg = getattr(body.jaxpr, "debug_info", None)
    names = list(getattr(dbg, "arg_names", None) or ())
    names = names[num_consts:num_consts + num_carry] if len(names) == len(
        body.jaxpr.invars) else []
    if len(names) != num_carry or not all(names):
        return ["carry" if num_carry == 1 else f"carry{j}" for j in range(num_carry)]
    return names


def _unroll_scan(eqn: Any, invals: list[Any], visitor: Visitor, scope: str,
                 ctx: _Context) -> list[Any]:
    """Walk a scan's body once per iteration (see the module docstring)."""
    p = eqn.params
    body, length, nc, ncarry = p["jaxpr"], p["length"], p["num_consts"], p["num_carry"]
    consts, carry, xs = invals[:nc], invals[nc:nc + ncarry], invals[nc + ncarry:]
    x_avals = [v.aval for v in eqn.invars[nc + ncarry:]]
    labels = _carry_labels(body, nc, ncarry)
    inner = _join(scope, str(eqn.source_info.name_stack))
    loop_id = next(ctx.ids)
    ys: list[list[Any]] = [[] for _ in eqn.outvars[ncarry:]]
    order = range(length - 1, -1, -1) if p["reverse"] else range(length)
    for t in order:
        it = ctx.enter(loop_id, t)
        x_t = [visitor.equation(loop_equation(
            "scan_index", [a], a.update(shape=a.shape[1:]), inner,
            lambda x, t=t: x[t], it.iteration, it.loop, params={"index": t}), [x])[0]
            for x, a in zip(xs, x_avals, strict=True)]
        outs = _walk(body.jaxpr, body.consts, [*consts, *carry, *x_t], visitor, inner, it)
        carry = [visitor.equation(loop_equation(
            "scan_carry", [v.aval], v.aval, inner, lambda c: c, it.iteration, it.loop,
            label + "".join(f"[{i}]" for i in it.iteration)), [c])[0]
            for c, label, v in zip(outs[:ncarry], labels, eqn.outvars[:ncarry], strict=True)]
        for j, y in enumerate(outs[ncarry:]):
            ys[j].append(y)
    _, dropvar_type = _atom_types()
    stacked = []
    for col, var in zip(ys, eqn.outvars[ncarry:], strict=True):
        if isinstance(var, dropvar_type):
            stacked.append(None)
            continue
        if p["reverse"]:
            col = col[::-1]
        stacked.append(visitor.equation(loop_equation(
            "scan_stack", [var.aval.update(shape=var.aval.shape[1:])] * length, var.aval,
            inner, _stack, ctx.iteration, ctx.loop), col)[0])
    return [*carry, *stacked]


def _stack(*ys: Any) -> Any:
    import jax.numpy as jnp

    return jnp.stack(ys)


def walk(closed: Any, args: Sequence[Any], visitor: Visitor, scope: str = "",
         unroll_limit: int = UNROLL_LIMIT) -> list[Any]:
    """Walk a closed jaxpr equation by equation, calling ``visitor`` on each.

    Args:
        closed: a ``ClosedJaxpr`` (from ``jax.make_jaxpr``), or ``(jaxpr, consts)``.
        args: the visitor's values for the jaxpr's inputs, one per input.
        visitor: the :class:`Visitor`.
        scope: a named-scope path to put in front of every equation's own.
        unroll_limit: scans of at most this many iterations are unrolled (0: none).

    Returns:
        The visitor's values for the jaxpr's outputs.

    Raises:
        ValueError: if ``args`` does not have one value per input of the jaxpr.
    """
    jaxpr, consts = closed if isinstance(closed, tuple) else (closed.jaxpr, closed.consts)
    if len(args) != len(jaxpr.invars):
        raise ValueError(f"walk: argument 'args' must hold {len(jaxpr.invars)} values, one "
                         f"per input of the jaxpr; got {len(args)}")
    return _walk(jaxpr, consts, args, visitor, scope,
                 _Context(int(unroll_limit), itertools.count()))


def _walk(jaxpr: Any, consts: Sequence[Any], args: Sequence[Any], visitor: Visitor,
          scope: str, ctx: _Context) -> list[Any]:
    literal_type, dropvar_type = _atom_types()
    env: dict[Any, Any] = {}
    for var, c in zip(jaxpr.constvars, consts, strict=True):
        env[var] = visitor.const(c, literal=False)
    env.update(zip(jaxpr.invars, args, strict=True))

    def read(atom: Any) -> Any:
        if isinstance(atom, literal_type):
            return visitor.const(atom.val, literal=True)
        if isinstance(atom, dropvar_type):  # an output nobody reads (inside a jit body)
            return None
        return env[atom]

    for eqn in jaxpr.eqns:
        invals = [read(a) for a in eqn.invars]
        name = eqn.primitive.name
        sub = sub_jaxpr(eqn.params) if name in INLINE_PRIMITIVES else None
        if sub is not None:
            inner_scope = _join(scope, str(eqn.source_info.name_stack))
            outs = _walk(sub[0], sub[1], invals, visitor, inner_scope, ctx)
        elif name == "scan" and 0 < eqn.params.get("length", 0) <= ctx.unroll_limit:
            outs = _unroll_scan(eqn, invals, visitor, scope, ctx)
        else:
            outs = visitor.equation(_equation(eqn, scope, ctx), invals)
        for var, out in zip(eqn.outvars, outs, strict=True):
            if not isinstance(var, dropvar_type):
                env[var] = out
    return [read(a) for a in jaxpr.outvars]
