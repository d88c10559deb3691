"""find_nonfinite: a visitor on the walker that names the first op producing a non-finite
value, forward or backward, with the element, the values there, the user's source line, the
layer, and a diagnosis from the table of causes (one test per cause)."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcgrad as fg
from funcgrad import flow
from funcgrad.explain import NonFinite, find_nonfinite
from funcgrad.explain.causes import CAUSES

HERE = __file__.rsplit("/", 1)[-1]


def _mlp_log_loss(params, x):  # a dead relu unit feeding log: the injected fault
    h = fg.relu(fg.dense(x, params[0]["w"], params[0]["b"]))
    return fg.mean(fg.log(fg.add(fg.dense(h, params[1]["w"], params[1]["b"]), 0.0))) \
        + fg.mean(fg.log(h))


PARAMS = [{"w": jnp.array([[1.0, -1.0, 0.5], [0.5, -0.5, 1.0]]), "b": jnp.zeros(3)},
          {"w": jnp.ones((3, 1)), "b": jnp.ones(1)}]


def test_dead_unit_in_log_names_layer_unit_source_and_cause():
    x = jnp.array([[1.0, 2.0], [2.0, 1.0]])
    r = find_nonfinite(_mlp_log_loss, PARAMS, x)
    assert (r.phase, r.op, r.primitive, r.cause) == ("forward", "log", True, "log_at_zero")
    assert r.layer == "params[0]" and r.inputs == ("relu",)
    # unit 1 of both rows is dead: flat index 1 (row 0, unit 1)
    h = jax.nn.relu(x @ PARAMS[0]["w"])
    assert r.index == int(np.flatnonzero(np.asarray(h) == 0)[0]) == 1
    assert dict(r.values) == {"relu": 0.0, "out": -np.inf}
    assert HERE in r.source and "_mlp_log_loss" in r.source
    assert "dead unit" in r.diagnosis and "log(x + eps)" in r.fix
    text = r.describe()
    assert str(r) in text and "element 1" in text and "log_at_zero" in text
    # the node name is the one explain gives
    g = fg.explain(_mlp_log_loss, PARAMS, x)
    assert r.node in g and g[r.node].op == "log"


def test_where_masked_log_is_nan_only_backward_with_the_double_where_fix():
    x = jnp.array([1.0, 2.0, 0.0, 3.0])
    loss = lambda x: fg.sum(jnp.where(x > 0, fg.log(x), 0.0))  # noqa: E731
    r = find_nonfinite(loss, x)
    assert (r.phase, r.op, r.input, r.index, r.masked) == ("backward", "log", "x", 2, True)
    assert r.cause == "masked_branch"
    assert dict(r.values) == {"x": 0.0, "out": -np.inf, "dL/dout": 0.0}
    assert "0 · inf = nan" in r.diagnosis and "only in the backward pass" in r.diagnosis
    assert "where(x > 0, log(where(x > 0, x, 1.0)), 0.0)" in r.fix
    # the loss itself is finite; jax.grad really is nan there
    assert np.isfinite(loss(x)) and np.isnan(jax.grad(loss)(x)[2])
    # the double-where fix: nothing to report
    fixed = lambda x: fg.sum(jnp.where(x > 0, fg.log(jnp.where(x > 0, x, 1.0)), 0.0))  # noqa: E731
    assert find_nonfinite(fixed, x) is None


def test_masked_forward_with_finite_gradient_is_reported_last():
    r = find_nonfinite(lambda x: fg.sum(jnp.where(x > 0, fg.log(x), 0.0)),
                       jnp.array([1.0, -1.0]))
    assert (r.phase, r.cause, r.masked, r.index) == ("forward", "masked_forward", True, 1)


def test_log_of_negative_and_div_by_zero():
    r = find_nonfinite(lambda x: fg.sum(fg.log(x)), jnp.array([1.0, 2.0, -3.0]))
    assert (r.cause, r.index, dict(r.values)["x"]) == ("log_of_negative", 2, -3.0)
    r = find_nonfinite(lambda x, y: fg.sum(fg.div(x, y)), jnp.array([1.0, 2.0]),
                       jnp.array([4.0, 0.0]))
    assert (r.phase, r.op, r.cause, r.index) == ("forward", "div", "div_by_zero", 1)
    assert dict(r.values) == {"x": 2.0, "y": 0.0, "out": np.inf}


def test_exp_overflow():
    r = find_nonfinite(lambda x: fg.sum(fg.exp(x)), jnp.array([[1.0, 2.0], [100.0, 3.0]]))
    assert (r.op, r.cause, r.index, dict(r.values)["x"]) == ("exp", "exp_overflow", 2, 100.0)
    assert "88.7" in r.diagnosis


@pytest.mark.parametrize("fn", [lambda x: fg.sum(fg.power(x, 0.5)),
                                lambda x: fg.sum(jnp.sqrt(x))], ids=["power", "jnp.sqrt"])
def test_sqrt_at_zero_is_infinite_only_backward(fn):
    r = find_nonfinite(fn, jnp.array([4.0, 1.0, 0.0]))
    assert (r.phase, r.input, r.index, r.cause) == ("backward", "x", 2, "sqrt_at_zero")
    assert dict(r.values)["x"] == 0.0 and not r.masked


def test_sum_of_squares_overflow():
    r = find_nonfinite(lambda x: fg.sum(fg.square(fg.mul(x, 1.5e19))), jnp.ones(10))
    assert (r.phase, r.op, r.cause, r.index) == ("forward", "sum", "sum_of_squares_overflow", 0)
    assert r.node == "L" and "1.5e+19" in r.diagnosis
    assert "huge" not in r.diagnosis  # the arguments themselves are small


def test_blown_up_parameters():
    w = jnp.array([[1e30, 1.0], [1.0, 1.0]])
    r = find_nonfinite(lambda w, x: fg.sum(fg.matmul(x, w)), w, jnp.full((1, 2), 1e10))
    assert (r.phase, r.op, r.cause) == ("forward", "matmul", "parameters_blown_up")
    assert "max |w| = 1e+30" in r.diagnosis and "learning rate" in r.diagnosis
    r = find_nonfinite(lambda p: fg.sum(fg.square(p["w"])), {"w": jnp.array([1.0, np.nan])})
    assert (r.phase, r.node, r.index, r.cause) == ("input", "p.w", 1, "parameters_blown_up")


def test_every_cause_has_a_diagnosis_and_a_fix():
    assert {"log_at_zero", "div_by_zero", "exp_overflow", "sqrt_at_zero", "masked_branch",
            "sum_of_squares_overflow", "parameters_blown_up"} <= set(CAUSES)
    assert all(a and b for a, b in CAUSES.values())


def test_to_dict_is_strict_json():
    r = find_nonfinite(lambda x: fg.sum(jnp.where(x > 0, fg.log(x), 0.0)),
                       jnp.array([1.0, 0.0]))
    d = json.loads(json.dumps(r.to_dict(), allow_nan=False))
    assert d["phase"] == "backward" and d["index"] == 1 and d["values"]["out"] == "-inf"
    assert d["message"] == str(r) and d["cause"] == "masked_branch"


def test_scan_iteration_is_named_as_explain_names_it():
    def loss(w, xs):
        def body(h, x):
            return fg.tanh(fg.add(fg.mul(w, h), fg.log(x))), None

        h, _ = jax.lax.scan(body, jnp.zeros(2), xs)
        return fg.sum(h)

    xs = jnp.array([[1.0, 1.0], [1.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    r = find_nonfinite(loss, jnp.float32(0.5), xs)
    # tanh(-inf) = -1 masks log(0) forward; backward, log's rule gives 0/0 = nan
    assert (r.phase, r.op, r.node, r.cause) == ("backward", "log", "log[2]", "masked_branch")
    assert r.index == 1 and r.input == "xs" and r.masked
    assert "log[2]" in fg.explain(loss, jnp.float32(0.5), xs)
    r = find_nonfinite(lambda w, xs: loss(w, xs) * 0.0 + fg.sum(fg.log(xs)), 0.5, xs)
    assert (r.phase, r.node, r.cause, r.index) == ("forward", "log[2]", "log_at_zero", 1)


def test_flow_reexports_the_same_objects():
    assert flow.find_nonfinite is find_nonfinite and flow.NonFinite is NonFinite


def test_bad_input_errors_name_find_nonfinite():
    with pytest.raises(ValueError, match="find_nonfinite: <lambda> must return a scalar"):
        find_nonfinite(lambda x: fg.log(x), jnp.array([1.0, 0.0]))
    with pytest.raises(TypeError, match="find_nonfinite: argument 'x' must be an array"):
        find_nonfinite(lambda x: fg.sum(x), "not an array")
