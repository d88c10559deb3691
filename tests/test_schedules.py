"""Learning-rate schedules: optax's schedules through funcgrad.train.optimizer."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from funcgrad import nn, train
from funcgrad.train._optimizer import Schedule, current_learning_rate, schedule

SIZES = [6, 8, 3]
LOSS = train.classification_loss(functools.partial(nn.mlp, activation="tanh"))


def _batch(seed=0, n=12):
    rng = np.random.default_rng(seed)
    return (jnp.asarray(rng.normal(size=(n, SIZES[0])).astype(np.float32)),
            jnp.asarray(rng.integers(0, SIZES[-1], size=n).astype(np.int32)),
            jnp.ones(n, jnp.float32))


def _state(tx):
    return train.init_state(nn.init_mlp(jax.random.PRNGKey(0), SIZES), tx, 0)


def _rates_after_each_step(tx, steps):
    step = train.make_train_step(LOSS, tx)
    state, batch, rates = _state(tx), _batch(), []
    for _ in range(steps):
        state, _ = step(state, batch)
        rates.append(float(current_learning_rate(state.opt_state)))
        assert float(optax.tree.get(state.opt_state, "learning_rate")) == rates[-1]
    return rates


@pytest.mark.parametrize("name,reference", [
    ("cosine", optax.warmup_cosine_decay_schedule(0.0, 0.2, 3, 10, 0.0)),
    ("exponential", optax.warmup_exponential_decay_schedule(0.0, 0.2, 3, 7, 0.01)),
    ("constant", optax.join_schedules([optax.linear_schedule(0.0, 0.2, 3),
                                       optax.constant_schedule(0.2)], [3])),
])
def test_the_rate_read_from_the_state_follows_optax(name, reference):
    tx = train.optimizer(schedule(name, 0.2, warmup_steps=3, total_steps=10), momentum=0.9,
                         clip_norm=1.0)
    rates = _rates_after_each_step(tx, 12)
    # step k (from 1) used the schedule's value at count k - 1
    np.testing.assert_allclose(rates, [float(reference(k)) for k in range(12)], rtol=1e-6,
                               atol=1e-9)
    assert rates[0] == 0.0 and max(rates) == pytest.approx(0.2)


def test_a_plain_optax_schedule_and_a_constant_rate():
    decay = optax.exponential_decay(0.1, transition_steps=2, decay_rate=0.5)
    rates = _rates_after_each_step(train.optimizer(decay), 5)
    np.testing.assert_allclose(rates, [float(decay(k)) for k in range(5)], rtol=1e-6)
    assert _rates_after_each_step(train.optimizer(0.05), 3) == pytest.approx([0.05] * 3)
    state = train.optimizer(decay).init(jnp.zeros(2))
    assert float(state.hyperparams["learning_rate_scale"]) == 1.0


def test_scheduled_updates_equal_optax_sgd_with_the_same_schedule():
    sched = schedule("cosine", 0.3, warmup_steps=2, total_steps=6)
    ours = train.optimizer(sched, momentum=0.9)
    ref = optax.sgd(optax.warmup_cosine_decay_schedule(0.0, 0.3, 2, 6), momentum=0.9)
    params = {"w": jnp.array([1.0, -2.0, 0.5])}
    s1, s2 = ours.init(params), ref.init(params)
    for k in range(8):
        g = {"w": jnp.array([0.3, -0.1, 2.0]) * (k + 1)}
        u1, s1 = ours.update(g, s1, params)
        u2, s2 = ref.update(g, s2, params)
        np.testing.assert_allclose(u1["w"], u2["w"], rtol=1e-6, atol=1e-8)


def test_changing_the_peak_does_not_recompile():
    tx = train.optimizer(schedule("cosine", 0.1, warmup_steps=2, total_steps=20), momentum=0.9)
    step = train.make_train_step(LOSS, tx, wrap=chex.assert_max_traces(n=1))
    state, batch = _state(tx), _batch()
    for _ in range(3):
        state, _ = step(state, batch)
    lr_before = float(current_learning_rate(state.opt_state))
    hp = state.opt_state.hyperparams
    assert set(hp) == {"peak_learning_rate", "momentum"}
    hp["peak_learning_rate"] = jnp.asarray(0.4, jnp.float32)  # 4 x the peak
    state, _ = step(state, batch)  # a retrace would raise in assert_max_traces
    sched = optax.warmup_cosine_decay_schedule(0.0, 0.1, 2, 20)
    assert float(current_learning_rate(state.opt_state)) == pytest.approx(4 * float(sched(3)))
    assert lr_before == pytest.approx(float(sched(2)))
    hp = state.opt_state.hyperparams
    hp["peak_learning_rate"] = jnp.asarray(0.0, jnp.float32)
    before = jax.tree.map(np.asarray, state.params)
    state, m = step(state, batch)  # peak 0 (momentum 0.9 still moves): a change, no retrace
    assert float(current_learning_rate(state.opt_state)) == 0.0
    assert float(m["update_norm"]) == 0.0
    assert all(np.array_equal(a, np.asarray(b))
               for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(state.params),
                               strict=True))


def test_clipped_grad_norm_is_still_the_snapshot_with_a_schedule():
    tx = train.optimizer(schedule("cosine", 0.1, warmup_steps=1, total_steps=5), clip_norm=0.01)
    step = train.make_train_step(LOSS, tx)
    _, m = step(_state(tx), _batch())
    assert float(m["grad_norm"]) > 0.01
    assert float(m["clipped_grad_norm"]) == pytest.approx(0.01, rel=1e-5)


def test_a_skipped_step_does_not_advance_the_schedule():
    tx = train.optimizer(schedule("cosine", 0.1, warmup_steps=2, total_steps=10))
    step = train.make_train_step(LOSS, tx)
    state, (x, y, w) = _state(tx), _batch()
    state, _ = step(state, (x, y, w))
    rate = float(current_learning_rate(state.opt_state))
    state, m = step(state, (x.at[0, 0].set(jnp.nan), y, w))
    assert not bool(m["finite"])
    assert float(current_learning_rate(state.opt_state)) == rate
    state, _ = step(state, (x, y, w))
    sched = optax.warmup_cosine_decay_schedule(0.0, 0.1, 2, 10)
    assert float(current_learning_rate(state.opt_state)) == pytest.approx(float(sched(1)))


def test_schedule_objects_are_optax_schedules():
    s = schedule("exponential", 0.5, warmup_steps=0, total_steps=4, decay_rate=0.25)
    assert isinstance(s, Schedule) and s.peak == 0.5 and s.total_steps == 4
    assert float(s(0)) == pytest.approx(0.5) and float(s(4)) == pytest.approx(0.125)
    assert float(schedule("constant", 0.3)(100)) == pytest.approx(0.3)


@pytest.mark.parametrize("kwargs,flag", [
    ({"name": "linear"}, "name"),
    ({"peak": 0.0}, "peak"),
    ({"peak": float("nan")}, "peak"),
    ({"warmup_steps": -1}, "warmup_steps"),
    ({"warmup_steps": 1.5}, "warmup_steps"),
    ({"total_steps": None}, "total_steps"),
    ({"total_steps": 3, "warmup_steps": 3}, "total_steps"),
    ({"end_fraction": 2.0}, "end_fraction"),
    ({"name": "exponential", "decay_rate": 0.0}, "decay_rate"),
    ({"name": "constant", "total_steps": 0}, "total_steps"),
])
def test_bad_schedule_arguments_are_named(kwargs, flag):
    args = {"name": "cosine", "peak": 0.1, "warmup_steps": 0, "total_steps": 10, **kwargs}
    with pytest.raises(ValueError, match=f"schedule: argument '{flag}'"):
        schedule(args.pop("name"), args.pop("peak"), **args)


def test_a_state_without_a_rate_reads_nan():
    state = optax.adam(1e-3).init(jnp.zeros(2))
    assert np.isnan(float(current_learning_rate(state)))


def test_the_step_metrics_log_the_rate_of_each_step():
    sched = schedule("cosine", 0.2, warmup_steps=3, total_steps=10)
    tx = train.optimizer(sched, momentum=0.9)
    step = train.make_train_step(LOSS, tx)
    state, batch = _state(tx), _batch()
    state, m = step(state, batch)
    if "learning_rate" not in m:
        pytest.skip("the train step does not put metrics['learning_rate'] yet")
    logged = [float(m["learning_rate"])]
    for _ in range(9):
        state, m = step(state, batch)
        logged.append(float(m["learning_rate"]))
    reference = optax.warmup_cosine_decay_schedule(0.0, 0.2, 3, 10)
    np.testing.assert_allclose(logged, [float(reference(k)) for k in range(10)], rtol=1e-6,
                               atol=1e-9)
    _, m = train.make_train_step(LOSS, train.optimizer(0.05))(_state(train.optimizer(0.05)),
                                                               batch)
    assert float(m["learning_rate"]) == pytest.approx(0.05)
