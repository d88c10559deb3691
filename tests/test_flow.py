"""funcgrad.flow: per-layer statistics, flags, saturation, history, plots, find_nonfinite;
funcgrad.experiments (the lesson's experiments), and the `funcgrad flow` /
`funcgrad train --flow` commands."""

from __future__ import annotations

import importlib.util
import json
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcgrad as fg
from conftest import load_example
from funcgrad import cli, experiments, flow, nn, train

PNG = b"\x89PNG\r\n\x1a\n"



# ----------------------------------------------------------------------------- layer_stats
def _random_tree(rng, zeros=0.0):
    """A 3-layer MLP-shaped pytree; a share ``zeros`` of its elements set to exactly 0."""
    def arr(*shape):
        a = rng.standard_normal(shape).astype(np.float32) * rng.uniform(0.01, 10)
        a[rng.random(shape) < zeros] = 0.0
        return a
    return [{"w": arr(5, 4), "b": arr(4)},
            {"w": arr(4, 4), "b": arr(4), "gamma": arr(4), "beta": arr(4)},
            {"w": arr(4, 2), "b": arr(2)}]


def _numpy_stats(grads, params, updates):
    out = {k: [] for k in ("grad_norm", "grad_mean_abs", "grad_max_abs", "grad_zero_fraction",
                           "param_norm", "update_norm", "update_ratio")}
    for g, p, u in zip(grads, params, updates, strict=True):
        gv = np.concatenate([np.ravel(v) for v in jax.tree.leaves(g)]).astype(np.float64)
        pv = np.concatenate([np.ravel(v) for v in jax.tree.leaves(p)]).astype(np.float64)
        uv = np.concatenate([np.ravel(v) for v in jax.tree.leaves(u)]).astype(np.float64)
        out["grad_norm"].append(np.linalg.norm(gv))
        out["grad_mean_abs"].append(np.mean(np.abs(gv)))
        out["grad_max_abs"].append(np.max(np.abs(gv)))
        out["grad_zero_fraction"].append(np.mean(gv == 0))
        out["param_norm"].append(np.linalg.norm(pv))
        out["update_norm"].append(np.linalg.norm(uv))
        out["update_ratio"].append(np.linalg.norm(uv) / np.linalg.norm(pv))
    return {k: np.array(v) for k, v in out.items()}


def test_layer_stats_equal_numpy():
    rng = np.random.default_rng(0)
    grads, params, updates = (_random_tree(rng, zeros=z) for z in (0.3, 0.0, 0.1))
    stats = jax.jit(flow.layer_stats)(grads, params, updates)
    expected = _numpy_stats(grads, params, updates)
    assert set(stats) == set(expected)
    for key, value in expected.items():
        assert stats[key].shape == (3,), key
        np.testing.assert_allclose(np.asarray(stats[key]), value, rtol=2e-6, err_msg=key)
    assert np.all(expected["grad_zero_fraction"] > 0.1)  # the zeros were really counted


def test_layer_stats_dict_of_layers_and_single_tree():
    rng = np.random.default_rng(1)
    layers = _random_tree(rng)
    as_dict = {"c": layers[0], "a": layers[1], "b": layers[2]}  # sorted: a, b, c
    stats = flow.layer_stats(as_dict)
    ref = flow.layer_stats([layers[1], layers[2], layers[0]])
    np.testing.assert_array_equal(np.asarray(stats["grad_norm"]), np.asarray(ref["grad_norm"]))
    assert flow.layer_names(as_dict) == ["a", "b", "c"]
    # the train module counts layers the same way
    np.testing.assert_allclose(np.asarray(stats["grad_norm"]),
                               np.asarray(train.layer_norms(as_dict)), rtol=1e-6)
    single = flow.layer_stats(jnp.array([3.0, 0.0, 4.0]))
    assert single["grad_norm"].tolist() == [5.0]
    assert single["grad_zero_fraction"].tolist() == pytest.approx([1 / 3])


def test_layer_stats_overflow_and_nonfinite():
    grads = [jnp.array([3e20, 4e20]), jnp.array([1.0, jnp.inf]), jnp.array([jnp.nan, 1.0]),
             jnp.zeros(3)]
    s = flow.layer_stats(grads)
    assert float(s["grad_norm"][0]) == pytest.approx(5e20, rel=1e-6)  # no float32 overflow
    assert math.isinf(float(s["grad_norm"][1]))
    assert math.isnan(float(s["grad_norm"][2]))
    assert float(s["grad_norm"][3]) == 0.0 and float(s["grad_zero_fraction"][3]) == 1.0
    # a layer whose parameters are all zero has no defined update ratio
    r = flow.layer_stats([jnp.ones(2)], [jnp.zeros(2)], [jnp.ones(2)])["update_ratio"]
    assert math.isnan(float(r[0]))


