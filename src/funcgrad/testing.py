"""The rule checker: prove a custom VJP rule right against an autodiff oracle.

:func:`check_vjp` compares the vector-Jacobian products of ``fn`` (usually a
``jax.custom_vjp`` function) with those of a plain ``reference`` differentiated by JAX, for
several random, non-uniform cotangents; it also compares with float64 central finite
differences and, optionally, second derivatives (grad of grad). Unlike
``jax.test_util.check_grads`` it reports *which* argument and element is wrong, with the
expected and actual values there.

Tolerances live in one table, :data:`TOLERANCES`, keyed by dtype name. An element passes
when ``|actual - expected| <= atol * scale + rtol * |expected|``, where ``scale`` is the
largest ``|expected|`` of that argument (at least 1), so cancellation near zero inside a
large gradient is judged relative to the gradient's size.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "TOLERANCES",
    "FD_TOLERANCE",
    "Tolerance",
    "Mismatch",
    "Comparison",
    "CheckResult",
    "check_vjp",
    "assert_vjp_matches",
    "tolerance_for",
    "saved_residual_bytes",
    "only_args",
    "PrimitiveReport",
    "check_primitive",
    "check_registry",
]


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """Relative and absolute tolerance for one dtype."""

    rtol: float
    atol: float


#: The one tolerance table, by dtype name: a custom rule against the reference.
TOLERANCES: dict[str, Tolerance] = {
    "float64": Tolerance(rtol=1e-9, atol=1e-11),
    "float32": Tolerance(rtol=2e-5, atol=2e-6),
    "float16": Tolerance(rtol=1e-2, atol=4e-3),
    "bfloat16": Tolerance(rtol=5e-2, atol=3e-2),
}

#: Tolerance of float64 central finite differences (step ``fd_eps``) against the rule.
FD_TOLERANCE = Tolerance(rtol=1e-6, atol=1e-7)

_LOW_PRECISION = ("float16", "bfloat16")


def tolerance_for(dtype: Any) -> Tolerance:
    """Return the :data:`TOLERANCES` entry for ``dtype``.

    Args:
        dtype: a floating dtype.

    Returns:
        Its tolerance.

    Examples:
        >>> tolerance_for("float32")
        Tolerance(rtol=2e-05, atol=2e-06)
    """
    name = jnp.dtype(dtype).name
    if name not in TOLERANCES:
        raise KeyError(f"tolerance_for: no tolerance for dtype {name}; known: {list(TOLERANCES)}")
    return TOLERANCES[name]


@dataclasses.dataclass(frozen=True)
class Mismatch:
    """The worst element of one comparison.

    Attributes:
        check: ``"reference"``, ``"finite_differences"`` or ``"second_order"``.
        arg: positional index of the argument.
        argname: the argument's name, when known.
        index: the element's index in that argument.
        expected: the oracle's value there.
        actual: the checked rule's value there.
        abs_err: ``|actual - expected|``.
        rel_err: ``abs_err / max(|expected|, tiny)``.
        allowed: the error the tolerance allows at that element.
        cotangent: which random cotangent exposed it (0-based).
    """

    check: str
    arg: int
    argname: str
    index: tuple[int, ...]
    expected: float
    actual: float
    abs_err: float
    rel_err: float
    allowed: float
    cotangent: int = 0

    def __str__(self) -> str:
        return (
            f"[{self.check}] argument {self.argname!r} (position {self.arg}) element "
            f"{self.index}: expected {self.expected:.9g}, got {self.actual:.9g} "
            f"(abs err {self.abs_err:.3g}, rel err {self.rel_err:.3g}, allowed "
            f"{self.allowed:.3g}, cotangent #{self.cotangent})"
        )


@dataclasses.dataclass(frozen=True)
class Comparison:
    """Summary of one kind of check over all arguments and cotangents."""

    check: str
    ok: bool
    max_abs_err: float
    max_rel_err: float
    worst: Mismatch | None


@dataclasses.dataclass(frozen=True)
class CheckResult:
    """What :func:`check_vjp` found.

    Attributes:
        ok: every comparison passed.
        max_abs_err: largest absolute error over all comparisons.
        max_rel_err: largest relative error over all comparisons.
        worst: the element that came closest to (or furthest past) its tolerance.
        comparisons: one :class:`Comparison` per check that ran.
        dtype: the dtype of the checked arguments.
    """

    ok: bool
    max_abs_err: float
    max_rel_err: float
    worst: Mismatch | None
    comparisons: tuple[Comparison, ...]
    dtype: str

    @property
    def arg(self) -> int | None:
        """Position of the argument with the worst element."""
        return None if self.worst is None else self.worst.arg

    @property
    def index(self) -> tuple[int, ...] | None:
        """Index of the worst element."""
        return None if self.worst is None else self.worst.index

    @property
    def expected(self) -> float | None:
        """Oracle value at the worst element."""
        return None if self.worst is None else self.worst.expected

    @property
    def actual(self) -> float | None:
        """Checked value at the worst element."""
        return None if self.worst is None else self.worst.actual

    def __str__(self) -> str:
        lines = [f"VJP check {'passed' if self.ok else 'FAILED'} ({self.dtype}): "
                 f"max abs err {self.max_abs_err:.3g}, max rel err {self.max_rel_err:.3g}"]
        for c in self.comparisons:
            state = "ok" if c.ok else "MISMATCH"
            lines.append(f"  {c.check}: {state}, max abs {c.max_abs_err:.3g}, "
                         f"max rel {c.max_rel_err:.3g}")
            if c.worst is not None and not c.ok:
                lines.append(f"    worst {c.worst}")
        return "\n".join(lines)


# ----------------------------------------------------------------------------- internals
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
    return jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating)


def _compare(check: str, actual: Sequence[Any], expected: Sequence[Any], argnums: Sequence[int],
             argnames: Sequence[str], tol: Tolerance, cot: int) -> Comparison:
    worst: Mismatch | None = None
    worst_score = -np.inf
    ok = True
    max_abs = 0.0
    max_rel = 0.0
    for pos, a, e in zip(argnums, actual, expected, strict=True):
        a = np.asarray(a).astype(np.float64)  # bfloat16/float16 widen exactly
        e = np.asarray(e).astype(np.float64)
        if a.shape != e.shape:
            raise AssertionError(
                f"check_vjp [{check}]: cotangent of argument {argnames[pos]!r} has shape "
                f"{a.shape}, expected {e.shape}"
            )
        if a.size == 0:
            continue
        scale = max(1.0, float(np.max(np.abs(e), initial=0.0, where=np.isfinite(e))))
        allowed = tol.atol * scale + tol.rtol * np.abs(e)
        both_same_nonfinite = (~np.isfinite(a)) & (~np.isfinite(e)) & (
            (a == e) | (np.isnan(a) & np.isnan(e)))
        err = np.where(both_same_nonfinite, 0.0, np.abs(a - e))
        err = np.where(np.isnan(err), np.inf, err)
        rel = err / np.maximum(np.abs(e), np.finfo(np.float64).tiny)
        score = err - allowed
        k = int(np.argmax(score))
        idx = tuple(int(i) for i in np.unravel_index(k, a.shape))
        max_abs = max(max_abs, float(np.max(err)))
        max_rel = max(max_rel, float(np.max(np.where(err == 0, 0.0, rel))))
        if np.any(score > 0):
            ok = False
        if score.flat[k] > worst_score:
            worst_score = float(score.flat[k])
            worst = Mismatch(check, pos, argnames[pos], idx, float(e.flat[k]), float(a.flat[k]),
                             float(err.flat[k]), float(rel.flat[k]), float(allowed.flat[k]), cot)
    return Comparison(check, ok, max_abs, max_rel, worst)


def _merge(check: str, parts: Sequence[Comparison]) -> Comparison:
    ok = all(p.ok for p in parts)
    worst = None
    best = -np.inf
    for p in parts:
        if p.worst is not None:
            score = p.worst.abs_err - p.worst.allowed
            if score > best:
                best, worst = score, p.worst
    return Comparison(check, ok, max((p.max_abs_err for p in parts), default=0.0),
                      max((p.max_rel_err for p in parts), default=0.0), worst)


def _fd_vjp(f: Callable[..., Any], args: list[Any], pos: int, ct: jax.Array, eps: float,
            max_elements: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Central differences of ``<ct, f(args)>`` w.r.t. elements of ``args[pos]``.

    Returns the estimate and a boolean mask of the elements it covers.
    """
    x = args[pos]
    n = x.size
    flat_idx = np.arange(n) if n <= max_elements else np.sort(
        rng.choice(n, size=max_elements, replace=False))
    basis = np.zeros((len(flat_idx), n), dtype=np.float64)
    basis[np.arange(len(flat_idx)), flat_idx] = eps

    def scalar(dx):
        a = list(args)
        a[pos] = x + dx.reshape(x.shape)
        return jnp.sum(jnp.asarray(f(*a)) * ct)

    both = jax.jit(jax.vmap(scalar))(jnp.concatenate([jnp.asarray(basis), -jnp.asarray(basis)]))
    plus, minus = both[: len(flat_idx)], both[len(flat_idx):]
    est = np.zeros(n)
    est[flat_idx] = np.asarray((plus - minus) / (2 * eps))
    mask = np.zeros(n, dtype=bool)
    mask[flat_idx] = True
    return est.reshape(x.shape), mask.reshape(x.shape)


