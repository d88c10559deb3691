"""``funcgrad.primitive``: the factory every primitive, built-in or user, is made with."""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcgrad as fg
from funcgrad import registry
from funcgrad.primitives import RuleError, primitive
from funcgrad.registry import PRIMITIVES


@pytest.fixture
def fresh():
    """Names registered inside a test are removed afterwards."""
    before = set(PRIMITIVES)
    yield
    for name in set(PRIMITIVES) - before:
        registry.unregister(name)


def _softsign(name="softsign_t", **kw):
    return primitive(
        name=name,
        fwd=lambda x: (x / (1 + jnp.abs(x)), (x,)),
        bwd=lambda res, g: (g / (1 + jnp.abs(res[0])) ** 2,),
        formula="softsign'(x) = 1 / (1 + |x|)^2",
        reference=lambda x: x / (1 + jnp.abs(x)),
        **kw,
    )


def _scope_names(jaxpr):
    return [str(e.source_info.name_stack).split("/")[-1] for e in jaxpr.eqns
            if "custom_vjp" in e.primitive.name]


# ----------------------------------------------------------------- keyword form
def test_keyword_form_from_the_issue(fresh):
    softsign = _softsign()
    x = jnp.array([-2.0, 0.0, 3.0])
    np.testing.assert_allclose(softsign(x), x / (1 + jnp.abs(x)), rtol=1e-6)
    g = jax.grad(lambda v: jnp.sum(softsign(v)))(x)
    np.testing.assert_allclose(g, 1 / (1 + jnp.abs(x)) ** 2, rtol=1e-6)
    assert softsign.vjp(1.0) == (0.25,)
    rec = PRIMITIVES["softsign_t"]
    assert rec.fn is softsign and rec.formula.startswith("softsign'")
    assert rec.call_reference(x).shape == (3,)
    assert [a.name for a in rec.args] == ["x"] and rec.args[0].kind == "float"
    assert softsign.__module__ == __name__
    assert "softsign'(x) = 1 / (1 + |x|)^2" in softsign.__doc__


def test_user_primitive_works_under_transformations(fresh):
    softsign = _softsign()
    x = jnp.linspace(-2.0, 2.0, 5)
    grad = jax.grad(lambda v: jnp.sum(softsign(v) ** 2))
    want = grad(x)
    np.testing.assert_allclose(jax.jit(grad)(x), want, rtol=1e-6)
    np.testing.assert_allclose(jax.vmap(jax.grad(lambda v: softsign(v) ** 2))(x), want,
                               rtol=1e-6)
    np.testing.assert_allclose(jax.grad(jax.checkpoint(lambda v: jnp.sum(softsign(v) ** 2)))(x),
                               want, rtol=1e-6)
    scanned = jax.lax.scan(lambda c, v: (c + softsign(v), None), 0.0, x)[0]
    np.testing.assert_allclose(scanned, jnp.sum(softsign(x)), rtol=1e-6)
    # grad of grad: d/dx (1/(1+|x|)^2) = -2 sign(x)/(1+|x|)^3
    gg = jax.grad(jax.grad(softsign))(1.0)
    assert float(gg) == pytest.approx(-2 / 8)


def test_named_scope_tag_is_in_the_jaxpr(fresh):
    softsign = _softsign()
    assert _scope_names(jax.make_jaxpr(softsign)(1.0).jaxpr) == ["funcgrad.softsign_t"]
    assert _scope_names(jax.make_jaxpr(fg.relu)(1.0).jaxpr) == ["funcgrad.relu"]
    # only the custom_vjp call is inside the scope: input conversion is not
    jaxpr = jax.make_jaxpr(lambda v: fg.add(v, 1))(jnp.ones(3, jnp.int32)).jaxpr
    scoped = [e.primitive.name for e in jaxpr.eqns
              if str(e.source_info.name_stack).startswith("funcgrad.")]
    assert scoped == [e.primitive.name for e in jaxpr.eqns if "custom_vjp" in e.primitive.name]


def test_user_primitive_appears_in_the_registry_view(fresh):
    assert "softsign_t" not in PRIMITIVES
    _softsign()
    assert "softsign_t" in PRIMITIVES and "softsign_t" in fg.registry.derivative_table()
    with pytest.raises(TypeError):
        PRIMITIVES["softsign_t"] = None  # still read-only
    registry.unregister("softsign_t")
    assert "softsign_t" not in PRIMITIVES


