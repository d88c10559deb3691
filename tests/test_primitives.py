"""Registry-generated checks of every primitive's hand-written VJP rule.

Checks follow DESIGN.md: (a) agreement with jax.vjp of the reference over a shape grid
with broadcast pairs, (b) float64 finite differences, (c) the custom rule is really the
one used, (d) transformations, (e) dtypes, (f) edge points.
"""

from __future__ import annotations

import ast
import pathlib
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcgrad as fg
from conftest import assert_close, builtin_names, compiled_vjps, float_positions, mismatches
from funcgrad.registry import PRIMITIVES, sample_args, unregister
from funcgrad.testing import TOLERANCES, check_vjp

NAMES = builtin_names()
CASES = [(n, s) for n in NAMES for s in PRIMITIVES[n].sample_shapes]
KEY = jax.random.PRNGKey(42)


def _assert_close(actual, expected, dtype_name, what):
    tol = TOLERANCES[dtype_name]
    assert_close(actual, expected, tol.rtol, tol.atol, what)


# --------------------------------------------------------------------------------- (a)
@pytest.mark.parametrize("name,shapes", CASES, ids=[f"{n}-{s}" for n, s in CASES])
def test_a_matches_reference_vjp(name, shapes):
    prim = PRIMITIVES[name]
    args = sample_args(prim, KEY, shapes)
    out_shape = jax.eval_shape(prim.call_reference, *args).shape
    for k in range(2):  # random, non-uniform cotangents
        ct = jax.random.normal(jax.random.PRNGKey(k), out_shape) * 2.0 + 0.3
        out, out_ref, g, g_ref = compiled_vjps(name)(args, ct)
        _assert_close(out, out_ref, "float32", f"{name} forward")
        for j, i in enumerate(float_positions(prim)):
            assert g[j].shape == args[i].shape and g[j].dtype == args[i].dtype
            _assert_close(g[j], g_ref[j], "float32", f"{name} cotangent of {prim.args[i].name}")


# --------------------------------------------------------------------------------- (b)
@pytest.mark.parametrize("name", NAMES)
def test_b_finite_differences_float64(name):
    prim = PRIMITIVES[name]
    with jax.enable_x64(True):
        args = sample_args(prim, KEY, prim.sample_shapes[-1], jnp.float64)
        result = check_vjp(prim.call, prim.call_reference, *args,
                           argnames=[a.name for a in prim.args], num_cotangents=2)
    assert result.ok, str(result)
    fd = [c for c in result.comparisons if c.check == "finite_differences"]
    assert fd and fd[0].ok


# --------------------------------------------------------------------------------- (c)
def _jaxpr_primitive_names(jaxpr):
    names = []
    for eqn in jaxpr.eqns:
        names.append(eqn.primitive.name)
        for v in eqn.params.values():
            inner = getattr(v, "jaxpr", None)
            if inner is not None and hasattr(inner, "eqns"):
                names += _jaxpr_primitive_names(inner)
    return names


@pytest.mark.parametrize("name", NAMES)
def test_c_rule_is_a_custom_vjp(name):
    prim = PRIMITIVES[name]
    args = sample_args(prim, KEY)
    jaxpr = jax.make_jaxpr(prim.call)(*args).jaxpr
    assert any("custom_vjp" in n for n in _jaxpr_primitive_names(jaxpr))
    # tagged with its registry name, the only way tools recognise a primitive
    tags = [str(e.source_info.name_stack).split("/")[-1] for e in jaxpr.eqns
            if "custom_vjp" in e.primitive.name]
    assert tags == [f"funcgrad.{name}"]


