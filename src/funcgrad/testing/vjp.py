"""``check_vjp``: prove any VJP rule right, for pytree arguments and outputs.

The rule (usually a ``jax.custom_vjp`` function) is compared with:

* ``reference``: JAX's autodiff of a plain function, when one is given (same dtype for
  float32/float64; a float64 truth for float16/bfloat16);
* ``float64_truth``: without a reference, the rule's own float64 VJP (itself checked by
  finite differences) judges the float32/float16/bfloat16 values;
* ``finite_differences``: float64 central differences, every direction of one batch in a
  single vmapped, jitted evaluation;
* ``dot_product``: ``<vjp(ct), v> == <ct, J v>`` along random directions ``v``;
* ``second_order`` (optional): the gradient of ``<vjp(ct), w>`` along random directions,
  against finite differences (and the reference's, when given).

The report names the worst element: argument, pytree path, index, expected and actual.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._compile import _jit
from ._leaves import _as_array, _is_float, _Leaves
from .compare import FD_TOLERANCE, Comparison, Mismatch, Tolerance, compare, merge, tolerance_for

__all__ = ["CheckResult", "assert_vjp_matches", "check_vjp"]

_LOW = ("float16", "bfloat16")


@dataclasses.dataclass(frozen=True)
class CheckResult:
    """What :func:`check_vjp` found.

    Attributes:
        ok: every comparison passed.
        max_abs_err: largest absolute error over all comparisons.
        max_rel_err: largest relative error over all comparisons.
        worst: the element that came closest to (or furthest past) its tolerance.
        comparisons: one :class:`~funcgrad.testing.Comparison` per check that ran.
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
            lines.append(f"  {c.check}: {'ok' if c.ok else 'MISMATCH'}, max abs "
                         f"{c.max_abs_err:.3g}, max rel {c.max_rel_err:.3g}")
            if c.worst is not None and not c.ok:
                lines.append(f"    worst {c.worst}")
            if c.note:
                lines.append(f"    {c.note}")
        return "\n".join(lines)


def _parse(fn: Any, args: tuple, reference: Any, argnums: Any, argnames: Any):
    if not callable(fn):
        raise TypeError(f"check_vjp: argument 'fn' must be callable; got {type(fn).__name__}")
    if reference is None and args and callable(args[0]):  # check_vjp(fn, reference, *args)
        reference, args = args[0], args[1:]
    if reference is not None and not callable(reference):
        raise TypeError(f"check_vjp: argument 'reference' must be callable or None; got "
                        f"{type(reference).__name__}")
    if not args:
        raise ValueError("check_vjp: no arguments to evaluate fn at; pass them after fn")
    args = [jax.tree.map(_as_array, a) for a in args]
    names = list(argnames) if argnames is not None else [f"arg{i}" for i in range(len(args))]
    if len(names) != len(args):
        raise ValueError(f"check_vjp: argnames has {len(names)} names for {len(args)} arguments")
    has_float = [any(_is_float(v) for v in jax.tree.leaves(a)) for a in args]
    if argnums is None:
        argnums = tuple(i for i, f in enumerate(has_float) if f)
        if not argnums:
            raise ValueError("check_vjp: no floating-point argument to differentiate")
    argnums = (argnums,) if isinstance(argnums, int) else tuple(argnums)
    for i in argnums:
        if not isinstance(i, int | np.integer) or not -len(args) <= i < len(args):
            raise ValueError(f"check_vjp: argnums {i!r} is out of range for {len(args)} "
                             f"argument(s); expected an integer in [0, {len(args) - 1}]")
    argnums = tuple(int(i) % len(args) for i in argnums)
    for i in argnums:
        if not has_float[i]:
            dts = sorted({str(getattr(v, "dtype", type(v).__name__))
                          for v in jax.tree.leaves(args[i])}) or ["no leaves"]
            raise TypeError(f"check_vjp: argument {names[i]!r} at argnums position {i} has "
                            f"dtype {', '.join(dts)}; only floating arguments can be checked")
    return reference, args, names, argnums


