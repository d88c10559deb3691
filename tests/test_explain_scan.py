"""explain through lax.scan: per-iteration nodes, the summary node, expand, the walker's
unrolling seen by every visitor, the RNN example (backprop through time), and the Graph's
HTML methods."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcgrad as fg
from conftest import load_example
from funcgrad import _jaxpr

RNN = load_example("rnn_through_time")


def _scan_loss(w, xs, h0):
    def body(h, x):
        h = fg.tanh(fg.add(fg.matmul(w, h), x))
        return h, fg.sum(h)

    h, ys = jax.lax.scan(body, h0, xs, reverse=True)
    return fg.sum(h) + fg.sum(fg.mul(ys, jnp.arange(3.0)))


ARGS = (jnp.array([[0.5, -0.2], [0.3, 0.4]]), jnp.arange(6.0).reshape(3, 2) / 6,
        jnp.array([0.1, -0.3]))


def test_walker_unrolls_for_every_visitor_and_evaluates_the_same():
    seen = []

    class Ops(_jaxpr.Visitor):
        def equation(self, eqn, invals):
            seen.append((eqn.name, eqn.iteration, eqn.label))
            return eqn.bind(*invals)

    closed = jax.make_jaxpr(_scan_loss)(*ARGS)
    (out,) = _jaxpr.walk(closed, list(ARGS), Ops())
    np.testing.assert_allclose(out, _scan_loss(*ARGS), rtol=1e-6)
    # reverse=True: iterations run 2, 1, 0; one carry label per iteration
    assert [it for n, it, _ in seen if n == "tanh"] == [(2,), (1,), (0,)]
    assert [lab for n, _, lab in seen if n == "scan_carry"] == ["h[2]", "h[1]", "h[0]"]
    assert [n for n, _, _ in seen].count("scan_stack") == 1
    seen.clear()
    (out2,) = _jaxpr.walk(closed, list(ARGS), Ops(), unroll_limit=2)
    assert [n for n, _, _ in seen][0] == "scan" and float(out2) == pytest.approx(float(out))


def test_unrolled_scan_nodes_have_values_and_gradients():
    g = fg.explain(_scan_loss, *ARGS)
    names = [n.name for n in g.nodes]
    assert {"h[0]", "h[1]", "h[2]", "matmul[0]", "add[2]", "sum[1]"} <= set(names)
    assert not any(n.op == "scan" for n in g.nodes)
    # the carry leaving iteration t feeds iteration t-1 (reverse scan)
    assert "h[2]" in g["matmul[1]"].input_names and "h0" in g["matmul[2]"].input_names
    grads = jax.grad(_scan_loss, argnums=(0, 1, 2))(*ARGS)
    for name, want in zip(("w", "xs", "h0"), grads, strict=True):
        np.testing.assert_allclose(g[name].grad, want, rtol=1e-5, atol=1e-7)
    h1 = fg.tanh(fg.add(fg.matmul(ARGS[0], g["h[2]"].value), ARGS[1][1]))
    np.testing.assert_allclose(g["h[1]"].value, h1, rtol=1e-6)
    # dL/dh[1]: through iteration 0 to the final carry, plus ys[1] (weight 1) and ys[0]
    def rest(h):
        h0 = fg.tanh(fg.add(fg.matmul(ARGS[0], h), ARGS[1][0]))
        return fg.sum(h0) + fg.sum(h) * 1.0 + fg.sum(h0) * 0.0
    np.testing.assert_allclose(g["h[1]"].grad, jax.grad(rest)(g["h[1]"].value), rtol=1e-5)


def test_long_scan_is_one_summary_node_that_expands():
    g = fg.explain(_scan_loss, *ARGS, unroll_limit=2)
    (scan,) = [n for n in g.nodes if n.op == "scan"]
    assert scan.length == 3 and "3 iterations" in scan.formula
    assert g.unroll_limit == 2
    full = g.expand(scan.name)
    assert full.unroll_limit == 3 and "h[0]" in full
    np.testing.assert_allclose(full["w"].grad, g["w"].grad, rtol=1e-6)
    assert [n.name for n in g.expand().nodes] == [n.name for n in full.nodes]
    with pytest.raises(ValueError, match="not a scan node"):
        g.expand("L")
    with pytest.raises(ValueError, match="collapsed"):
        g.collapse().expand()
    with pytest.raises(ValueError, match="explain: argument 'unroll_limit'"):
        fg.explain(_scan_loss, *ARGS, unroll_limit=-1)


def test_rnn_example_vanishes_through_time():
    norms = RNN.main(verbose=False)
    assert len(norms) == RNN.STEPS
    assert all(a < b for a, b in zip(norms, norms[1:], strict=False))
    assert norms[-1] / norms[0] > 1e4


def test_rnn_gradients_equal_jax_grad_in_float64():
    with jax.enable_x64(True):
        p = RNN.init(jax.random.PRNGKey(0), dtype=jnp.float64)
        norms = RNN.gradient_norms(p)
        g = fg.explain(RNN.rnn_loss, p["W"], p["U"], p["xs"], p["h0"], p["target"])
        assert g["h[3]"].value.dtype == jnp.float64

        def tail(h, t):  # the loss as a function of h_t: steps t+1 .. STEPS-1, plain jnp
            for s in range(t + 1, RNN.STEPS):
                h = jnp.tanh(p["W"] @ h + p["U"] @ p["xs"][s])
            return jnp.sum((h - p["target"]) ** 2)

        h = p["h0"]
        for t in range(RNN.STEPS):
            h = jnp.tanh(p["W"] @ h + p["U"] @ p["xs"][t])
            want = jax.grad(tail)(h, t)
            np.testing.assert_allclose(g[f"h[{t}]"].grad, want, rtol=1e-6, atol=0)
            assert norms[t] == pytest.approx(float(jnp.linalg.norm(want)), rel=1e-6)


def test_graph_html_methods():
    g = fg.explain.lesson_graph()
    page = g.to_html()
    assert "<svg" in page or "<script" in page
    frame = g._repr_html_()
    assert frame.startswith("<iframe") and "srcdoc" in frame


def test_saturation_capture_sees_every_iteration_of_a_short_scan():
    from funcgrad import flow

    p = RNN.init(jax.random.PRNGKey(1))
    out, calls = flow.capture(RNN.rnn_loss, p["W"], p["U"], p["xs"], p["h0"], p["target"])
    assert [c.op for c in calls] == ["tanh"] * RNN.STEPS
    assert float(out) == pytest.approx(float(RNN.rnn_loss(p["W"], p["U"], p["xs"], p["h0"],
                                                          p["target"])), rel=1e-6)
