"""The public rule checker, funcgrad.testing, on users' own custom_vjp rules."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

import funcgrad as fg
from funcgrad import testing


def _cube_with(rule_factor):
    @jax.custom_vjp
    def cube(x):
        return x**3

    cube.defvjp(lambda x: (x**3, x), lambda x, g: (rule_factor * x**2 * g,))
    return cube


def test_correct_rule_passes_all_checks():
    r = testing.check_vjp(_cube_with(3.0), lambda x: x**3, jnp.array([0.5, -1.0, 2.0]),
                          second_order=True)
    assert r.ok
    assert [c.check for c in r.comparisons] == ["reference", "finite_differences",
                                                "second_order"]
    assert r.max_abs_err < 1e-5


def test_wrong_rule_is_named_by_argument_and_element():
    x = jnp.array([0.5, -1.0, 2.0, 0.1])
    r = testing.check_vjp(_cube_with(2.0), lambda x: x**3, x, argnames=["x"])
    assert not r.ok
    assert r.worst.argname == "x" and r.arg == 0
    assert r.index == (2,)  # largest |x| gives the largest error
    assert r.expected == pytest.approx(r.actual * 1.5, rel=1e-5)
    assert r.worst.abs_err == pytest.approx(abs(r.expected - r.actual), rel=1e-5)
    assert r.max_rel_err == pytest.approx(1 / 3, rel=1e-3)
    text = str(r)
    assert "FAILED" in text and "element (2,)" in text and "argument 'x'" in text


def test_finite_differences_catch_a_wrong_reference_too():
    """If rule and reference agree but are both wrong, finite differences disagree."""
    wrong = _cube_with(2.0)

    @jax.custom_jvp
    def wrong_ref(x):
        return x**3

    wrong_ref.defjvps(lambda t, ans, x: 2.0 * x**2 * t)
    r = testing.check_vjp(wrong, wrong_ref, jnp.array([1.0, 2.0]))
    ref, fd = r.comparisons[0], r.comparisons[1]
    assert ref.ok and not fd.ok
    assert fd.worst.check == "finite_differences"


def test_second_order_catches_a_non_differentiable_backward():
    @jax.custom_vjp
    def sq(x):
        return x * x

    # right first derivative, but stop_gradient hides x from the second derivative
    sq.defvjp(lambda x: (x * x, x), lambda x, g: (2 * jax.lax.stop_gradient(x) * g,))
    r = testing.check_vjp(sq, lambda x: x * x, jnp.array([1.0, 2.0]), second_order=True)
    assert [c.ok for c in r.comparisons] == [True, True, False]


def test_assert_vjp_matches_raises_with_the_report():
    with pytest.raises(AssertionError, match=r"element \(1,\): expected"):
        testing.assert_vjp_matches(_cube_with(2.0), lambda x: x**3, jnp.array([1.0, 2.0]))
    ok = testing.assert_vjp_matches(_cube_with(3.0), lambda x: x**3, jnp.array([1.0, 2.0]))
    assert ok.ok


def test_one_tolerance_table_per_dtype():
    assert set(testing.TOLERANCES) == {"float16", "bfloat16", "float32", "float64"}
    order = ["float64", "float32", "float16", "bfloat16"]
    rtols = [testing.TOLERANCES[d].rtol for d in order]
    assert rtols == sorted(rtols)
    assert testing.tolerance_for(jnp.float32) is testing.TOLERANCES["float32"]
    with pytest.raises(KeyError, match="int32"):
        testing.tolerance_for(jnp.int32)


def test_integer_arguments_are_skipped_and_rejected_when_requested():
    logits = jnp.array([[1.0, 2.0, 0.0]])
    labels = jnp.array([2])
    r = testing.check_vjp(fg.softmax_cross_entropy, fg.PRIMITIVES[
        "softmax_cross_entropy"].reference, logits, labels)
    assert r.ok
    with pytest.raises(TypeError, match="int32"):
        testing.check_vjp(fg.softmax_cross_entropy, fg.softmax_cross_entropy, logits, labels,
                          argnums=1)


def test_cotangent_with_wrong_shape_is_reported():
    @jax.custom_vjp
    def f(x, y):
        return x * y

    f.defvjp(lambda x, y: (x * y, (x, y)), lambda r, g: (g * r[1], jnp.sum(g * r[0])))
    with pytest.raises((AssertionError, ValueError, TypeError)):
        testing.check_vjp(f, lambda x, y: x * y, jnp.ones(3), jnp.ones(3))


def test_saved_residual_bytes_counts_arrays():
    x = jnp.ones((4, 8))
    assert testing.saved_residual_bytes(fg.tanh, x) == (1, 4 * 8 * 4)
    assert testing.saved_residual_bytes(fg.add, x, x) == (0, 0)