def _vjps(g: Callable[..., list], leaves: list, cts: list) -> tuple[list, list]:
    """Outputs and one VJP per cotangent (one forward pass shared by all)."""
    outs, pull = jax.vjp(g, *leaves)
    return outs, [list(pull([c.astype(o.dtype) for c, o in zip(ct, outs, strict=True)]))
                  for ct in cts]


def _flat(vals: Sequence[Any]) -> np.ndarray:
    return np.concatenate([np.asarray(v, np.float64).ravel() for v in vals])


def _split(vec: Any, like: Sequence[Any]) -> list[Any]:
    """A flat vector (NumPy or traced) back into arrays shaped like ``like``."""
    out, start = [], 0
    for v in like:
        n = int(np.prod(v.shape, dtype=np.int64))
        out.append(vec[start:start + n].reshape(v.shape))
        start += n
    return out


def _central(h: Callable[[jax.Array], jax.Array], x: list, d: jax.Array,
             eps: float) -> jax.Array:
    """Central differences of ``h`` (a function of the flat vector) along each row of ``d``,
    every direction in one vmapped evaluation."""
    x0 = jnp.concatenate([v.ravel() for v in x])
    both = jax.vmap(h)(x0 + jnp.concatenate([eps * d, -eps * d]))
    return (both[: d.shape[0]] - both[d.shape[0]:]) / (2 * eps)


def _fd_traced(g: Callable[..., list], x: list, cts: list, dirs: jax.Array,
               eps: float) -> jax.Array:
    """``<ct_k, J d_j>`` by central differences: shape (directions, cotangents)."""
    def h(flat):
        outs = g(*_split(flat, x))
        return jnp.stack([sum(jnp.sum(o * c) for o, c in zip(outs, ct, strict=True))
                          for ct in cts])
    return _central(h, x, dirs, eps)


def _so_traced(g: Callable[..., list], x: list, ct: list, ws: list, dirs: jax.Array,
               eps: float) -> tuple[list, jax.Array]:
    """grad of ``h = <vjp(ct), w>``, and ``h`` differenced along ``dirs``."""
    def h(*xs):
        _, (grads,) = _vjps(g, list(xs), [ct])
        return sum(jnp.sum(gi * w) for gi, w in zip(grads, ws, strict=True))

    grad = jax.grad(h, argnums=tuple(range(len(x))))(*x)
    return list(grad), _central(lambda flat: h(*_split(flat, x)), x, dirs, eps)


def _fd_judge(est: np.ndarray, got64: list, chosen: np.ndarray, rand: np.ndarray,
              x64: list, lv: _Leaves, names: list) -> list[Comparison]:
    n = int(sum(v.size for v in x64))
    fd_parts, dot_parts = [], []
    for k, got in enumerate(got64):
        g = _flat(got)
        e_full = g.copy()
        e_full[chosen] = est[: len(chosen), k]
        mask = np.zeros(n, bool)
        mask[chosen] = np.isfinite(est[: len(chosen), k])  # no verdict where f is not finite
        fd_parts.append(compare("finite_differences", _split(g, x64), _split(e_full, x64),
                                lv.pos, names, FD_TOLERANCE, k, paths=lv.paths,
                                mask=_split(mask, x64)))
        dot_parts.append(compare("dot_product", [rand @ g], [est[len(chosen):, k]],
                                 [len(names)], [*names, "<random direction>"], FD_TOLERANCE, k))
    return [merge("finite_differences", fd_parts), merge("dot_product", dot_parts)]


def _plan(n: int, max_elements: int, num_directions: int, rng: np.random.Generator):
    """Elements to difference (all, or a sample) and random unit directions."""
    chosen = np.arange(n) if n <= max_elements else np.sort(
        rng.choice(n, size=max_elements, replace=False))
    rand = rng.standard_normal((num_directions, n))
    rand /= np.linalg.norm(rand, axis=1, keepdims=True)
    dirs = np.zeros((len(chosen) + num_directions, n))
    dirs[np.arange(len(chosen)), chosen] = 1.0
    dirs[len(chosen):] = rand
    return chosen, rand, dirs