def test_layer_stats_mismatched_layers_names_the_argument():
    with pytest.raises(ValueError,
                       match=r"argument 'params' must have 3 layers \(as many as 'grads'\); got 2"):
        flow.layer_stats([1.0, 2.0, 3.0], params=[1.0, 2.0])


def test_layer_stats_inside_jit_does_not_retrace():
    params = nn.init_mlp(jax.random.PRNGKey(0), [4, 8, 8, 3])
    x, y = jnp.ones((6, 4)), jnp.arange(6) % 3
    loss = lambda p: fg.mean(fg.softmax_cross_entropy(nn.mlp(p, x), y))

    @jax.jit
    @chex.assert_max_traces(n=1)
    def stats(p):
        return flow.layer_stats(jax.grad(loss)(p), p)

    a = stats(params)
    b = stats(jax.tree.map(lambda v: v * 1.1, params))
    assert a["grad_norm"].shape == (3,) and not np.allclose(a["grad_norm"], b["grad_norm"])
    reference = jax.jit(lambda p: train.layer_norms(jax.grad(loss)(p)))(params)
    np.testing.assert_allclose(np.asarray(a["grad_norm"]), np.asarray(reference), rtol=1e-5)


def _definition(tree):
    """What layer_stats reports for one pytree, by definition, in float64 NumPy: per layer
    (list element / sorted dict key / whole tree) over every float leaf: the norm, mean and
    max of |x| (nan if the layer holds a nan, else inf if it holds an inf) and the share of
    exact zeros."""
    if isinstance(tree, (list, tuple)):
        layers = list(tree)
    elif isinstance(tree, dict):
        layers = [tree[k] for k in sorted(tree)]
    else:
        layers = [tree]
    out = {k: [] for k in ("norm", "mean_abs", "max_abs", "zero_fraction")}
    for layer in layers:
        leaves = [np.asarray(v) for v in jax.tree.leaves(layer)]
        v = np.concatenate([np.ravel(x).astype(np.float64) for x in leaves
                            if jnp.issubdtype(x.dtype, jnp.inexact)] + [np.zeros(0)])
        a = np.abs(v)
        fin = a[np.isfinite(a)]
        norm = np.sqrt(np.sum(np.square(fin / fin.max()))) * fin.max() if fin.any() else 0.0
        values = [norm, a.sum() / max(a.size, 1) if a.size else 0.0, a.max(initial=0.0)]
        if np.isnan(a).any():
            values = [np.nan] * 3
        elif np.isinf(a).any():
            values = [np.inf] * 3
        for key, value in zip(("norm", "mean_abs", "max_abs"), values, strict=True):
            out[key].append(value)
        out["zero_fraction"].append(np.mean(v == 0) if v.size else 0.0)
    return {k: np.array(v, np.float64) for k, v in out.items()}