def test_c_wrong_rule_changes_gradient_and_checker_names_element():
    """A deliberately transposed matmul cotangent is caught, with the element named."""

    @jax.custom_vjp
    def bad_matmul(a, b):
        return a @ b

    def fwd(a, b):
        return a @ b, (a, b)

    def bwd(res, g):
        a, b = res
        # wrong: uses b instead of b.T (shapes agree because b is square)
        return g @ b, a.T @ g

    bad_matmul.defvjp(fwd, bwd)
    a = jax.random.normal(jax.random.PRNGKey(0), (3, 3))
    b = jax.random.normal(jax.random.PRNGKey(1), (3, 3))
    good = jax.grad(lambda a: jnp.sum(fg.matmul(a, b) ** 2))(a)
    wrong = jax.grad(lambda a: jnp.sum(bad_matmul(a, b) ** 2))(a)
    assert not np.allclose(good, wrong)
    r = check_vjp(bad_matmul, jnp.matmul, a, b, argnames=["a", "b"])
    assert not r.ok
    assert r.worst.argname == "a" and r.worst.arg == 0
    assert len(r.worst.index) == 2
    assert r.worst.abs_err > r.worst.allowed
    assert "argument 'a'" in str(r)
    with pytest.raises(AssertionError, match=r"argument 'a' \(position 0\) element \(\d, \d\)"):
        fg.testing.assert_vjp_matches(bad_matmul, jnp.matmul, a, b, argnames=["a", "b"])


def test_c_rule_is_used_by_jax_grad():
    """A copy of tanh with a wrong bwd changes jax.grad: the registered rule is what runs."""
    x = jnp.array([0.5, -1.0, 2.0])
    before = jax.grad(lambda v: jnp.sum(fg.tanh(v)))(x)
    mutant = fg.tanh.variant(name="tanh_mutant_seven", bwd=lambda res, g: (g * 0 + 7.0,))
    try:
        after = jax.grad(lambda v: jnp.sum(mutant(v)))(x)
        assert "tanh_mutant_seven" in PRIMITIVES
    finally:
        unregister("tanh_mutant_seven")
    np.testing.assert_array_equal(after, 7.0)
    assert not np.allclose(before, after)
    np.testing.assert_allclose(jax.grad(lambda v: jnp.sum(fg.tanh(v)))(x), before)


# --------------------------------------------------------------------------------- (d)
def _loss_pair(prim, args):
    pos = float_positions(prim)

    def make(f):
        def loss(*d):
            a = list(args)
            for i, v in zip(pos, d, strict=True):
                a[i] = v
            out = f(*a)
            return jnp.sum(out * jnp.cos(out))  # non-uniform cotangent
        return loss

    return make(prim.call), make(prim.call_reference), [args[i] for i in pos]


def _transform_results(loss, diff, stacked_diff):
    """jit, checkpoint, vmap, scan and grad-of-grad of ``loss``, compiled as one program."""
    argnums = tuple(range(len(diff)))
    grad = jax.grad(loss, argnums)

    def all_transforms(diff, stacked_diff):
        out = {"grad": grad(*diff)}
        out["checkpoint"] = jax.grad(jax.checkpoint(loss), argnums)(*diff)
        out["vmap"] = jax.vmap(grad)(*stacked_diff)

        def body(carry, a):
            return carry + sum(jnp.sum(g) for g in grad(*diff)) * a, None

        out["scan"] = jax.lax.scan(body, jnp.zeros((), diff[0].dtype), jnp.arange(2.0))[0]
        out["grad_of_grad"] = jax.grad(
            lambda *d: sum(jnp.sum(g * jnp.sin(g)) for g in grad(*d)), argnums)(*diff)
        return out

    return jax.jit(all_transforms)(diff, stacked_diff)


@pytest.mark.parametrize("name", NAMES)
def test_d_transformations(name):
    prim = PRIMITIVES[name]
    args = sample_args(prim, KEY)
    args2 = sample_args(prim, jax.random.PRNGKey(7))
    loss, loss_ref, diff = _loss_pair(prim, args)
    pos = float_positions(prim)
    stacked = [jnp.stack([args[i], args2[i]]) for i in pos]
    # integer labels (if any) stay fixed across the vmapped batch
    got = _transform_results(loss, diff, stacked)
    want = _transform_results(loss_ref, diff, stacked)
    # eager grad (no jit) must agree too
    chex.assert_trees_all_close(jax.grad(loss, tuple(range(len(diff))))(*diff), want["grad"],
                                rtol=1e-5, atol=1e-5)
    for k in ("grad", "checkpoint", "vmap", "scan"):
        chex.assert_trees_all_close(got[k], want[k], rtol=1e-5, atol=1e-5, custom_message=k)
    chex.assert_trees_all_close(got["grad_of_grad"], want["grad_of_grad"], rtol=1e-4,
                                atol=1e-4, custom_message="grad of grad")
    assert not np.allclose(jax.tree.leaves(got["grad"])[0], 0.0), "trivial gradient"


