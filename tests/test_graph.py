"""Tests for funcgrad.explain (explain, Graph, rendering) and the ``funcgrad explain`` command."""

from __future__ import annotations

import os
import re
import stat
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import funcgrad as fg
from funcgrad._jaxpr import funcgrad_name
from funcgrad.cli import main as cli_main
from funcgrad.explain import (
    LESSON_EXAMPLES,
    Graph,
    GraphvizNotFoundError,
    explain,
    lesson_graph,
)
from funcgrad.explain.dot import dot_id
from funcgrad.registry import PRIMITIVES


def lesson_loss(x, w, target):
    y = fg.mul(x, w)
    return fg.squared_error(y, target)


@pytest.fixture(scope="module")
def lesson() -> Graph:
    return explain(lesson_loss, 2.0, 3.0, 2.0, names={"mul": "y"})


# --------------------------------------------------------------------------- the lesson
def test_lesson_values_and_gradients_exact(lesson):
    assert [n.name for n in lesson.inputs] == ["x", "w", "target"]
    assert [(n.name, n.op) for n in lesson.nodes] == [("y", "mul"), ("L", "squared_error")]
    assert lesson.output is lesson["L"]
    assert [n.name for n in lesson["y"].inputs] == ["x", "w"]
    assert lesson["L"].input_names == ("y", "target")
    exact = {"x": (2.0, 24.0), "w": (3.0, 16.0), "target": (2.0, -8.0), "y": (6.0, 8.0),
             "L": (16.0, 1.0)}
    for name, (value, grad) in exact.items():
        assert float(lesson[name].value) == value, name
        assert float(lesson[name].grad) == grad, name
    # dy/dw = x = 2 and dy/dx = w = 3: the mul node's local derivatives.
    assert [float(v) for v in lesson["y"].local] == [3.0, 2.0]
    assert [float(v) for v in lesson["L"].local] == [8.0, -8.0]


def test_lesson_formulas_come_from_registry(lesson):
    assert lesson["y"].formula == PRIMITIVES["mul"].formula
    assert lesson["L"].formula == PRIMITIVES["squared_error"].formula
    assert lesson["y"].primitive and lesson["L"].primitive


def test_sgd_update_matches_optax(lesson):
    new = lesson.sgd_update(0.1, ["w"])
    assert list(new) == ["w"]
    opt = optax.sgd(0.1)
    params = {"w": jnp.float32(3.0)}
    grads = {"w": lesson["w"].grad}
    updates, _ = opt.update(grads, opt.init(params), params)
    assert float(new["w"]) == float(optax.apply_updates(params, updates)["w"])
    assert new["w"] == pytest.approx(1.4, abs=1e-6)
    assert set(lesson.sgd_update(0.5)) == {"x", "w", "target"}


def test_to_text_draws_lesson(lesson):
    text = lesson.to_text(learning_rate=0.1, update=["w"])
    for piece in ["x = 2 ──┐", "├─→ [mul] ──→ y = 6", "w = 3 ──┘",
                  "[squared_error] ──→ L = 16", "dL/dx = 24 ←─┐", "├── [mul] ←── dL/dy = 8",
                  "dL/dw = 16 ←─┘", "dL/dw = dL/dy × ∂y/∂w = 8 × 2 = 16",
                  "dL/dx = dL/dy × ∂y/∂x = 8 × 3 = 24", "w_new = 3 - 0.1 × 16 = 1.4"]:
        assert piece in text, piece
    table = text[text.index("\nnode ") + 1:]
    header = table.splitlines()[0].split()
    assert header[:5] == ["node", "op", "value", "local", "derivative"]
    row = next(line for line in table.splitlines() if line.startswith("y "))
    assert "mul(x, w)" in row and " 6 " in row and row.rstrip().endswith("8")
    ascii_text = lesson.to_text(ascii=True)
    assert ascii_text.isascii() and "[mul]" in ascii_text