@pytest.mark.parametrize("limit", [1 << 18, 0], ids=["updates in the cond", "updates apart"])
def test_layer_stats_equal_the_definition_with_nonfinite_huge_and_odd_layers(limit,
                                                                             monkeypatch):
    """Per-layer reductions give what the old segment-sum implementation defined, on a tree
    with a nan, an inf, float32-overflowing values, an empty layer, an integer leaf and a
    bfloat16 leaf; with the update norms rescued in the shared cond (small updates) and
    apart from it (large ones)."""
    from funcgrad.flow import stats

    monkeypatch.setattr(stats, "UPDATES_IN_COND_LIMIT", limit)
    rng = np.random.default_rng(7)
    grads = _random_tree(rng, zeros=0.25) + [
        {"w": np.array([3e20, -4e20, 0.0], np.float32)},
        {"w": rng.standard_normal((3, 2)).astype(np.float32), "count": np.arange(3)},
        {},
        {"w": jnp.asarray(rng.standard_normal(5), jnp.bfloat16)},
        {"w": np.array([1e-25, -3e-25, 0.0, 2e-25], np.float32)},  # squares underflow
    ]
    grads[0]["b"][1] = np.nan
    grads[1]["gamma"][2] = -np.inf
    params = _random_tree(rng) + [{"w": np.ones(3, np.float32)}, {"w": np.zeros((3, 2))},
                                  {}, {"w": jnp.ones(5, jnp.bfloat16)}, np.ones(4, np.float32)]
    updates = _random_tree(rng) + [{"w": np.full(3, 0.5, np.float32)},
                                   {"w": np.ones((3, 2), np.float32)}, {},
                                   {"w": jnp.full(5, 0.1, jnp.bfloat16)},
                                   np.full(4, 1e-30, np.float32)]
    updates[0]["b"][0] = np.inf
    updates[2]["w"][0, 0] = np.nan
    # a new function: jit's trace cache must not hand back the other limit's program
    got = jax.jit(lambda *trees: flow.layer_stats(*trees))(grads, params, updates)
    g, p, u = _definition(grads), _definition(params), _definition(updates)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(p["norm"] > 0, u["norm"] / p["norm"], np.nan)
    expected = {"grad_norm": g["norm"], "grad_mean_abs": g["mean_abs"],
                "grad_max_abs": g["max_abs"], "grad_zero_fraction": g["zero_fraction"],
                "param_norm": p["norm"], "update_norm": u["norm"], "update_ratio": ratio}
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert got[key].dtype == jnp.float32, key
        np.testing.assert_allclose(np.asarray(got[key], np.float64), value, rtol=3e-6,
                                   err_msg=key)
    # the cases the tree was built to contain really are there
    assert np.isnan(expected["grad_norm"][0]) and np.isinf(expected["grad_norm"][1])
    assert expected["grad_norm"][3] == pytest.approx(5e20)
    assert np.isnan(expected["update_ratio"][4]) and expected["grad_norm"][5] == 0.0
    assert 0 < expected["grad_zero_fraction"][2] < 1
    assert expected["grad_norm"][7] == pytest.approx(np.sqrt(14) * 1e-25)
    assert np.isinf(expected["update_norm"][0]) and np.isnan(expected["update_norm"][2])
    assert expected["update_norm"][7] == pytest.approx(2e-30)  # squares underflow
    # all finite and the tiny layer alone: the norms come from the plain sum of squares
    # unless it underflows, which this layer does
    tiny = flow.layer_stats([jnp.ones(3), jnp.asarray(grads[7]["w"])])["grad_norm"]
    np.testing.assert_allclose(np.asarray(tiny), [np.sqrt(3), np.sqrt(14) * 1e-25], rtol=2e-6)


def test_layer_stats_under_vmap_and_scan_match_one_call_per_row():
    """The rare scaled re-sum sits under lax.cond: vmap turns it into a select, scan keeps
    it; both must give each row what a single call gives."""
    rows = [[jnp.array([3.0, 4.0]), jnp.array([1e-25, 0.0])],
            [jnp.array([3e20, 4e20]), jnp.array([1.0, 2.0])],
            [jnp.array([jnp.nan, 1.0]), jnp.array([0.0, 0.0])]]
    stacked = jax.tree.map(lambda *v: jnp.stack(v), *rows)
    one = [flow.layer_stats(r, r, r) for r in rows]
    mapped = jax.jit(jax.vmap(lambda g: flow.layer_stats(g, g, g)))(stacked)
    _, scanned = jax.lax.scan(lambda c, g: (c, flow.layer_stats(g, g, g)), 0, stacked)
    for key in one[0]:
        expected = np.stack([np.asarray(o[key]) for o in one])
        np.testing.assert_allclose(np.asarray(mapped[key]), expected, rtol=1e-6, err_msg=key)
        np.testing.assert_allclose(np.asarray(scanned[key]), expected, rtol=1e-6, err_msg=key)
    assert float(one[1]["grad_norm"][0]) == pytest.approx(5e20)
    assert float(one[0]["grad_norm"][1]) == pytest.approx(1e-25)


def test_layer_squares_is_the_one_per_layer_reduction():
    rng = np.random.default_rng(3)
    tree = _random_tree(rng, zeros=0.1)
    expected = [sum(np.sum(np.square(np.asarray(v, np.float64)))
                    for v in jax.tree.leaves(layer)) for layer in tree]
    got = jax.jit(flow.layer_squares)(tree)
    assert got.dtype == jnp.float32 and got.shape == (3,)
    np.testing.assert_allclose(np.asarray(got), expected, rtol=2e-6)
    np.testing.assert_allclose(np.asarray(flow.layer_norms(tree)), np.sqrt(expected),
                               rtol=2e-6)
    # accumulated in float32 even for bfloat16 leaves: 300 ones sum to 300 exactly
    half = {"b": jnp.ones(300, jnp.bfloat16), "a": {"w": jnp.full((2, 2), 2.0, jnp.bfloat16)}}
    assert flow.layer_squares(half).dtype == jnp.float32
    assert flow.layer_squares(half).tolist() == [16.0, 300.0]  # sorted keys: a, b
    assert flow.layer_squares([{}, jnp.ones(2)]).tolist() == [0.0, 2.0]
    assert flow.layer_squares([]).shape == (0,)
    with jax.enable_x64(True):
        x64 = flow.layer_squares([jnp.full(2, 1e100, jnp.float64)])  # beyond float32
        assert x64.dtype == jnp.float64 and float(x64[0]) == pytest.approx(2e200)