def _output_shapes(g: Callable, lv: _Leaves, reference: Callable | None) -> list:
    outs = jax.eval_shape(g, *lv.values)
    if reference is not None:
        ref_outs = jax.eval_shape(lv.function(reference), *lv.values)
        if [o.shape for o in outs] != [o.shape for o in ref_outs]:
            raise AssertionError(f"check_vjp: fn returned shapes {[o.shape for o in outs]} but "
                                 f"reference returned {[o.shape for o in ref_outs]}")
    return outs


def _cotangents(outs: Sequence[Any], num: int, seed: int) -> list:
    """Random, non-uniform cotangents (drawn with NumPy: nothing to compile)."""
    rng = np.random.default_rng(seed + 1000)
    return [[jax.device_put((rng.standard_normal(o.shape) + 0.5).astype(o.dtype)) for o in outs]
            for _ in range(num)]


def _to64(x: Any) -> jax.Array:
    return jax.device_put(np.asarray(x).astype(np.float64))  # host-side: no device program


class _Plan:
    """Everything check_vjp evaluates, in one jitted program per precision."""

    def __init__(self, lv: _Leaves, fn: Callable, reference: Callable | None, dname: str,
                 fd: bool, so: bool, max_elements: int, num_directions: int, seed: int,
                 eps: float):
        self.lv, self.fn, self.ref, self.dname = lv, fn, reference, dname
        self.fd, self.so, self.eps = fd, so, eps
        self.same_ref = reference is not None and dname not in _LOW
        self.truth = dname != "float64" and (reference is None or dname in _LOW)
        rng = np.random.default_rng(seed)
        n = int(sum(v.size for v in lv.values))
        self.chosen, self.rand, self.dirs = _plan(n, max_elements, num_directions, rng)
        so_rng = np.random.default_rng(seed + 7)
        self.ws = [so_rng.standard_normal(v.shape) for v in lv.values]
        self.so_dirs = so_rng.standard_normal((2, n))

    def _low(self, g: Callable, x: list, c: list) -> dict:
        res = {"got": _vjps(g, x, c)[1]}
        if self.ref is not None:  # same precision: the oracle; low precision: the baseline
            key = "reference" if self.same_ref else "baseline"
            res[key] = _vjps(self.lv.function(self.ref), x, c)[1]
        return res

    def _high(self, x: list, c: list, dirs: jax.Array, ws: list, so_dirs: jax.Array,
              got: list | None) -> dict:
        g64 = self.lv.function(self.fn, jnp.float64)
        res = {}
        if self.truth:
            truth_fn = g64 if self.ref is None else self.lv.function(self.ref, jnp.float64)
            res["reference" if self.ref is not None else "float64_truth"] = _vjps(
                truth_fn, x, c)[1]
        if self.fd or self.so:
            res["got64"] = got[:2] if got is not None else _vjps(g64, x, c[:2])[1]
        if self.fd:
            res["fd"] = _fd_traced(g64, x, c[:2], dirs, self.eps)
        if self.so:
            ws = [w.astype(v.dtype) for w, v in zip(ws, x, strict=True)]
            res["so"] = _so_traced(g64, x, c[0], ws, so_dirs, self.eps)
            if self.ref is not None:
                ref64 = self.lv.function(self.ref, jnp.float64)
                res["so_ref"] = _so_traced(ref64, x, c[0], ws, so_dirs, self.eps)[0]
        return res

    def program(self, g: Callable, cts: list) -> tuple[Callable, tuple]:
        """float64: everything in one traceable function of one input tree (under x64)."""
        def both(inputs):
            x, c, d, w, s = inputs
            low = self._low(g, x, c)
            return {**low, **self._high(x, c, d, w, s, low["got"])}
        self.x64 = self.lv.values
        return both, (self.lv.values, cts, self.dirs, self.ws, self.so_dirs)

    def run(self, g: Callable, cts: list) -> dict:
        if self.dname == "float64":  # one program for everything
            with jax.enable_x64(True):
                fn, inputs = self.program(g, cts)
                return _jit(fn)(inputs)
        res = _jit(lambda x, c: self._low(g, x, c))(self.lv.values, cts)
        if not (self.truth or self.fd or self.so):
            return res
        with jax.enable_x64(True):
            self.x64 = [_to64(v) for v in self.lv.values]
            cts64 = [[_to64(c) for c in ct] for ct in cts]
            res.update(_jit(lambda x, c, d, w, s: self._high(x, c, d, w, s, None))(
                self.x64, cts64, self.dirs, self.ws, self.so_dirs))
        return res


