"""The one jaxpr walker: evaluate a closed jaxpr equation by equation, calling a visitor.

Every tool that looks inside a traced function (:func:`funcgrad.explain`, the saturation
capture of :mod:`funcgrad.flow`, :func:`funcgrad.explain.find_nonfinite`) is a
:class:`Visitor` on :func:`walk`. The walker

* inlines nested calls (``jit``/``pjit``, ``closed_call``, ``core_call``,
  ``remat``/``checkpoint``), so a jitted function walks like the plain one and the named
  scopes of the outer calls carry into the inner equations;
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
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "CALL_JAXPR_KEYS",
    "CUSTOM_JVP_PRIMITIVES",
    "CUSTOM_VJP_PRIMITIVES",
    "INLINE_PRIMITIVES",
    "SCOPE_PREFIX",
    "Equation",
    "Visitor",
    "funcgrad_name",
    "sub_jaxpr",
    "walk",
]

#: The prefix of the named scope a funcgrad primitive runs its ``custom_vjp`` call under.
SCOPE_PREFIX = "funcgrad."

#: Call-like primitives whose body is inlined (their names across JAX versions).
INLINE_PRIMITIVES = frozenset(
    {"pjit", "jit", "closed_call", "core_call", "remat", "remat2", "checkpoint",
     "custom_lin_call"})
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


def _equation(eqn: Any, scope: str) -> Equation:
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
                    eqn.params, bwd, eqn)


def walk(closed: Any, args: Sequence[Any], visitor: Visitor, scope: str = "") -> list[Any]:
    """Walk a closed jaxpr equation by equation, calling ``visitor`` on each.

    Args:
        closed: a ``ClosedJaxpr`` (from ``jax.make_jaxpr``), or ``(jaxpr, consts)``.
        args: the visitor's values for the jaxpr's inputs, one per input.
        visitor: the :class:`Visitor`.
        scope: a named-scope path to put in front of every equation's own.

    Returns:
        The visitor's values for the jaxpr's outputs.

    Raises:
        ValueError: if ``args`` does not have one value per input of the jaxpr.
    """
    jaxpr, consts = closed if isinstance(closed, tuple) else (closed.jaxpr, closed.consts)
    if len(args) != len(jaxpr.invars):
        raise ValueError(f"walk: argument 'args' must hold {len(jaxpr.invars)} values, one "
                         f"per input of the jaxpr; got {len(args)}")
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
        sub = sub_jaxpr(eqn.params) if eqn.primitive.name in INLINE_PRIMITIVES else None
        if sub is not None:
            inner_scope = _join(scope, str(eqn.source_info.name_stack))
            outs = walk(sub, invals, visitor, inner_scope)
        else:
            outs = visitor.equation(_equation(eqn, scope), invals)
        for var, out in zip(eqn.outvars, outs, strict=True):
            if not isinstance(var, dropvar_type):
                env[var] = out
    return [read(a) for a in jaxpr.outvars]
