"""`funcgrad check` on the command line: rows, selection, --module, planted errors."""

from __future__ import annotations

import json
import pathlib

import pytest

from funcgrad.cli import main

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_check_prints_one_row_per_check_and_passes(capsys, tmp_path):
    out_json = tmp_path / "check.json"
    rc = main(["check", "sigmoid", "--primitive", "mul", "--quick", "--json", str(out_json)])
    captured = capsys.readouterr()
    assert rc == 0, captured.out
    for word in ("primitive", "check", "status", "detail", "sigmoid", "mul", "edge points",
                 "dtypes", "finite differences", "PASS", "2 primitive(s)", "0 failed"):
        assert word in captured.out
    assert "/2] sigmoid: PASS" in captured.err  # progress, one line per primitive
    data = json.loads(out_json.read_text())
    assert [d["name"] for d in data] == ["sigmoid", "mul"]
    assert all(d["ok"] for d in data)
    assert {r["check"] for r in data[0]["rows"]} >= {"primal", "reference", "kinks"}


def test_check_exits_1_and_names_the_element_on_a_failing_rule(capsys):
    from funcgrad.primitives import activations

    prim = activations.tanh.record if hasattr(activations.tanh, "record") else None
    assert prim is not None
    import funcgrad as fg

    wrong = fg.primitive(name="tanh_wrong_cli", fwd=lambda x: (jnp_tanh(x), jnp_tanh(x)),
                         bwd=lambda y, g: (g * (1 - y),), formula="wrong: 1 - y",
                         reference=prim.reference, replace=True)
    try:
        rc = main(["check", "tanh_wrong_cli", "--quick"])
    finally:
        from funcgrad import registry

        registry.unregister(wrong.record.name)
    out = capsys.readouterr().out
    assert rc == 1
    assert "FAIL" in out and "tanh_wrong_cli FAILED" in out and "element" in out


def jnp_tanh(x):
    import jax.numpy as jnp

    return jnp.tanh(x)


def test_check_unknown_primitive_is_a_clear_error(capsys):
    rc = main(["check", "nope"])
    assert rc == 2
    # the message itself, not a KeyError's quoted repr of it
    assert capsys.readouterr().err.startswith(
        "funcgrad check: error: check_registry: unknown primitive(s) ['nope']; known: [")


def test_check_module_that_does_not_exist_is_a_clear_error(capsys, tmp_path):
    assert main(["check", "--module", str(tmp_path / "missing.py")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["check", "--module", "no_such_module_xyz"]) == 2
    assert "could not be imported" in capsys.readouterr().err


def test_check_module_with_a_planted_error_fails_with_the_worst_element(capsys, tmp_path):
    src = (ROOT / "examples" / "own_affine.py").read_text()
    planted = src.replace('"b": jnp.sum(g2, axis=0)', '"b": 2 * jnp.sum(g2, axis=0)')
    planted = planted.replace('name="own_affine"', 'name="own_affine_planted"')
    assert planted.count("own_affine_planted") == 1 and "2 * jnp.sum" in planted
    path = tmp_path / "planted_rules.py"
    path.write_text(planted)
    try:
        rc = main(["check", "--module", str(path), "--quick"])
    finally:
        from funcgrad import registry

        registry.unregister("own_affine_planted")
    out = capsys.readouterr().out
    assert rc == 1
    assert "own_affine_planted FAILED" in out
    assert "argument 'params'['b']" in out and "element (" in out


@pytest.mark.parametrize("spec", ["examples.own_straight_through", "examples/own_affine.py"])
def test_check_module_by_dotted_name_or_path(capsys, monkeypatch, spec):
    monkeypatch.chdir(ROOT)
    rc = main(["check", "--module", spec, "--quick"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "own_sign_ste" in out or "own_affine" in out
