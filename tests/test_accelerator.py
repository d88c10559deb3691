"""Every primitive's rule under jit on the default device, against the CPU result.

Marked ``accelerator``: ``benchmarks/accelerator.sh`` runs exactly these
(``pytest -m accelerator``). On a GPU or TPU they compare the device with the host CPU;
on a CPU-only machine the device is the CPU, so they still run (and cannot rot), and
the two results must then be bitwise equal.

Matmuls run at ``highest`` precision: on a GPU, float32 matmuls would otherwise use
TF32, which is a setting of the device, not a property of a rule.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcgrad import nn, train
from funcgrad.registry import PRIMITIVES, sample_args
from funcgrad.testing.compare import tolerance_for

pytestmark = pytest.mark.accelerator

BUILTINS = sorted(PRIMITIVES)  # the built-ins, registered on import
# bfloat16 is a second compile of everything: part of `pytest -m accelerator` and `-m slow`
DTYPES = ["float32", pytest.param("bfloat16", marks=pytest.mark.slow)]


def _cpu():
    try:
        return jax.devices("cpu")[0]
    except RuntimeError:
        pytest.skip("this JAX has no CPU backend to compare with (JAX_PLATFORMS excludes it)")


def _device():
    return jax.devices()[0]


def _run(name, args, cotangent_key):
    """Forward value and VJP (random cotangent) of one primitive."""
    prim = PRIMITIVES[name]
    floats = [i for i, a in enumerate(prim.args) if a.kind != "labels"]

    def f(*diff):
        full = list(args)
        for i, x in zip(floats, diff, strict=True):
            full[i] = x
        return prim.fn(*full, **prim.params)

    out, vjp = jax.vjp(f, *[args[i] for i in floats])
    leaves, treedef = jax.tree.flatten(out)
    keys = jax.random.split(cotangent_key, len(leaves))
    cts = [jax.random.normal(k, x.shape, jnp.float32).astype(x.dtype)
           for k, x in zip(keys, leaves, strict=True)]
    return out, vjp(jax.tree.unflatten(treedef, cts))


@functools.cache
def _program(names: tuple[str, ...]):
    """Every primitive of ``names`` in one jitted program (one compile per device/dtype)."""
    def run(all_args, key):
        return {n: _run(n, all_args[n], jax.random.fold_in(key, i))
                for i, n in enumerate(names)}
    return jax.jit(run)


def _on(tree, device):
    return jax.device_put(tree, device)


def _compare(name, dtype, got, want):
    tol = tolerance_for(dtype)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        g, w = np.asarray(g, np.float64), np.asarray(w, np.float64)
        assert g.shape == w.shape, (name, g.shape, w.shape)
        finite = np.isfinite(w)
        assert np.array_equal(finite, np.isfinite(g)), f"{name} {dtype}: non-finite differ"
        scale = float(np.max(np.abs(w[finite]), initial=0.0))
        # each result is within the table of the truth, so they are within 2x of each other
        np.testing.assert_allclose(g[finite], w[finite], rtol=2 * tol.rtol,
                                   atol=2 * tol.atol * scale, err_msg=f"{name} {dtype}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_rule_on_the_device_matches_the_cpu(dtype):
    cpu, device = _cpu(), _device()
    names = tuple(BUILTINS)
    args = {n: sample_args(PRIMITIVES[n], jax.random.PRNGKey(7), dtype=jnp.dtype(dtype))
            for n in names}
    key = jax.random.PRNGKey(11)
    with jax.default_matmul_precision("highest"):
        want = _program(names)(_on(args, cpu), _on(key, cpu))
        got = _program(names)(_on(args, device), _on(key, device))
    assert len(got) >= 23
    for name in names:
        leaves = jax.tree.leaves(got[name])
        assert {d.platform for x in leaves for d in x.devices()} == {device.platform}, name
        if device.platform == "cpu":  # the same program on the same device: bitwise equal
            for g, w in zip(leaves, jax.tree.leaves(want[name]), strict=True):
                assert np.asarray(g).tobytes() == np.asarray(w).tobytes(), name
        _compare(name, dtype, got[name], want[name])


def test_three_training_steps_on_the_device_match_the_cpu():
    cpu, device = _cpu(), _device()
    sizes = [8, 16, 4]
    loss = train.classification_loss(functools.partial(nn.mlp, activation="relu"))
    tx = train.optimizer(0.1, momentum=0.9, clip_norm=1.0)
    rng = np.random.default_rng(0)
    batch = (rng.normal(size=(16, 8)).astype(np.float32),
             rng.integers(0, 4, size=16).astype(np.int32), np.ones(16, np.float32))
    step = train.make_train_step(loss, tx)
    results = []
    with jax.default_matmul_precision("highest"):
        for dev in (cpu, device):
            state = _on(train.init_state(nn.init_mlp(jax.random.PRNGKey(0), sizes), tx), dev)
            b = _on(batch, dev)
            for _ in range(3):
                state, m = step(state, b)
            results.append((jax.device_get(state.params), float(m["loss"])))
    (p_cpu, l_cpu), (p_dev, l_dev) = results
    assert l_dev == pytest.approx(l_cpu, rel=1e-4)
    for a, b in zip(jax.tree.leaves(p_dev), jax.tree.leaves(p_cpu), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