def test_flow_never_imports_training():
    """Diagnostics import no training code (the experiments live above training)."""
    import ast
    import pathlib

    banned = {"train", "nn", "data", "checkpoint", "parallel", "experiments", "cli",
              "_cli_flow", "_cli_train"}
    package = pathlib.Path(flow.__file__).parent
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level > 0:
                parts = (node.module or "").split(".")
                names = {a.name for a in node.names} if node.level == 2 and not node.module \
                    else set()
                top = parts[0] if node.level == 2 else None
                assert top not in banned and not names & banned, (path.name, ast.dump(node))
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                mods = [a.name for a in node.names] if isinstance(node, ast.Import) \
                    else [node.module or ""]
                for mod in mods:
                    assert not (mod.startswith("funcgrad.")
                                and mod.split(".")[1] in banned), (path.name, mod)


# ----------------------------------------------------------------------------- diagnose
def test_diagnose_flags_and_thresholds():
    stats = {"grad_norm": np.array([1e-9, 5e-3, 0.5, 1.0, 2e-2, np.nan]),
             "grad_zero_fraction": np.array([0.0, 0.0, 0.95, 0.0, 0.0, 0.0])}
    d = flow.diagnose(stats)
    assert d.layers("vanishing") == [0, 1]  # 2e-2 is above 1e-2 of the largest (1.0)
    assert d.layers("exploding") == [5]
    assert d.layers("dead") == [2]
    assert d.any and "vanishing in layers 0-1 of 6" in str(d)
    assert d.to_dict() == {"vanishing": [0, 1], "exploding": [5], "dead": [2]}
    assert d.short() == "vanishing 0-1; exploding 5; dead 2"
    strict = flow.diagnose(stats, vanishing_ratio=0.1, exploding_norm=0.9, dead_fraction=0.99)
    assert strict.layers("vanishing") == [0, 1, 4] and strict.layers("exploding") == [3, 5]
    assert strict.layers("dead") == []
    healthy = flow.diagnose({"grad_norm": np.array([0.2, 0.5, 1.0])})
    assert not healthy.any and str(healthy) == "no flags (3 layers)"


def test_diagnose_update_ratio_and_absolute_vanishing():
    stats = {"grad_norm": np.array([1.0, 1.0]), "update_ratio": np.array([0.01, 3.0])}
    assert flow.diagnose(stats).layers("exploding") == [1]
    assert flow.diagnose(stats, exploding_update_ratio=5.0).layers("exploding") == []
    tiny = flow.diagnose({"grad_norm": np.array([1e-9, 1e-9])})  # equal, but below 1e-8
    assert tiny.layers("vanishing") == [0, 1]


def test_diagnose_takes_a_history_and_reads_its_newest_record():
    h = flow.History(log_every=10)
    with pytest.raises(ValueError, match="argument 'stats' is a History without records"):
        flow.diagnose(h)
    h.append({"grad_norm": jnp.array([1.0, 0.5])}, 0)
    h.append({"grad_norm": jnp.array([1e-6, 0.5])}, 1)  # pending: diagnose fetches it
    assert flow.diagnose(h).flags == flow.diagnose(h.records[-1]).flags
    assert "vanishing in layer 0 of 2" in str(flow.diagnose(h))


def test_diagnose_rejects_bad_input():
    with pytest.raises(ValueError, match="grad_norm"):
        flow.diagnose({"loss": np.array(1.0)})
    with pytest.raises(ValueError, match="1-D"):
        flow.diagnose({"grad_norm": np.ones((2, 3))})
    with pytest.raises(ValueError, match="argument 'vanishing_ratio' must be a number > 0"):
        flow.diagnose({"grad_norm": np.ones(2)}, vanishing_ratio=-1)