def _judge(res: dict, plan: _Plan, names: list, tol: Tolerance, fd: bool,
           so: bool) -> list[Comparison]:
    """Every comparison of one check_vjp run, from the evaluated results."""
    lv, low = plan.lv, plan.dname in _LOW
    comparisons = []
    for check in ("reference", "float64_truth"):
        if check in res:
            comparisons.append(merge(check, [
                compare(check, a, e, lv.pos, names, tol, k, paths=lv.paths, relative=low,
                        baseline=res["baseline"][k] if "baseline" in res else None,
                        round_to=jnp.dtype(plan.dname) if low else None)
                for k, (a, e) in enumerate(zip(res["got"], res[check], strict=True))]))
    if fd:
        comparisons += _fd_judge(np.asarray(res["fd"]), res["got64"], plan.chosen, plan.rand,
                                 plan.x64, lv, names)
    if so:
        comparisons.append(_so_judge(res, plan, lv, names, tol))
    return comparisons


def _so_judge(res: dict, plan: _Plan, lv: _Leaves, names: list, tol: Tolerance) -> Comparison:
    grad, est = res["so"]
    along = plan.so_dirs @ _flat(grad)
    so_tol = Tolerance(FD_TOLERANCE.rtol * 10, FD_TOLERANCE.atol * 10)
    parts = [compare("second_order", [along], [np.asarray(est)], [len(names)],
                     [*names, "<random direction>"], so_tol)]
    if "so_ref" in res:
        parts.append(compare("second_order", grad, res["so_ref"], lv.pos, names,
                             Tolerance(tol.rtol * 10, tol.atol * 10), paths=lv.paths))
    return merge("second_order", parts)


def check_vjp(
    fn: Callable[..., Any],
    *args: Any,
    reference: Callable[..., Any] | None = None,
    argnums: int | Sequence[int] | None = None,
    argnames: Sequence[str] | None = None,
    num_cotangents: int = 3,
    seed: int = 0,
    tolerance: Tolerance | None = None,
    finite_differences: bool = True,
    fd_eps: float = 1e-6,
    fd_max_elements: int = 256,
    num_directions: int = 4,
    second_order: bool = False,
) -> CheckResult:
    """Check the VJP of ``fn`` against a reference, a float64 truth and finite differences.

    Arguments and outputs may be pytrees (dicts, lists, tuples of arrays); every floating
    leaf of a selected argument is differentiated, integer leaves are held fixed. The
    older call form ``check_vjp(fn, reference, *args)`` still works.

    Args:
        fn: the function whose backward rule is checked (e.g. a ``jax.custom_vjp``).
        *args: the arguments to evaluate at (arrays or pytrees of arrays).
        reference: optional; the same function written with plain ``jnp`` operations.
        argnums: positions to differentiate; default: every argument with a floating leaf.
        argnames: names for the positional arguments, used in reports.
        num_cotangents: how many random, non-uniform cotangents to try.
        seed: seed for the cotangents, directions and element sampling.
        tolerance: override the :data:`~funcgrad.testing.TOLERANCES` entry of the dtype.
        finite_differences: also run float64 central differences and the dot-product test.
        fd_eps: the finite-difference step.
        fd_max_elements: check at most this many elements (all arguments) by differences.
        num_directions: random directions of the dot-product test.
        second_order: also check the gradient of ``<vjp(ct), w>`` (grad of grad).

    Returns:
        A :class:`CheckResult`.

    Raises:
        TypeError: ``fn`` is not callable, or a selected argument has no floating leaf.
        ValueError: no arguments, an ``argnums`` entry out of range, or wrong ``argnames``.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> @jax.custom_vjp
        ... def cube(x):
        ...     return x ** 3
        >>> cube.defvjp(lambda x: (x ** 3, x), lambda x, g: (3 * x ** 2 * g,))
        >>> check_vjp(cube, jnp.array([1.0, 2.0])).ok
        True
        >>> cube.defvjp(lambda x: (x ** 3, x), lambda x, g: (2 * x ** 2 * g,))  # wrong rule
        >>> r = check_vjp(cube, jnp.array([1.0, 2.0]), reference=lambda x: x ** 3)
        >>> r.ok, r.worst.argname, r.worst.index, round(r.worst.expected / r.worst.actual, 6)
        (False, 'arg0', (1,), 1.5)
    """
    plan, g, cts = _prepare(fn, args, reference, argnums, argnames, num_cotangents, seed,
                            tolerance, fd=finite_differences, so=second_order,
                            max_elements=fd_max_elements, num_directions=num_directions,
                            eps=fd_eps)
    return _finish(plan.run(g, cts), plan)


