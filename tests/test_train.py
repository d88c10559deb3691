"""Training: optimizer, jitted step, fused steps, the fit loop."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from funcgrad import nn, train

SIZES = [6, 8, 8, 3]
APPLY = functools.partial(nn.mlp, activation="tanh")
LOSS = train.classification_loss(APPLY)


def _data(n=20, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, SIZES[0])).astype(np.float32)
    y = rng.integers(0, SIZES[-1], size=n).astype(np.int32)
    return x, y


def _batch(x, y):
    return (jnp.asarray(x), jnp.asarray(y), jnp.ones(len(x), jnp.float32))


def _state(tx, seed=0):
    return train.init_state(nn.init_mlp(jax.random.PRNGKey(seed), SIZES), tx, seed)


def _leaves_equal(a, b):
    return all(np.array_equal(np.asarray(u), np.asarray(v))
               for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


# ----------------------------------------------------------------------------- optimizer
def test_optimizer_reproduces_the_lesson_update():
    tx = train.optimizer(0.1)
    w = jnp.array(3.0)
    updates, _ = tx.update(jnp.array(16.0), tx.init(w))
    assert float(optax.apply_updates(w, updates)) == pytest.approx(1.4, abs=1e-6)


@pytest.mark.parametrize("kwargs,flag", [({"learning_rate": 0.0}, "learning_rate"),
                                          ({"learning_rate": -1.0}, "learning_rate"),
                                          ({"learning_rate": 0.1, "clip_norm": 0.0}, "clip_norm"),
                                          ({"learning_rate": 0.1, "clip_value": -2.0},
                                           "clip_value"),
                                          ({"learning_rate": 0.1, "momentum": 1.0}, "momentum")])
def test_optimizer_rejects_bad_hyperparameters(kwargs, flag):
    lr = kwargs.pop("learning_rate")
    with pytest.raises(ValueError, match=f"optimizer: argument '{flag}'"):
        train.optimizer(lr, **kwargs)


def test_optimizer_is_a_clip_then_sgd_chain_with_injected_hyperparameters():
    tx = train.optimizer(0.5, momentum=0.9, clip_norm=1.0, clip_value=0.1)
    state = tx.init({"w": jnp.ones(3)})
    assert set(state.hyperparams) == {"learning_rate", "momentum", "clip_norm", "clip_value"}
    # clipping really happens: a huge gradient gives an update of at most lr * clip_value
    upd, _ = tx.update({"w": jnp.array([100.0, -100.0, 0.01])}, state)
    np.testing.assert_allclose(upd["w"], [-0.05, 0.05, -0.5 * 0.01 / np.sqrt(2e4) * 1.0],
                               rtol=1e-4, atol=1e-7)


# ---------------------------------------------------------------------------------- step
def test_step_metrics_match_independent_computation():
    tx = train.optimizer(0.1, clip_norm=0.05)
    state = _state(tx)
    x, y = _data()
    batch = _batch(x, y)
    grads = jax.grad(lambda p: LOSS(p, batch)[0])(state.params)
    want_norm = float(optax.tree.norm(grads))
    step = train.make_train_step(LOSS, tx)
    new, m = step(jax.tree.map(jnp.copy, state), batch)
    assert float(m["grad_norm"]) == pytest.approx(want_norm, rel=1e-5)
    assert want_norm > 0.05
    assert float(m["clipped_grad_norm"]) == pytest.approx(0.05, rel=1e-4)
    layer = [np.sqrt(sum(np.sum(np.asarray(v) ** 2) for v in g.values())) for g in grads]
    np.testing.assert_allclose(m["layer_grad_norms"], layer, rtol=1e-5)
    assert float(m["update_norm"]) == pytest.approx(0.1 * 0.05, rel=1e-4)  # lr * clipped
    assert bool(m["finite"]) and int(new.step) == 1 and int(new.skipped) == 0
    logits = APPLY(state.params, batch[0])
    assert float(m["accuracy"]) == pytest.approx(float(np.mean(np.argmax(logits, -1) == y)))


def test_nonfinite_batch_is_skipped_bitwise():
    tx = train.optimizer(0.1, momentum=0.9, clip_norm=1.0)
    state = _state(tx)
    step = train.make_train_step(LOSS, tx)
    x, y = _data()
    state, _ = step(state, _batch(x, y))  # momentum buffers become non-zero
    before = jax.tree.map(np.asarray, (state.params, state.opt_state))
    x_bad = x.copy()
    x_bad[3, 2] = np.nan
    state, m = step(state, _batch(x_bad, y))
    assert not bool(m["finite"])
    assert int(state.skipped) == 1 and int(state.step) == 2
    assert _leaves_equal(before, (state.params, state.opt_state))
    assert float(m["update_norm"]) == 0.0
    state, m = step(state, _batch(x, y))  # and training carries on
    assert bool(m["finite"]) and not _leaves_equal(before[0], state.params)


def test_changing_the_learning_rate_does_not_recompile():
    tx = train.optimizer(0.1)
    step = train.make_train_step(LOSS, tx, wrap=chex.assert_max_traces(n=1))
    state = _state(tx)
    batch = _batch(*_data())
    state, m1 = step(state, batch)
    state.opt_state.hyperparams["learning_rate"] = jnp.asarray(0.0, jnp.float32)
    before = jax.tree.map(np.asarray, state.params)
    state, _ = step(state, batch)  # a retrace would raise in assert_max_traces
    assert _leaves_equal(before, state.params)  # lr 0 -> no change


def test_fused_steps_equal_single_steps():
    tx = train.optimizer(0.1, momentum=0.9, clip_norm=1.0)
    k = 3
    x, y = _data(n=3 * 8)
    batches = (jnp.asarray(x.reshape(k, 8, -1)), jnp.asarray(y.reshape(k, 8)),
               jnp.ones((k, 8), jnp.float32))
    step = train.make_train_step(LOSS, tx)
    fused = train.make_fused_steps(LOSS, tx)
    s1 = _state(tx)
    losses = []
    for i in range(k):
        s1, m = step(s1, jax.tree.map(lambda b, i=i: b[i], batches))
        losses.append(float(m["loss"]))
    s2, ms = fused(_state(tx), batches)
    assert ms["loss"].shape == (k,) and ms["layer_grad_norms"].shape == (k, len(SIZES) - 1)
    np.testing.assert_allclose(ms["loss"], losses, rtol=1e-5)
    chex.assert_trees_all_close(s1.params, s2.params, rtol=1e-5, atol=1e-6)
    assert int(s2.step) == k


def test_state_is_donated():
    tx = train.optimizer(0.1)
    step = train.make_train_step(LOSS, tx)
    state = _state(tx)
    leaf = state.params[0]["w"]
    step(state, _batch(*_data()))
    assert leaf.is_deleted()


def test_zero_weight_examples_do_not_count():
    params = nn.init_mlp(jax.random.PRNGKey(1), SIZES)
    x, y = _data(n=6)
    w = jnp.array([1, 1, 1, 1, 0, 0], jnp.float32)
    g_pad = jax.grad(lambda p: LOSS(p, (x, y, w))[0])(params)
    g_real = jax.grad(lambda p: LOSS(p, _batch(x[:4], y[:4]))[0])(params)
    chex.assert_trees_all_close(g_pad, g_real, rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------------- fit
def _fit(**kw):
    x, y = _data(n=22)
    params = nn.init_mlp(jax.random.PRNGKey(0), SIZES)
    kw.setdefault("tx", train.optimizer(0.1, momentum=0.9, clip_norm=1.0))
    return train.fit(params, (x, y), apply_fn=APPLY, batch_size=8, epochs=3,
                     eval_data=_data(n=7, seed=1), **kw)


def test_fit_compiles_once_per_batch_shape_and_handles_the_partial_batch():
    # 22 examples, batch 8: 3 steps per epoch, the last one padded; K=2 fuses steps 0-1
    r = _fit(steps_per_dispatch=2, log_every=1, wrap_step=chex.assert_max_traces(n=1))
    assert int(r.state.step) == 9
    assert sum(h["steps_in_interval"] for h in r.history) == 9
    assert [e["epoch"] for e in r.evals] == [1, 2, 3]
    assert 0.0 <= r.evals[-1]["test_accuracy"] <= 1.0


def test_fit_is_deterministic_and_depends_on_the_seed():
    a, b, c = _fit(seed=3), _fit(seed=3), _fit(seed=4)
    assert _leaves_equal(a.state.params, b.state.params)
    assert not _leaves_equal(a.state.params, c.state.params)


def test_fit_metrics_are_fetched_every_log_every_steps():
    # at the first program boundary past each multiple: single steps hit 4 and 8 ...
    r = _fit(log_every=4, steps_per_dispatch=1)
    assert [h["step"] for h in r.history] == [4, 8, 9]
    # ... whole-epoch programs (3 steps, the default) end at 3, 6, 9
    r = _fit(log_every=4)
    assert [h["step"] for h in r.history] == [6, 9]
    assert [h["steps_in_interval"] for h in r.history] == [6, 3]


def test_fit_rejects_bad_arguments():
    x, y = _data()
    params = nn.init_mlp(jax.random.PRNGKey(0), SIZES)
    tx = train.optimizer(0.1)
    with pytest.raises(ValueError, match="fit: argument 'batch_size' must be an int >= 1; got 0"):
        train.fit(params, (x, y), apply_fn=APPLY, tx=tx, batch_size=0)
    with pytest.raises(TypeError, match="integer dtype"):
        train.fit(params, (x, y.astype(np.float32)), apply_fn=APPLY, tx=tx)
    with pytest.raises(ValueError, match=r"fit: argument 'train' labels y must be 1-D class "
                                         r"indices, shape \(20,\); got shape \(20, 1\)"):
        train.fit(params, (x, y[:, None]), apply_fn=APPLY, tx=tx)
    # the data's width, not the probe batch's, and the model's own message
    with pytest.raises(ValueError, match=r"fit: argument 'train' x, examples of shape \(5,\), "
                                         r"does not fit apply_fn .*dense: argument 'w'"):
        train.fit(params, (x[:, :5], y), apply_fn=APPLY, tx=tx)
    with pytest.raises(ValueError, match=r"fit: argument 'eval_data' x must hold examples of "
                                         r"shape \(6,\), as train does; got \(5,\)"):
        train.fit(params, (x, y), apply_fn=APPLY, tx=tx, eval_data=(x[:, :5], y))


def test_fit_does_not_consume_the_callers_params():
    x, y = _data()
    params = nn.init_mlp(jax.random.PRNGKey(0), SIZES)
    train.fit(params, (x, y), apply_fn=APPLY, tx=train.optimizer(0.1), epochs=1)
    assert not params[0]["w"].is_deleted()


# --------------------------------------------------------------------------- checkpoints
class _Stop(Exception):
    pass


def _crash_at(when):
    def progress(step, total, record):
        if step >= when:
            raise _Stop
    return progress


def test_resume_gives_bitwise_identical_final_params(tmp_path):
    from funcgrad.checkpoint import CheckpointManager

    full = _fit(steps_per_dispatch=2)

    with CheckpointManager(tmp_path / "ck", keep=2, every=2) as ck:
        with pytest.raises(_Stop):
            _fit(steps_per_dispatch=2, checkpoints=ck, progress=_crash_at(6))
        assert ck.latest_step() == 6
    with CheckpointManager(tmp_path / "ck", keep=2, every=2) as ck:
        resumed = _fit(steps_per_dispatch=2, checkpoints=ck, resume=True)
        assert resumed.resumed_from == 6
        assert ck.latest_step() == 9 and len(ck.all_steps()) == 2
    assert _leaves_equal(full.state.params, resumed.state.params)
    assert _leaves_equal(full.state.opt_state, resumed.state.opt_state)


@pytest.mark.slow
def test_resume_skips_a_corrupted_newest_checkpoint(tmp_path):
    import pathlib

    from funcgrad.checkpoint import CheckpointManager

    full = _fit()
    with CheckpointManager(tmp_path / "ck", keep=3, every=3) as ck:
        with pytest.raises(_Stop):
            _fit(checkpoints=ck, progress=_crash_at(6))
    newest = max(int(p.name) for p in (tmp_path / "ck").iterdir() if p.name.isdigit())
    assert newest == 6
    for f in pathlib.Path(tmp_path / "ck" / "6").rglob("*"):
        if f.is_file() and f.stat().st_size > 64 and "integrity" not in f.name:
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
            break
    with CheckpointManager(tmp_path / "ck", keep=3, every=3) as ck:
        with pytest.warns(UserWarning, match="step 6"):
            resumed = _fit(checkpoints=ck, resume=True)
    assert resumed.resumed_from == 3
    assert _leaves_equal(full.state.params, resumed.state.params)


def test_a_real_manager_saves_at_the_first_boundary_past_each_multiple(tmp_path):
    # dispatches end at 2, 3, 5, 6, 8, 9; every=4 must give 5 (past 4), 8 and the end, 9
    from funcgrad.checkpoint import CheckpointManager

    with CheckpointManager(tmp_path / "ck", keep=10, every=4) as ck:
        _fit(steps_per_dispatch=2, checkpoints=ck)
        assert ck.all_steps() == [5, 8, 9]


def test_clipped_norm_with_value_clipping_matches_optax():
    tx = train.optimizer(0.1, clip_norm=0.5, clip_value=0.01)
    state = _state(tx)
    batch = _batch(*_data())
    grads = jax.grad(lambda p: LOSS(p, batch)[0])(state.params)
    want = optax.clip(0.01).update(optax.clip_by_global_norm(0.5).update(grads, None)[0],
                                   None)[0]
    _, m = train.make_train_step(LOSS, tx)(jax.tree.map(jnp.copy, state), batch)
    assert float(m["clipped_grad_norm"]) == pytest.approx(float(optax.tree.norm(want)),
                                                          rel=1e-5)
    assert float(m["clipped_grad_norm"]) < float(m["grad_norm"])


@pytest.mark.parametrize("kwargs", [
    {"clip_norm": 0.05}, {"clip_norm": 1e3}, {}, {"momentum": 0.9, "clip_norm": 0.05},
    {"clip_norm": 0.5, "clip_value": 0.01}])
def test_the_optimizers_norm_snapshots_equal_the_norms_of_what_it_applies(kwargs):
    """The snapshots are not measured from the clipped gradient or the update: check them
    against both, above and below the clip, with and without momentum."""
    tx = train.optimizer(0.1, **kwargs)
    state = _state(tx)
    batch = _batch(*_data())
    grads = jax.grad(lambda p: LOSS(p, batch)[0])(state.params)
    clipped = grads
    if "clip_norm" in kwargs:
        clipped = optax.clip_by_global_norm(kwargs["clip_norm"]).update(clipped, None)[0]
    if "clip_value" in kwargs:
        clipped = optax.clip(kwargs["clip_value"]).update(clipped, None)[0]
    _, opt = tx.update(grads, state.opt_state, state.params)
    new, m = train.make_train_step(LOSS, tx)(jax.tree.map(jnp.copy, state), batch)
    applied = jax.tree.map(jnp.subtract, new.params, state.params)
    assert float(m["clipped_grad_norm"]) == pytest.approx(float(optax.tree.norm(clipped)),
                                                          rel=1e-5)
    assert float(m["update_norm"]) == pytest.approx(float(optax.tree.norm(applied)),
                                                    rel=1e-5)
    published = optax.tree.get(opt, train.UPDATE_NORM, default=None)
    assert (published is not None) == ("momentum" not in kwargs and "clip_value" not in kwargs)


def test_overflowing_gradient_norm_counts_as_nonfinite():
    """Finite gradient elements whose norm overflows float32 cannot make a usable step."""
    def loss_fn(params, batch):
        return 1e20 * jnp.sum(params[0]["w"]), {"correct": 0.0, "count": 1.0}

    tx = train.optimizer(0.1, clip_norm=1.0)
    state = _state(tx)
    before = jax.tree.map(np.asarray, state.params)
    state, m = train.make_train_step(loss_fn, tx)(state, _batch(*_data()))
    assert np.isfinite(float(m["loss"]))
    assert not np.isfinite(float(m["grad_norm"])) and not bool(m["finite"])
    assert _leaves_equal(before, state.params) and int(state.skipped) == 1


# ------------------------------------------------------------- clipped norm through optax
def _clipped_metric(tx):
    state = _state(tx)
    _, m = train.make_train_step(LOSS, tx)(state, _batch(*_data()))
    return float(m["grad_norm"]), float(m["clipped_grad_norm"])


def test_users_own_clip_then_sgd_chain_reports_the_clipped_norm():
    raw, clipped = _clipped_metric(optax.chain(optax.clip_by_global_norm(0.1),
                                               optax.sgd(0.1)))
    assert raw > 0.1
    assert clipped == pytest.approx(0.1, rel=1e-4)


def test_users_own_chain_with_momentum_and_no_clip_reports_the_raw_norm():
    raw, clipped = _clipped_metric(optax.chain(optax.clip_by_global_norm(1e6),
                                               optax.sgd(0.1, momentum=0.9)))
    assert clipped == pytest.approx(raw, rel=1e-4)


def test_unknowable_clipped_norm_is_nan_not_a_wrong_number():
    # element-wise clipping then Adam: no global rescale to recover -> NaN, never a guess
    _, clipped = _clipped_metric(optax.chain(optax.clip(1e-3), optax.adam(1e-3)))
    assert np.isnan(clipped)
    # ... unless the user measures it where it happens
    tx = optax.chain(optax.clip_by_global_norm(0.1), train.measure_clipped_norm(),
                     optax.adam(1e-3))
    raw, clipped = _clipped_metric(tx)
    assert raw > 0.1 and clipped == pytest.approx(0.1, rel=1e-4)


# ------------------------------------------------------------------- fit options, loss_fn
def test_fit_takes_a_loss_function_and_a_config():
    calls = []

    def loss_fn(params, batch):  # a regression-style loss on float targets, no accuracy
        x, y, w = batch
        calls.append(1)
        pred = APPLY(params, x)[:, 0]
        return jnp.sum(w * (pred - y) ** 2) / jnp.maximum(jnp.sum(w), 1.0), {}

    x, _ = _data(n=22)
    y = x[:, 0].astype(np.float32)
    params = nn.init_mlp(jax.random.PRNGKey(0), SIZES)
    r = train.fit(params, (x, y), loss_fn=loss_fn, tx=train.optimizer(0.05),
                  config=train.FitConfig(batch_size=8, epochs=2, log_every=3))
    assert calls and int(r.state.step) == 6
    assert r.history[0]["train_loss"] > r.history[-1]["train_loss"]
    with pytest.raises(TypeError, match="fit: unexpected keyword argument 'batchsize'"):
        train.fit(params, (x, y), loss_fn=loss_fn, tx=train.optimizer(0.05), batchsize=3)


def test_an_unweighted_batch_weighs_every_example_one():
    x, y = _data(n=8)
    params = nn.init_mlp(jax.random.PRNGKey(0), SIZES)
    tx = train.optimizer(0.1)
    step = train.make_train_step(LOSS, tx)
    s2, m2 = step(train.init_state(jax.tree.map(jnp.copy, params), tx), (x, y))
    s3, m3 = step(train.init_state(jax.tree.map(jnp.copy, params), tx), _batch(x, y))
    assert _leaves_equal(s2.params, s3.params) and float(m2["loss"]) == float(m3["loss"])
    assert [float(v) for v in train.make_eval(LOSS)(params, (x, y))] == \
        [float(v) for v in train.make_eval(LOSS)(params, _batch(x, y))]
    with pytest.raises(TypeError, match=r"classification_loss: argument 'batch' must be "
                                         r"\(x, y\) or \(x, y, w\), w the example weights; "
                                         r"got a tuple of length 1"):
        LOSS(params, (x,))


def _regression_loss(params, batch):
    x, y, w = batch
    pred = APPLY(params, x)[:, 0]
    return jnp.sum(w * (pred - y) ** 2) / jnp.maximum(jnp.sum(w), 1.0)


def test_a_loss_without_aux_trains_as_one_with_an_empty_aux():
    x, _ = _data(n=22)
    y = x[:, 0].astype(np.float32)
    params = nn.init_mlp(jax.random.PRNGKey(0), SIZES)
    kw = dict(tx=train.optimizer(0.05), batch_size=8, epochs=2, log_every=3)
    bare = train.fit(params, (x, y), loss_fn=_regression_loss, **kw)
    paired = train.fit(params, (x, y), loss_fn=lambda p, b: (_regression_loss(p, b), {}), **kw)
    assert _leaves_equal(bare.state.params, paired.state.params)
    assert [h["train_loss"] for h in bare.history] == [h["train_loss"] for h in paired.history]
    tx = train.optimizer(0.05)
    batch = (jnp.asarray(x[:8]), jnp.asarray(y[:8]), jnp.ones(8, jnp.float32))
    want = float(_regression_loss(params, batch))
    state = train.init_state(jax.tree.map(jnp.copy, params), tx)  # the step donates it
    _, m = train.make_train_step(_regression_loss, tx)(state, batch)
    assert float(m["loss"]) == pytest.approx(want, rel=1e-6)
    assert np.isnan(float(m["accuracy"]))  # no correct/count aux
    assert float(train.make_eval(_regression_loss)(params, batch)[2]) == 8.0


@pytest.mark.parametrize("loss, got", [
    (lambda p, b: APPLY(p, b[0])[:, 0] ** 2, r"got a loss of shape \(20,\) and dtype float32"),
    (lambda p, b: (jnp.int32(1), {}), r"got a loss of shape \(\) and dtype int32"),
    (lambda p, b: (1.0, 2.0, 3.0), "got a tuple of length 3"),
])
def test_a_loss_that_is_not_a_float_scalar_is_named(loss, got):
    x, y = _data()
    params = nn.init_mlp(jax.random.PRNGKey(0), SIZES)
    tx = train.optimizer(0.05)
    want = "argument 'loss_fn' must return a floating-point scalar loss, or \\(loss, aux\\); "
    with pytest.raises(TypeError, match="fit: " + want + got):
        train.fit(params, (x, y.astype(np.float32)), loss_fn=loss, tx=tx, batch_size=20)
    with pytest.raises(TypeError, match="make_train_step: " + want + got):
        train.make_train_step(loss, tx)(train.init_state(params, tx), _batch(x, y))


class _SpyCheckpoints:
    """Records what fit asks and saves; the cadence rule is CheckpointManager's own."""

    def __init__(self, every):
        self.every, self.saved, self.asked = every, [], []

    def should_save(self, step, previous_step=None):
        from funcgrad.checkpoint import CheckpointManager

        self.asked.append((previous_step, step))
        return CheckpointManager.should_save(self, step, previous_step=previous_step)

    def latest_step(self):
        return self.saved[-1] if self.saved else None

    def save(self, step, state, *, force=False, previous_step=None):
        # CheckpointManager.save's own rule: it re-asks should_save unless forced
        if force or self.should_save(step, previous_step=previous_step):
            self.saved.append(step)

    def resume(self, template):
        return template, None


def test_checkpoints_are_saved_when_a_multiple_is_crossed():
    # 3 steps per epoch, K=2: dispatches end at 2, 3, 5, 6, 8, 9. The old rule (save only
    # when a boundary lands exactly on a multiple) saved at 8 and 9 and skipped step 4.
    ck = _SpyCheckpoints(every=4)
    _fit(steps_per_dispatch=2, checkpoints=ck)
    assert ck.asked == [(0, 2), (2, 3), (3, 5), (5, 6), (6, 8), (8, 9)]
    assert ck.saved == [5, 8, 9]  # 5: the first boundary past 4; 9: the end of the run