def test_int_arguments_are_numbers_to_differentiate():
    g = explain(lesson_loss, 2, 3, 2)
    assert float(g["w"].grad) == 16.0 and float(g["x"].grad) == 24.0


def test_wrapper_casts_fold_into_the_primitive_node():
    # fg.mul casts the integer array to float inside its wrapper: still one node.
    g = explain(lambda x, w: fg.sum(fg.mul(x, w)), jnp.array([1, 2]), jnp.array([3.0, 4.0]))
    assert [n.op for n in g.nodes] == ["mul", "sum"]
    assert g["mul"].input_names == ("x", "w")
    assert g["x"].grad is None
    np.testing.assert_array_equal(g["w"].grad, [1.0, 2.0])


def test_literal_constant_is_a_node():
    g = lesson_graph("pytorch")
    (const,) = g.constants
    assert const.name == "4" and float(const.value) == 4.0 and float(const.grad) == -4.0
    assert g["r"].inputs == (g["y"], const)
    assert float(g["w"].grad) == 8.0 and float(g["x"].grad) == 12.0


@pytest.mark.parametrize("name", sorted(LESSON_EXAMPLES))
def test_lesson_examples_build(name):
    g = lesson_graph(name)
    assert g.output.grad == 1.0
    assert all(n.grad is not None for n in g.all_nodes)


def test_names_override_and_errors():
    g = explain(lesson_loss, 2.0, 3.0, 2.0, names=["pred", "loss"])
    assert [n.name for n in g.nodes] == ["pred", "loss"]
    assert g._dname(g["w"]) == "dloss/dw"
    g = explain(lesson_loss, 2.0, 3.0, 2.0, names={0: "y", "L": "cost", "target": "t"})
    assert [n.name for n in g.all_nodes] == ["x", "w", "t", "y", "cost"]
    with pytest.raises(ValueError, match="unknown key 'nope'"):
        explain(lesson_loss, 2.0, 3.0, 2.0, names={"nope": "y"})
    with pytest.raises(ValueError, match="named 'x'"):
        explain(lesson_loss, 2.0, 3.0, 2.0, names={"mul": "x"})


def test_explain_is_a_callable_package():
    import funcgrad.explain as package

    g = package(lesson_loss, 2.0, 3.0, 2.0, names={"mul": "y"})
    assert isinstance(g, Graph) and float(g["w"].grad) == 16.0
    assert fg.explain is package and fg.explain.lesson_graph is lesson_graph
    assert float(fg.explain(lesson_loss, 2.0, 3.0, 2.0)["x"].grad) == 24.0
    assert fg.Graph is Graph


def test_find_nonfinite_gives_the_element_index():
    from funcgrad.explain import find_nonfinite

    r = find_nonfinite(lambda x: fg.sum(fg.log(fg.relu(x))), jnp.array([1.0, 2.0, -1.0]))
    assert (r.phase, r.op, r.node, r.index) == ("forward", "log", "log", 2)
    r = find_nonfinite(lambda x: fg.sum(fg.power(x, 0.5)), jnp.array([1.0, 0.0]))
    assert (r.phase, r.op, r.input, r.index) == ("backward", "power", "x", 1)
    r = find_nonfinite(lambda x: fg.sum(x), jnp.array([1.0, np.inf]))
    assert (r.phase, r.node, r.index) == ("input", "x", 1)


# --------------------------------------------------------------------------- MLP
KEYS = jax.random.split(jax.random.PRNGKey(0), 3)
X = jax.random.normal(KEYS[0], (4, 3))
LABELS = jnp.array([0, 1, 1, 0])
PARAMS = [
    {"w": jax.random.normal(KEYS[1], (3, 5)), "b": jnp.linspace(-0.5, 0.5, 5)},
    {"w": jax.random.normal(KEYS[2], (5, 2)), "b": jnp.array([0.1, -0.2])},
]


