"""Cheap to start: ``funcgrad --help`` without JAX, ``import funcgrad`` within budget."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

import pytest

COMMANDS = [[], ["check"], ["explain"], ["train"], ["flow"]]

_HELP = """
import json, sys, time
t0 = time.perf_counter()
from funcgrad.cli import main
try:
    main({argv!r} + ["--help"])
except SystemExit as exc:
    code = exc.code
print(json.dumps({{"seconds": time.perf_counter() - t0, "code": code,
                  "heavy": sorted(m for m in ("jax", "jaxlib", "numpy", "optax", "orbax",
                                              "matplotlib", "rich") if m in sys.modules)}}))
"""


def _run(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.parametrize("argv", COMMANDS, ids=lambda a: " ".join(a) or "funcgrad")
def test_help_answers_without_importing_jax(argv):
    result = _run(_HELP.format(argv=argv))
    assert result["code"] == 0
    assert result["heavy"] == [], f"funcgrad {' '.join(argv)} --help imported {result['heavy']}"
    assert result["seconds"] < 0.5


# CPU time of this process: the machine is shared, so wall time would measure the others
_BUDGET = """
import json, time
import jax, jax.numpy
t0 = time.process_time()
import funcgrad
t1 = time.process_time()
funcgrad.relu, funcgrad.PRIMITIVES  # the part a user touches first
print(json.dumps({"import": (t1 - t0) * 1e3, "touched": (time.process_time() - t0) * 1e3}))
"""


@pytest.fixture(scope="module")
def budget_runs():
    return [_run(_BUDGET) for _ in range(3)]


def test_import_funcgrad_adds_at_most_50_ms_to_import_jax(budget_runs):
    assert statistics.median(r["import"] for r in budget_runs) <= 50.0, budget_runs


def test_primitives_and_registry_load_within_the_same_budget(budget_runs):
    assert statistics.median(r["touched"] for r in budget_runs) <= 50.0, budget_runs


def test_import_funcgrad_alone_loads_nothing_heavy():
    result = _run("import json, sys, funcgrad; print(json.dumps({'heavy': sorted(m for m in "
                  "('jax', 'optax', 'orbax', 'matplotlib', 'rich', 'jax.extend') "
                  "if m in sys.modules)}))")
    assert result["heavy"] == []


def test_lazy_names_resolve_and_dir_is_complete():
    import funcgrad as fg

    assert set(fg.__all__) <= set(dir(fg))
    assert fg.fit is fg.train.fit and fg.TrainState is fg.train.TrainState
    assert fg.relu is fg.primitives.relu and fg.Graph is fg.explain.Graph
    assert set(fg.primitives.__all__) <= set(fg.__all__)
    assert set(fg.__all__) == {*fg._NAMES, *fg._SUBMODULES, "__version__"} - {"primitives"}
    assert set(fg._SUBMODULES) <= set(dir(fg))
    assert not {"importlib", "Any", "TYPE_CHECKING", "annotations"} & set(dir(fg))
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        fg.nonexistent  # noqa: B018


def test_cli_choices_agree_with_the_modules_they_name():
    from funcgrad import nn
    from funcgrad.cli import _args
    from funcgrad.explain import LESSON_EXAMPLES

    assert set(_args.ACTIVATIONS) == set(nn.ACTIVATIONS)
    assert set(_args.INITIALIZERS) == set(nn.INITIALIZERS)
    assert set(_args.EXAMPLES) == set(LESSON_EXAMPLES)
