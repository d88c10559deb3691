"""funcgrad.tap_grad: the cotangent reaching every primitive call, inside jit, vmap, scan."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcgrad as fg
from funcgrad import nn, registry
from funcgrad.explain import LESSON_EXAMPLES
from funcgrad.flow.taps import Tap, activation_stats, tap_grad, tapped_value_and_grad


def _mlp_case():
    params = nn.init_mlp(jax.random.PRNGKey(0), [3, 5, 4, 2], activation="tanh")
    x = jax.random.normal(jax.random.PRNGKey(1), (6, 3))
    y = jnp.arange(6) % 2

    def loss(p, x, y):
        return fg.mean(fg.softmax_cross_entropy(nn.mlp(p, x, activation="tanh"), y))
    return loss, (params, x, y)


def _rnn(w, xs):
    def body(h, x):
        h = fg.tanh(fg.add(fg.matmul(h, w), x))
        return h, fg.sum(h)
    h, ys = jax.lax.scan(body, jnp.zeros(w.shape[0], w.dtype), xs)
    return fg.add(fg.sum(fg.square(h)), fg.sum(ys))


def _norm(a):
    return np.linalg.norm(np.asarray(a, np.float64).ravel())


def _check_against_explain(fn, args, argnums=0):
    graph = fg.explain(fn, *args)
    value, _, taps = jax.jit(tap_grad(fn, argnums=argnums))(*args)
    prims = [n for n in graph.nodes if n.primitive]
    assert sorted(taps) == sorted(n.name for n in prims)
    for node in prims:
        np.testing.assert_allclose(float(taps[node.name].norm), _norm(node.grad),
                                   rtol=1e-10, atol=0, err_msg=node.name)
        np.testing.assert_allclose(float(taps[node.name].max_abs),
                                   np.max(np.abs(np.asarray(node.grad))), rtol=1e-10)
    np.testing.assert_allclose(float(value), float(graph.output.value), rtol=1e-12)
    return taps


def test_tap_norms_equal_explains_gradients_on_a_two_layer_mlp():
    with jax.enable_x64(True):
        loss, (params, x, y) = _mlp_case()
        params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
        taps = _check_against_explain(loss, (params, x.astype(jnp.float64), y))
    assert {"dense_1", "tanh_1", "dense_3", "L"} <= set(taps)
    assert all(t.nonfinite == 0 and t.first_nonfinite == -1 for t in taps.values())


@pytest.mark.parametrize("example", sorted(LESSON_EXAMPLES))
def test_tap_norms_equal_explains_gradients_on_the_lessons_graphs(example):
    ex = LESSON_EXAMPLES[example]
    with jax.enable_x64(True):
        args = tuple(jnp.float64(a) for a in ex.args)
        _check_against_explain(ex.fn, args)


def test_lesson_numbers_and_gradients_as_value_and_grad():
    fn = LESSON_EXAMPLES["backprop"].fn
    value, grads, taps = tap_grad(fn, argnums=(0, 1))(2.0, 3.0, 2.0)
    assert float(value) == 16.0 and [float(g) for g in grads] == [24.0, 16.0]
    assert float(taps["mul"].norm) == 8.0 and float(taps["L"].norm) == 1.0  # dL/dy, dL/dL


def test_grads_and_aux_match_value_and_grad():
    loss, (params, x, y) = _mlp_case()
    with_aux = lambda p, x, y: (loss(p, x, y), {"twice": 2 * loss(p, x, y)})
    (value, aux), grads, taps = jax.jit(tap_grad(with_aux, has_aux=True))(params, x, y)
    (v0, a0), g0 = jax.value_and_grad(with_aux, has_aux=True)(params, x, y)
    np.testing.assert_allclose(value, v0, rtol=1e-6)
    np.testing.assert_allclose(aux["twice"], a0["twice"], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(g0), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert isinstance(taps["L"], Tap)


def test_nonfinite_count_index_and_zero_fraction():
    def f(x):
        return fg.sum(fg.log(fg.relu(x)))   # dL/drelu = 1/relu(x): inf where relu is 0
    x = jnp.array([1.0, -2.0, 4.0, 0.0])
    _, _, taps = jax.jit(tap_grad(f))(x)
    t = taps["relu"]
    assert int(t.nonfinite) == 2 and int(t.first_nonfinite) == 1
    assert float(t.max_abs) == np.inf
    assert int(taps["log"].nonfinite) == 0 and float(taps["log"].zero_fraction) == 0.0
    g = lambda x: fg.sum(fg.relu(x))
    _, _, taps = tap_grad(g)(x)
    assert float(taps["relu"].zero_fraction) == 0.0  # dL/d(relu output) is all ones
    _, _, taps = tap_grad(lambda x: fg.sum(fg.mul(fg.relu(x), 0.0)))(x)
    assert float(taps["relu"].zero_fraction) == 1.0


def test_taps_under_vmap_gain_a_batch_axis():
    loss, (params, x, y) = _mlp_case()
    per_example = lambda xi, yi: tap_grad(loss)(params, xi[None], yi[None])
    _, grads, taps = jax.jit(jax.vmap(per_example))(x, y)
    assert taps["L"].norm.shape == (6,)
    assert jax.tree.leaves(grads)[0].shape[0] == 6
    for i in (0, 4):
        _, _, one = tap_grad(loss)(params, x[i:i + 1], y[i:i + 1])
        for name, t in one.items():
            np.testing.assert_allclose(taps[name].norm[i], t.norm, rtol=1e-5, err_msg=name)


def test_scan_bodies_get_one_row_per_iteration_matching_explain():
    with jax.enable_x64(True):
        w = jax.random.normal(jax.random.PRNGKey(0), (3, 3), jnp.float64)
        xs = jax.random.normal(jax.random.PRNGKey(1), (5, 3), jnp.float64)
        _, grad_w, taps = jax.jit(tap_grad(_rnn))(w, xs)
        graph = fg.explain(_rnn, w, xs)
        np.testing.assert_allclose(grad_w, jax.grad(_rnn)(w, xs), rtol=1e-12)
    assert taps["h[:]"].norm.shape == (5,) and taps["matmul[:]"].norm.shape == (5,)
    for t in range(5):
        for key, node in (("h[:]", f"h[{t}]"), ("matmul[:]", f"matmul[{t}]"),
                          ("add[:]", f"add[{t}]")):
            np.testing.assert_allclose(float(taps[key].norm[t]), _norm(graph[node].grad),
                                       rtol=1e-10)
    np.testing.assert_allclose(float(taps["square"].norm), _norm(graph["square"].grad))


def test_long_scans_are_tapped_too():
    w = jnp.eye(2) * 0.5
    xs = jnp.ones((40, 2))
    _, _, taps = jax.jit(tap_grad(_rnn))(w, xs)
    assert taps["h[:]"].norm.shape == (40,)
    # gradients vanish backwards through time: the first step gets the least
    assert taps["h[:]"].norm[0] < taps["h[:]"].norm[-1]


def test_user_primitives_are_tapped():
    softsign = fg.primitive(
        name="softsign_tap", fwd=lambda x: (x / (1 + jnp.abs(x)), (x,)),
        bwd=lambda res, g: (g / (1 + jnp.abs(res[0])) ** 2,),
        formula="softsign'(x) = 1 / (1 + |x|)^2")
    try:
        f = lambda x: fg.sum(fg.mul(softsign(x), 3.0))
        _, grad, taps = jax.jit(tap_grad(f))(jnp.array([1.0, -1.0]))
        assert float(taps["softsign_tap"].norm) == pytest.approx(3 * np.sqrt(2))
        np.testing.assert_allclose(grad, [0.75, 0.75])
    finally:
        registry.unregister("softsign_tap")


def test_tapped_value_and_grad_for_a_training_step():
    loss, (params, x, y) = _mlp_case()
    big = jax.tree.map(lambda a: 10 * a, params)
    step = jax.jit(tapped_value_and_grad(lambda p, b: (loss(p, *b), {}), taps=False))
    (value, _), grads, extra = step(big, (x, y))
    assert extra["taps"] == {} and list(extra["saturation"]) == ["tanh_1", "tanh_2"]
    want = fg.flow.saturation(lambda p, x: nn.mlp(p, x, activation="tanh"), big, x)
    np.testing.assert_allclose([extra["saturation"][k] for k in ("tanh_1", "tanh_2")],
                               want)
    relu = lambda p, x: fg.sum(nn.mlp(p, x, activation="relu"))
    _, stats = activation_stats(relu, params, -jnp.abs(x))
    assert set(stats["dead"]) == {"relu_1", "relu_2"}


def test_bad_argnums_is_a_clear_error():
    with pytest.raises(ValueError, match="tap_grad: argument 'argnums' must be"):
        tap_grad(lambda x: fg.sum(x), argnums=3)(jnp.ones(2))


def test_history_measure_takes_saturation_from_the_steps_forward_pass():
    apply_fn = lambda p, x: nn.mlp(p, x, activation="tanh")
    loss, (params, x, y) = _mlp_case()
    params = jax.tree.map(lambda a: 3 * a, params)
    history = fg.flow.History(apply_fn=apply_fn)
    vg = tapped_value_and_grad(lambda p, b: (loss(p, *b), {}), taps=False)

    @jax.jit
    def both(p):
        _, grads, extra = vg(p, (x, y))
        rerun = history.measure(p, grads, batch=(x, y))
        return history.measure(p, grads, batch=(x, y), activations=extra), rerun
    fast, rerun = both(params)
    assert float(jnp.max(rerun["saturation"])) > 0  # the check can fail
    np.testing.assert_allclose(fast["saturation"], rerun["saturation"])
    np.testing.assert_allclose(fast["grad_norm"], rerun["grad_norm"])
    assert "dead_units" not in fast
    relu_loss = lambda p, b: (fg.mean(fg.softmax_cross_entropy(nn.mlp(p, b[0]), b[1])), {})
    _, grads, extra = tapped_value_and_grad(relu_loss, taps=False)(params, (x, y))
    got = fg.flow.History().measure(params, grads, activations=extra)
    assert got["dead_units"].shape == (2,) and "saturation" not in got


def test_saturation_keeps_execution_order_past_ten_layers():
    sizes = [3] + [4] * 11 + [2]
    params = nn.init_mlp(jax.random.PRNGKey(2), sizes, activation="tanh", scale=3.0)
    x = jax.random.normal(jax.random.PRNGKey(3), (5, 3))
    apply_fn = lambda p, x: nn.mlp(p, x, activation="tanh")
    vg = tapped_value_and_grad(lambda p, x: fg.sum(apply_fn(p, x)), has_aux=False,
                               taps=False)
    fast = jax.jit(lambda p: fg.flow.History().measure(
        p, vg(p, x)[1], activations=vg(p, x)[2])["saturation"])(params)
    want = fg.flow.saturation(apply_fn, params, x)
    assert len(set(np.asarray(want).tolist())) > 2  # the order matters
    np.testing.assert_allclose(fast, want)


def test_a_function_without_a_scalar_loss_is_a_clear_error():
    with pytest.raises(ValueError, match=r"tap_grad: fn must return one real scalar .*; "
                                         r"it returned float32\[3\]"):
        tap_grad(lambda x: fg.relu(x))(jnp.ones(3))
    with pytest.raises(ValueError, match="it returned float32.*, float32"):
        tap_grad(lambda x: (fg.sum(x), fg.sum(x)))(jnp.ones(3))


def test_tapped_steps_fused_in_a_scan_stack_their_records():
    loss, (params, x, y) = _mlp_case()
    vg = tapped_value_and_grad(lambda p, b: (loss(p, *b), {}))

    def step(p, batch):
        (value, _), grads, extra = vg(p, batch)
        new = jax.tree.map(lambda a, g: a - 0.1 * g, p, grads)
        return new, {"loss": value, "taps": extra["taps"], "sat": extra["saturation"]}
    batches = (jnp.stack([x] * 3), jnp.stack([y] * 3))
    _, metrics = jax.jit(lambda p: jax.lax.scan(step, p, batches))(params)
    assert metrics["taps"]["L"].norm.shape == (3,) and metrics["sat"]["tanh_1"].shape == (3,)
    np.testing.assert_allclose(metrics["taps"]["L"].norm, 1.0)
    assert metrics["loss"][2] < metrics["loss"][0]


def test_counts_and_indices_past_float32s_exact_integers():
    n = (1 << 24) + 8   # float32 cannot hold n - 3 = 2**24 + 5 exactly
    x = jnp.ones((n,)).at[n - 3].set(-1.0)
    _, _, taps = jax.jit(tap_grad(lambda x: fg.sum(fg.log(fg.relu(x)))))(x)
    assert int(taps["relu"].first_nonfinite) == n - 3 and int(taps["relu"].nonfinite) == 1


def test_names_keep_only_those_taps_and_the_program_computes_only_them():
    loss, args = _mlp_case()
    _, _, every = tap_grad(loss)(*args)
    some = tap_grad(loss, names=["dense_1", "L"])
    _, _, kept = some(*args)
    assert sorted(kept) == ["L", "dense_1"]
    for name in kept:
        assert all(np.array_equal(a, b) for a, b in zip(kept[name], every[name], strict=True))
    count = lambda f: jax.jit(f).lower(*args).compile().as_text().count(" = ")  # noqa: E731
    assert count(some) < count(tap_grad(loss))
    with pytest.raises(ValueError, match=r"tap_grad: argument 'names' holds \['dense_9'\], "
                                         r"not nodes of loss; its nodes are \[.*'dense_1'"):
        tap_grad(loss, names=["dense_9"])(*args)
    with pytest.raises(TypeError, match="argument 'names' must be a collection of node "
                                        r"names; got the string 'L' \(write \['L'\]\)"):
        tap_grad(loss, names="L")


def test_without_taps_or_activations_the_step_is_the_plain_program():
    loss, (params, x, y) = _mlp_case()
    f = lambda p, b: (loss(p, *b), {})
    off = tapped_value_and_grad(f, taps=False, activations=False)
    plain = jax.value_and_grad(f, has_aux=True)
    got = str(jax.make_jaxpr(lambda p: off(p, (x, y))[:2])(params))
    assert got == str(jax.make_jaxpr(lambda p: plain(p, (x, y)))(params))
    on = tapped_value_and_grad(f)
    assert str(jax.make_jaxpr(lambda p: on(p, (x, y))[:2])(params)) != got


def test_train_step_and_fit_put_taps_in_the_metrics():
    """make_train_step(taps=True) and fit(taps=True): one Tap per primitive call, keyed by
    explain's node names, equal to explain's gradient norms on the same step."""
    from funcgrad import train

    sizes = [3, 5, 2]
    params = nn.init_mlp(jax.random.PRNGKey(0), sizes)
    x = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (8, 3)))
    y = np.arange(8) % 2
    loss_fn = train.classification_loss(lambda p, x: nn.mlp(p, x))
    batch = (jnp.asarray(x), jnp.asarray(y, jnp.int32), jnp.ones(8))
    tx = train.optimizer(0.1)
    step = train.make_train_step(loss_fn, tx, taps=True)
    _, metrics = step(train.init_state(jax.tree.map(jnp.copy, params), tx), batch)  # donated
    graph = fg.explain(lambda p: loss_fn(p, batch)[0], params)
    ops = {n.name: n for n in graph.nodes if n.primitive}
    assert set(metrics["taps"]) == set(ops)
    for name, tap in metrics["taps"].items():
        np.testing.assert_allclose(float(tap.norm), _norm(ops[name].grad), rtol=1e-5)
    r = train.fit(params, (x, y), apply_fn=lambda p, x: nn.mlp(p, x), tx=tx, batch_size=4,
                  epochs=1, taps=True, log_every=2)
    assert set(r.history[-1]["taps"]) == set(ops)
    assert set(r.history[-1]["taps"]["relu"]) == set(Tap._fields)