def _prepare(fn: Callable, args: tuple, reference: Any, argnums: Any, argnames: Any,
             num_cotangents: int, seed: int, tolerance: Tolerance | None,
             **options: Any) -> tuple[_Plan, Callable, list]:
    """check_vjp up to its programs: the plan, the function of the leaves, the cotangents."""
    reference, args, names, argnums = _parse(fn, args, reference, argnums, argnames)
    lv = _Leaves(args, argnums)
    dname = jnp.dtype(jnp.result_type(*lv.values)).name
    tol = tolerance or tolerance_for(dname)
    g = lv.function(fn)
    cts = _cotangents(_output_shapes(g, lv, reference), num_cotangents, seed)
    plan = _Plan(lv, fn, reference, dname, seed=seed, **options)
    plan.names, plan.tol = names, tol
    return plan, g, cts


def _finish(res: dict, plan: _Plan) -> CheckResult:
    """check_vjp's verdict on the evaluated results."""
    lv, names = plan.lv, plan.names
    for grads in res["got"]:
        for p, path, gi, xi in zip(lv.pos, lv.paths, grads, lv.values, strict=True):
            if gi.dtype != xi.dtype or gi.shape != xi.shape:
                raise AssertionError(
                    f"check_vjp: cotangent of argument {names[p]!r}{path} has shape/dtype "
                    f"{gi.shape}/{gi.dtype}, expected {xi.shape}/{xi.dtype}")
    comparisons = _judge(res, plan, names, plan.tol, plan.fd, plan.so)
    merged = merge("all", comparisons)
    return CheckResult(all(c.ok for c in comparisons), merged.max_abs_err, merged.max_rel_err,
                       merged.worst, tuple(comparisons), plan.dname)


def _deferred(fn: Callable[..., Any], *args: Any,
              **kwargs: Any) -> tuple[Callable, Any, Callable[[Any], CheckResult]]:
    """:func:`check_vjp` on float64 arguments, deferred: ``(program, inputs, verdict)``.

    For a caller that evaluates several checks in one compiled program: the result of
    ``program(inputs)`` (under ``jax.enable_x64(True)``) given to ``verdict`` is
    ``check_vjp(fn, *args, **kwargs)``. Options and their defaults are check_vjp's.
    """
    bound = inspect.signature(check_vjp).bind(fn, *args, **kwargs)
    bound.apply_defaults()
    o = bound.arguments
    plan, g, cts = _prepare(fn, o["args"], o["reference"], o["argnums"], o["argnames"],
                            o["num_cotangents"], o["seed"], o["tolerance"],
                            fd=o["finite_differences"], so=o["second_order"],
                            max_elements=o["fd_max_elements"],
                            num_directions=o["num_directions"], eps=o["fd_eps"])
    if plan.dname != "float64":
        raise ValueError(f"check_vjp: deferred checks need float64 arguments; got {plan.dname}")
    program, inputs = plan.program(g, cts)
    return program, inputs, lambda results: _finish(results, plan)


def assert_vjp_matches(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> CheckResult:
    """Like :func:`check_vjp`, but raise ``AssertionError`` with the full report on failure.

    Args:
        fn: the function whose backward rule is checked.
        *args: arguments (the older form ``assert_vjp_matches(fn, reference, *args)`` works).
        **kwargs: options of :func:`check_vjp`.

    Returns:
        The passing :class:`CheckResult`.

    Raises:
        AssertionError: naming the argument, element, expected and actual values.
    """
    result = check_vjp(fn, *args, **kwargs)
    if not result.ok:
        raise AssertionError(str(result))
    return result