def test_d_hessian_matches_jax_hessian_of_reference():
    x = jnp.array([0.3, -1.2, 2.0])

    def f(v):
        return fg.sum(fg.mul(fg.tanh(v), fg.sigmoid(v))) + fg.mean(fg.power(fg.exp(v), 2.0))

    def f_ref(v):
        return jnp.sum(jnp.tanh(v) * jax.nn.sigmoid(v)) + jnp.mean(jnp.exp(v) ** 2)

    chex.assert_trees_all_close(fg.hessian(f)(x), jax.hessian(f_ref)(x), rtol=1e-5, atol=1e-5)


def test_d_forward_mode_is_not_supported():
    """custom_vjp has no forward mode; the docs point to funcgrad.hessian instead."""
    with pytest.raises(TypeError, match="custom_vjp"):
        jax.jvp(fg.tanh, (1.0,), (1.0,))


# --------------------------------------------------------------------------------- (e)
DTYPES = ["float32", "float64", "bfloat16", "float16"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", NAMES)
def test_e_dtypes(name, dtype):
    prim = PRIMITIVES[name]
    with jax.enable_x64(dtype == "float64"):
        dt = jnp.dtype(dtype)
        args = sample_args(prim, KEY, prim.sample_shapes[0], dt)
        out_shape = jax.eval_shape(prim.call_reference, *args).shape
        ct = jax.random.normal(jax.random.PRNGKey(3), out_shape) + 0.5
        out, out_ref, g, g_ref = compiled_vjps(name)(args, ct)
        assert out.dtype == dt
        for j, i in enumerate(float_positions(prim)):
            assert g[j].dtype == dt, f"{name}: cotangent dtype {g[j].dtype}, primal {dt}"
            assert g[j].shape == args[i].shape
            _assert_close(g[j], g_ref[j], dtype if dtype != "float64" else "float32",
                          f"{name} {dtype} cotangent of {prim.args[i].name}")


# --------------------------------------------------------------------------------- (f)
def test_f_relu_kink_is_exactly_zero():
    assert float(jax.grad(fg.relu)(0.0)) == 0.0
    g = jax.grad(lambda v: fg.sum(fg.relu(v)))(jnp.array([-1.0, 0.0, 1e-30, 3.0]))
    np.testing.assert_array_equal(g, [0.0, 0.0, 1.0, 1.0])


def test_f_leaky_relu_kink_is_slope():
    assert float(jax.grad(lambda v: fg.leaky_relu(v, 0.2))(0.0)) == pytest.approx(0.2)


EDGE = ["sigmoid", "tanh", "softplus"]


@pytest.mark.parametrize("name", EDGE)
@pytest.mark.parametrize("x", [-1e4, -100.0, 100.0, 1e4])
def test_f_finite_at_extremes(name, x):
    prim = PRIMITIVES[name]
    y, g = jax.value_and_grad(prim.fn)(jnp.float32(x))
    assert np.isfinite(y) and np.isfinite(g)
    with jax.enable_x64(True):
        y64, g64 = jax.value_and_grad(prim.reference)(jnp.float64(x))
    assert abs(float(y) - float(y64)) <= 1e-6 * max(1.0, abs(float(y64)))
    assert abs(float(g) - float(g64)) <= 1e-6


@pytest.mark.parametrize("x", [-1e4, -100.0, 100.0, 1e4])
@pytest.mark.parametrize("z", [0.0, 1.0])
def test_f_bce_finite_at_extremes(x, z):
    f = fg.sigmoid_binary_cross_entropy
    y, (gx, gz) = jax.value_and_grad(f, argnums=(0, 1))(jnp.float32(x), jnp.float32(z))
    assert all(np.isfinite(v) for v in (y, gx, gz))
    with jax.enable_x64(True):
        want = float(jnp.logaddexp(0.0, jnp.float64(x)) - x * z)
        want_gx = float(jax.nn.sigmoid(jnp.float64(x)) - z)
    assert abs(float(y) - want) <= 1e-6 * max(1.0, abs(want))
    assert abs(float(gx) - want_gx) <= 1e-6


def test_f_sigmoid_gradient_at_17_is_not_zero():
    g = float(jax.grad(fg.sigmoid)(jnp.float32(17.0)))
    with jax.enable_x64(True):
        s = jax.nn.sigmoid(jnp.float64(17.0))
        true = float(s * (1 - s))
    assert g > 0
    assert g == pytest.approx(true, rel=1e-5)  # about 4.14e-8
    # the textbook form f(1 - f) is exactly zero in float32 here
    f = jax.nn.sigmoid(jnp.float32(17.0))
    assert float(f * (1 - f)) == 0.0


def test_f_masked_logits_give_finite_loss_and_exactly_zero_gradient():
    logits = jnp.array([[2.0, -jnp.inf, 0.5, -jnp.inf], [-jnp.inf, 1.0, -jnp.inf, 3.0]])
    labels = jnp.array([0, 3])
    loss, g = jax.value_and_grad(lambda lg: fg.sum(fg.softmax_cross_entropy(lg, labels)))(
        logits)
    assert np.isfinite(loss)
    g = np.asarray(g)
    assert np.all(np.isfinite(g))
    masked = ~np.isfinite(np.asarray(logits))
    assert np.all(g[masked] == 0.0)
    # and under jit, and in float16
    gj = jax.jit(jax.grad(lambda lg: fg.sum(fg.softmax_cross_entropy(lg, labels))))(logits)
    np.testing.assert_array_equal(np.asarray(gj)[masked], 0.0)


def test_f_softmax_cross_entropy_gradient_is_softmax_minus_onehot():
    logits = jnp.array([[1.0, 2.0, 0.5]])
    g = jax.grad(lambda lg: fg.sum(fg.softmax_cross_entropy(lg, jnp.array([1]))))(logits)
    want = jax.nn.softmax(logits) - jnp.array([[0.0, 1.0, 0.0]])
    np.testing.assert_allclose(g, want, rtol=1e-6)


def test_f_softmax_cross_entropy_bad_label_rows_are_nan_and_only_those():
    # traced labels skip the eager range check; a bad label's row is NaN, and its scatter
    # must not land in a neighbouring row (batched, with leading dimensions)
    logits = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 4))
    labels = jnp.array([[1, 4, 2], [-1, 3, 0]])
    g = jax.jit(jax.grad(lambda lg, y: fg.sum(fg.softmax_cross_entropy(lg, y))))(logits, labels)
    bad = np.array([[False, True, False], [True, False, False]])
    assert np.all(np.isnan(np.asarray(g)[bad]))
    safe = np.where(bad, 0, labels)
    want = jax.nn.softmax(logits) - jax.nn.one_hot(safe, 4)
    np.testing.assert_allclose(np.asarray(g)[~bad], np.asarray(want)[~bad], rtol=1e-6, atol=1e-7)