def test_duplicate_name_is_an_error_unless_replace(fresh):
    first = _softsign()
    with pytest.raises(ValueError, match=r"'softsign_t' is already registered.*replace=True"):
        _softsign()
    assert PRIMITIVES["softsign_t"].fn is first
    second = _softsign(replace=True)
    assert PRIMITIVES["softsign_t"].fn is second
    with pytest.raises(ValueError, match="'relu' is already registered"):
        _softsign(name="relu")


def test_decorator_form_keeps_doc_signature_and_module(fresh):
    def bwd(res, g, *, scale):
        return (g * 3.0,)

    @primitive(bwd=bwd, static=("scale",), formula="d(3x)/dx = 3", residuals="none")
    def triple_t(x, scale: float = 1.0):
        """Three times x.

        Args:
            x: input.
            scale: unused static.

        Returns:
            3x.
        """
        return 3.0 * x, None

    assert triple_t.__name__ == "triple_t" and triple_t.__module__ == __name__
    assert list(inspect.signature(triple_t).parameters) == ["x", "scale"]
    doc = triple_t.__doc__
    assert doc.startswith("Three times x.")
    assert doc.index("Rule: ``d(3x)/dx = 3``") < doc.index("Args:")
    assert "Residuals: none" in doc and inspect.isfunction(triple_t)
    assert float(triple_t(2.0)) == 6.0 and float(jax.grad(triple_t)(2.0)) == 3.0
    assert "triple_t" in PRIMITIVES


# ----------------------------------------------------------- RuleError at trace time
def _mul_like(name, bwd, **kw):
    return primitive(name=name, fwd=lambda x, y: (x * y, (x, y)), bwd=bwd, formula="xy", **kw)


def test_wrong_shape_raises_rule_error_naming_the_argument(fresh):
    bad = _mul_like("bad_shape_t", lambda r, g: (g * r[1], (g * r[0])[:2]))
    x, y = jnp.ones(3), jnp.ones(3)
    with pytest.raises(RuleError, match=r"bad_shape_t: .*argument 'y' with shape \(2,\) and "
                                        r"dtype float32; expected shape \(3,\) and dtype float32"):
        jax.grad(lambda a, b: jnp.sum(bad(a, b)), argnums=(0, 1))(x, y)
    # at trace time: tracing alone raises, nothing runs
    with pytest.raises(RuleError):
        jax.make_jaxpr(jax.grad(lambda a, b: jnp.sum(bad(a, b))))(x, y)
    assert issubclass(RuleError, ValueError) and issubclass(RuleError, TypeError)


def test_wrong_dtype_raises_rule_error(fresh):
    bad = _mul_like("bad_dtype_t", lambda r, g: (g * r[1], (g * r[0]).astype(jnp.float16)))
    with pytest.raises(RuleError, match=r"argument 'y' with shape \(3,\) and dtype float16; "
                                        r"expected shape \(3,\) and dtype float32"):
        jax.grad(lambda a, b: jnp.sum(bad(a, b)), argnums=1)(jnp.ones(3), jnp.ones(3))


def test_wrong_structure_raises_rule_error(fresh):
    one = _mul_like("bad_count_t", lambda r, g: (g * r[1],))
    with pytest.raises(RuleError, match=r"bad_count_t: .*one cotangent per differentiable "
                                        r"argument \('x', 'y': 2\); got a tuple of length 1"):
        jax.grad(lambda a: jnp.sum(one(a, 2.0)))(jnp.ones(3))
    bare = primitive(name="bad_bare_t", fwd=lambda x: (x, None), bwd=lambda r, g: g,
                     formula="x")
    with pytest.raises(RuleError, match=r"bad_bare_t: .*got an array of shape \(3,\) and "
                                        r"dtype float32"):
        jax.grad(lambda a: jnp.sum(bare(a)))(jnp.ones(3))
    no_residuals = primitive(name="bad_fwd_t", fwd=lambda x: x ** 3,
                             bwd=lambda r, g: (3 * r[0] ** 2 * g,), formula="3x^2")
    for call in (lambda: no_residuals(2.0), lambda: jax.grad(no_residuals)(2.0),
                 lambda: no_residuals.vjp(2.0)):
        with pytest.raises(RuleError, match=r"bad_fwd_t: the forward rule must return a pair "
                                            r"\(output, residuals\).*got an array of shape "
                                            r"\(\) and dtype float32"):
            call()
    tree = primitive(name="bad_tree_t", pytree=("p",),
                     fwd=lambda p: (p["w"] * 2, None), bwd=lambda r, g: ({"v": g * 2},),
                     formula="2w")
    with pytest.raises(RuleError, match=r"argument 'p' has tree structure"):
        jax.grad(lambda p: jnp.sum(tree(p)))({"w": jnp.ones(2)})


