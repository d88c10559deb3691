"""The three 'write your own primitive' examples: they run, pass the battery, show in explain."""

from __future__ import annotations

import pathlib

import jax.numpy as jnp
import numpy as np
import pytest

from funcgrad.cli.check import _load, import_rules

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


def _example(name):
    return _load(str(EXAMPLES / f"{name}.py"))


def test_logsumexp_is_finite_where_the_textbook_form_overflows(capsys):
    n = _example("own_logsumexp").main()
    assert n["textbook"] == np.inf and np.isfinite(n["stable"])
    assert n["stable"] == pytest.approx(103.40761, rel=1e-6)
    np.testing.assert_allclose(np.sum(n["grad"]), 1.0, rtol=1e-6)
    assert n["ok"]
    out = capsys.readouterr().out
    assert "edge points: ok x + p, p = 100, 300, -300" in out
    assert "[own_logsumexp]" in out  # in the explain graph


def test_straight_through_passes_the_declared_gradient(capsys):
    n = _example("own_straight_through").main()
    np.testing.assert_array_equal(n["grad"], [0.0, 2.0, 2.0, 2.0, 2.0, 0.0])
    assert n["ok"]
    out = capsys.readouterr().out
    assert "surrogate gradient declared by the reference" in out
    assert "kinks: ok declared at x = -1, 0, 1" in out and "[own_sign_ste]" in out


def test_affine_takes_a_dict_of_parameters(capsys):
    n = _example("own_affine").main()
    np.testing.assert_array_equal(n["grads"]["w"], jnp.array([[17.0], [7.0]]))
    np.testing.assert_array_equal(n["grads"]["b"], [12.0])
    assert n["ok"]
    assert "[own_affine]" in capsys.readouterr().out


def test_loading_an_example_twice_registers_it_once():
    assert import_rules(str(EXAMPLES / "own_affine.py")) == ["own_affine"]
    assert _example("own_affine") is _example("own_affine")