def test_f_labels_get_no_gradient():
    lab = jnp.array([1, 0])
    _, pull = jax.vjp(fg.softmax_cross_entropy, jnp.zeros((2, 3)), lab)
    g_logits, g_labels = pull(jnp.ones(2))
    assert g_labels.dtype == jax.dtypes.float0
    assert g_logits.shape == (2, 3)


def test_f_power_zero_exponent_has_zero_gradient():
    np.testing.assert_array_equal(jax.grad(lambda v: fg.sum(fg.power(v, 0)))(jnp.array(
        [0.0, 2.0])), [0.0, 0.0])


def test_f_log_follows_ieee():
    assert float(fg.log(0.0)) == -np.inf
    assert np.isnan(float(fg.log(-1.0)))
    assert float(jax.grad(fg.log)(0.0)) == np.inf


# ----------------------------------------------------------------------- hand-written
FORBIDDEN = {"grad", "vjp", "jvp", "linearize", "jacrev", "jacfwd", "hessian", "value_and_grad"}
# any mention of an autodiff entry point as code, docstring examples included
FORBIDDEN_TEXT = re.compile(r"\bjax\s*\.\s*(" + "|".join(sorted(FORBIDDEN)) + r")\b|"
                            r"\bfrom\s+jax\s+import\s+[^\n]*\b(" + "|".join(sorted(FORBIDDEN))
                            + r")\b")


