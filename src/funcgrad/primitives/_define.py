"""``funcgrad.primitive``: turn a hand-written forward and backward rule into a primitive.

Every built-in primitive is defined through :func:`primitive`, the same call users make for
their own rules. The factory builds the ``jax.custom_vjp``, tags each call with
``jax.named_scope("funcgrad.<name>")`` (the only way tools recognise a primitive), checks and
converts the inputs, validates the backward rule's cotangents at trace time, and registers a
:class:`~funcgrad.registry.Primitive` record next to the rule.

The decorator form, as the built-ins use it::

    def _relu_bwd(y, g):
        return (jnp.where(y > 0, g, jnp.zeros_like(g)),)   # relu'(x) = 1 if x > 0 else 0

    @primitive(bwd=_relu_bwd, reference=jax.nn.relu, formula="relu'(x) = 1 if x > 0 else 0",
               residuals="output y (mask y > 0)", kinks="relu'(0) = 0",
               kink_points=((0.0, 0.0),))
    def relu(x):
        '''Rectified linear unit ``max(0, x)``. ...'''
        y = jnp.maximum(x, 0)
        return y, y                 # the output, and the residual for _relu_bwd
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._broadcast import as_float, as_labels, broadcast_shapes, unbroadcast
from ._record import (
    DOMAINS,
    UNARY_SHAPES,
    Arg,
    Primitive,
    register,
)

__all__ = ["primitive", "RuleError"]


class RuleError(ValueError, TypeError):
    """A backward rule returned cotangents of the wrong structure, shape or dtype.

    Raised at trace time (the first time JAX differentiates through the primitive). The
    message names the primitive, the argument and the expected and actual shape and dtype.
    It is both a ``ValueError`` and a ``TypeError``.
    """


class _Rule:
    """The static description of one primitive: its signature and its rule."""

    def __init__(self, name: str, fwd: Callable, bwd: Callable, *, static: Sequence[str],
                 nondiff: Sequence[str], labels: Sequence[str], pytree: Sequence[str],
                 broadcasting: bool, promote: bool, check: Callable | None):
        self.name, self.fwd, self.bwd, self.check = name, fwd, bwd, check
        self.broadcasting, self.promote = broadcasting, promote
        self.signature = inspect.signature(fwd)
        params = list(self.signature.parameters)
        for what, names in (("static", static), ("nondiff", nondiff), ("labels", labels),
                            ("pytree", pytree)):
            unknown = [n for n in names if n not in params]
            if unknown:
                raise ValueError(f"primitive {name!r}: argument '{what}' names {unknown}, "
                                 f"which are not parameters of fwd{self.signature}")
        self.params = tuple(params)
        self.static = tuple(n for n in params if n in static)
        self.arrays = tuple(n for n in params if n not in static)
        self.kinds = tuple("labels" if n in labels else "const" if n in nondiff else "float"
                           for n in self.arrays)
        self.pytree = frozenset(pytree)
        self.wants_primals = "primals" in inspect.signature(bwd).parameters
        self.custom_vjp = self._build()

    # ------------------------------------------------------------------ inputs
    def prepare(self, args: tuple, kwargs: dict) -> tuple[tuple, tuple]:
        """Bind, check and convert the public arguments: ``(static values, arrays)``."""
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as err:
            raise TypeError(f"{self.name}: {err}") from None
        bound.apply_defaults()
        values = dict(bound.arguments)
        for n, kind in zip(self.arrays, self.kinds, strict=True):
            values[n] = self._convert(n, kind, values[n])
        if self.promote:
            self._promote(values)
        if self.broadcasting:
            names = [n for n, k in zip(self.arrays, self.kinds, strict=True) if k != "labels"]
            broadcast_shapes(self.name, names, *(jnp.shape(values[n]) for n in names))
        if self.check is not None:
            changed = self.check(*(values[n] for n in self.params))
            if changed:
                values.update(changed)
        statics = tuple(values[n] for n in self.static)
        for n, v in zip(self.static, statics, strict=True):
            try:
                hash(v)
            except TypeError:
                raise TypeError(f"{self.name}: argument '{n}' is static and must be hashable "
                                f"(a Python number, string or tuple); got "
                                f"{type(v).__name__}") from None
        return statics, tuple(values[n] for n in self.arrays)

    def _convert(self, argname: str, kind: str, value: Any) -> Any:
        if argname not in self.pytree:
            return self._leaf(argname, kind, value)
        pairs, treedef = jax.tree_util.tree_flatten_with_path(value)
        leaves = [self._leaf(argname + jax.tree_util.keystr(p), kind, v) for p, v in pairs]
        return jax.tree.unflatten(treedef, leaves)

    def _leaf(self, label: str, kind: str, value: Any) -> jax.Array:
        if kind == "labels":
            return as_labels(self.name, label, value)
        return as_float(self.name, label, value)

    def _promote(self, values: dict) -> None:
        diff = [n for n, k in zip(self.arrays, self.kinds, strict=True) if k == "float"]
        leaves = jax.tree.leaves([values[n] for n in diff])
        if len(leaves) < 2:
            return
        dtype = jnp.result_type(*leaves)
        for n in diff:
            values[n] = jax.tree.map(lambda a: a.astype(dtype), values[n])

    def merge(self, statics: tuple, arrays: tuple) -> list:
        """Put static values and arrays back in signature order, for ``fwd``."""
        by_name = dict(zip(self.static, statics, strict=True))
        by_name.update(zip(self.arrays, arrays, strict=True))
        return [by_name[n] for n in self.params]

    # -------------------------------------------------------------- custom_vjp
    def forward(self, statics: tuple, arrays: tuple) -> tuple[Any, Any]:
        """Run the hand-written ``fwd``: ``(output, residuals)``, or a named RuleError."""
        out = self.fwd(*self.merge(statics, arrays))
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            raise RuleError(f"{self.name}: the forward rule must return a pair (output, "
                            f"residuals), the residuals being what the backward rule "
                            f"needs; got {_describe(out)}")
        return out[0], out[1]

    def _build(self) -> Callable:
        def primal(spec, arrays):
            return self.forward(spec[0], arrays)[0]

        def fwd(spec, arrays):
            return self.forward(spec[0], arrays)

        def bwd(spec, res, g):
            return (self.cotangents(spec, res, g),)

        cvjp = jax.custom_vjp(primal, nondiff_argnums=(0,))
        cvjp.defvjp(fwd, bwd)
        return cvjp

    def spec(self, statics: tuple, arrays: tuple) -> tuple:
        """The static (hashable) description of one call: static values and input avals."""
        avals = tuple(tuple((tuple(a.shape), jnp.dtype(a.dtype)) for a in jax.tree.leaves(x))
                      for x in arrays)
        treedefs = tuple(jax.tree.structure(x) for x in arrays)
        return statics, avals, treedefs

    def cotangents(self, spec: tuple, res: Any, g: Any) -> tuple:
        """Run the hand-written ``bwd`` and validate (and unbroadcast) what it returns."""
        statics, avals, treedefs = spec
        kwargs = dict(zip(self.static, statics, strict=True))
        if self.wants_primals:
            kwargs["primals"] = tuple(
                jax.tree.unflatten(td, [jax.ShapeDtypeStruct(*sd) for sd in av])
                for av, td in zip(avals, treedefs, strict=True))
        cts = self.bwd(res, g, **kwargs)
        return _validate(self, cts, avals, treedefs)

    # ------------------------------------------------------------------ public
    def call(self, args: tuple, kwargs: dict) -> Any:
        statics, arrays = self.prepare(args, kwargs)
        spec = self.spec(statics, arrays)
        with jax.named_scope(f"funcgrad.{self.name}"):
            out = self.custom_vjp(spec, arrays)
        return out

    def vjp(self, *args: Any, cotangent: float = 1.0, **kwargs: Any) -> tuple:
        """Run ``fwd`` then ``bwd`` directly (no JAX autodiff); cotangents as Python values."""
        statics, arrays = self.prepare(args, kwargs)
        out, res = self.forward(statics, arrays)
        g = jax.tree.map(lambda o: jnp.full_like(o, cotangent), out)
        cts = self.cotangents(self.spec(statics, arrays), res, g)
        return tuple(None if c is None else jax.tree.map(lambda a: np.asarray(a).tolist(), c)
                     for c in cts)


def _describe(value: Any) -> str:
    """What a rule returned, for an error: a tuple's length, an array's shape."""
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of length {len(value)}"
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"an array of shape {tuple(value.shape)} and dtype {value.dtype}"
    return f"a {type(value).__name__}"


def _validate(rule: _Rule, cts: Any, avals: tuple, treedefs: tuple) -> tuple:
    """Check the cotangents' structure, shape and dtype; one entry per array argument."""
    name = rule.name
    diff = [i for i, k in enumerate(rule.kinds) if k == "float"]
    want = ", ".join(f"'{rule.arrays[i]}'" for i in diff)
    if not isinstance(cts, (tuple, list)) or len(cts) not in (len(diff), len(rule.arrays)):
        raise RuleError(
            f"{name}: the backward rule must return a tuple with one cotangent per "
            f"differentiable argument ({want}: {len(diff)}); got {_describe(cts)}")
    if len(cts) == len(diff) and len(diff) != len(rule.arrays):
        full: list[Any] = [None] * len(rule.arrays)
        for i, c in zip(diff, cts, strict=True):
            full[i] = c
        cts = full
    out = []
    for i, (argname, kind) in enumerate(zip(rule.arrays, rule.kinds, strict=True)):
        c = cts[i]
        if kind != "float":
            if c is not None:
                raise RuleError(f"{name}: argument '{argname}' is declared without a gradient "
                                f"({kind}); the backward rule must return None for it, got "
                                f"{type(c).__name__}")
            out.append(None)
            continue
        out.append(_validate_tree(rule, argname, c, avals[i], treedefs[i]))
    return tuple(out)


