"""The checks of the battery, one function per row (see :mod:`funcgrad.testing.battery`)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ._compile import _jit
from ._leaves import _Leaves
from ._state import _Battery, _error_text, _size, _summary
from .compare import EDGE_AGREEMENT, TOLERANCES, Tolerance, compare, merge
from .vjp import _cotangents, _vjps


def _host(tree: Any) -> Any:
    """Results as NumPy arrays: indexing them compiles nothing."""
    return jax.tree.map(np.asarray, tree)


class _Part(NamedTuple):
    """One check's share of a compiled program: ``judge(host(fn(inputs)))`` puts its rows.

    ``alone`` (optional) runs the check in programs of its own, after a shared program
    crashed; by default ``fn`` is compiled alone.
    """

    fn: Callable[[Any], Any]
    inputs: Any
    judge: Callable[[Any], None]
    alone: Callable[[], None] | None = None


def run_parts(b: _Battery, builds: Sequence[tuple[Sequence[str], Callable[[], _Part | None]]],
              x64: bool = False) -> None:
    """Build each check's part, then evaluate every part in one compiled program.

    A build that fails (a crash while tracing shapes) fails its rows; a build that returns
    ``None`` has judged its rows already (a dtype leak found by tracing). If the shared
    program crashes, each part runs in its own program, so a crash is charged to the
    check that crashed, with the row it gets when run alone. Compiling one program per
    primitive and precision instead of one per check saves most of the fixed cost of a
    compilation (tracing, lowering, XLA's per-program setup).

    Args:
        b: the battery.
        builds: ``(rows, build)`` per check; ``build()`` returns its :class:`_Part`.
        x64: evaluate under ``jax.enable_x64(True)`` (parts with float64 inputs).
    """
    parts: list[tuple[Sequence[str], _Part]] = []
    for rows, build in builds:
        b.run(rows, lambda rows=rows, build=build: parts.append((rows, build())))
    parts = [(rows, p) for rows, p in parts if p is not None]
    if not parts:
        return
    fns = [p.fn for _, p in parts]
    try:
        with jax.enable_x64(True) if x64 else contextlib.nullcontext():
            results = _host(_jit(lambda xs: [f(x) for f, x in zip(fns, xs, strict=True)])(
                [p.inputs for _, p in parts]))
    except Exception:  # find the crash: every part alone
        for rows, p in parts:
            b.run(rows, lambda p=p: _alone(p, x64))
        return
    for (rows, p), res in zip(parts, results, strict=True):
        b.run(rows, lambda p=p, res=res: p.judge(res))


def _alone(p: _Part, x64: bool) -> None:
    if p.alone is not None:
        return p.alone()
    with jax.enable_x64(True) if x64 else contextlib.nullcontext():
        results = _host(_jit(p.fn)(p.inputs))
    p.judge(results)


def _out_names(b: _Battery, n: int) -> tuple[list[int], list[str], list[str]]:
    return [len(b.names)] * n, [*b.names, "<output>"], [f"[{k}]" for k in range(n)]


def _primal(b: _Battery) -> _Part:
    """Plain forward against the forward under differentiation and the reference."""
    lv = _Leaves(b.args(jnp.float32), b.argnums)
    g = lv.function(b.prim.call)
    ref = lv.function(b.ref) if b.ref is not None else None

    def both(x):
        plain = g(*x)
        return plain, jax.vjp(g, *x)[0], ref(*x) if ref is not None else plain

    def judge(results: Any) -> None:
        plain, under, want = results
        pos, names, paths = _out_names(b, len(plain))
        tol = TOLERANCES["float32"]
        c1 = compare("primal", plain, under, pos, names, tol, paths=paths)
        b.put("primal", c1.ok, "plain forward differs from the forward under jax.vjp: "
              + _summary(c1) if not c1.ok else _summary(c1))
        if ref is not None:
            c2 = compare("primal", plain, want, pos, names, tol, paths=paths)
            b.put("primal", c2.ok, "plain forward differs from the reference: " + _summary(c2))

    return _Part(both, lv.values, judge)


def _reference_f64(b: _Battery, shape_list: Sequence[Any]) -> None:
    """Without a reference: float32 VJP against the rule's float64 VJP, shape by shape."""
    worst = 0.0
    for shapes in shape_list:
        r = b.vjp(b.prim.call, args=b.args(jnp.float32, shapes), finite_differences=False,
                  num_cotangents=2)
        worst = max(worst, r.max_abs_err)
        for c in r.comparisons:
            if not c.ok:
                b.put("reference", False, f"shapes {shapes}: {_summary(c)}")
    b.put("reference", True, f"{len(shape_list)} shape(s) vs the rule's float64 "
          f"VJP, max abs err {worst:.1e}")


def _reference(b: _Battery, shape_list: Sequence[Any]) -> _Part:
    """float32 VJP against the reference over the shape grid, every shape in one program."""
    cases = []
    for k, shapes in enumerate(shape_list):
        lv = _Leaves(b.args(jnp.float32, shapes, seed=b.seed + k), b.argnums)
        outs = jax.eval_shape(lv.function(b.prim.call), *lv.values)
        cases.append((shapes, lv, _cotangents(outs, 1, b.seed + k)))  # random, non-uniform

    def program(xs, cts):
        return [(_vjps(lv.function(b.prim.call), x, c)[1],
                 _vjps(lv.function(b.ref), x, c)[1])
                for (_, lv, _), x, c in zip(cases, xs, cts, strict=True)]

    return _Part(lambda xc: program(*xc), ([lv.values for _, lv, _ in cases],
                                           [c for *_, c in cases]),
                 lambda results: _judge_reference(b, cases, results))


def _judge_reference(b: _Battery, cases: list, results: Any) -> None:
    worst, tol = 0.0, TOLERANCES["float32"]
    for (shapes, lv, _), (got, want) in zip(cases, results, strict=True):
        for grads in got:
            for p, path, gi, xi in zip(lv.pos, lv.paths, grads, lv.values, strict=True):
                if gi.shape != xi.shape or gi.dtype != xi.dtype:
                    return b.put("reference", False, f"shapes {shapes}: cotangent of "
                                 f"{b.names[p]!r}{path} has shape/dtype {gi.shape}/{gi.dtype},"
                                 f" expected {xi.shape}/{xi.dtype}")
        c = merge("reference", [compare("reference", a, w, lv.pos, b.names, tol, k,
                                        paths=lv.paths)
                                for k, (a, w) in enumerate(zip(got, want, strict=True))])
        worst = max(worst, c.max_abs_err)
        if not c.ok:
            b.put("reference", False, f"shapes {shapes}: {_summary(c)}")
    b.put("reference", True, f"{len(cases)} shape(s) vs reference, max abs err {worst:.1e}")


_F64_ROWS = {"reference": "reference", "finite_differences": "finite differences",
             "dot_product": "dot product", "second_order": "grad of grad"}


def _float64(b: _Battery, second_order: bool) -> _Part:
    """float64: reference, finite differences, the dot-product test and grad of grad.

    A surrogate gradient (straight-through estimators, gradient clipping or reversal)
    differs from the derivative of its forward by design. It is declared by a reference
    whose own autodiff disagrees with finite differences of its forward (the
    ``stop_gradient`` idiom); the rule is then held to that reference, and the
    finite-difference rows say so instead of failing. A float64 part (``check_vjp``'s
    program).
    """
    with jax.enable_x64(True):
        args = b.args(jnp.float64, max(b.prim.sample_shapes, key=_size))
        program, inputs, verdict = b.vjp(b.prim.call, args=args, reference=b.ref,
                                         second_order=second_order, num_cotangents=2,
                                         deferred=True)

    def judge(results: Any) -> None:
        with jax.enable_x64(True):
            r = verdict(results)
            fd_failed = any(not c.ok for c in r.comparisons if c.check != "reference")
            surrogate = fd_failed and b.ref is not None and not b.vjp(
                b.ref, args=args, num_cotangents=1).ok
        for c in r.comparisons:
            row = _F64_ROWS[c.check]
            if surrogate and c.check != "reference":
                b.put(row, True, "surrogate gradient declared by the reference (its autodiff "
                                 "differs from finite differences of its forward); held to it")
            else:
                b.put(row, c.ok, ("float64 " if c.check == "reference" else "") + _summary(c))

    return _Part(program, inputs, judge)


def _rule_grad(fn: Callable[..., Any]) -> Callable[[jax.Array], jax.Array]:
    """Jitted elementwise derivative of a unary elementwise rule (cotangent of ones)."""
    return _jit(lambda x: jax.vjp(fn, x)[1](jnp.ones_like(x))[0])


def _kinks(b: _Battery) -> None:
    """The declared derivative at each kink, float32 and float64."""
    points = tuple(getattr(b.prim, "kink_points", ()) or ())
    if not points:
        return b.put("kinks", True, "none declared")
    xs = [float(p[0]) for p in points]
    declared = np.array([float(p[1]) for p in points])
    for dt in ("float32", "float64"):
        with jax.enable_x64(dt == "float64"):
            got = np.asarray(_rule_grad(b.prim.call)(jax.device_put(np.asarray(xs, dt))),
                             np.float64)
        tol = TOLERANCES[dt]
        c = compare("kinks", [got], [declared.astype(dt).astype(np.float64)], [0],
                    b.names, Tolerance(tol.rtol, 0.0, tol.floor), relative=True)
        if not c.ok:
            w = c.worst
            return b.put("kinks", False, f"{dt} at x = {xs[w.index[0]]:g}: declared derivative"
                         f" {w.expected:.9g}, rule gives {w.actual:.9g}")
    b.put("kinks", True, "declared at x = " + ", ".join(f"{x:g}" for x in xs))


def _point_vjps(gs: Sequence[Callable[..., list]]) -> Callable[[jax.Array], list]:
    """Vmapped ``x -> [(outputs, cotangent for ones)]`` of several functions (traceable)."""
    def f(x):
        res = []
        for g in gs:
            outs, pull = jax.vjp(g, x)
            res.append((outs, pull([jnp.ones_like(o) for o in outs])[0]))
        return res
    return jax.vmap(f)


def _edge_point(b: _Battery, dt: str, p: float, got: list, truths: list,
                check: str = "edge points", tol: Tolerance | None = None) -> None:
    """Pass if ``got`` matches any float64 truth (the rule's own, or the reference's).

    ``jax.grad`` of a textbook reference can lose digits even in float64 (``1 - sigmoid``
    at x = 30), so the rule's own float64 VJP is a truth too; the primal is judged against
    the reference's float64 forward when there is one.
    """
    first = None
    for want in truths:
        c = compare(check, got, want, [0] * len(got), b.names, tol or TOLERANCES[dt],
                    relative=True, round_to=jnp.dtype(dt))
        if c.ok:
            return
        first = first or c
    w = first.worst
    what = "gradient" if check == "edge points" else "forward"
    note = f"; {first.note}" if first.note else ""
    b.put(check, False, f"{dt} {what} at edge point {p:g}, element {w.index}: float64 truth "
          f"{w.expected:.9g}, rule gives {w.actual:.9g} (rel err {w.rel_err:.3g}, allowed "
          f"{w.allowed:.3g}){note}")


def _edges(b: _Battery) -> _Part | None:
    """Gradients (and the primal) at the edge points against a float64 truth.

    A unary elementwise rule is evaluated at each point; any other rule of one float
    argument at its first sample shifted by the point (``x + p``). A float64 part.
    """
    points = np.array([float(p) for p in (getattr(b.prim, "edge_points", ()) or ())])
    if not points.size:
        return b.put("edge points", True, "none declared")
    lv = _Leaves(b.args(jnp.float32), b.argnums)
    if len(lv.values) != 1:
        return b.put("edge points", True, "needs exactly one float argument")
    base = np.zeros(()) if b.unary_elementwise() else np.asarray(lv.values[0], np.float64)
    stack = points.reshape((-1,) + (1,) * base.ndim) + base
    inputs = {}
    for dt in ("float32", "float16", "bfloat16"):
        rounded = stack.astype(jnp.dtype(dt))
        keep = np.isfinite(rounded.astype(np.float64)).reshape(len(points), -1).all(1)
        if keep.any():
            inputs[dt] = (keep, rounded[keep])
    fns = [f for f in (b.prim.call, b.ref) if f is not None]

    def program(xs):  # every dtype and both float64 truths in one compiled program
        return {dt: (_point_vjps([lv.function(b.prim.call, dt)])(xd)[0],
                     _point_vjps([lv.function(f, jnp.float64) for f in fns])(x64))
                for dt, (xd, x64) in xs.items()}

    def judge(results: Any) -> None:
        for dt, ((outs, got), truths) in results.items():
            for i, p in enumerate(points[inputs[dt][0]]):
                if len(truths) == 2:  # the two truths must roughly agree (formula, not rounding)
                    _edge_point(b, "float64", p, [truths[0][1][i]], [[truths[1][1][i]]],
                                tol=EDGE_AGREEMENT)
                _edge_point(b, dt, p, [got[i]], [[t[1][i]] for t in truths])
                _edge_point(b, dt, p, [o[i] for o in outs], [[o[i] for o in t[0]]
                                                             for t in truths[-1:]], "primal")
        at = "x = " if not base.ndim else "x + p, p = "
        b.put("edge points", True, at + ", ".join(f"{p:g}" for p in points) + " in "
              + "/".join(results))

    with jax.enable_x64(True):  # float64 inputs (run under x64 too: a float64 part)
        return _Part(program, {dt: (jax.device_put(r), jax.device_put(r.astype(np.float64)))
                               for dt, (_, r) in inputs.items()}, judge)


def _dtypes(b: _Battery) -> _Part | None:
    """Outputs and cotangents keep each dtype; float16/bfloat16 values match a float64 truth.

    The dtypes of outputs and cotangents are found by tracing; the values are a float64
    part.
    """
    shapes = max(b.prim.sample_shapes, key=_size)  # enough elements for the median check
    cases = {}
    for dt in ("float16", "bfloat16", "float32", "float64"):
        with jax.enable_x64(dt == "float64"):
            args = b.args(jnp.dtype(dt), shapes)
            lv = _Leaves(args, b.argnums)
            outs, grads = jax.eval_shape(_with_cotangents(lv.function(b.prim.call)), lv.values)
        bad = [f"output{k} is {o.dtype}" for k, o in enumerate(outs) if o.dtype != dt]
        bad += [f"cotangent of {b.names[p]!r}{path} is {gi.dtype}"
                for p, path, gi in zip(lv.pos, lv.paths, grads, strict=True) if gi.dtype != dt]
        if bad:
            return b.put("dtypes", False, f"{dt} arguments: " + "; ".join(bad)
                         + f"; expected {dt}")
        if dt in ("float16", "bfloat16"):
            cases[dt] = (lv, _cotangents(outs, 1, b.seed))
    return _low_precision_values(b, cases)


def _with_cotangents(g: Callable[..., list]) -> Callable[[list], tuple]:
    """``x -> (outputs, cotangents of x for cotangents of ones)``, one forward pass."""
    def f(x):
        outs, pull = jax.vjp(g, *x)
        return outs, list(pull([jnp.ones(o.shape, o.dtype) for o in outs]))
    return f


def _low_precision_values(b: _Battery, cases: dict) -> _Part:
    """float16/bfloat16 cotangents against a float64 truth, in one program (float64)."""
    def program(inputs):
        res = {}
        for dt, (x, c, x64, c64) in inputs.items():
            lv = cases[dt][0]
            truth_fn = b.ref if b.ref is not None else b.prim.call
            res[dt] = (_vjps(lv.function(b.prim.call), x, [c])[1][0],
                       _vjps(lv.function(b.ref), x, [c])[1][0] if b.ref is not None else None,
                       _vjps(lv.function(truth_fn, jnp.float64), x64, [c64])[1][0])
        return res

    def judge(results: Any) -> None:
        for dt, (got, base, truth) in results.items():
            lv = cases[dt][0]
            c = compare("reference" if b.ref is not None else "float64_truth", got, truth,
                        lv.pos, b.names, TOLERANCES[dt], relative=True, paths=lv.paths,
                        baseline=base, round_to=jnp.dtype(dt))
            if not c.ok:
                return b.put("dtypes", False, f"{dt}: {_summary(c)}")
        b.put("dtypes", True, "float16, bfloat16, float32, float64 kept")

    with jax.enable_x64(True):
        return _Part(program, {
            dt: (lv.values, ct[0], [jax.device_put(np.asarray(v, np.float64)) for v in lv.values],
                 [jax.device_put(np.asarray(v, np.float64)) for v in ct[0]])
            for dt, (lv, ct) in cases.items()}, judge)


def _transforms(b: _Battery, wanted: Sequence[str]) -> _Part:
    """The VJP under jit, vmap, scan and jax.checkpoint equals the plain one (float32).

    One program evaluates every transformation; the plain (op-by-op) VJP for the ``jit``
    row runs when the results are judged.
    """
    lv = _Leaves(b.args(jnp.float32), b.argnums)
    other = _Leaves(b.args(jnp.float32, seed=b.seed + 1), b.argnums)
    g = lv.function(b.prim.call)
    outs = jax.eval_shape(g, *lv.values)
    rng = np.random.default_rng(b.seed + 2)
    ct = [jax.device_put((rng.standard_normal(o.shape) + 0.5).astype(o.dtype)) for o in outs]

    def one(x):
        return _vjps(g, list(x), [ct])[1][0]

    def stacked(x, x2):
        return [jnp.stack([u, v]) for u, v in zip(x, x2, strict=True)]

    transforms = {
        "vmap": lambda x, x2: jax.vmap(lambda *xi: one(xi))(*stacked(x, x2)),
        "scan": lambda x, x2: jax.lax.scan(lambda c, xi: (c, one(xi)), 0,
                                           stacked(x, x2))[1],
        "remat": lambda x, x2: [jnp.stack([u, u]) for u in _vjps(
            jax.checkpoint(g), list(x), [ct])[1][0]],
    }
    todo = [t for t in ("vmap", "scan", "remat") if t in wanted]

    def everything(xs):
        return (one(xs[0]), one(xs[1])), {t: transforms[t](*xs) for t in todo}

    def judge(results: Any) -> None:
        base, done = results
        if "jit" in wanted:
            _same(b, "jit", list(base[0]), one(lv.values), lv)
        for t, got in done.items():
            expect = [np.stack([u, v if t != "remat" else u]) for u, v in zip(*base, strict=True)]
            _same(b, t, got, expect, lv)

    def alone() -> None:  # one program crashed: find which transformation crashed
        base = _host(_jit(lambda x, x2: (one(x), one(x2)))(lv.values, other.values))
        done = {}
        for t in todo:
            try:
                done[t] = _jit(transforms[t])(lv.values, other.values)
            except Exception as exc:
                b.put(t, False, _error_text(exc))
        judge((base, done))

    return _Part(everything, (lv.values, other.values), judge, alone)


def _same(b: _Battery, check: str, got: Sequence[Any], want: Sequence[Any],
          lv: _Leaves) -> None:
    c = compare(check, got, want, lv.pos, b.names, TOLERANCES["float32"], paths=lv.paths)
    b.put(check, c.ok, _summary(c) if not c.ok else "same as the plain VJP")


