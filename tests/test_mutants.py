"""Mutation test: every planted mutant of a rule is named by the checker.

Each mutant is a copy of a built-in rule, registered under a new name with
``funcgrad.primitive`` (the same record fields as the original: reference, sample shapes,
kinks, edge points), with one defect planted. The real battery (``check_primitive``, and
``funcgrad check`` for two of them) must fail the row that names the defect. Each case runs
only the checks needed to catch it, to stay fast.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import pytest

import funcgrad as fg
from funcgrad import registry, testing
from funcgrad.cli import main


@pytest.fixture
def plant():
    planted = []

    def make(base, name, fwd, bwd, **over):
        rec = fg.PRIMITIVES[base]
        kw = dict(reference=rec.reference, formula=rec.formula + " (mutant)",
                  sample_shapes=rec.sample_shapes[:2], kink_points=rec.kink_points,
                  edge_points=rec.edge_points, unbroadcast=rec.broadcasting,
                  domain={a.name: a.domain for a in rec.args}, replace=True)
        kw.update(over)
        prim = fg.primitive(name=f"mutant_{name}", fwd=fwd, bwd=bwd, **kw)
        planted.append(f"mutant_{name}")
        return prim

    yield make
    for name in planted:
        registry.unregister(name)


def _relu_fwd(x):
    return jnp.maximum(x, 0), x


def _sigmoid_fwd(x):
    y = jax.nn.sigmoid(x)
    return y, y


def _mean_fwd(x):
    return jnp.mean(x), x


def _mul_fwd(x, y):
    return x * y, (x, y)


def _matmul_fwd(a, b):
    return a @ b, (a, b)


def _exp_fwd(x):
    y = jnp.exp(x)
    return y, y


def _square_fwd(x):
    return x * x, x


def _clip_fwd(x):
    return jnp.clip(x, -1.0, 1.0), x


def _log_fwd(x):
    return jnp.log(x), x


MUTANTS = {
    # name: (base rule, fwd, bwd, record overrides, checks to run, row that must fail)
    "relu_kink": ("relu", _relu_fwd, lambda x, g: (g * (x >= 0),), {}, ["kinks"], "kinks"),
    "leaky_relu_kink": ("leaky_relu", _relu_fwd,
                        lambda x, g: (jnp.where(x >= 0, g, 0.1 * g),),
                        {"reference": lambda x: jax.nn.leaky_relu(x, 0.1), "static": ()},
                        ["kinks"], "kinks"),
    "sigmoid_textbook": ("sigmoid", _sigmoid_fwd, lambda y, g: (g * y * (1 - y),), {},
                         ["edge points"], "edge points"),
    "mean_leaks_float32": ("mean", _mean_fwd,
                           lambda x, g: (jnp.broadcast_to(g.astype(jnp.float32) / x.size,
                                                          x.shape),),
                           {"reference": jnp.mean, "static": ()}, ["dtypes"], "dtypes"),
    "mul_no_unbroadcast": ("mul", _mul_fwd, lambda r, g: (g * r[1], g * r[0]),
                           {"unbroadcast": False, "sample_shapes": ((( 3, 4), ()),)},
                           ["reference"], "reference"),
    "matmul_wrong_transpose": ("matmul", _matmul_fwd, lambda r, g: (g @ r[1], r[0].T @ g),
                               {}, ["reference"], "reference"),
    "exp_doubled": ("exp", _exp_fwd, lambda y, g: (2 * g * y,), {}, ["reference"],
                    "reference"),
    "square_dtype_leak": ("square", _square_fwd,
                          lambda x, g: ((2 * x * g).astype(jnp.float32),), {}, ["dtypes"],
                          "dtypes"),
    "clip_kink_flip": ("relu", _clip_fwd,
                       lambda x, g: (g * ((x >= -1) & (x <= 1)),),
                       {"reference": lambda x: jnp.clip(x, -1.0, 1.0),
                        "kink_points": ((1.0, 0.0), (-1.0, 0.0))}, ["kinks"], "kinks"),
    "log_wrong_at_0": ("log", _log_fwd, lambda x, g: (jnp.where(x == 0, 0.0, g / x),),
                       {"edge_points": (0.0, 1e-3)}, ["edge points"], "edge points"),
    "relu_primal_plus_one": ("relu", lambda x: (jnp.maximum(x, 0) + 1, x),
                             lambda x, g: (g * (x > 0),), {}, ["primal"], "primal"),
}


@pytest.mark.parametrize("name", list(MUTANTS))
def test_checker_names_the_planted_mutant(plant, name):
    base, fwd, bwd, over, checks, row = MUTANTS[name]
    prim = plant(base, name, fwd, bwd, **over)
    report = testing.check_primitive(prim.record, checks=checks)
    failed = {r.check: r.detail for r in report.rows if not r.ok}
    assert row in failed, str(report)
    assert failed[row]  # names the worst element or the error


def test_the_original_rules_pass_the_same_checks():
    """The same checks pass on the unmutated built-ins (so the mutants, not noise, fail)."""
    for base, checks in (("relu", ["kinks", "primal"]), ("sigmoid", ["edge points"]),
                         ("mean", ["dtypes"]), ("mul", ["reference"]),
                         ("matmul", ["reference"]), ("log", ["edge points"])):
        report = testing.check_primitive(fg.PRIMITIVES[base], checks=checks)
        assert report.ok, str(report)


def test_funcgrad_check_reports_crashing_and_wrong_rules_as_rows(plant, capsys):
    for name in ("matmul_wrong_transpose", "exp_doubled"):
        base, fwd, bwd, over, _, _ = MUTANTS[name]
        plant(base, name, fwd, bwd, **over)
    rc = main(["check", "mutant_matmul_wrong_transpose", "mutant_exp_doubled", "--quick"])
    captured = capsys.readouterr()
    assert rc == 1
    out = captured.out
    assert "mutant_matmul_wrong_transpose FAILED" in out and "crashed:" in out
    assert "mutant_exp_doubled FAILED" in out and "element" in out
    assert re.search(r"\[\d/2\] mutant_matmul_wrong_transpose: FAIL", captured.err)
