"""The one jaxpr walker (funcgrad._jaxpr): nested calls, custom rules, literals, dropped
variables, recognition of primitives by their ``funcgrad.<name>`` scope only."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcgrad as fg
from funcgrad import _jaxpr
from funcgrad.explain import explain
from funcgrad.registry import PRIMITIVES


@jax.custom_vjp
def _twice(x):
    return 2.0 * x


_twice.defvjp(lambda x: (2.0 * x, None), lambda _, g: (2.0 * g,))


def foo(x):
    """A primitive made by hand, tagged as the interface says: only the call is scoped."""
    x = jnp.asarray(x, jnp.float32)
    with jax.named_scope("funcgrad.foo"):
        return _twice(x)


@jax.custom_jvp
def softclip(x):
    return jnp.tanh(x)


softclip.defjvp(lambda p, t: (jnp.tanh(p[0]), (1 - jnp.tanh(p[0]) ** 2) * t[0]))


class Log(_jaxpr.Visitor):
    """Evaluates and records every equation and constant it meets."""

    def __init__(self):
        self.eqns: list[_jaxpr.Equation] = []
        self.consts: list[tuple[float, bool]] = []

    def const(self, value, literal):
        self.consts.append((np.asarray(value).tolist(), literal))
        return value

    def equation(self, eqn, invals):
        self.eqns.append(eqn)
        return eqn.bind(*invals)


def _walk(fn, *args):
    closed = jax.make_jaxpr(fn)(*args)
    log = Log()
    return _jaxpr.walk(closed, list(args), log), log


def model(x):
    with jax.named_scope("outer"):
        y = jax.jit(lambda z: foo(z) + 1.0)(x)
    z = jax.checkpoint(lambda t: t * 3.0)(x)
    return jnp.sum(softclip(y)) + jnp.sum(z)


X = jnp.array([0.5, -1.0, 2.0])


def test_nested_calls_are_inlined_and_scopes_carried():
    outs, log = _walk(model, X)
    np.testing.assert_allclose(outs[0], model(X), rtol=1e-6)
    names = [e.primitive for e in log.eqns]
    assert not set(names) & _jaxpr.INLINE_PRIMITIVES  # jit and checkpoint bodies inlined
    (tagged,) = [e for e in log.eqns if e.funcgrad]
    assert (tagged.funcgrad, tagged.name, tagged.scope) == ("foo", "foo", "outer")
    assert tagged.custom_vjp and tagged.num_consts == 0
    add = next(e for e in log.eqns if e.primitive == "add")
    assert add.scope == "outer" and add.funcgrad is None


def test_custom_jvp_is_one_equation_and_differentiates():
    _, log = _walk(model, X)
    (cj,) = [e for e in log.eqns if e.primitive in _jaxpr.CUSTOM_JVP_PRIMITIVES]
    assert cj.name == "softclip" and cj.funcgrad is None
    assert "tanh" not in [e.primitive for e in log.eqns]  # its body stays inside the call
    closed = jax.make_jaxpr(model)(X)
    grad = jax.grad(lambda x: _jaxpr.walk(closed, [x], _jaxpr.Visitor())[0])(X)
    np.testing.assert_allclose(grad, jax.grad(model)(X), rtol=1e-6)


def test_literals_and_closed_over_constants_reach_the_visitor():
    w = np.array([1.0, 2.0, 3.0], np.float32)
    _, log = _walk(lambda x: jnp.sum(x * w) * 4.0, X)
    assert (4.0, True) in log.consts
    assert ([1.0, 2.0, 3.0], False) in log.consts


def test_dropped_variables():
    def f(x):
        values, _ = jax.lax.top_k(x, 2)  # the indices output is a dropped variable
        _, b = jax.jit(lambda x: (x * 2.0, x * 3.0))(x)  # so is a jit body's output
        return jnp.sum(values) + jnp.sum(b)

    outs, log = _walk(f, X)
    np.testing.assert_allclose(outs[0], f(X), rtol=1e-6)
    assert "top_k" in [e.primitive for e in log.eqns]


def test_wrong_number_of_arguments_is_named():
    closed = jax.make_jaxpr(model)(X)
    with pytest.raises(ValueError, match=r"walk: argument 'args' must hold 1 values.*got 2"):
        _jaxpr.walk(closed, [X, X], _jaxpr.Visitor())


def test_call_parameter_names_of_this_jax_are_known():
    """Fails loudly if a JAX release renames a call primitive or its body's parameter."""
    closed = jax.make_jaxpr(model)(X)
    seen = {}

    def scan(jaxpr):
        for e in jaxpr.eqns:
            seen[e.primitive.name] = set(e.params)
            sub = _jaxpr.sub_jaxpr(e.params)
            if sub is not None:
                scan(sub[0])

    scan(closed.jaxpr)
    calls = {n for n in seen if n in _jaxpr.INLINE_PRIMITIVES
             | _jaxpr.CUSTOM_VJP_PRIMITIVES | _jaxpr.CUSTOM_JVP_PRIMITIVES}
    assert len(calls) == 4, sorted(seen)  # jit, checkpoint, custom_vjp, custom_jvp
    for name in calls:
        assert seen[name] & set(_jaxpr.CALL_JAXPR_KEYS), (name, sorted(seen[name]))


