"""The lesson's worked examples in examples/: each runs, and its numbers are the lesson's."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import EXAMPLES, load_example


def test_computational_graph():
    n = load_example("computational_graph").main(verbose=False)
    assert n == {"s": 5.0, "z": 20.0, "dz/ds": 4.0, "dz/dx": 4.0, "dz/dy": 4.0, "dz/dw": 5.0}


def test_backprop_step_by_step_lesson_numbers():
    n = load_example("backprop_step_by_step").main(verbose=False)
    # The lesson's numbers, exactly (all exact in float32).
    assert n["y"] == 6.0
    assert n["L"] == 16.0
    assert n["dL/dy"] == 8.0
    assert n["dy/dw"] == 2.0
    assert n["dL/dw"] == 16.0
    assert n["dL/dx"] == 24.0
    # 3 - 0.1 * 16 in float32 is 1.4 up to rounding.
    assert n["w_new"] == pytest.approx(1.4, abs=1e-6)
    assert n["w_new (graph)"] == n["w_new"]


def test_pytorch_equivalent():
    n = load_example("pytorch_equivalent").main(verbose=False)
    assert n["loss"] == 4.0
    assert n["dloss/dw"] == 8.0 and n["dloss/dx"] == 12.0
    assert n["graph dloss/dw"] == 8.0 and n["graph dloss/dx"] == 12.0


def test_chain_rule_product_equals_jax_grad():
    n = load_example("chain_rule").main(verbose=False)
    assert n["x"] == 1.0 and n["y"] == 1.0 and n["dy/dx"] == 2.0
    assert n["z"] == pytest.approx(1.0 / (1.0 + np.exp(-1.0)), rel=1e-6)
    assert n["dz/dy"] == pytest.approx(n["z"] * (1.0 - n["z"]), rel=1e-6)
    for row in [n, *n["points"]]:
        assert row["dz/dy * dy/dx"] == pytest.approx(row["jax.grad (funcgrad)"], rel=1e-6)
        assert row["jax.grad (funcgrad)"] == pytest.approx(row["jax.grad (jnp reference)"],
                                                           rel=1e-5)
    assert len(n["points"]) >= 3


def test_activation_derivatives_agree():
    mod = load_example("activation_derivatives")
    r = mod.main(verbose=False)
    assert r["plot"] is None
    for name in ("relu", "sigmoid", "tanh"):
        d = r[name]
        np.testing.assert_allclose(d["funcgrad"], d["textbook"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(d["funcgrad"], d["jax.grad"], rtol=1e-5, atol=1e-6)
    relu = dict(zip(r["relu"]["x"], r["relu"]["funcgrad"], strict=True))
    assert relu[0.0] == 0.0 and relu[0.5] == 1.0 and relu[-1.0] == 0.0  # relu'(0) = 0
    sig = dict(zip(r["sigmoid"]["x"], r["sigmoid"]["funcgrad"], strict=True))
    assert sig[0.0] == 0.25
    tanh = dict(zip(r["tanh"]["x"], r["tanh"]["funcgrad"], strict=True))
    assert tanh[0.0] == 1.0


def test_activation_plot(tmp_path):
    pytest.importorskip("matplotlib")
    r = load_example("activation_derivatives").main(out=tmp_path, verbose=False)
    png = Path(r["plot"])
    assert png.parent == tmp_path and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_activation_plot_without_matplotlib(tmp_path, monkeypatch, capsys):
    mod = load_example("activation_derivatives")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    assert mod.plot(tmp_path) is None
    assert "matplotlib is not installed" in capsys.readouterr().out
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("name,expected", [
    ("computational_graph", ["z = 20", "dz/dw = 5", "digraph z_fn"]),
    ("backprop_step_by_step", ["y = 6", "L = 16", "dL/dy = 2×(y-target) = 2×(6-2) = 8",
                               "dy/dw = x = 2", "= 8 × 2 = 16", "w_new", "= 1.4"]),
    ("pytorch_equivalent", ["Gradient of loss w.r.t. w: 8", "Gradient of loss w.r.t. x: 12"]),
    ("chain_rule", ["dz/dx = dz/dy × dy/dx = 0.196612 × 2 = 0.393224"]),
    ("activation_derivatives", ["relu: f'(x) = 1 if x > 0 else 0", "tanh"]),
])
def test_example_runs_as_a_script(name, expected, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", [str(EXAMPLES / f"{name}.py")])
    runpy.run_path(str(EXAMPLES / f"{name}.py"), run_name="__main__")
    out = capsys.readouterr().out
    for piece in expected:
        assert piece in out, piece