def _forbidden_uses(path_name, text):
    hits = [f"{path_name}:{text.count(chr(10), 0, m.start()) + 1} {m.group(0)}"
            for m in FORBIDDEN_TEXT.finditer(text)]
    tree = ast.parse(text)
    aliases = set()  # names bound to jax or a jax submodule (`import jax as j`)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            aliases |= {a.asname or a.name.split(".")[0] for a in node.names
                        if a.name.split(".")[0] == "jax"}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "jax":
            for a in node.names:
                if a.name in FORBIDDEN:  # `from jax import grad as g`
                    hits.append(f"{path_name}:{node.lineno} import {a.name}")
                aliases.add(a.asname or a.name)
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and node.attr in FORBIDDEN
                and isinstance(node.value, ast.Name) and node.value.id in aliases):
            hits.append(f"{path_name}:{node.lineno} {node.value.id}.{node.attr}")
    return sorted(set(hits))


def test_primitives_never_call_jax_autodiff():
    """Scans source *and* docstrings: the rules' examples run the rules themselves."""
    root = pathlib.Path(fg.__file__).parent / "primitives"
    files = sorted(root.glob("*.py"))
    assert len(files) >= 7
    offenders = [hit for path in files for hit in _forbidden_uses(path.name, path.read_text())]
    assert not offenders, offenders


@pytest.mark.parametrize("snippet", [
    "import jax\ndef f(x):\n    return jax.grad(g)(x)\n",
    'def f(x):\n    """\n    >>> jax.vjp(f, 1.0)\n    """\n',
    "from jax import linearize as lin\n",
    "import jax as j\ny = j.jacrev(f)\n",
])
def test_source_scan_detects_a_forbidden_call(snippet):
    """The scan above can fail: code, docstring examples, imports and aliases are flagged."""
    assert _forbidden_uses("snippet.py", snippet)


def test_source_scan_allows_a_primitives_own_vjp_method():
    """``relu.vjp(...)`` runs the hand-written rule; it is not JAX's autodiff."""
    assert not _forbidden_uses("ok.py", 'def f():\n    """\n    >>> relu.vjp(0.0)\n    """\n'
                                        "import jax\nrule.vjp(1.0)\n")


# -------------------------------------------------------------------------- registry
def test_registry_is_complete_and_readable():
    expected = {"add", "sub", "mul", "div", "neg", "square", "power", "exp", "log", "sum",
                "mean", "matmul", "dense", "relu", "sigmoid", "tanh", "softplus", "leaky_relu",
                "squared_error", "mean_squared_error", "softmax_cross_entropy",
                "sigmoid_binary_cross_entropy", "batch_norm"}
    assert set(NAMES) == expected and set(PRIMITIVES) >= expected
    for name in NAMES:
        p = PRIMITIVES[name]
        assert p.name == name
        assert getattr(fg, name) is p.fn and getattr(fg.primitives, name) is p.fn
        assert p.reference is not None and p.reference is not p.fn
        assert p.fn.record is p
        assert f"Rule: ``{p.formula}``" in p.fn.__doc__  # generated from the record
        assert p.formula and p.residuals and p.domain and p.sample_shapes
        assert len(p.arg_kinds) == len(p.args)
        assert p.fn.__doc__ and ">>>" in p.fn.__doc__, f"{name} has no doctest"
        assert "Rule" in p.fn.__doc__ or "rule" in p.fn.__doc__
        assert "Residuals" in p.fn.__doc__
    with pytest.raises(TypeError):
        PRIMITIVES["x"] = None  # read-only


def test_references_and_rule_halves_are_private():
    """The docs and examples reach references through the registry record only."""
    import importlib

    for mod in {PRIMITIVES[n].fn.__module__ for n in NAMES}:
        module = importlib.import_module(mod)
        public = [a for a in vars(module) if not a.startswith("_")]
        leaked = [a for a in public if a.endswith(("_reference", "_fwd", "_bwd"))]
        assert not leaked, (mod, leaked)
        assert set(module.__all__) <= set(NAMES), mod