def _validate_tree(rule: _Rule, argname: str, c: Any, aval: Any, treedef: Any) -> Any:
    if c is None:
        raise RuleError(f"{rule.name}: the backward rule returned None for argument "
                        f"'{argname}', which is differentiable; return zeros (or declare it "
                        "nondiff)")
    got_def = jax.tree.structure(c)
    if got_def != treedef:
        raise RuleError(f"{rule.name}: the cotangent of argument '{argname}' has tree "
                        f"structure {got_def}; expected {treedef} (the argument's own)")
    pairs = jax.tree_util.tree_flatten_with_path(c)[0]
    want = aval
    fixed = []
    for (path, leaf), (shape, dtype) in zip(pairs, want, strict=True):
        label = argname + jax.tree_util.keystr(path)
        leaf_shape = tuple(getattr(leaf, "shape", ()))
        leaf_dtype = getattr(leaf, "dtype", None)
        if (rule.broadcasting and leaf_shape != shape and len(leaf_shape) >= len(shape)
                and _broadcasts_to(shape, leaf_shape)):
            leaf = unbroadcast(leaf, shape)
            leaf_shape = shape
        if leaf_shape != shape or leaf_dtype != dtype:
            raise RuleError(
                f"{rule.name}: the backward rule returned a cotangent for argument "
                f"'{label}' with shape {leaf_shape} and dtype {leaf_dtype}; expected shape "
                f"{shape} and dtype {dtype} (the argument's own)")
        fixed.append(leaf)
    return jax.tree.unflatten(treedef, fixed)