# ----------------------------------------------------------------------------- saturation
def test_saturation_from_mlp_without_changing_it():
    params = nn.init_mlp(jax.random.PRNGKey(3), [6, 16, 16, 16, 2], activation="sigmoid",
                         init="normal", scale=2.0)
    x = jax.random.normal(jax.random.PRNGKey(4), (32, 6)) * 3
    apply_fn = lambda p, x: nn.mlp(p, x, activation="sigmoid")
    # the reference: nn.mlp's own capture hook, and the definition sigma'(z)/sigma'(0) < 0.01
    pre = []
    nn.mlp(params, x, activation="sigmoid", capture=lambda i, z, a: pre.append(np.asarray(z)))
    sig = lambda z: 1 / (1 + np.exp(-z.astype(np.float64)))
    expected = [np.mean(4 * sig(z) * sig(-z) < 0.01) for z in pre]
    got = jax.jit(lambda p, x: flow.saturation(apply_fn, p, x))(params, x)
    np.testing.assert_allclose(np.asarray(got), expected, atol=1e-6)
    assert 0.05 < max(expected) < 0.95  # the test would see a wrong threshold
    out, calls = flow.capture(apply_fn, params, x)
    np.testing.assert_allclose(np.asarray(out), np.asarray(apply_fn(params, x)), rtol=1e-6)
    assert [c.scope for c in calls] == ["layer_0", "layer_1", "layer_2"]
    for c, z in zip(calls, pre, strict=True):
        np.testing.assert_allclose(np.asarray(c.x), z, rtol=1e-6)


def test_saturation_sees_through_jit_and_checkpoint():
    inner = jax.jit(lambda x: fg.tanh(x))
    f = lambda x: fg.sum(fg.sigmoid(jax.checkpoint(inner)(fg.mul(x, 3.0))))
    x = jnp.linspace(-2.0, 2.0, 5)  # tanh inputs -6, -3, 0, 3, 6: 4 of 5 beyond 2.99
    np.testing.assert_allclose(np.asarray(flow.saturation(f, x)), [0.8, 0.0])
    np.testing.assert_allclose(np.asarray(flow.saturation(f, x, ops=["sigmoid"])), [0.0])
    assert flow.saturation(lambda x: fg.sum(fg.relu(x)), x).shape == (0,)
    with pytest.raises(ValueError, match="'ops' must name some of"):
        flow.saturation(f, x, ops=["relu"])


def test_saturated_fraction_definition():
    x = jnp.array([0.0, 5.9, -5.95, 6.0, -6.1, 30.0, -1e4, 1.0])
    assert float(flow.saturated_fraction("sigmoid", x)) == pytest.approx(4 / 8)
    assert float(flow.saturated_fraction("tanh", x / 2)) == pytest.approx(4 / 8)
    # eps = 1e-6: |x| > 14.5 for sigmoid
    assert float(flow.saturated_fraction("sigmoid", x, eps=1e-6)) == pytest.approx(2 / 8)


# ----------------------------------------------------------------------------- find_nonfinite
def test_find_nonfinite_names_log_of_zero():
    def loss(w, x):  # relu zeroes one unit; log(0) = -inf: the injected fault
        h = fg.relu(fg.matmul(x, w))
        return fg.mean(fg.square(fg.add(fg.log(h), 1.0)))

    w = jnp.array([[1.0, -1.0], [0.5, 0.5]])
    report = flow.find_nonfinite(loss, w, jnp.array([[1.0, 2.0]]))
    assert report is not None
    assert (report.phase, report.op, report.primitive) == ("forward", "log", True)
    assert report.inputs == ("relu",)
    assert "'log'" in str(report)
    assert flow.find_nonfinite(loss, jnp.abs(w), jnp.array([[1.0, 2.0]])) is None


def test_find_nonfinite_backward_and_input():
    report = flow.find_nonfinite(lambda x: fg.sum(fg.power(x, 0.5)), jnp.array([0.0, 1.0]))
    assert (report.phase, report.op, report.input) == ("backward", "power", "x")
    report = flow.find_nonfinite(lambda x: fg.sum(x), jnp.array([np.nan, 1.0]))
    assert (report.phase, report.node) == ("input", "x")