def test_missing_unbroadcast_is_a_rule_error_unless_declared(fresh):
    x, y = jnp.ones((2, 3)), jnp.ones(3)
    plain = _mul_like("nobroadcast_t", lambda r, g: (g * r[1], g * r[0]))
    with pytest.raises(RuleError, match=r"argument 'y' with shape \(2, 3\)"):
        jax.grad(lambda a, b: jnp.sum(plain(a, b)), argnums=1)(x, y)
    auto = _mul_like("broadcast_t", lambda r, g: (g * r[1], g * r[0]), unbroadcast=True)
    gy = jax.grad(lambda a, b: jnp.sum(auto(a, b)), argnums=1)(x, y * 2)
    np.testing.assert_array_equal(gy, [2.0, 2.0, 2.0])
    assert PRIMITIVES["broadcast_t"].broadcasting and not PRIMITIVES["nobroadcast_t"].broadcasting
    with pytest.raises(ValueError, match=r"broadcast_t: shapes do not broadcast.*x\.shape"):
        auto(jnp.ones(2), jnp.ones(3))


# ------------------------------------------------------------ pytrees and nondiff
def test_pytree_argument_primitive(fresh):
    affine = primitive(
        name="affine_t", pytree=("params",),
        fwd=lambda params, x: (x @ params["w"] + params["b"], (params["w"], x)),
        bwd=lambda res, g: ({"w": res[1].T @ g, "b": jnp.sum(g, axis=0)}, g @ res[0].T),
        formula="d(xw+b): w_bar = x^T G, b_bar = sum G, x_bar = G w^T",
        reference=lambda params, x: x @ params["w"] + params["b"],
        sample_shapes=(({"w": (3, 2), "b": (2,)}, (4, 3)),),
    )
    rec = PRIMITIVES["affine_t"]
    params, x = registry.sample_args(rec, jax.random.PRNGKey(0))
    assert params["w"].shape == (3, 2) and x.shape == (4, 3)

    def loss(f):
        return lambda p, v: jnp.sum(jnp.sin(f(p, v)))

    got = jax.grad(loss(affine), argnums=(0, 1))(params, x)
    want = jax.grad(loss(rec.reference), argnums=(0, 1))(params, x)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), got, want)
    with pytest.raises(TypeError, match=r"affine_t: argument 'params\['w'\]' must be an array"):
        affine({"w": "nope", "b": jnp.zeros(2)}, x)
    with pytest.raises(TypeError, match="affine_t: argument 'x' must be an array"):
        affine(params, [[1.0, 2.0, 3.0]])  # only declared arguments are pytrees


def test_declared_nondiff_and_labels_arguments(fresh):
    pick = primitive(
        name="pick_t", labels=("labels",),
        fwd=lambda logits, labels: (jnp.take_along_axis(logits, labels[:, None], 1)[:, 0],
                                    (labels, logits.shape[-1])),
        bwd=lambda res, g: (jax.nn.one_hot(res[0], 3) * g[:, None], None),
        formula="d(logits[label]) = onehot(label)",
    )
    logits, labels = jnp.zeros((2, 3)), jnp.array([2, 0])
    _, pull = jax.vjp(pick, logits, labels)
    g_logits, g_labels = pull(jnp.ones(2))
    np.testing.assert_array_equal(g_logits, [[0, 0, 1], [1, 0, 0]])
    assert g_labels.dtype == jax.dtypes.float0
    assert PRIMITIVES["pick_t"].arg_kinds == ("float", "labels")
    with pytest.raises(TypeError, match="pick_t: argument 'labels' must have an integer dtype"):
        pick(logits, jnp.array([2.0, 0.0]))

    scale = primitive(
        name="masked_t", nondiff=("mask",),
        fwd=lambda x, mask: (x * mask, mask), bwd=lambda mask, g: (g * mask,),
        formula="d(x*mask)/dx = mask",
    )
    gx = jax.grad(lambda v: jnp.sum(scale(v, jnp.array([1.0, 0.0]))))(jnp.ones(2))
    np.testing.assert_array_equal(gx, [1.0, 0.0])
    assert PRIMITIVES["masked_t"].arg_kinds == ("float", "const")
    wrong = primitive(name="masked_bad_t", nondiff=("mask",), fwd=lambda x, mask: (x, mask),
                      bwd=lambda mask, g: (g, g), formula="x")
    with pytest.raises(RuleError, match="argument 'mask' is declared without a gradient"):
        jax.grad(lambda v: jnp.sum(wrong(v, jnp.ones(2))))(jnp.ones(2))


