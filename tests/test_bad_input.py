"""Bad input raises clear errors that name the primitive, the argument and the shapes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

import funcgrad as fg


def test_matmul_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"matmul.*a\.shape=\(2, 3\).*b\.shape=\(4, 5\)"):
        fg.matmul(jnp.ones((2, 3)), jnp.ones((4, 5)))


def test_matmul_batch_mismatch():
    with pytest.raises(ValueError, match=r"matmul.*\(2,\).*\(3,\)"):
        fg.matmul(jnp.ones((2, 3, 4)), jnp.ones((3, 4, 5)))


def test_dense_wrong_weight_shape():
    with pytest.raises(ValueError, match=r"dense: argument 'w' must have shape \(in, out\) = "
                                         r"\(3, out\).*got w\.shape=\(4, 2\)"):
        fg.dense(jnp.ones((5, 3)), jnp.ones((4, 2)), jnp.zeros(2))
    with pytest.raises(ValueError, match=r"dense: argument 'b'.*\(2,\).*got b\.shape=\(3,\)"):
        fg.dense(jnp.ones((5, 3)), jnp.ones((3, 2)), jnp.zeros(3))


def test_add_shapes_that_cannot_broadcast():
    with pytest.raises(ValueError, match=r"add: shapes do not broadcast.*x\.shape=\(2, 3\).*"
                                         r"y\.shape=\(4,\)"):
        fg.add(jnp.ones((2, 3)), jnp.ones(4))


def test_errors_happen_at_trace_time_under_jit():
    with pytest.raises(ValueError, match="mul: shapes do not broadcast"):
        jax.jit(fg.mul)(jnp.ones(2), jnp.ones(3))


def test_float_labels_are_rejected():
    with pytest.raises(TypeError, match=r"softmax_cross_entropy: argument 'labels' must have "
                                        r"an integer dtype.*float32"):
        fg.softmax_cross_entropy(jnp.zeros((2, 3)), jnp.array([0.0, 1.0]))


def test_label_shape_and_range():
    with pytest.raises(ValueError, match=r"labels\.shape=\(3,\)"):
        fg.softmax_cross_entropy(jnp.zeros((2, 3)), jnp.array([0, 1, 2]))
    with pytest.raises(ValueError, match=r"must lie in \[0, 3\)"):
        fg.softmax_cross_entropy(jnp.zeros((2, 3)), jnp.array([0, 3]))


def test_non_numeric_argument():
    with pytest.raises(TypeError, match="relu: argument 'x' must be an array or a number; "
                                        "got str"):
        fg.relu("1.0")
    with pytest.raises(TypeError, match="power: argument 'p'"):
        fg.power(jnp.ones(2), jnp.ones(2))


def test_batch_norm_shapes():
    with pytest.raises(ValueError, match=r"batch_norm: argument 'gamma'.*\(3,\).*\(4,\)"):
        fg.batch_norm(jnp.ones((4, 3)), jnp.ones(4), jnp.zeros(3))
    with pytest.raises(ValueError, match="N >= 2"):
        fg.batch_norm(jnp.ones((1, 3)), jnp.ones(3), jnp.zeros(3))


def test_reduction_axis_out_of_range():
    with pytest.raises(ValueError, match="sum: argument 'axis' 2 is out of range"):
        fg.sum(jnp.ones((2, 3)), axis=2)


def test_integer_inputs_promote_to_float():
    assert fg.add(1, 2).dtype == jnp.float32
    assert fg.exp(jnp.arange(3)).dtype == jnp.float32