def _broadcasts_to(shape: tuple, target: tuple) -> bool:
    try:
        return tuple(np.broadcast_shapes(shape, target)) == tuple(target)
    except ValueError:
        return False


def _args(rule: _Rule, domain: Mapping[str, str]) -> tuple[Arg, ...]:
    for n, d in domain.items():
        if n not in rule.arrays or d not in DOMAINS:
            raise ValueError(f"primitive {rule.name!r}: argument 'domain' maps {n!r} to "
                             f"{d!r}; expected an array argument ({list(rule.arrays)}) and "
                             f"one of {list(DOMAINS)}")
    return tuple(Arg(n, k, domain.get(n, "real"))
                 for n, k in zip(rule.arrays, rule.kinds, strict=True))


def _rule_text(record: Primitive) -> str:
    """The generated docstring paragraph: rule, residuals, kinks and precision."""
    lines = [f"Rule: ``{record.formula}``.", f"Residuals: {record.residuals or 'none'}.",
             f"Kinks: {record.kinks or 'none'}."]
    if record.precision:
        lines.append(f"Precision: {record.precision}.")
    return "\n".join(lines)


def _docstring(doc: str | None, record: Primitive) -> str:
    """Insert the generated rule paragraph before the first section (``Args:``...)."""
    text = _rule_text(record)
    if not doc:
        return f"The funcgrad primitive ``{record.name}``.\n\n{text}\n"
    lines = inspect.cleandoc(doc).splitlines()
    sections = ("Args:", "Returns:", "Raises:", "Examples:", "Note:", "Notes:")
    at = next((i for i, line in enumerate(lines) if line.strip() in sections), len(lines))
    while at > 0 and not lines[at - 1].strip():
        at -= 1
    return "\n".join(lines[:at] + [""] + text.splitlines() + [""] + lines[at:]).rstrip() + "\n"


