"""`funcgrad check` on the command line."""

from __future__ import annotations

import json

import funcgrad.testing as testing
from funcgrad.cli import main


def test_check_prints_table_and_passes(capsys, tmp_path):
    out_json = tmp_path / "check.json"
    rc = main(["check", "--primitive", "sigmoid", "--primitive", "mul", "--json",
               str(out_json)])
    out = capsys.readouterr().out
    assert rc == 0
    for word in ("primitive", "derivative", "saved (rule)", "saved (jax autodiff)",
                 "max err f32", "max err f64", "sigmoid", "mul", "PASS", "2 passed, 0 failed"):
        assert word in out
    data = json.loads(out_json.read_text())
    assert [d["name"] for d in data] == ["sigmoid", "mul"]
    assert all(d["ok"] for d in data)


def test_check_exits_nonzero_on_a_failing_rule(capsys, monkeypatch):
    from funcgrad.primitives import activations

    fwd, bwd = activations._tanh_fwd, activations._tanh_bwd
    activations._tanh.defvjp(fwd, lambda y, g: (g * (1 - y),))  # wrong: 1 - y, not 1 - y^2
    try:
        rc = main(["check", "--primitive", "tanh", "--quick"])
    finally:
        activations._tanh.defvjp(fwd, bwd)
    out = capsys.readouterr().out
    assert rc == 1
    assert "FAIL" in out and "tanh FAILED" in out and "element" in out


def test_check_unknown_primitive_is_a_clear_error(capsys):
    rc = main(["check", "--primitive", "nope"])
    assert rc == 2
    assert "unknown primitive" in capsys.readouterr().err


def test_check_registry_reports_residuals():
    (r,) = testing.check_registry(["relu"], all_shapes=False, second_order=False)
    assert r.ok and r.rule_residuals[0] == 1
    assert r.autodiff_residuals[0] >= 1