def check_vjp(
    fn: Callable[..., Any],
    reference: Callable[..., Any],
    *args: Any,
    argnums: int | Sequence[int] | None = None,
    argnames: Sequence[str] | None = None,
    num_cotangents: int = 3,
    seed: int = 0,
    tolerance: Tolerance | None = None,
    finite_differences: bool = True,
    fd_eps: float = 1e-6,
    fd_max_elements: int = 256,
    second_order: bool = False,
) -> CheckResult:
    """Check the VJP of ``fn`` against JAX's autodiff of ``reference`` and finite differences.

    Args:
        fn: the function whose backward rule is checked (e.g. a ``jax.custom_vjp``).
        reference: the same function written with plain ``jnp`` operations.
        *args: arrays to evaluate at; floating arguments are differentiated by default.
        argnums: positions to differentiate; default: every floating argument.
        argnames: names for the positional arguments, used in reports.
        num_cotangents: how many random, non-uniform cotangents to try.
        seed: seed for the cotangents and element sampling.
        tolerance: override the :data:`TOLERANCES` entry of the arguments' dtype.
        finite_differences: also compare with float64 central differences.
        fd_eps: the finite-difference step.
        fd_max_elements: check at most this many elements per argument by differences.
        second_order: also compare the gradient of ``<vjp(ct), w>`` (grad of grad).

    Returns:
        A :class:`CheckResult`.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> @jax.custom_vjp
        ... def cube(x):
        ...     return x ** 3
        >>> cube.defvjp(lambda x: (x ** 3, x), lambda x, g: (3 * x ** 2 * g,))
        >>> check_vjp(cube, lambda x: x ** 3, jnp.array([1.0, 2.0])).ok
        True
        >>> cube.defvjp(lambda x: (x ** 3, x), lambda x, g: (2 * x ** 2 * g,))  # wrong rule
        >>> r = check_vjp(cube, lambda x: x ** 3, jnp.array([1.0, 2.0]))
        >>> r.ok, r.worst.argname, r.worst.index, round(r.worst.expected / r.worst.actual, 6)
        (False, 'arg0', (1,), 1.5)
    """
    args = [jnp.asarray(a) for a in args]
    names = list(argnames) if argnames is not None else [f"arg{i}" for i in range(len(args))]
    if len(names) != len(args):
        raise ValueError(f"check_vjp: argnames has {len(names)} names for {len(args)} arguments")
    if argnums is None:
        argnums = tuple(i for i, a in enumerate(args) if _is_float(a))
    elif isinstance(argnums, int):
        argnums = (argnums,)
    argnums = tuple(argnums)
    if not argnums:
        raise ValueError("check_vjp: no floating-point argument to differentiate")
    for i in argnums:
        if not _is_float(args[i]):
            raise TypeError(f"check_vjp: argument {names[i]!r} at argnums position {i} has "
                            f"dtype {args[i].dtype}; only floating arguments can be checked")
    dtype = jnp.result_type(*[args[i] for i in argnums])
    dname = jnp.dtype(dtype).name
    tol = tolerance or tolerance_for(dtype)

    def restrict(f):
        return only_args(f, args, argnums)

    diff_args = [args[i] for i in argnums]
    if dname in _LOW_PRECISION:  # judge low precision against a float32 oracle
        ref_args = [a.astype(jnp.float32) for a in diff_args]
    else:
        ref_args = diff_args
    out_shape = jax.eval_shape(restrict(fn), *diff_args)
    ref_shape = jax.eval_shape(restrict(reference), *ref_args)
    if out_shape.shape != ref_shape.shape:
        raise AssertionError(f"check_vjp: fn returned shape {out_shape.shape} but reference "
                             f"returned {ref_shape.shape}")
    rng = np.random.default_rng(seed)
    key = jax.random.PRNGKey(seed)
    cts = []
    for _ in range(num_cotangents):
        key, sub = jax.random.split(key)
        cts.append(jax.random.normal(sub, out_shape.shape, jnp.float32) + 0.5)

    def all_vjps(f, primals, cotangents):
        # one compiled program per side: the forward pass and every cotangent's VJP
        _, pullback = jax.vjp(f, *primals)
        return [pullback(c.astype(jnp.result_type(*primals))) for c in cotangents]

    got_all = jax.jit(lambda p, c: all_vjps(restrict(fn), p, c))(diff_args, cts)
    want_all = jax.jit(lambda p, c: all_vjps(restrict(reference), p, c))(ref_args, cts)

    comparisons = []
    parts = []
    for c, (got, want) in enumerate(zip(got_all, want_all, strict=True)):
        for i, gi in zip(argnums, got, strict=True):
            if gi.dtype != args[i].dtype or gi.shape != args[i].shape:
                raise AssertionError(
                    f"check_vjp: cotangent of argument {names[i]!r} has shape/dtype "
                    f"{gi.shape}/{gi.dtype}, expected {args[i].shape}/{args[i].dtype}")
        parts.append(_compare("reference", got, want, argnums, names, tol, c))
    comparisons.append(_merge("reference", parts))

    if finite_differences:
        with jax.enable_x64(True):
            a64 = [a.astype(jnp.float64) if _is_float(a) else a for a in args]

            def f64(*d):
                return fn(*[d[argnums.index(i)] if i in argnums else a64[i]
                            for i in range(len(a64))])

            cts64 = [jnp.asarray(np.asarray(ct, np.float64)) for ct in cts[:2]]
            got64 = jax.jit(lambda p, c: all_vjps(f64, p, c))([a64[i] for i in argnums], cts64)
            parts = []
            for c, (ct64, got) in enumerate(zip(cts64, got64, strict=True)):
                ests, acts = [], []
                for k, i in enumerate(argnums):
                    est, mask = _fd_vjp(fn, a64, i, ct64, fd_eps, fd_max_elements, rng)
                    acts.append(np.where(mask, np.asarray(got[k]), est))
                    ests.append(est)
                parts.append(_compare("finite_differences", acts, ests, argnums, names,
                                      FD_TOLERANCE, c))
            comparisons.append(_merge("finite_differences", parts))

    if second_order:
        ct = cts[0]
        ws = [jax.random.normal(jax.random.PRNGKey(seed + 7 + k), args[i].shape, jnp.float32)
              for k, i in enumerate(argnums)]

        def inner(f, r_args):
            def h(*diff):
                _, v = jax.vjp(restrict(f), *diff)
                g = v(ct.astype(jnp.result_type(*diff)))
                return sum(jnp.sum(gi * w.astype(gi.dtype)) for gi, w in zip(g, ws, strict=True))
            return jax.jit(jax.grad(h, argnums=tuple(range(len(r_args)))))(*r_args)

        got = inner(fn, diff_args)
        want = inner(reference, ref_args)
        tol2 = Tolerance(tol.rtol * 10, tol.atol * 10)
        comparisons.append(_compare("second_order", got, want, argnums, names, tol2, 0))

    ok = all(c.ok for c in comparisons)
    merged = _merge("all", comparisons)
    return CheckResult(ok, merged.max_abs_err, merged.max_rel_err, merged.worst,
                       tuple(comparisons), dname)


