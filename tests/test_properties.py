"""Hypothesis property test over the whole registry.

Draws random shapes (including broadcast pairs), dtypes, scales and values for every
primitive and checks the hand-written VJP against jax.vjp of the reference. Shapes come from
small pools so each compiled comparator is reused across many examples.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import builtin_names, compiled_vjps, float_positions, mismatches
from funcgrad.registry import PRIMITIVES, sample_args
from funcgrad.testing import TOLERANCES

# x 23 primitives: about 280 cases in the quick suite, 1,840 in the slow one
# (`pytest -m slow`, which CI runs too); FUNCGRAD_EXAMPLES raises the quick count
EXAMPLES_PER_PRIMITIVE = int(os.environ.get("FUNCGRAD_EXAMPLES", "12"))
THOROUGH_EXAMPLES = 80

BINARY_BROADCAST = {n for n in builtin_names() if PRIMITIVES[n].broadcasting}
DIMS = st.sampled_from([1, 3])
SHAPE = st.lists(DIMS, min_size=0, max_size=3).map(tuple)


@st.composite
def broadcast_pair(draw):
    x = draw(SHAPE)
    keep_from = draw(st.integers(0, len(x)))
    y = tuple(1 if draw(st.booleans()) else d for d in x[keep_from:])
    return (x, y) if draw(st.booleans()) else (y, x)


@st.composite
def shapes_for(draw, name):
    if name in BINARY_BROADCAST:
        return draw(broadcast_pair())
    if name == "matmul":
        n, k, m = draw(DIMS), draw(DIMS), draw(DIMS)
        ba, bb = draw(broadcast_pair().filter(lambda p: len(p[0]) <= 1 and len(p[1]) <= 1))
        return (ba + (n, k), bb + (k, m))
    if name == "dense":
        lead = draw(st.sampled_from([(), (2,), (2, 3)]))
        i, o = draw(DIMS), draw(DIMS)
        return (lead + (i,), (i, o), (o,))
    if name == "softmax_cross_entropy":
        batch = draw(st.lists(DIMS, max_size=2).map(tuple))
        return (batch + (draw(st.sampled_from([2, 4])),), batch)
    if name == "batch_norm":
        feats = draw(st.sampled_from([(3,), (1, 3)]))
        # N = 2 is left out: there x_hat = +-1 whatever x, so dL/dx is analytically of
        # order eps/var and any float32 evaluation is pure cancellation (JAX's autodiff of
        # the reference misses the float64 value by as much as the rule does).
        n = draw(st.sampled_from([3, 4]))
        return ((n,) + feats, feats, feats)
    return (draw(SHAPE),)


def _check(name, shapes, dtype, seed, scale):
    prim = PRIMITIVES[name]
    # float64 samples and the float64 oracle need x64; float32 inputs stay float32, and the
    # float32 rule is judged against the float64 reference of the same inputs (the truth).
    with jax.enable_x64(True):
        args = sample_args(prim, jax.random.PRNGKey(seed), shapes, jnp.dtype(dtype))
        args = tuple(a * jnp.asarray(scale, a.dtype)
                     if arg.kind == "float" and arg.domain != "unit" else a
                     for a, arg in zip(args, prim.args, strict=True))
        out_shape = jax.eval_shape(prim.call_reference, *args).shape
        ct = jax.random.normal(jax.random.PRNGKey(seed + 1), out_shape, jnp.float32) + 0.25
        out, out_ref, g, g_ref = compiled_vjps(name, oracle64=True)(args, ct)
    tol = TOLERANCES[dtype]
    assert out.shape == out_ref.shape
    for j, i in enumerate(float_positions(prim)):
        a = np.asarray(g[j], np.float64)
        e = np.asarray(g_ref[j], np.float64)
        assert a.shape == args[i].shape and g[j].dtype == args[i].dtype
        bad = mismatches(a, e, tol.rtol, tol.atol)  # non-finite values must match exactly
        assert not bad.any(), (
            f"{name} {shapes} {dtype}: cotangent of {prim.args[i].name} differs at "
            f"{np.argwhere(bad)[0].tolist()}: rule {a[bad][0]!r} vs reference {e[bad][0]!r}")


def _search(name, examples):
    @settings(max_examples=examples)
    @given(shapes=shapes_for(name), dtype=st.sampled_from(["float32", "float64"]),
           seed=st.integers(0, 2**16), scale=st.sampled_from([0.1, 1.0, 4.0]))
    def prop(shapes, dtype, seed, scale):
        _check(name, shapes, dtype, seed, scale)

    prop()


@pytest.mark.parametrize("name", builtin_names())
def test_rule_matches_reference_on_random_inputs(name):
    _search(name, EXAMPLES_PER_PRIMITIVE)


@pytest.mark.slow
@pytest.mark.parametrize("name", builtin_names())
def test_rule_matches_reference_on_many_random_inputs(name):
    # derandomized: the first examples are the quick test's, the rest search further
    _search(name, THOROUGH_EXAMPLES)