def primitive(
    fn: Callable | None = None, *, name: str | None = None, fwd: Callable | None = None,
    bwd: Callable, formula: str, reference: Callable | None = None, residuals: str = "",
    static: Sequence[str] = (), nondiff: Sequence[str] = (), labels: Sequence[str] = (),
    pytree: Sequence[str] = (), domain: Mapping[str, str] | None = None,
    unbroadcast: bool = False, promote: bool = True, check: Callable | None = None,
    sample_shapes: Sequence[Any] | None = None, params: Mapping[str, Any] | None = None,
    kinks: str = "", kink_points: Sequence[tuple[float, float]] = (),
    edge_points: Sequence[float] = (), precision: str = "", category: str = "custom",
    replace: bool = False,
) -> Any:
    """Make a funcgrad primitive from a hand-written forward and backward rule.

    Keyword form: ``primitive(name=..., fwd=..., bwd=..., formula=...)``; decorator form:
    leave out ``fwd`` and decorate it (its docstring, name and signature are kept).
    ``fwd(*args)`` returns ``(output, residuals)``; ``bwd(residuals, g, **static)`` returns
    one cotangent per array argument, of its shape and dtype (``None`` or nothing for
    ``nondiff``/``labels``); a ``bwd`` taking ``primals`` also gets the arrays' shapes. Each
    call runs in ``jax.named_scope("funcgrad.<name>")``; the record goes to ``PRIMITIVES``.
    ``prim.vjp(*args)`` runs ``fwd`` then ``bwd`` with ones, without autodiff;
    ``prim.variant(name=..., **changes)`` copies it; ``prim.record`` is its record.

    Args:
        fn: the forward rule, in the decorator form.
        name: registry name (default: the decorated function's); calls are tagged with it.
        fwd: the forward rule, in the keyword form.
        bwd: the backward rule, whose body is the formula.
        formula: the derivative, for people; written once, here.
        reference: optional plain-``jnp`` version, the checker's oracle (kept private).
        residuals: what ``fwd`` saves, for people.
        static: hashable Python parameters (axes, slopes); ``bwd`` gets them by keyword.
        nondiff: float array parameters with no gradient (constants, masks).
        labels: integer array parameters (class indices) with no gradient.
        pytree: parameters that are pytrees of arrays (others: one array or number).
        domain: per argument, ``"real"`` (default), ``"positive"``, ``"nonzero"``, ``"unit"``.
        unbroadcast: arguments broadcast together; cotangents are summed back to shape.
        promote: convert the differentiable arrays to one common floating dtype.
        check: ``check(*args)``: raises on bad input, may return replaced argument values.
        sample_shapes: per case, one shape (or pytree of shapes) per array argument.
        params: static keyword values the checker passes to the function and reference.
        kinks: the convention at non-differentiable points, for people.
        kink_points: ``(x, derivative)`` pairs the checker asserts exactly.
        edge_points: inputs where low-precision gradients must match a float64 truth.
        precision: notes on numerical stability.
        category: grouping for tables (``"custom"`` for user rules).
        replace: replace a primitive already registered under ``name``.

    Returns:
        The primitive (in the decorator form, a decorator that returns it).

    Raises:
        ValueError: ``name`` is taken (without ``replace``) or a declaration is unknown.
        RuleError: at trace time, when ``fwd`` does not return ``(output, residuals)`` or
            ``bwd`` returns the wrong structure, shape or dtype.

    Examples:
        >>> import jax.numpy as jnp
        >>> from funcgrad import registry
        >>> softsign = primitive(
        ...     name="softsign_doc",
        ...     fwd=lambda x: (x / (1 + jnp.abs(x)), (x,)),
        ...     bwd=lambda res, g: (g / (1 + jnp.abs(res[0])) ** 2,),
        ...     formula="softsign'(x) = 1 / (1 + |x|)^2",
        ...     reference=lambda x: x / (1 + jnp.abs(x)),
        ... )
        >>> float(softsign(1.0)), softsign.vjp(1.0), registry.unregister("softsign_doc").name
        (0.5, (0.25,), 'softsign_doc')
    """
    options = {k: v for k, v in locals().items() if k not in ("fn", "name", "fwd")}
    if fwd is not None and fn is not None:
        raise TypeError("primitive: pass the forward rule either as 'fwd' or as the "
                        "decorated function, not both")
    if fwd is None and fn is None:
        return lambda f: _make(f, name or f.__name__, f.__module__, f.__doc__, True, **options)
    if name is None:
        raise TypeError("primitive: argument 'name' is required in the keyword form")
    module = sys._getframe(1).f_globals.get("__name__", "__main__")
    f = fwd if fwd is not None else fn
    return _make(f, name, module, f.__doc__ if fn is not None else None, fn is not None,
                 **options)


