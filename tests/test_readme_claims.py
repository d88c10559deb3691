"""The README's table of JAX transformations, checked claim by claim.

Each row of "Which JAX transformations work with the rules" is a test here, so the table
cannot drift from what JAX actually does with a ``custom_vjp``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcgrad as fg

X = jnp.array([1.0, 2.0])


def f(x):
    return fg.sum(fg.power(x, 3))


def test_reverse_mode_transformations_use_the_rules():
    np.testing.assert_allclose(jax.grad(f)(X), [3.0, 12.0])
    _, pullback = jax.vjp(f, X)
    np.testing.assert_allclose(pullback(jnp.float32(1.0))[0], [3.0, 12.0])
    np.testing.assert_allclose(jax.value_and_grad(f)(X)[1], [3.0, 12.0])
    np.testing.assert_allclose(jax.jacrev(lambda x: fg.power(x, 3))(X),
                               [[3.0, 0.0], [0.0, 12.0]])


def test_hessians_work_both_ways():
    # jax.hessian is jacfwd(jacrev(f)): the forward-mode pass runs through the
    # hand-written backward rule, which is made of ordinary differentiable operations.
    np.testing.assert_allclose(jax.hessian(f)(X), [[6.0, 0.0], [0.0, 12.0]])
    np.testing.assert_allclose(fg.hessian(f)(X), [[6.0, 0.0], [0.0, 12.0]])


@pytest.mark.parametrize("name", ["jvp", "jacfwd", "linearize"])
def test_forward_mode_applied_directly_fails(name):
    # jax.linearize itself returns (the primal is right), but its linear map raises.
    calls = {
        "jvp": lambda: jax.jvp(f, (X,), (jnp.ones(2),)),
        "jacfwd": lambda: jax.jacfwd(f)(X),
        "linearize": lambda: jax.linearize(f, X)[1](jnp.ones(2)),
    }
    with pytest.raises(TypeError, match="forward-mode"):
        calls[name]()


def test_linearize_returns_the_primal():
    primal, _ = jax.linearize(f, X)
    assert float(primal) == 9.0


def test_lesson_gradients_print_as_a_tuple_of_arrays():
    loss = lambda x, w: fg.squared_error(fg.mul(x, w), 2.0)
    grads = jax.grad(loss, argnums=(0, 1))(2.0, 3.0)
    assert isinstance(grads, tuple) and all(isinstance(g, jax.Array) for g in grads)
    assert [float(g) for g in grads] == [24.0, 16.0]