def mlp_loss(params, x, labels):
    h = fg.dense(x, params[0]["w"], params[0]["b"])
    a = fg.relu(h)
    logits = fg.dense(a, params[1]["w"], params[1]["b"])
    return fg.mean(fg.softmax_cross_entropy(logits, labels))


@pytest.fixture(scope="module")
def mlp() -> Graph:
    return explain(mlp_loss, PARAMS, X, LABELS)


def _ref(name):
    return PRIMITIVES[name].reference


def test_mlp_node_per_primitive_call(mlp):
    assert [n.op for n in mlp.nodes] == ["dense", "relu", "dense", "softmax_cross_entropy",
                                         "mean"]
    assert len(mlp.nodes) == 5  # five primitive calls, five op nodes
    assert {n.name for n in mlp.inputs} == {"params[0].w", "params[0].b", "params[1].w",
                                            "params[1].b", "x", "labels"}
    assert mlp["dense_1"].input_names == ("x", "params[0].w", "params[0].b")
    assert mlp["softmax_cross_entropy"].input_names == ("dense_2", "labels")
    assert mlp["labels"].grad is None
    summary = mlp["dense_1"].summary()
    assert summary.startswith("f32[4,5] norm=") and all(
        k in summary for k in ("mean=", "min=", "max="))
    assert mlp["dense_1"].value.shape == (4, 5)  # full values stay available


@jax.jit
def _split_network_vjps(params, x, labels):
    """Values and dL/d(intermediate) by splitting the network at each intermediate and
    taking jax.vjp of the rest. Written with the plain-jnp references, so it shares no
    rule with funcgrad; one jit so the test compiles once."""
    dense, relu, sce, mean = (_ref(n) for n in ("dense", "relu", "softmax_cross_entropy",
                                                "mean"))
    p0, p1 = params
    h = dense(x, p0["w"], p0["b"])
    a = relu(h)
    logits = dense(a, p1["w"], p1["b"])
    ce = sce(logits, labels)
    loss = mean(ce)
    tails = {
        "dense_1": (h, lambda h: mean(sce(dense(relu(h), p1["w"], p1["b"]), labels))),
        "relu": (a, lambda a: mean(sce(dense(a, p1["w"], p1["b"]), labels))),
        "dense_2": (logits, lambda z: mean(sce(z, labels))),
        "softmax_cross_entropy": (ce, mean),
        "L": (loss, lambda v: v),
    }
    out = {}
    for name, (value, tail) in tails.items():
        y, pull = jax.vjp(tail, value)
        out[name] = (value, pull(jnp.ones_like(y))[0])

    def whole(params, x):
        h = relu(dense(x, params[0]["w"], params[0]["b"]))
        return mean(sce(dense(h, params[1]["w"], params[1]["b"]), labels))

    return out, jax.grad(whole, argnums=(0, 1))(params, x)


