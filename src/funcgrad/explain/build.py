""":func:`explain`: trace a function, run it forward and backward, build its :class:`Graph`.

How it works:

1. ``jax.make_jaxpr`` traces the function on its flattened arguments, and the
   :class:`~funcgrad.explain.tracing.Recorder` walks the jaxpr with the one walker
   (:mod:`funcgrad._jaxpr`). Calls to ``jax.jit`` functions, ``closed_call`` and
   ``jax.checkpoint`` are inlined, so a jitted function gives the same graph as the plain
   one. A funcgrad primitive is one ``custom_vjp_call`` equation, recognised by its named
   scope ``funcgrad.<name>`` and described by its registry record. The dtype casts its
   public function emits are folded into its node.
2. The function is evaluated again by the walker with a zero "probe" added to every node's
   output; ``jax.grad`` with respect to the probes gives ``dL/dnode`` for every node at
   once: exactly the adjoints that backpropagation computes, through the primitives' own
   hand-written rules. Forward and backward are compiled as one XLA program: one
   compilation costs less than running (and compiling) every operation eagerly, so a
   20-layer MLP's graph builds in under a second.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from .._jaxpr import UNROLL_LIMIT
from .arguments import flatten_arguments
from .graph import Graph
from .model import Node
from .naming import apply_names, step_names
from .tracing import Program, evaluate, is_float, record
from .values import aval_str, fmt_num

__all__ = ["Skeleton", "explain", "skeleton"]

def explain(
    fn: Callable[..., Any],
    *args: Any,
    names: Mapping[str | int, str] | Sequence[str | None] | None = None,
    unroll_limit: int = UNROLL_LIMIT,
    **kwargs: Any,
) -> Graph:
    """Trace ``fn``, run it forward and backward, and return its computational graph.

    Every funcgrad primitive call is one node; other JAX operations are nodes of their own.
    Each node records its op, its inputs, its value, the local derivative's formula and
    ``dL/dnode``. Inputs are named after ``fn``'s parameters, pytree leaves by their path
    (``params[0].w``, ``params.layer1.b``). Intermediate nodes are named after their op
    (``mul``, or ``dense_1``, ``dense_2`` when an op repeats) and the output is ``L``.

    Args:
        fn: a JAX-traceable function returning a scalar (a loss). It may take pytrees and
            may be wrapped in ``jax.jit``.
        *args: the arguments to call ``fn`` with. Every leaf must be an array or a number.
            A Python ``int`` is taken as a float (the lesson's ``x = 2``); pass an integer
            array (``jnp.array(3)``) for integer inputs such as class labels.
        names: new names for nodes: a mapping from a default name (or an operation's
            position among the op nodes) to a name, or a sequence of names for the op nodes
            in order (``None`` keeps the default).
        unroll_limit: a ``lax.scan`` of at most this many iterations is unrolled: each
            iteration's ops are nodes of their own, suffixed with the iteration
            (``matmul[3]``), and the carry leaving iteration ``t`` is the node ``h[t]``
            (named after the body's carry parameter). A longer scan is one ``scan`` node
            (with ``length``); :meth:`Graph.expand` unrolls it.
        **kwargs: keyword arguments for ``fn`` (traced like ``args``).

    Returns:
        The :class:`Graph`.

    Raises:
        ValueError: if ``fn`` does not return one real scalar (the message suggests
            wrapping it in ``funcgrad.sum`` or ``funcgrad.mean``), if ``names`` is
            invalid, or if ``unroll_limit`` is negative.
        TypeError: if an argument is not made of arrays; the message names it.

    Examples:
        >>> import funcgrad as fg
        >>> def loss(x, w, target):
        ...     return fg.squared_error(fg.mul(x, w), target)
        >>> g = fg.explain(loss, 2.0, 3.0, 2.0, names={"mul": "y"})
        >>> [(n.name, n.op, float(n.value), float(n.grad)) for n in g.nodes]
        [('y', 'mul', 6.0, 8.0), ('L', 'squared_error', 16.0, 1.0)]
        >>> [(n.name, float(n.value), float(n.grad)) for n in g.inputs]
        [('x', 2.0, 24.0), ('w', 3.0, 16.0), ('target', 2.0, -8.0)]
        >>> float(g["y"].local[1])     # dy/dw = x
        2.0
    """
    if isinstance(unroll_limit, bool) or not isinstance(unroll_limit, int) \
            or unroll_limit < 0:
        raise ValueError("explain: argument 'unroll_limit' must be an int >= 0; got "
                         f"{unroll_limit!r}")
    fn_name = getattr(fn, "__name__", None) or type(fn).__name__
    leaves, leaf_names, flat_fn = flatten_arguments(fn, args, kwargs)
    closed = jax.make_jaxpr(flat_fn)(*leaves)
    _check_output(fn_name, closed.out_avals)
    prog = record(closed, unroll_limit)
    graph = _build_graph(closed, prog, leaves, leaf_names, names, fn_name, unroll_limit)

    def rebuild(limit: int) -> Graph:
        return explain(fn, *args, names=names, unroll_limit=limit, **kwargs)

    graph._rebuild, graph.unroll_limit = rebuild, unroll_limit
    return graph


def _check_output(fn_name: str, out_avals: Sequence[Any], caller: str = "explain") -> None:
    if len(out_avals) != 1:
        raise ValueError(
            f"{caller}: {fn_name} must return one scalar (a loss); it returned "
            f"{len(out_avals)} arrays {[aval_str(a) for a in out_avals]}. Return a single "
            "scalar, e.g. the loss alone, or wrap it in funcgrad.sum or funcgrad.mean.")
    aval = out_avals[0]
    if aval.shape != ():
        raise ValueError(
            f"{caller}: {fn_name} must return a scalar; it returned an array of shape "
            f"{tuple(aval.shape)} ({aval.dtype}). Reduce it to a scalar: wrap it in "
            "funcgrad.sum or funcgrad.mean, e.g. explain(lambda *a: funcgrad.mean(f(*a)), ...).")
    if not jnp.issubdtype(aval.dtype, jnp.floating):
        raise ValueError(
            f"{caller}: {fn_name} must return a real floating-point scalar; it returned "
            f"{aval.dtype}. Gradients need a float loss.")


def _resolve(prog: Program, ids: Sequence[int], shown: set[int]) -> tuple[list[int], list[int]]:
    """Follow ids through hidden steps to shown sources; return (sources, hidden steps)."""
    sources: list[int] = []
    segment: set[int] = set()
    stack = list(reversed(ids))
    seen: set[int] = set()
    while stack:
        i = stack.pop()
        if i in seen:
            continue
        seen.add(i)
        if i in shown or i not in prog.producer:
            if i not in sources:
                sources.append(i)
            continue
        k = prog.producer[i]
        step = prog.steps[k]
        if not step.hidden:
            sources.append(i)
            continue
        segment.add(k)
        stack.extend(reversed(step.ins))
    return sources, sorted(segment)


def _source_nodes(prog: Program, leaf_names: Sequence[str], used_consts: Sequence[int],
                  taken: set[str]) -> dict[int, Node]:
    """The input and constant nodes (literals named after their value: ``4``), no values."""
    nodes: dict[int, Node] = {}
    for i, pname in zip(prog.in_ids, leaf_names, strict=True):
        nodes[i] = Node(name=pname, op="input", kind="input")
        taken.add(pname)
    counts: dict[str, int] = {}
    const_k = 0
    for i in used_consts:
        val = prog.consts[i]
        if i in prog.literal and jnp.ndim(val) == 0:
            base = fmt_num(val)
        else:
            const_k += 1
            base = f"const{const_k}"
        counts[base] = counts.get(base, 0) + 1
        name = base if counts[base] == 1 else f"{base}#{counts[base]}"
        while name in taken:
            name += "'"
        taken.add(name)
        nodes[i] = Node(name=name, op="const", kind="const", value=val)
    return nodes


def _op_names(prog: Program, visible: list[int], out_src: int, names: Any,
              taken: set[str], source_names: list[str]) -> tuple[list[str], dict[str, str]]:
    steps = [prog.steps[k] for k in visible]
    default_names = step_names([s.op for s in steps],
                               [(s.eqn.loop, s.eqn.iteration) for s in steps],
                               [s.label for s in steps], taken)
    out_k = prog.producer.get(out_src)
    out_pos = visible.index(out_k) if out_k in visible else None
    final_names = list(default_names)
    output_default = ""
    if out_pos is not None and "L" not in taken:
        final_names[out_pos] = "L"
        output_default = default_names[out_pos]
    return apply_names(names, default_names, final_names, output_default, source_names)


@dataclasses.dataclass
class Skeleton:
    """A graph's nodes before any value is computed: names, edges, layers.

    Attributes:
        visible: the indices of the steps shown as op nodes.
        edges: step index -> (source ids, hidden steps between them and the step).
        out_src: the id of the value shown as the output.
        used_consts: the constant ids that feed shown nodes.
        nodes_by_id: value id -> the node showing it (inputs, constants, op outputs).
        all_nodes: every node in topological order.
        node_of_step: step index -> its op node (visible steps only).
    """

    visible: list[int]
    edges: dict[int, tuple[list[int], list[int]]]
    out_src: int
    used_consts: list[int]
    nodes_by_id: dict[int, Node]
    all_nodes: list[Node]
    node_of_step: dict[int, Node]


def skeleton(prog: Program, leaf_names: Sequence[str], names: Any = None) -> Skeleton:
    """The graph's nodes, named as :func:`explain` names them, without values.

    Args:
        prog: the recorded program (:func:`~funcgrad.explain.tracing.record`).
        leaf_names: the flattened arguments' names.
        names: the user's renames, as for :func:`explain`.

    Returns:
        The :class:`Skeleton`.

    Raises:
        ValueError: for invalid ``names`` or two nodes with one name.
    """
    visible = [k for k, s in enumerate(prog.steps) if not s.hidden]
    visible_out = {o for k in visible for o in prog.steps[k].outs}
    shown = visible_out | set(prog.in_ids)
    edges = {k: _resolve(prog, prog.steps[k].ins, shown) for k in visible}
    (out_src,), _ = _resolve(prog, [prog.out_id], shown)
    used_consts = list(dict.fromkeys(
        [s for k in visible for s in edges[k][0] if s in prog.consts]
        + ([out_src] if out_src in prog.consts else [])))
    taken: set[str] = set()
    nodes_by_id = _source_nodes(prog, leaf_names, used_consts, taken)
    all_nodes = list(dict.fromkeys(nodes_by_id.values()))
    final_names, input_renames = _op_names(prog, visible, out_src, names, taken,
                                           [n.name for n in all_nodes])
    for node in all_nodes:
        node.name = input_renames.get(node.name, node.name)
    layer_of: dict[int, str] = {}
    node_of_step: dict[int, Node] = {}
    for pos, k in enumerate(visible):
        step = prog.steps[k]
        node = Node(name=final_names[pos], op=step.op, kind="op",
                    inputs=tuple(nodes_by_id[i] for i in edges[k][0]),
                    formula=step.formula, scope=step.scope, primitive=step.primitive)
        if step.eqn.primitive == "scan":
            node.length = int(step.eqn.params["length"])
            node.formula = (f"backprop through time over {node.length} iterations (more "
                            "than unroll_limit): graph.expand(name) shows each")
        node.layer = _layer(node, layer_of)
        layer_of[id(node)] = node.layer
        for o in step.outs:
            nodes_by_id[o] = node
        node_of_step[k] = node
        all_nodes.append(node)
    names_seen: set[str] = set()
    for node in all_nodes:
        if node.name in names_seen:
            raise ValueError(f"explain: two nodes are named {node.name!r}; choose distinct "
                             "names")
        names_seen.add(node.name)
    return Skeleton(visible, edges, out_src, used_consts, nodes_by_id, all_nodes,
                    node_of_step)


def _build_graph(closed: Any, prog: Program, leaves: list[Any], leaf_names: list[str],
                 names: Any, fn_name: str, unroll_limit: int) -> Graph:
    sk = skeleton(prog, leaf_names, names)
    visible_out = {o for k in sk.visible for o in prog.steps[k].outs}
    probe_ids = [i for i in (*prog.in_ids, *sk.used_consts, *(
        o for k in sk.visible for o in prog.steps[k].outs)) if is_float(prog.avals[i])]
    keep = set(prog.in_ids) | set(sk.used_consts) | visible_out
    values, grads = evaluate(closed, prog, leaves, probe_ids, keep, unroll_limit)
    for i in (*prog.in_ids, *sk.used_consts):
        node = sk.nodes_by_id[i]
        node.value, node.grad = values[i], grads.get(i)
    for k, node in sk.node_of_step.items():
        outs = prog.steps[k].outs
        vals = tuple(values[o] for o in outs)
        gs = tuple(grads.get(o) for o in outs)
        node.value = vals[0] if len(vals) == 1 else vals
        node.grad = gs[0] if len(gs) == 1 else gs
        srcs, segment = sk.edges[k]
        fn, diff = _segment(prog, k, srcs, segment, values)
        node._pullback = _make_pullback(fn, diff, len(srcs), [values[srcs[j]] for j in diff])
    return Graph(sk.all_nodes, sk.nodes_by_id[sk.out_src], fn_name)


def _segment(prog: Program, k: int, srcs: list[int], segment: list[int],
             values: Mapping[int, Any]) -> tuple[Callable[..., Any], list[int]]:
    """The node's own computation as a function of its float inputs (and their positions).

    It replays the hidden steps between the node's input nodes and the step itself (the
    primitives' input casts), then the step.
    """
    outs = prog.steps[k].outs
    diff = [j for j, s in enumerate(srcs) if is_float(prog.avals[s])]

    def fn(*xs: Any) -> Any:
        env = {s: values[s] for s in srcs}
        env.update({srcs[j]: x for j, x in zip(diff, xs, strict=True)})
        for h in (*segment, k):
            step = prog.steps[h]
            vals = step.eqn.bind(*[env[i] if i in env else prog.consts[i] for i in step.ins])
            env.update(zip(step.outs, vals, strict=True))
        res = tuple(env[o] for o in outs)
        return res[0] if len(res) == 1 else res

    return fn, diff


def _make_pullback(fn: Callable[..., Any], diff: list[int], n_inputs: int,
                   primals: list[Any]) -> Callable[[Any], tuple[Any, ...]]:
    """ct -> one cotangent per input (``None`` for inputs without a gradient)."""

    @jax.jit
    def vjp(primals: list[Any], ct: Any) -> tuple[Any, ...]:
        return jax.vjp(fn, *primals)[1](ct)

    def pullback(ct: Any) -> tuple[Any, ...]:
        result: list[Any] = [None] * n_inputs
        if not diff:
            return tuple(result)
        for j, p in zip(diff, vjp(primals, ct), strict=True):
            result[j] = p
        return tuple(result)

    return pullback


def _layer(node: Node, layer_of: Mapping[int, str]) -> str:
    """The layer a node belongs to, from the parameter inputs it consumes."""
    for i in node.inputs:
        if i.kind == "input":
            name = i.name
            cut = max(name.rfind("."), name.rfind("["))
            if cut > 0:
                return name[:cut]
    if node.primitive:
        from ..registry import PRIMITIVES

        prim = PRIMITIVES.get(node.op)
        if prim is not None and prim.category == "loss":
            return "loss"
    ops = [i for i in node.inputs if i.kind in ("op", "group")]
    return layer_of.get(id(ops[-1]), "") if ops else ""