def _make(f: Callable, name: str, module: str, doc: str | None, decorated: bool,
          **options: Any) -> Callable:
    """Build the rule, the public function and its record; register the record."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"primitive: argument 'name' must be a Python identifier; got {name!r}")
    o = options
    rule = _Rule(name, f, o["bwd"], static=o["static"], nondiff=o["nondiff"],
                 labels=o["labels"], pytree=o["pytree"], broadcasting=o["unbroadcast"],
                 promote=o["promote"], check=o["check"])

    def call(*args: Any, **kwargs: Any) -> Any:
        return rule.call(args, kwargs)

    def variant(*, name: str, **changes: Any) -> Callable:
        """A new primitive like this one, under a new ``name``, with declarations changed.

        Any keyword of :func:`primitive` may change (``fwd``, ``bwd``, ``formula``, ...);
        the docstring, module and signature are kept. Used to plant a mutant in a copy of
        a rule, or to register a rule again with a different record.
        """
        new = {**options, "replace": False, **changes}
        made = _make(new.pop("fwd", f), name, module, doc, decorated, **new)
        made.__name__ = made.__qualname__ = name
        return made

    args = _args(rule, dict(o["domain"] or {}))
    shapes = o["sample_shapes"]
    if shapes is None:
        shapes = UNARY_SHAPES if len(args) == 1 else (tuple((3,) for _ in args),)
    record = Primitive(
        name=name, fn=call, reference=o["reference"], formula=o["formula"],
        residuals=o["residuals"], args=args, sample_shapes=tuple(shapes),
        params=dict(o["params"] or {}), kinks=o["kinks"], precision=o["precision"],
        category=o["category"],
        kink_points=tuple((float(x), float(d)) for x, d in o["kink_points"]),
        edge_points=tuple(float(x) for x in o["edge_points"]),
        broadcasting=bool(o["unbroadcast"]), static=rule.static)
    call.__name__ = f.__name__ if decorated else name
    call.__qualname__ = getattr(f, "__qualname__", name) if decorated else name
    call.__module__ = module
    call.__doc__ = _docstring(doc, record)
    call.__signature__ = rule.signature  # type: ignore[attr-defined]
    call.__wrapped__ = f  # type: ignore[attr-defined]
    if decorated and getattr(f, "__annotations__", None):
        call.__annotations__ = dict(f.__annotations__)
    call.vjp = rule.vjp  # type: ignore[attr-defined]
    call.variant = variant  # type: ignore[attr-defined]
    call.record = record  # type: ignore[attr-defined]
    register(record, replace=o["replace"])
    return call