# ----------------------------------------------------------------------------- history
def test_history_fetch_cadence_single_and_stacked_steps():
    seen = []
    h = flow.History(log_every=10, on_fetch=seen.append)
    for step in range(25):
        h.append({"grad_norm": jnp.array([1.0, 2.0]) * step, "loss": jnp.float32(step)}, step)
        assert h.fetches == (step + 1) // 10  # one transfer per 10 steps, not per step
    assert len(h.records) == 20 and len(h) == 25
    h.append({"grad_norm": jnp.ones((4, 2)), "loss": jnp.zeros(4)}, range(25, 29))
    assert h.fetches == 2 and len(h) == 29  # 5 + 4 stacked steps pending: < 10
    h.append({"grad_norm": jnp.ones(2), "loss": jnp.float32(0)})  # default: the next step
    assert h.fetches == 3 and len(h.records) == 30
    assert [len(batch) for batch in seen] == [10, 10, 10]
    h.append({"grad_norm": jnp.ones(2), "loss": jnp.float32(0)}, 30)
    np.testing.assert_array_equal(h.steps, np.arange(31))  # .steps fetches what is pending
    assert h.fetches == 4
    assert h.array("grad_norm").shape == (31, 2) and h.array("loss")[7] == 7
    encoded = json.loads(json.dumps(h.to_dict()))
    assert encoded["steps"][-1] == 30 and encoded["grad_norm"][3] == [3.0, 6.0]
    with pytest.raises(ValueError, match="leading axis of length 3"):
        h.append({"grad_norm": jnp.ones((2, 2))}, [1, 2, 3])
    with pytest.raises(KeyError, match="must name a recorded statistic.*got 'nope'"):
        h.array("nope")


def test_history_nested_records_keep_false_and_json():
    """What fit needs of the buffer: nested step metrics, K stacked steps, one transfer per
    log_every steps, records that need not be kept, and JSON output."""
    seen = []
    h = flow.History(log_every=4, on_fetch=seen.append, keep=False)
    metrics = {"loss": jnp.float32(0.5), "flow": {"grad_norm": jnp.array([1.0, jnp.inf])}}
    h.append(metrics, 0)
    stacked = {"loss": jnp.arange(3, dtype=jnp.float32),
               "flow": {"grad_norm": jnp.ones((3, 2))}}
    h.append(stacked, [1, 2, 3])
    assert h.fetches == 1 and len(h) == 4 and h.records == []  # not kept
    (batch,) = seen
    assert [r["step"] for r in batch] == [0, 1, 2, 3]
    assert batch[2]["loss"] == 1.0 and batch[2]["flow"]["grad_norm"].tolist() == [1.0, 1.0]
    assert json.loads(json.dumps(flow.to_jsonable(batch[0]))) == {
        "step": 0, "loss": 0.5, "flow": {"grad_norm": [1.0, None]}}
    assert flow.to_jsonable(np.float32(1 / 3), digits=None) == pytest.approx(1 / 3, rel=1e-7)
    with pytest.raises(ValueError, match=r"entry \['flow'\]\['grad_norm'\] must have a "
                                         r"leading axis of length 2"):
        h.append({"flow": {"grad_norm": jnp.ones((3, 2))}}, [4, 5])
    kept = flow.History(log_every=100)
    kept.append(metrics, 0)
    kept.append(stacked, [1, 2, 3])
    assert kept.array("flow")["grad_norm"].shape == (4, 2)
    with pytest.raises(ValueError, match="argument 'log_every' must be an int >= 1; got 0"):
        flow.History(log_every=0)


def test_fit_records_flow_on_device_and_fetches_when_it_logs():
    ds = fg.data.spirals(n_per_class=40, seed=0)
    params = nn.init_mlp(jax.random.PRNGKey(0), [2, 8, 8, 2], activation="tanh",
                         init="glorot")
    apply_fn = lambda p, x: nn.mlp(p, x, activation="tanh")
    history = flow.History(log_every=10_000, apply_fn=apply_fn)
    result = train.fit(params, (ds.x_train, ds.y_train), apply_fn=apply_fn,
                       tx=train.optimizer(0.1), batch_size=16, epochs=2,
                       steps_per_dispatch=3, log_every=5, flow=history)
    total = int(result.state.step)
    assert history.fetches == len(result.history)  # fetched exactly when fit logged
    np.testing.assert_array_equal(history.steps, np.arange(total))
    assert history.array("grad_norm").shape == (total, 3)
    assert history.array("saturation").shape == (total, 2)
    np.testing.assert_allclose(history.array("grad_norm")[-1],
                               result.history[-1]["layer_grad_norms"], rtol=1e-5)
    assert "flow" not in result.history[-1]


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_plot_writes_pngs(tmp_path):
    pytest.importorskip("matplotlib")
    good, bad = flow.History(log_every=100), flow.History(log_every=100)
    for step in range(12):
        norms = jnp.logspace(-6, 0, 5) * (1 + step / 10)
        good.append({"grad_norm": norms, "loss": jnp.float32(2.0 / (step + 1))}, step)
        bad.append({"grad_norm": norms * 10.0**step if step < 6 else jnp.full(5, jnp.nan),
                    "loss": jnp.float32(10.0**step if step < 6 else jnp.nan)}, step)
    paths = flow.plot({"good": good, "bad": bad}, tmp_path / "run.png", steps=[0, 11])
    assert [p.name for p in paths] == ["run_heatmap.png", "run_layers.png", "run_loss.png"]
    for p in paths:
        assert p.read_bytes()[:8] == PNG and p.stat().st_size > 5000
    single = flow.plot(good, tmp_path)
    assert [p.name for p in single] == ["flow_heatmap.png", "flow_layers.png", "flow_loss.png"]
    with pytest.raises(ValueError, match="non-empty History"):
        flow.plot(flow.History(), tmp_path)