def test_a_formula_is_written_once():
    """No module-level formula tables: each formula appears once in its module's source."""
    root = pathlib.Path(fg.__file__).parent / "primitives"
    for name in NAMES:
        p = PRIMITIVES[name]
        text = (root / (p.fn.__module__.rsplit(".", 1)[1] + ".py")).read_text()
        assert text.count(p.formula) <= 1, name


def test_sum_mean_axis_variants():
    x = jax.random.normal(KEY, (2, 3, 4))
    for axis in [None, 0, 1, -1, (0, 2)]:
        for keepdims in (False, True):
            for f, ref in ((fg.sum, jnp.sum), (fg.mean, jnp.mean)):
                r = check_vjp(lambda v, f=f, a=axis, k=keepdims: f(v, axis=a, keepdims=k),
                              lambda v, r=ref, a=axis, k=keepdims: r(v, axis=a, keepdims=k),
                              x, finite_differences=False)
                assert r.ok, (f.__name__, axis, keepdims, str(r))


# ------------------------------------------------------------- (f) records' own points
KINKS = [(n, x, d) for n in NAMES for x, d in PRIMITIVES[n].kink_points]
EDGES = [(n, x) for n in NAMES for x in PRIMITIVES[n].edge_points]


def test_records_declare_kinks_and_edges_where_the_lesson_needs_them():
    assert PRIMITIVES["relu"].kink_points == ((0.0, 0.0),)
    assert PRIMITIVES["leaky_relu"].kink_points == (
        (0.0, PRIMITIVES["leaky_relu"].params["negative_slope"]),)
    for name in ("sigmoid", "tanh", "softplus", "log"):
        assert PRIMITIVES[name].edge_points, name
    assert {n for n in NAMES if PRIMITIVES[n].broadcasting} >= {
        "add", "sub", "mul", "div", "squared_error", "mean_squared_error",
        "sigmoid_binary_cross_entropy"}


@pytest.mark.parametrize("name,x,d", KINKS, ids=[f"{n}-{x}" for n, x, _ in KINKS])
def test_f_declared_kink_derivative_is_exact(name, x, d):
    prim = PRIMITIVES[name]
    g = jax.grad(lambda v: prim.call(v))(jnp.float32(x))
    assert float(g) == pytest.approx(d, rel=1e-7, abs=0.0)


def _np_sigmoid_parts(x):
    e = np.exp(-abs(x))
    return (1 / (1 + e) if x >= 0 else e / (1 + e)), e / (1 + e) ** 2


#: Closed forms in float64, written here independently of the rules and of the references
#: (jax.grad of jax.nn.sigmoid in float64 is itself 0.1% off at x = 30: sigma(1 - sigma)).
TRUTH64 = {
    "sigmoid": lambda x: _np_sigmoid_parts(x),
    "tanh": lambda x: (np.tanh(x), 4 * np.exp(-2 * abs(x)) / (1 + np.exp(-2 * abs(x))) ** 2),
    "softplus": lambda x: (np.logaddexp(x, 0.0), _np_sigmoid_parts(x)[0]),
    "log": lambda x: (np.log(x), 1 / x),
    "exp": lambda x: (np.exp(x), np.exp(x)),
}


@pytest.mark.parametrize("name,x", EDGES, ids=[f"{n}-{x}" for n, x in EDGES])
def test_f_edge_points_match_a_float64_truth_in_float32(name, x):
    prim = PRIMITIVES[name]
    y, g = jax.value_and_grad(lambda v: prim.call(v))(jnp.float32(x))
    y64, g64 = TRUTH64[name](np.float64(x))
    assert float(y) == pytest.approx(y64, rel=1e-6, abs=1e-30), "forward"
    assert float(g) == pytest.approx(g64, rel=1e-3, abs=1e-37), "gradient"