def test_static_parameters_reach_fwd_and_bwd(fresh):
    leaky = primitive(
        name="leaky_t", static=("slope",),
        fwd=lambda x, slope=0.1: (jnp.where(x > 0, x, slope * x), x),
        bwd=lambda x, g, *, slope: (jnp.where(x > 0, g, slope * g),),
        formula="1 if x > 0 else slope",
    )
    assert float(jax.grad(leaky)(-1.0)) == pytest.approx(0.1)
    assert float(jax.grad(lambda v: leaky(v, slope=0.5))(-1.0)) == pytest.approx(0.5)
    assert PRIMITIVES["leaky_t"].static == ("slope",)
    with pytest.raises(TypeError, match="leaky_t: argument 'slope' is static and must be "
                                        "hashable"):
        leaky(1.0, [0.1])
    with pytest.raises(ValueError, match=r"'static' names \['nope'\]"):
        primitive(name="nope_t", static=("nope",), fwd=lambda x: (x, None),
                  bwd=lambda r, g: (g,), formula="x")


def test_vjp_runs_the_rule_without_autodiff(fresh):
    calls = []

    def bwd(res, g):
        calls.append("bwd")
        return (2 * res * g,)

    sq = primitive(name="sq_t", fwd=lambda x: (x * x, x), bwd=bwd, formula="2x")
    assert sq.vjp(3.0) == (6.0,)
    assert sq.vjp(3.0, cotangent=0.5) == (3.0,)
    assert calls == ["bwd", "bwd"]
    assert fg.mul.vjp(2.0, 3.0) == (3.0, 2.0)  # the lesson's dz/dx, dz/dw


def _compiled_size(fn, *args):
    """ENTRY instruction count and XLA FLOPs of ``jit(value_and_grad(fn))`` for ``args``."""
    compiled = jax.jit(jax.value_and_grad(fn, argnums=tuple(range(len(args))))).lower(
        *args).compile()
    text = compiled.as_text()
    entry = text[text.index("\nENTRY"):].split("\n}")[0]
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return sum(1 for line in entry.splitlines()[1:] if " = " in line), cost["flops"]


def test_the_factory_adds_nothing_to_the_compiled_program(fresh):
    """A rule made with funcgrad.primitive compiles to the same program as the bare
    jax.custom_vjp of the same fwd and bwd: the tag, the checks and the bwd validation
    all run at trace time."""
    def fwd(w, b, x):
        return jnp.tanh(x @ w + b), (w, x, jnp.tanh(x @ w + b))

    def bwd(res, g):
        w, x, y = res
        gz = g * (1 - y * y)
        return x.T @ gz, jnp.sum(gz, axis=0), gz @ w.T

    tagged = primitive(name="tanh_affine_t", fwd=fwd, bwd=bwd, formula="test rule")
    bare = jax.custom_vjp(lambda w, b, x: fwd(w, b, x)[0])
    bare.defvjp(fwd, bwd)
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    w, b, x = (jax.random.normal(k, s) for k, s in zip(keys, [(8, 4), (4,), (16, 8)],
                                                        strict=True))

    def loss(f):
        return lambda w, b, x: jnp.sum(f(w, b, x) ** 2) + jnp.sum(f(w, b, 2 * x) * x[:, :4])

    assert _compiled_size(loss(tagged), w, b, x) == _compiled_size(loss(bare), w, b, x)