def test_plot_without_matplotlib_names_the_extra(tmp_path, monkeypatch):
    h = flow.History()
    h.append({"grad_norm": jnp.ones(2)}, 0)
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"pip install -e \"\.\[plot\]\""):
        flow.plot(h, tmp_path)


# ----------------------------------------------------------------------------- experiments
NO_FLAGS = {"vanishing": [], "exploding": [], "dead": []}


def check_vanishing(runs: dict) -> None:
    """The lesson's vanishing-gradient claims, on flow.json's records by network name."""
    for name in ("sigmoid, normal(1) init", "sigmoid, Glorot init"):
        r = runs[name]
        flagged = r["flags"]["init"]["vanishing"]
        assert 0 in flagged and max(flagged) < 16, (name, flagged)  # the early layers
        assert r["flags"]["init"]["exploding"] == [], name
        assert r["first_to_last_ratio"]["init"] < 1e-2, name
    glorot = runs["sigmoid, Glorot init"]
    assert glorot["first_to_last_ratio"]["init"] < 1e-8  # about 1/4 per layer: sigma' <= 1/4
    assert glorot["flags"]["final"]["vanishing"][:10] == list(range(10))
    assert glorot["final"]["loss"] > 2.2  # it learns nothing: chance is ln 10 = 2.30
    # saturation: the normal(1) net pushes pre-activations past |x| = 6, Glorot does not
    assert np.mean(runs["sigmoid, normal(1) init"]["init"]["saturation"]) > 0.03
    assert np.mean(glorot["init"]["saturation"]) < 0.01
    for name in ("tanh, Glorot init", "relu, He init", "relu, He/sqrt(depth), residual",
                 "sigmoid, normal(1), batch norm"):
        r = runs[name]
        assert r["flags"] == {"init": NO_FLAGS, "final": NO_FLAGS}, (name, r["flags"])
        assert r["first_nonfinite_step"] is None, name
        assert 0.05 < r["first_to_last_ratio"]["init"] < 20, name
        assert r["final"]["loss"] < r["init"]["loss"], name
    bn = runs["sigmoid, normal(1), batch norm"]
    assert bn["final"]["loss"] < 1.0 < 2.2 < runs["sigmoid, normal(1) init"]["final"]["loss"]
    # plain He residual branches double the variance per block: not vanishing, exploding
    res = runs["relu, He, residual"]
    assert res["flags"]["init"]["vanishing"] == []
    assert res["flags"]["init"]["exploding"] == list(range(20))
    assert res["first_nonfinite_step"] is not None and res["first_nonfinite_step"] < 10


def check_exploding(runs: dict) -> None:
    """The lesson's exploding-gradient claims and cures, by run name."""
    big = runs["He x1.5, lr 0.05"]
    assert max(big["init"]["grad_norm"]) > 1e3 and big["flags"]["init"]["exploding"]
    assert big["first_nonfinite_step"] is not None and big["first_nonfinite_step"] < 10
    for name in ("He x1.5, lr 0.05, clip 1.0", "He x1.5, lr 1e-4", "He x1, lr 0.05"):
        r = runs[name]
        curve = np.asarray(r["history"]["loss"], dtype=float)
        assert r["first_nonfinite_step"] is None and np.all(np.isfinite(curve)), name
        assert r["final"]["loss"] < r["init"]["loss"], name  # it falls (fixed probe batch)
    for name in ("He x1.5, lr 0.05, clip 1.0", "He x1.5, lr 1e-4"):
        assert runs[name]["final"]["loss"] < runs[name]["init"]["loss"] / 100, name
        curve = np.asarray(runs[name]["history"]["loss"], dtype=float)
        assert np.mean(curve[-20:]) < np.mean(curve[:5]) / 100, name
    assert runs["He x1, lr 0.05"]["flags"]["init"] == NO_FLAGS