@pytest.mark.parametrize("x", [6.0, 8.0, 9.0, 10.0, -8.0])
def test_f_tanh_gradient_is_stable_in_float32(x):
    """Against the closed form 4e^(-2|x|)/(1 + e^(-2|x|))^2 in float64, not a reference."""
    e = np.exp(-2 * abs(x))
    truth = 4 * e / (1 + e) ** 2  # 4.50e-7, 6.09e-8, 8.24e-9 at 8, 9, 10
    g = float(jax.grad(fg.tanh)(jnp.float32(x)))
    assert g == pytest.approx(truth, rel=1e-3)
    # the output form (1 - y)(1 + y) with XLA's float32 tanh loses it: 0.9% off at 6, 0 at 8
    y = jnp.tanh(jnp.float32(x))
    textbook = float((1 - y) * (1 + y))
    assert textbook == 0.0 or abs(textbook - truth) / truth > 1e-3


def test_f_mean_gradient_in_float16_survives_large_n():
    """n = 70,000 is inf in float16; the gradient must still be 1/n, not 0."""
    n = 70_000
    x = jnp.ones(n, jnp.float16)
    g = jax.grad(lambda v: fg.mean(v).astype(jnp.float32))(x)
    assert g.dtype == jnp.float16
    # 1/n = 1.43e-5 is a float16 subnormal (spacing 6e-8, 0.4% of it): the best float16
    # can do is the correctly rounded value, 1.36e-3 off the truth
    np.testing.assert_array_equal(np.asarray(g), np.float16(1 / n))
    # with a cotangent that lands in float16's normal range, 1e-3 relative holds
    g64 = jax.grad(lambda v: (fg.mean(v) * 64).astype(jnp.float32))(x)
    assert float(g64[0]) == pytest.approx(64 / n, rel=1e-3)


# --------------------------------------------------------- (g) the plain forward pass
def _forward_truth(prim, args):
    with jax.enable_x64(True):
        wide = [a.astype(jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating) else a
                for a in args]
        return np.asarray(prim.call_reference(*wide), np.float64)


@pytest.mark.parametrize("name", NAMES)
def test_g_plain_forward_matches_the_reference(name):
    """Not under differentiation: the primal path, eager and jitted, against float64."""
    prim = PRIMITIVES[name]
    for shapes in (prim.sample_shapes[0], prim.sample_shapes[-1]):
        args = sample_args(prim, KEY, shapes)
        truth = _forward_truth(prim, args)
        for how, out in (("eager", prim.call(*args)), ("jit", jax.jit(prim.call)(*args))):
            assert out.dtype == jnp.float32
            assert_close(out, truth, 2e-6, 2e-6, f"{name} plain forward ({how}) {shapes}")


def test_g_forward_check_catches_a_primal_off_by_a_constant():
    """A relu whose plain forward is max(x, 0) + 1 passes gradient checks, not this one."""
    bad = fg.relu.variant(name="relu_plus_one", fwd=lambda x: (jnp.maximum(x, 0) + 1, x),
                          bwd=lambda x, g: (jnp.where(x > 0, g, 0 * g),))
    try:
        args = sample_args(PRIMITIVES["relu"], KEY, ((3, 4),))
        with pytest.raises(AssertionError, match="plain forward"):
            assert_close(bad(*args), _forward_truth(PRIMITIVES["relu"], args), 2e-6, 2e-6,
                         "relu_plus_one plain forward")
    finally:
        unregister("relu_plus_one")


# ------------------------------------------------------------------- the comparator
@pytest.mark.parametrize("actual,expected", [
    ([np.nan, np.nan], [1.0, 2.0]),
    ([1.0, 2.0], [np.nan, 2.0]),
    ([np.inf, 2.0], [-np.inf, 2.0]),
    ([1e30, 2.0], [np.inf, 2.0]),
    ([np.inf, 2.0], [1.0, 2.0]),
    ([0.0, 123.0], [np.inf, 1.0]),
])
def test_comparator_is_not_blind_to_non_finite_values(actual, expected):
    assert mismatches(np.array(actual), np.array(expected), 1e-3, 1e-3).any()
    with pytest.raises(AssertionError):
        assert_close(np.array(actual), np.array(expected), 1e-3, 1e-3, "nan check")


def test_comparator_accepts_matching_non_finite_values():
    a = np.array([np.nan, np.inf, -np.inf, 1.0])
    assert not mismatches(a, a.copy(), 1e-6, 1e-6).any()