def assert_vjp_matches(fn: Callable[..., Any], reference: Callable[..., Any], *args: Any,
                       **kwargs: Any) -> CheckResult:
    """Like :func:`check_vjp`, but raise ``AssertionError`` with the full report on failure.

    Args:
        fn: the function whose backward rule is checked.
        reference: the plain-``jnp`` oracle.
        *args: arrays to evaluate at.
        **kwargs: options of :func:`check_vjp`.

    Returns:
        The passing :class:`CheckResult`.

    Raises:
        AssertionError: naming the argument, element, expected and actual values.
    """
    result = check_vjp(fn, reference, *args, **kwargs)
    if not result.ok:
        raise AssertionError(str(result))
    return result


# ------------------------------------------------------------------ residual accounting
def saved_residual_bytes(fn: Callable[..., Any], *args: Any) -> tuple[int, int]:
    """Count the residuals reverse mode saves for ``fn`` at ``args``, and their bytes.

    Uses JAX's own residual accounting (the data behind
    ``jax.ad_checkpoint.print_saved_residuals``), so custom rules and JAX's autodiff are
    measured the same way. Arguments that are saved count too.

    Args:
        fn: the function, differentiated with respect to all ``args``.
        *args: floating-point arrays.

    Returns:
        ``(count, bytes)``.

    Examples:
        >>> import jax.numpy as jnp, funcgrad as fg
        >>> saved_residual_bytes(fg.tanh, jnp.ones(4))
        (1, 16)
    """
    from jax._src.ad_checkpoint import saved_residuals  # no public equivalent returns data

    res = saved_residuals(fn, *args)
    total = 0
    for aval, _ in res:
        total += int(np.prod(aval.shape, dtype=np.int64)) * jnp.dtype(aval.dtype).itemsize
    return len(res), total