def test_recognition_is_by_scope_not_by_source_file():
    # A custom_vjp written here, outside the package, tagged funcgrad.mul: it is 'mul',
    # with the registry's formula. An untagged custom_vjp is not a primitive.
    def fake_mul(x):
        with jax.named_scope("funcgrad.mul"):
            return _twice(x)

    g = explain(lambda x: fg.sum(fake_mul(x)), X)
    assert (g.nodes[0].op, g.nodes[0].primitive) == ("mul", True)
    assert g.nodes[0].formula == PRIMITIVES["mul"].formula
    g = explain(lambda x: fg.sum(_twice(x)), X)
    assert (g.nodes[0].op, g.nodes[0].primitive) == ("twice", False)
    assert g.nodes[0].formula.startswith("custom VJP rule")


def test_user_primitive_in_graph_with_its_registry_formula():
    cube = fg.primitive(
        name="cube_test_jaxpr",
        fwd=lambda x: (x ** 3, (x,)),
        bwd=lambda res, g: (3 * res[0] ** 2 * g,),
        formula="d(x^3)/dx = 3x^2",
        replace=True,
    )
    g = explain(lambda x: fg.sum(cube(x)), X)
    node = g.nodes[0]
    assert (node.op, node.primitive) == ("cube_test_jaxpr", True)
    assert node.formula == "d(x^3)/dx = 3x^2" == PRIMITIVES["cube_test_jaxpr"].formula
    np.testing.assert_allclose(g["x"].grad, 3 * X ** 2, rtol=1e-6)


_VENDORED = """
import jax.numpy as jnp, sys
import vendored_fg as fg
assert "funcgrad" not in sys.modules, "the copy must not import the original"
g = fg.explain(lambda x, w: fg.sum(fg.relu(fg.mul(x, w))), jnp.ones(2), jnp.ones(2))
print([(n.op, n.primitive) for n in g.nodes])
print(fg.flow.saturation(lambda x: fg.tanh(x), jnp.array([0.0, 9.0])).tolist())
"""


def test_vendored_copy_is_still_recognised(tmp_path):
    """A copy of the package under another name (a vendored tree) is understood."""
    src = Path(fg.__file__).parent
    shutil.copytree(src, tmp_path / "vendored_fg",
                    ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", _VENDORED], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "[('mul', True), ('relu', True), ('sum', True)]", "[0.5]"]


def test_walker_does_not_import_jax_extend_at_import():
    code = ("import sys, funcgrad._jaxpr, funcgrad.explain; "
            "print('jax.extend' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"
