"""The public rule checker, funcgrad.testing, on users' own custom_vjp rules."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcgrad as fg
from funcgrad import testing
from funcgrad.testing.compare import compare


def _cube_with(rule_factor):
    @jax.custom_vjp
    def cube(x):
        return x**3

    cube.defvjp(lambda x: (x**3, x), lambda x, g: (rule_factor * x**2 * g,))
    return cube


def test_correct_rule_passes_all_checks():
    r = testing.check_vjp(_cube_with(3.0), jnp.array([0.5, -1.0, 2.0]),
                          reference=lambda x: x**3, second_order=True)
    assert r.ok, str(r)
    assert [c.check for c in r.comparisons] == ["reference", "finite_differences",
                                                "dot_product", "second_order"]
    assert r.max_abs_err < 1e-5


def test_old_positional_reference_form_still_works():
    r = testing.check_vjp(_cube_with(3.0), lambda x: x**3, jnp.array([0.5, -1.0]))
    assert r.ok and r.comparisons[0].check == "reference"


def test_wrong_rule_is_named_by_argument_and_element():
    x = jnp.array([0.5, -1.0, 2.0, 0.1])
    r = testing.check_vjp(_cube_with(2.0), x, reference=lambda x: x**3, argnames=["x"])
    assert not r.ok
    assert r.worst.argname == "x" and r.arg == 0
    assert r.index == (2,)  # largest |x| gives the largest error
    assert r.expected == pytest.approx(r.actual * 1.5, rel=1e-5)
    assert r.worst.abs_err == pytest.approx(abs(r.expected - r.actual), rel=1e-5)
    assert r.max_rel_err == pytest.approx(1 / 3, rel=1e-3)
    text = str(r)
    assert "FAILED" in text and "element (2,)" in text and "argument 'x'" in text


def test_without_reference_finite_differences_and_dot_product_judge_the_rule():
    x = jnp.array([0.5, -1.0, 2.0])
    good = testing.check_vjp(_cube_with(3.0), x)
    assert good.ok, str(good)
    assert [c.check for c in good.comparisons] == ["float64_truth", "finite_differences",
                                                   "dot_product"]
    bad = testing.check_vjp(_cube_with(2.0), x)
    failed = {c.check for c in bad.comparisons if not c.ok}
    assert failed == {"finite_differences", "dot_product"}
    fd = bad.comparisons[1].worst
    assert fd.index == (2,) and fd.expected == pytest.approx(1.5 * fd.actual, rel=1e-6)


def test_finite_differences_catch_a_wrong_reference_too():
    """If rule and reference agree but are both wrong, finite differences disagree."""
    wrong = _cube_with(2.0)

    @jax.custom_jvp
    def wrong_ref(x):
        return x**3

    wrong_ref.defjvps(lambda t, ans, x: 2.0 * x**2 * t)
    r = testing.check_vjp(wrong, jnp.array([1.0, 2.0]), reference=wrong_ref)
    ref, fd = r.comparisons[0], r.comparisons[1]
    assert ref.ok and not fd.ok
    assert fd.worst.check == "finite_differences"


def test_second_order_catches_a_non_differentiable_backward():
    @jax.custom_vjp
    def sq(x):
        return x * x

    # right first derivative, but stop_gradient hides x from the second derivative
    sq.defvjp(lambda x: (x * x, x), lambda x, g: (2 * jax.lax.stop_gradient(x) * g,))
    r = testing.check_vjp(sq, jnp.array([1.0, 2.0]), reference=lambda x: x * x,
                          second_order=True)
    assert [c.ok for c in r.comparisons] == [True, True, True, False]
    no_ref = testing.check_vjp(sq, jnp.array([1.0, 2.0]), second_order=True)
    assert not no_ref.comparisons[-1].ok


def test_dict_arguments_and_outputs_name_the_path():
    @jax.custom_vjp
    def affine(p, x):
        return {"y": x @ p["w"] + p["b"]}

    def fwd(p, x):
        return affine(p, x), (p, x)

    def bwd(res, g):
        p, x = res
        gy = g["y"]
        return {"w": x.T @ gy, "b": 2.0 * jnp.sum(gy, 0)}, gy @ p["w"].T  # b doubled

    affine.defvjp(fwd, bwd)
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
    p = {"w": jax.random.normal(k1, (3, 2)), "b": jax.random.normal(k2, (2,))}
    x = jax.random.normal(k3, (4, 3))
    r = testing.check_vjp(affine, p, x, argnames=["params", "x"])
    assert not r.ok
    fd = next(c for c in r.comparisons if c.check == "finite_differences")
    assert fd.worst.argname == "params" and fd.worst.path == "['b']"
    assert "argument 'params'['b']" in str(r)

    bwd_ok = (lambda res, g: ({"w": res[1].T @ g["y"], "b": jnp.sum(g["y"], 0)},
                              g["y"] @ res[0]["w"].T))
    affine.defvjp(fwd, bwd_ok)
    ref = testing.check_vjp(affine, p, x, reference=lambda p, x: {"y": x @ p["w"] + p["b"]})
    assert ref.ok, str(ref)


def test_bad_use_gives_clear_errors():
    x = jnp.ones(3)
    with pytest.raises(TypeError, match="argument 'fn' must be callable; got NoneType"):
        testing.check_vjp(None, x)
    with pytest.raises(ValueError, match="argnums 3 is out of range for 1 argument"):
        testing.check_vjp(_cube_with(3.0), x, argnums=3)
    with pytest.raises(ValueError, match="argnames has 2 names for 1 arguments"):
        testing.check_vjp(_cube_with(3.0), x, argnames=["a", "b"])


@pytest.mark.parametrize("wrong_at_zero", [0.0, 123.0, float("nan")])
def test_a_log_rule_wrong_at_zero_fails(wrong_at_zero):
    @jax.custom_vjp
    def log(x):
        return jnp.log(x)

    def bwd(x, g):
        return (jnp.where(x == 0, wrong_at_zero, g / x),)

    log.defvjp(lambda x: (jnp.log(x), x), bwd)
    x = jnp.array([0.0, 0.5, 2.0])
    r = testing.check_vjp(log, x, reference=jnp.log, finite_differences=False)
    assert not r.ok
    assert r.worst.index == (0,) and np.isinf(r.worst.expected)  # the oracle is +-inf at 0

    right = jax.custom_vjp(lambda x: jnp.log(x))
    right.defvjp(lambda x: (jnp.log(x), x), lambda x, g: (g / x,))
    assert testing.check_vjp(right, x, reference=jnp.log, finite_differences=False).ok


def test_comparator_is_not_nan_blind():
    tol = testing.TOLERANCES["float32"]
    assert not compare("t", [np.array([np.nan, np.nan])], [np.array([1.0, 2.0])], [0],
                       ["x"], tol).ok
    assert not compare("t", [np.array([-np.inf])], [np.array([np.inf])], [0], ["x"], tol).ok
    assert not compare("t", [np.array([1.0])], [np.array([np.nan])], [0], ["x"], tol).ok
    assert compare("t", [np.array([np.inf, np.nan, 1.0])], [np.array([np.inf, np.nan, 1.0])],
                   [0], ["x"], tol).ok
    # a finite oracle far from the others does not widen an inf tolerance
    c = compare("t", [np.array([5.0, 1e30])], [np.array([1.0, np.inf])], [0], ["x"], tol)
    assert not c.ok


def _sin_rule(scale):
    @jax.custom_vjp
    def f(x):
        return jnp.sin(x)

    f.defvjp(lambda x: (jnp.sin(x), x), lambda x, g: (g * jnp.cos(x) * scale,))
    return f


@pytest.mark.parametrize("dtype,scale", [("float16", 0.99), ("bfloat16", 0.99),
                                         ("bfloat16", 0.9), ("float16", 1.01)])
def test_low_precision_catches_a_gradient_scaled_by_one_percent(dtype, scale):
    x = jax.random.uniform(jax.random.PRNGKey(1), (4, 8), minval=-1.2, maxval=1.2).astype(dtype)
    assert testing.check_vjp(_sin_rule(1.0), x, reference=jnp.sin,
                             finite_differences=False).ok
    r = testing.check_vjp(_sin_rule(scale), x, reference=jnp.sin, finite_differences=False)
    assert not r.ok and r.comparisons[0].check == "reference"


def test_assert_vjp_matches_raises_with_the_report():
    with pytest.raises(AssertionError, match=r"element \(1,\): expected"):
        testing.assert_vjp_matches(_cube_with(2.0), lambda x: x**3, jnp.array([1.0, 2.0]))
    ok = testing.assert_vjp_matches(_cube_with(3.0), jnp.array([1.0, 2.0]),
                                    reference=lambda x: x**3)
    assert ok.ok


def test_one_tolerance_table_per_dtype():
    assert set(testing.TOLERANCES) == {"float16", "bfloat16", "float32", "float64"}
    order = ["float64", "float32", "float16", "bfloat16"]
    rtols = [testing.TOLERANCES[d].rtol for d in order]
    assert rtols == sorted(rtols)
    assert testing.tolerance_for(jnp.float32) is testing.TOLERANCES["float32"]
    assert testing.TOLERANCES["float16"].floor == float(jnp.finfo(jnp.float16).tiny)
    with pytest.raises(KeyError, match="int32"):
        testing.tolerance_for(jnp.int32)


def test_integer_arguments_are_skipped_and_rejected_when_requested():
    logits = jnp.array([[1.0, 2.0, 0.0]])
    labels = jnp.array([2])
    ref = fg.PRIMITIVES["softmax_cross_entropy"].call_reference
    r = testing.check_vjp(fg.softmax_cross_entropy, logits, labels, reference=ref)
    assert r.ok, str(r)
    with pytest.raises(TypeError, match="int32"):
        testing.check_vjp(fg.softmax_cross_entropy, logits, labels, argnums=1)


def test_cotangent_with_wrong_shape_is_reported():
    @jax.custom_vjp
    def f(x, y):
        return x * y

    f.defvjp(lambda x, y: (x * y, (x, y)), lambda r, g: (g * r[1], jnp.sum(g * r[0])))
    with pytest.raises((AssertionError, ValueError, TypeError)):
        testing.check_vjp(f, jnp.ones(3), jnp.ones(3), reference=lambda x, y: x * y)


def test_saved_residual_bytes_counts_arrays():
    x = jnp.ones((4, 8))
    assert testing.saved_residual_bytes(fg.tanh, x) == (1, 4 * 8 * 4)
    assert testing.saved_residual_bytes(fg.add, x, x) == (0, 0)


def test_battery_rows_and_pytest_helper():
    report = testing.check_primitive(fg.PRIMITIVES["relu"], quick=True)
    assert report.ok, str(report)
    assert [r.check for r in report.rows] == ["primal", "reference", "finite differences",
                                              "dot product", "kinks", "edge points", "dtypes"]
    assert testing.assert_primitive_ok("relu", checks=["kinks"]).ok
    with pytest.raises(KeyError, match="'nope' is not a registered primitive"):
        testing.assert_primitive_ok("nope")
    with pytest.raises(ValueError, match="unknown check"):
        testing.check_primitive(fg.PRIMITIVES["relu"], checks=["bogus"])


test_battery_on_tanh = testing.parametrize_primitives(["tanh"], checks=["edge points", "jit"])


def test_checker_compiles_with_fast_options_the_build_accepts():
    from funcgrad.testing import _compile

    options = _compile.compiler_options()
    assert options.items() <= _compile.FAST_COMPILE.items()
    assert "xla_backend_optimization_level" in options  # known to every XLA backend
    assert _compile._accepted(options)
    assert not _compile._accepted({"xla_no_such_option_for_funcgrad": 1})  # dropped, not fatal


def test_a_crash_in_a_shared_program_fails_only_the_check_that_crashed():
    from funcgrad import registry

    # the forward is right; the backward forgets to unbroadcast y, so every VJP crashes
    prim = fg.primitive(name="_shared_program_crash", fwd=lambda x, y: (x * y, (x, y)),
                        bwd=lambda r, g: (g * r[1], g * r[0]), reference=lambda x, y: x * y,
                        formula="d(xy) = y dx + x dy", sample_shapes=(((3, 4), ()),),
                        replace=True)
    try:
        report = testing.check_primitive(prim, checks=["primal", "reference", "jit"])
    finally:
        registry.unregister("_shared_program_crash")
    rows = {r.check: r for r in report.rows}
    assert rows["primal"].ok, rows["primal"]  # shares the float32 program, did not crash
    for check in ("reference", "jit"):
        assert not rows[check].ok and rows[check].detail.startswith("crashed: "), rows[check]