# ----------------------------------------------------------------- checking the registry
@dataclasses.dataclass(frozen=True)
class PrimitiveReport:
    """The checker's verdict on one registered primitive (see :func:`check_registry`)."""

    name: str
    formula: str
    residuals: str
    rule_residuals: tuple[int, int]
    autodiff_residuals: tuple[int, int]
    max_abs_err_f32: float
    max_rel_err_f32: float
    max_abs_err_f64: float
    max_rel_err_f64: float
    ok: bool
    failures: tuple[str, ...]


def check_primitive(prim: Any, *, all_shapes: bool = True, second_order: bool = True,
                    seed: int = 0) -> PrimitiveReport:
    """Check one registry entry in float32 and float64 against its reference.

    float32: every registered sample shape (or just the first) against the reference.
    float64 (inside ``jax.enable_x64``): the first sample shape against the reference, finite
    differences and, optionally, second order.

    Args:
        prim: a :class:`funcgrad.registry.Primitive`.
        all_shapes: check every registered sample shape in float32.
        second_order: include the grad-of-grad comparison in float64.
        seed: seed for samples and cotangents.

    Returns:
        A :class:`PrimitiveReport`.
    """
    from .registry import sample_args

    names = [a.name for a in prim.args]
    failures = []
    abs32 = rel32 = 0.0
    shapes_list = prim.sample_shapes if all_shapes else prim.sample_shapes[:1]
    key = jax.random.PRNGKey(seed)
    for shapes in shapes_list:
        args = sample_args(prim, key, shapes, jnp.float32)
        r = check_vjp(prim.call, prim.call_reference, *args, argnames=names, seed=seed,
                      finite_differences=False)
        abs32, rel32 = max(abs32, r.max_abs_err), max(rel32, r.max_rel_err)
        if not r.ok:
            failures.append(f"float32 {shapes}: {r}")
    with jax.enable_x64(True):
        args = sample_args(prim, key, prim.sample_shapes[0], jnp.float64)
        r = check_vjp(prim.call, prim.call_reference, *args, argnames=names, seed=seed,
                      second_order=second_order)
        if not r.ok:
            failures.append(f"float64 {prim.sample_shapes[0]}: {r}")
        abs64, rel64 = r.max_abs_err, r.max_rel_err
    args = sample_args(prim, key, prim.sample_shapes[0], jnp.float32)
    fl = [i for i, a in enumerate(prim.args) if a.kind == "float"]

    diff = [args[i] for i in fl]
    ours = saved_residual_bytes(only_args(prim.call, args, fl), *diff)
    theirs = saved_residual_bytes(only_args(prim.call_reference, args, fl), *diff)
    return PrimitiveReport(prim.name, prim.formula, prim.residuals, ours, theirs, abs32, rel32,
                           abs64, rel64, not failures, tuple(failures))


def check_registry(names: Sequence[str] | None = None, **kwargs: Any) -> list[PrimitiveReport]:
    """Run :func:`check_primitive` over the registry (or the named primitives).

    Args:
        names: primitive names; default: all of :data:`funcgrad.PRIMITIVES`.
        **kwargs: options of :func:`check_primitive`.

    Returns:
        One report per primitive, in registry order.
    """
    from .registry import PRIMITIVES

    names = list(PRIMITIVES) if names is None else list(names)
    unknown = [n for n in names if n not in PRIMITIVES]
    if unknown:
        raise KeyError(f"check_registry: unknown primitive(s) {unknown}; known: {list(PRIMITIVES)}")
    return [check_primitive(PRIMITIVES[n], **kwargs) for n in names]