@pytest.mark.slow
def test_funcgrad_flow_reproduces_the_lesson(tmp_path, capsys):
    """`funcgrad flow --out` at its default size (20 layers, 300 steps, fixed seeds), then
    the two example scripts, which reuse its compiled programs. One test, so that the
    experiments compile once even under pytest-xdist."""
    assert cli.main(["flow", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "vanishing gradients" in out and "exploding gradients" in out
    assert "sigmoid, Glorot init" in out and "He x1.5, lr 0.05, clip 1.0" in out
    report = json.loads((tmp_path / "flow.json").read_text())
    assert report["settings"]["depth"] == 20 and report["thresholds"]["vanishing_ratio"] > 0
    vanishing = {r["config"]["name"]: r for r in report["vanishing"]}
    exploding = {r["config"]["name"]: r for r in report["exploding"]}
    assert list(vanishing) == [c.name for c in experiments.VANISHING_CONFIGS]
    assert list(exploding) == [c.name for c in experiments.EXPLODING_CONFIGS]
    for r in report["vanishing"] + report["exploding"]:
        assert len(r["init"]["grad_norm"]) == 20 and len(r["final"]["grad_norm"]) == 20
        assert len(r["history"]["steps"]) == 300
    check_vanishing(vanishing)
    check_exploding(exploding)
    if importlib.util.find_spec("matplotlib"):
        for name in ("vanishing", "exploding"):
            for kind in ("heatmap", "layers", "loss"):
                assert (tmp_path / f"flow_{name}_{kind}.png").read_bytes()[:8] == PNG

    numbers = load_example("vanishing_gradients").main(verbose=False)
    for name, r in vanishing.items():
        assert numbers[name]["init_flags"] == r["flags"]["init"], name
        assert numbers[name]["final_flags"] == r["flags"]["final"], name
        assert numbers[name]["init_ratio"] == pytest.approx(r["first_to_last_ratio"]["init"],
                                                            rel=1e-4), name
    numbers = load_example("exploding_gradients").main(verbose=False)
    for name, r in exploding.items():
        assert numbers[name]["first_nonfinite"] == r["first_nonfinite_step"], name
        assert numbers[name]["final_flags"] == r["flags"]["final"], name


# ----------------------------------------------------------------------------- commands
@pytest.mark.slow
def test_cli_train_flow_healthy_run_prints_no_flags(tmp_path, capsys):
    args = ["train", "--flow", "--epochs", "1", "--hidden", "64", "--no-progress",
            "--out", str(tmp_path)]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "flow:" not in out
    report = json.loads((tmp_path / "flow.json").read_text())
    assert report["final_flags"] == {"vanishing": [], "exploding": [], "dead": []}
    assert len(report["history"]["steps"]) == 45  # every step of the epoch: ceil(1438 / 32)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["flow"]["final_flags"] == report["final_flags"]
    if importlib.util.find_spec("matplotlib"):
        for kind in ("heatmap", "layers"):
            assert (tmp_path / f"flow_{kind}.png").read_bytes()[:8] == PNG


@pytest.mark.slow
def test_cli_train_flow_prints_flags_when_they_fire(capsys):
    args = ["train", "--flow", "--epochs", "1", "--hidden", "16", "--depth", "12",
            "--activation", "sigmoid", "--init", "glorot", "--steps-per-dispatch", "1",
            "--log-every", "20", "--no-progress"]
    assert cli.main(args) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("flow:")]
    assert lines and "vanishing in layers 0-" in lines[0]
    assert len(lines) == len(set(lines))  # printed when the flags change, not every fetch


def test_history_fetches_at_the_first_step_past_each_multiple_however_grouped():
    """Fetch points depend on the step numbers only, so a run resumed at a fetch step logs
    on the same steps, over the same intervals, as an uninterrupted one."""
    def fetches(groups, start=0):
        seen, step = [], start
        h = flow.History(log_every=4, on_fetch=lambda rows: seen.append(rows[-1]["step"] + 1))
        for k in groups:
            if k == 1:
                h.append({"v": jnp.zeros(())}, step)
            else:
                h.append({"v": jnp.zeros((k,))}, range(step, step + k))
            step += k
        return seen
    assert fetches([1] * 10) == [4, 8]
    assert fetches([3, 3, 3, 1]) == [6, 9]  # 6: the first boundary past 4; 9: past 8
    assert fetches([3, 1], start=6) == [9]  # resumed at 6: the same fetch as above