def test_mlp_gradients_match_vjp_of_the_split_function(mlp):
    """dL/dnode for every intermediate equals jax.vjp of the network's remainder."""
    split, (gp, gx) = _split_network_vjps(PARAMS, X, LABELS)
    assert set(split) == {n.name for n in mlp.nodes}
    for name, (value, grad) in split.items():
        chex.assert_trees_all_close(mlp[name].value, value, rtol=1e-5, atol=1e-6)
        chex.assert_trees_all_close(mlp[name].grad, grad, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(mlp["x"].grad, gx, rtol=1e-5, atol=1e-6)
    for i in range(2):
        for k in ("w", "b"):
            chex.assert_trees_all_close(mlp[f"params[{i}].{k}"].grad, gp[i][k], rtol=1e-5,
                                        atol=1e-6)


def test_mlp_sgd_update(mlp):
    new = mlp.sgd_update(0.1)
    assert "labels" not in new
    for i in range(2):
        for k in ("w", "b"):
            name = f"params[{i}].{k}"
            expected = np.asarray(PARAMS[i][k]) - np.float32(0.1) * np.asarray(mlp[name].grad)
            np.testing.assert_allclose(new[name], expected, rtol=1e-6, atol=1e-7)


def test_jit_wrapped_function_gives_the_same_graph(mlp):
    g = explain(jax.jit(mlp_loss), PARAMS, X, LABELS)
    assert [(n.name, n.op, n.input_names) for n in g.all_nodes] == \
        [(n.name, n.op, n.input_names) for n in mlp.all_nodes]
    for a, b in zip(g.all_nodes, mlp.all_nodes, strict=True):
        chex.assert_trees_all_close(a.value, b.value)
        if b.grad is not None:
            chex.assert_trees_all_close(a.grad, b.grad)


def test_dict_params_get_readable_names_and_layer_collapse():
    params = {"layer1": {"w": PARAMS[0]["w"], "b": PARAMS[0]["b"]},
              "layer2": {"w": PARAMS[1]["w"], "b": PARAMS[1]["b"]}}

    def loss(params, x, labels):
        h = fg.relu(fg.dense(x, params["layer1"]["w"], params["layer1"]["b"]))
        z = fg.dense(h, params["layer2"]["w"], params["layer2"]["b"])
        return fg.mean(fg.softmax_cross_entropy(z, labels))

    g = explain(loss, params, X, labels=LABELS)
    assert {n.name for n in g.inputs} == {"params.layer1.w", "params.layer1.b",
                                          "params.layer2.w", "params.layer2.b", "x", "labels"}
    c = g.collapse(by="layer")
    assert [(n.name, n.op) for n in c.nodes] == [
        ("params.layer1", "dense > relu"), ("params.layer2", "dense"),
        ("L", "softmax_cross_entropy > mean")]
    assert c.output.members[-1] is g.output and float(c.output.value) == float(g.output.value)
    assert c._dname(c["x"]) == "dL/dx"
    text = g.to_text(collapse=True)
    assert "[dense > relu] ──→ params.layer1: f32[4,5]" in text


def test_named_scopes_collapse_deep_mlp():
    depth = 6
    params = [{"w": jnp.eye(3) * 0.5, "b": jnp.full((3,), 0.1)} for _ in range(depth)]

    @jax.jit
    def deep(params, x):
        h = x
        for i, p in enumerate(params):
            with jax.named_scope(f"block{i}"):
                h = fg.tanh(fg.dense(h, p["w"], p["b"]))
        return fg.mean(fg.square(h))

    g = explain(deep, params, X)
    assert len(g.nodes) == 2 * depth + 2
    assert g["dense_1"].scope == "block0" and g["tanh_6"].scope == "block5"
    c = g.collapse()
    assert [n.name for n in c.nodes][:depth] == [f"block{i}" for i in range(depth)]
    assert len(c.nodes) == depth + 2
    assert "collapsed 14 ops into 8 nodes" in g.to_text(max_nodes=10)
    assert "collapsed" not in g.to_text(collapse=False)
    assert len(g.to_dot(collapse=True).split("->")) < len(g.to_dot().split("->"))


# --------------------------------------------------------------------------- other ops
def test_jax_ops_and_user_custom_vjp_are_nodes():
    @jax.custom_vjp
    def clip_grad(x):
        return x

    clip_grad.defvjp(lambda x: (x, None), lambda _, g: (jnp.clip(g, -1.0, 1.0),))
    weights = jnp.array([1.0, 2.0])

    def f(x, scale):
        return jnp.sum(jnp.sin(clip_grad(x)) * weights) * scale + jax.nn.relu(x[0])

    x = jnp.array([0.5, 1.0])
    g = explain(f, x, 3.0)
    ops = [n.op for n in g.nodes]
    assert "sin" in ops and "clip_grad" in ops and "relu" in ops and "reduce_sum" in ops
    assert g["sin"].formula == "d(sin x)/dx = cos x"
    assert not g["sin"].primitive
    (const,) = g.constants
    np.testing.assert_array_equal(const.value, weights)
    np.testing.assert_allclose(g["x"].grad, jax.grad(f)(x, 3.0), rtol=1e-6)
    # x feeds two nodes: the shares along its two edges sum to dL/dx.
    consumers = g.consumers("x")
    assert len(consumers) == 2
    total = sum(g.edge_grad("x", c) for c in consumers)
    np.testing.assert_allclose(total, g["x"].grad, rtol=1e-6)
    assert "dL/dx += " in g.to_text()


def _numpy_sample(prim):
    """Arguments in the primitive's domain at its first sample shape (NumPy: no compiles)."""
    rng = np.random.default_rng(0)
    shapes = prim.sample_shapes[0]
    out = []
    for arg, shape in zip(prim.args, shapes, strict=True):
        if arg.kind == "labels":
            out.append(rng.integers(0, shapes[0][-1], size=shape).astype(np.int32))
            continue
        # A pytree argument (a user primitive's params) has a pytree of shapes.
        out.append(jax.tree.map(lambda s, arg=arg: _numpy_leaf(rng, arg.domain, s), shape,
                                is_leaf=lambda s: isinstance(s, tuple)
                                and all(isinstance(d, int) for d in s)))
    return out


def _numpy_leaf(rng, domain, shape):
    v = rng.standard_normal(shape)
    if domain == "positive":
        v = 0.5 + np.abs(v)
    elif domain == "nonzero":
        v = np.where(v >= 0, 0.5 + v, v - 0.5)
    elif domain == "unit":
        v = rng.uniform(size=shape)
    return np.asarray(v, dtype=np.float32)


def _tags(closed):
    """The funcgrad names of a jaxpr's top-level equations (None for other equations)."""
    return [funcgrad_name(e.source_info.name_stack) if "custom_vjp" in e.primitive.name
            else None for e in closed.jaxpr.eqns]


def test_every_registry_primitive_maps_to_one_node():
    for name, prim in PRIMITIVES.items():
        args = _numpy_sample(prim)
        # Recognised by the named scope on its custom_vjp call, nothing else.
        assert [t for t in _tags(jax.make_jaxpr(prim.call)(*args)) if t] == [name], name
        g = explain(lambda *a, prim=prim: fg.sum(prim.call(*a)), *args)
        assert [n.op for n in g.nodes] == [name, "sum"], name
        assert g.nodes[0].formula == prim.formula and g.nodes[0].primitive


# --------------------------------------------------------------------------- DOT
def test_dot_structure(lesson):
    dot = lesson.to_dot()
    assert dot.startswith("digraph ") and dot.rstrip().endswith("}")
    node_lines = re.findall(r"^  (n\d+) \[shape=(\w+).*label=\"(.*)\"\];$", dot, re.M)
    assert len(node_lines) == len(lesson.all_nodes) == 5
    labels = {lab.split(" ")[0]: lab for _, _, lab in node_lines}
    assert "value = 6\\ndL/dy = 8" in labels["y"]
    assert "value = 3\\ndL/dw = 16" in labels["w"]
    assert "value = 16\\ndL/dL = 1" in labels["L"]
    ids = {lab.split(" ")[0]: nid for nid, _, lab in node_lines}
    forward = re.findall(r"^  (n\d+) -> (n\d+) \[label=\"([^\"]*)\"\];$", dot, re.M)
    assert sorted(forward) == sorted([
        (ids["x"], ids["y"], "2"), (ids["w"], ids["y"], "3"),
        (ids["y"], ids["L"], "6"), (ids["target"], ids["L"], "2")])
    backward = re.findall(r"^  (n\d+) -> (n\d+) \[style=dashed.*label=\"([^\"]*)\"\];$", dot,
                          re.M)
    assert (ids["y"], ids["w"], "dL/dw = 16") in backward and len(backward) == 4
    assert len(re.findall(r"->", lesson.to_dot(backward=False))) == 4


def test_render_dot_and_missing_graphviz(lesson, tmp_path, monkeypatch):
    path = lesson.render(tmp_path / "g.dot")
    assert path.read_text() == lesson.to_dot()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(GraphvizNotFoundError, match="apt-get install graphviz"):
        lesson.render(tmp_path / "g.svg")
    with pytest.raises(ValueError, match="unknown format"):
        lesson.render(tmp_path / "g.txt")


@pytest.mark.skipif(sys.platform == "win32", reason="uses a shell script as a fake dot")
def test_render_calls_graphviz_when_installed(lesson, tmp_path, monkeypatch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "dot"
    # A stand-in for Graphviz: records its arguments and copies stdin to the -o file.
    fake.write_text('#!/bin/sh\necho "$@" > "$(dirname "$0")/args"\ncat > "$3"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", str(bindir) + os.pathsep + os.environ.get("PATH", ""))
    out = lesson.render(tmp_path / "g.png")
    assert (bindir / "args").read_text().split() == ["-Tpng", "-o", str(out)]
    assert out.read_text() == lesson.to_dot()


# --------------------------------------------------------------------------- bad input
def test_non_scalar_output_suggests_reduction():
    with pytest.raises(ValueError, match=r"shape \(3,\).*funcgrad\.sum or funcgrad\.mean"):
        explain(lambda x: fg.square(x), jnp.ones(3))
    with pytest.raises(ValueError, match="returned 2 arrays"):
        explain(lambda x: (fg.sum(x), fg.sum(x)), jnp.ones(3))


def test_non_array_argument_is_named():
    with pytest.raises(TypeError, match=r"argument 'activation'.*str"):
        explain(lambda x, activation: fg.sum(x), jnp.ones(3), "relu")
    with pytest.raises(TypeError, match=r"argument 'config'.*config\.name"):
        explain(lambda x, config: fg.sum(x), jnp.ones(3), {"name": "relu", "lr": 0.1})


# --------------------------------------------------------------------------- CLI
def test_cli_explain_default_prints_lesson(capsys):
    assert cli_main(["explain"]) == 0
    out = capsys.readouterr().out
    for piece in ["y = 6", "L = 16", "dL/dy = 8", "∂y/∂w = 2", "dL/dw = 16", "dL/dx = 24",
                  "w_new = 3 - 0.1 × 16 = 1.4", "local derivative"]:
        assert piece in out, piece


@pytest.mark.parametrize("example,piece", [("graph", "z = 20"), ("pytorch", "dloss/dw = 8"),
                                           ("chain", "dz/dx = 0.393224")])
def test_cli_explain_examples(capsys, example, piece):
    assert cli_main(["explain", "--example", example]) == 0
    assert piece in capsys.readouterr().out


def test_cli_explain_dot_and_out(capsys, tmp_path):
    assert cli_main(["explain", "--format", "dot"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("digraph ") and "dL/dw = 16" in out
    target = tmp_path / "x.dot"
    assert cli_main(["explain", "--out", str(target)]) == 0
    assert target.read_text().startswith("digraph ")
    assert f"wrote {target}" in capsys.readouterr().out


def test_cli_explain_svg_without_graphviz(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert cli_main(["explain", "--out", str(tmp_path / "x.svg")]) == 2
    err = capsys.readouterr().err
    assert "Graphviz" in err and "install" in err
    assert not (tmp_path / "x.svg").exists()


@pytest.mark.parametrize("example", ["graph", "backprop", "pytorch", "chain"])
def test_dot_text_is_accepted_by_graphviz(example):
    """Real Graphviz parses every lesson graph (DOT keywords such as 'graph' are quoted)."""
    import shutil
    import subprocess

    assert dot_id("graph") == '"graph"' and dot_id("Node") == '"Node"'
    assert dot_id("loss") == "loss"
    if shutil.which("dot") is None:
        pytest.skip("Graphviz 'dot' is not installed")
    proc = subprocess.run(["dot", "-Tsvg"], input=lesson_graph(example).to_dot(),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "<svg" in proc.stdout
