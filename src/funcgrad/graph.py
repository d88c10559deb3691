"""Computational graphs with a value and a gradient on every node: the lesson's diagrams.

:func:`explain` traces a scalar-valued function, runs it forward and backward, and returns a
:class:`Graph`. Each funcgrad primitive call (``funcgrad.mul``, ``funcgrad.dense``, ...) is
one node; any other JAX operation (``jnp.sin``, ``x @ w``) is a node of its own. Each node
records its op, its input edges, its output value, the local derivative's formula (from
:data:`funcgrad.registry.PRIMITIVES`) and ``dL/dnode``, the gradient of the output with
respect to that node.

How it works:

1. ``jax.make_jaxpr`` traces the function on its flattened arguments. Calls to ``jax.jit``
   functions (``jit``/``pjit``), ``closed_call`` and ``jax.checkpoint`` are inlined, so a
   jitted function gives the same graph as the plain one. A funcgrad primitive appears as
   one ``custom_vjp_call`` equation, named after its private ``jax.custom_vjp`` function
   (``_mul``), which is mapped back to the registry. The input validation that the
   primitives' public wrappers emit (dtype casts) is folded into the primitive's node.
2. The equations are evaluated one by one. A zero "probe" is added to every node's output,
   and ``jax.grad`` with respect to the probes gives ``dL/dnode`` for every node at once:
   exactly the adjoints that backpropagation computes, through the primitives' own
   hand-written rules.

Examples:
    >>> import funcgrad as fg
    >>> g = fg.explain(lambda x, w, target: fg.squared_error(fg.mul(x, w), target),
    ...                2.0, 3.0, 2.0, names={"mul": "y"})
    >>> [(n.name, n.op, float(n.value), float(n.grad)) for n in g.nodes]
    [('y', 'mul', 6.0, 8.0), ('L', 'squared_error', 16.0, 1.0)]
    >>> float(g["w"].grad), float(g["x"].grad)
    (16.0, 24.0)
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import keyword
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._text import text_table

try:
    from jax.extend.core import DropVar as _DropVar
    from jax.extend.core import Literal as _Literal
except ImportError:  # pragma: no cover - JAX versions without these in jax.extend
    from jax._src.core import DropVar as _DropVar
    from jax._src.core import Literal as _Literal

__all__ = [
    "Graph",
    "GraphvizNotFoundError",
    "LESSON_EXAMPLES",
    "LessonExample",
    "Node",
    "explain",
    "lesson_graph",
    "primitive_names",
]

# Call-like primitives whose body is inlined into the graph (names across JAX versions).
_INLINE_PRIMITIVES = frozenset(
    {"pjit", "jit", "closed_call", "core_call", "remat", "remat2", "checkpoint",
     "custom_lin_call"}
)
_JIT_MAX_EQNS = 32
_CUSTOM_VJP_PRIMITIVES = frozenset({"custom_vjp_call", "custom_vjp_call_jaxpr"})
_CUSTOM_JVP_PRIMITIVES = frozenset({"custom_jvp_call", "custom_jvp_call_jaxpr"})

#: Local derivatives of the JAX operations most often met outside funcgrad primitives.
_JAX_FORMULAS: Mapping[str, str] = {
    "add": "d(x+y)/dx = 1, d(x+y)/dy = 1",
    "add_any": "d(x+y)/dx = 1, d(x+y)/dy = 1",
    "sub": "d(x-y)/dx = 1, d(x-y)/dy = -1",
    "mul": "d(xy)/dx = y, d(xy)/dy = x",
    "div": "d(x/y)/dx = 1/y, d(x/y)/dy = -x/y^2",
    "neg": "d(-x)/dx = -1",
    "exp": "d(e^x)/dx = e^x",
    "exp2": "d(2^x)/dx = 2^x log 2",
    "log": "d(log x)/dx = 1/x",
    "log1p": "d(log(1+x))/dx = 1/(1+x)",
    "expm1": "d(e^x - 1)/dx = e^x",
    "sin": "d(sin x)/dx = cos x",
    "cos": "d(cos x)/dx = -sin x",
    "tan": "d(tan x)/dx = 1 + tan(x)^2",
    "tanh": "tanh'(x) = 1 - tanh(x)^2",
    "logistic": "sigmoid'(x) = f(x)(1 - f(x))",
    "integer_pow": "d(x^n)/dx = n*x^(n-1)",
    "pow": "d(x^y)/dx = y*x^(y-1), d(x^y)/dy = x^y log x",
    "square": "d(x^2)/dx = 2x",
    "sqrt": "d(sqrt x)/dx = 1/(2 sqrt x)",
    "rsqrt": "d(x^-1/2)/dx = -x^(-3/2)/2",
    "abs": "d|x|/dx = sign(x)",
    "sign": "d sign(x)/dx = 0",
    "max": "1 for the larger argument, 0 for the other (a tie splits 1/2, 1/2)",
    "min": "1 for the smaller argument, 0 for the other (a tie splits 1/2, 1/2)",
    "erf": "d erf(x)/dx = 2/sqrt(pi) e^(-x^2)",
    "dot_general": "d(AB): A_bar = G B^T, B_bar = A^T G",
    "reduce_sum": "d(sum x)/dx_i = 1",
    "reduce_max": "1 at the maximum, 0 elsewhere",
    "reduce_min": "1 at the minimum, 0 elsewhere",
    "argmax": "none (integer output)",
    "argmin": "none (integer output)",
    "cumsum": "x_bar = reverse cumulative sum of G",
    "broadcast_in_dim": "1 per copy: gradient summed over the broadcast axes",
    "reshape": "1: gradient reshaped back",
    "squeeze": "1: gradient reshaped back",
    "expand_dims": "1: gradient reshaped back",
    "transpose": "1: gradient transposed back",
    "rev": "1: gradient reversed back",
    "concatenate": "1: gradient sliced back to each piece",
    "stack": "1: gradient split back to each piece",
    "gt": "none (boolean output)",
    "ge": "none (boolean output)",
    "lt": "none (boolean output)",
    "le": "none (boolean output)",
    "eq": "none (boolean output)",
    "ne": "none (boolean output)",
    "pad": "1 on the original elements, 0 on the padding",
    "slice": "1 on the sliced elements, 0 elsewhere",
    "dynamic_slice": "1 on the sliced elements, 0 elsewhere",
    "gather": "1 on the gathered elements, 0 elsewhere (gradient scattered back)",
    "select_n": "1 for the selected case, 0 for the others; none for the predicate",
    "convert_element_type": "1 (a cast)",
    "copy": "1",
    "copy_p": "1",
    "stop_gradient": "0 (gradient stopped)",
    "custom_jvp_call": "the function's custom JVP rule",
}


class GraphvizNotFoundError(FileNotFoundError):
    """Raised by :meth:`Graph.render` when the Graphviz ``dot`` program is not installed."""


# ----------------------------------------------------------------------------- records
@dataclasses.dataclass(eq=False, repr=False)
class Node:
    """One node of a :class:`Graph`: an input, a constant, an operation or a group.

    Attributes:
        name: readable, unique name (``x``, ``params[0].w``, ``y``, ``dense_1``, ``L``).
        op: ``"input"``, ``"const"``, the registry name of a funcgrad primitive (``"mul"``)
            or the JAX primitive's name (``"sin"``, ``"dot_general"``); for a group, the
            member ops joined by ``" > "``.
        kind: ``"input"``, ``"const"``, ``"op"`` or ``"group"``.
        inputs: the nodes whose values flow into this one (the input edges).
        value: the node's output value (a tuple if the operation has several outputs).
        grad: ``dL/dnode`` with the value's shape, or ``None`` where there is no gradient
            (integer values such as class labels).
        formula: the local derivative, from the registry for funcgrad primitives.
        local: for a node with a scalar output, the numeric local partial derivatives
            ``d node / d input``, one per input (``None`` for inputs without a gradient);
            ``None`` when the output is not a scalar. Computed on first access.
        scope: the ``jax.named_scope`` path the operation was traced in (``""`` if none).
        layer: the layer the node belongs to, from the parameter names it consumes
            (``params[0]``), ``"loss"`` for losses, or ``""``.
        primitive: ``True`` for a funcgrad primitive (a registered custom VJP rule).
        members: for a group node, the nodes it collapses; empty otherwise.
    """

    name: str
    op: str
    kind: str
    inputs: tuple[Node, ...] = ()
    value: Any = None
    grad: Any = None
    formula: str = ""
    scope: str = ""
    layer: str = ""
    primitive: bool = False
    members: tuple[Node, ...] = ()
    _pullback: Callable[[Any], tuple[Any, ...]] | None = dataclasses.field(
        default=None, repr=False)
    _local: Any = dataclasses.field(default=None, repr=False)

    @property
    def local(self) -> tuple[Any, ...] | None:
        """``d node / d input`` for each input when the output is a scalar, else ``None``."""
        if self._local is None and self._pullback is not None \
                and not isinstance(self.value, tuple) and np.ndim(self.value) == 0 \
                and jnp.issubdtype(jnp.asarray(self.value).dtype, jnp.floating):
            self._local = self._pullback(jnp.ones_like(self.value))
        return self._local

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the value."""
        return tuple(np.shape(self.value)) if not isinstance(self.value, tuple) else ()

    @property
    def dtype(self) -> Any:
        """dtype of the value."""
        if isinstance(self.value, tuple):
            return None
        return jnp.asarray(self.value).dtype

    @property
    def input_names(self) -> tuple[str, ...]:
        """Names of the input nodes, in order."""
        return tuple(n.name for n in self.inputs)

    def summary(self, which: str = "value") -> str:
        """A one-line summary of the value (or ``which="grad"``) with shape and dtype.

        Scalars print as a number; arrays as ``f32[4,3] norm=... mean=... min=... max=...``.

        Args:
            which: ``"value"`` or ``"grad"``.

        Returns:
            The summary string (``"-"`` when there is no gradient).
        """
        return summarize(self.value if which == "value" else self.grad)

    def __repr__(self) -> str:
        grad = "None" if self.grad is None else _short(self.grad)
        return (f"Node(name={self.name!r}, op={self.op!r}, inputs={list(self.input_names)}, "
                f"value={_short(self.value)}, grad={grad})")


# ----------------------------------------------------------------------------- formatting
_DTYPE_SHORT = {"float32": "f32", "float64": "f64", "float16": "f16", "bfloat16": "bf16",
                "int32": "i32", "int64": "i64", "int16": "i16", "int8": "i8", "uint8": "u8",
                "uint32": "u32", "bool": "bool"}


def _dtype_short(dtype: Any) -> str:
    name = np.dtype(dtype).name
    return _DTYPE_SHORT.get(name, name)


def _fmt_num(v: Any) -> str:
    """Format a scalar as the lesson writes it: ``6``, ``1.4``, ``-0.25``."""
    arr = np.asarray(v)
    if arr.dtype == bool:
        return str(bool(arr))
    if np.issubdtype(arr.dtype, np.integer):
        return str(int(arr))
    f = float(arr)
    if math.isnan(f) or math.isinf(f):
        return str(f)
    if f == 0.0:
        return "0"
    return f"{f:.6g}"


def _aval_str(v: Any) -> str:
    try:
        dtype = _dtype_short(v.dtype)
    except TypeError:  # extended dtypes such as PRNG keys
        dtype = str(v.dtype)
    return f"{dtype}[{','.join(str(d) for d in v.shape)}]"


def _as_numpy(v: Any) -> np.ndarray | None:
    """``v`` as a NumPy array, or ``None`` for values NumPy cannot hold (PRNG keys)."""
    try:
        return np.asarray(v)
    except (TypeError, ValueError):
        return None


def _short(v: Any) -> str:
    """Compact value for diagrams: a number, or ``f32[4,3] norm=2.1``."""
    if v is None:
        return "-"
    if isinstance(v, tuple):
        return "(" + ", ".join(_short(x) for x in v) + ")"
    arr = _as_numpy(v)
    if arr is None:
        return _aval_str(v)
    if arr.shape == ():
        return _fmt_num(arr)
    if arr.size and np.issubdtype(arr.dtype, np.floating):
        return f"{_aval_str(arr)} norm={float(np.linalg.norm(arr.astype(np.float64))):.4g}"
    return _aval_str(arr)


def summarize(v: Any) -> str:
    """Summarise a value: a scalar as a number, an array as shape, dtype, norm, mean, min, max.

    Args:
        v: an array, a number, a tuple of arrays, or ``None``.

    Returns:
        A one-line string.

    Examples:
        >>> import jax.numpy as jnp
        >>> summarize(jnp.float32(1.4))
        '1.4'
        >>> summarize(jnp.array([[3.0, -4.0]]))
        'f32[1,2] norm=5 mean=-0.5 min=-4 max=3'
    """
    if v is None:
        return "-"
    if isinstance(v, tuple):
        return "(" + ", ".join(summarize(x) for x in v) + ")"
    arr = _as_numpy(v)
    if arr is None:
        return _aval_str(v)
    if arr.shape == ():
        return _fmt_num(arr)
    if arr.size == 0:
        return _aval_str(arr) + " (empty)"
    if np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer):
        a64 = arr.astype(np.float64)
        stats = (f"norm={np.linalg.norm(a64):.4g} mean={a64.mean():.4g} "
                 f"min={a64.min():.4g} max={a64.max():.4g}")
        return f"{_aval_str(arr)} {stats}"
    return _aval_str(arr)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


_ASCII = str.maketrans({"─": "-", "┐": "+", "┘": "+", "┤": "+", "├": "+", "┼": "+",
                        "┴": "+", "→": ">", "←": "<", "×": "*", "∂": "p", "²": "^2",
                        "−": "-"})


# ----------------------------------------------------------------------------- the graph
class Graph:
    """A traced computation: nodes in topological order, each with a value and a gradient.

    Built by :func:`explain`. ``graph["w"]`` looks a node up by name.

    Attributes:
        all_nodes: every node (inputs, constants, operations) in topological order.
        output: the node whose value is the function's (scalar) result ``L``.
        fn_name: the traced function's name.
    """

    def __init__(self, all_nodes: Sequence[Node], output: Node, fn_name: str = "fn",
                 loss_name: str | None = None) -> None:
        self.all_nodes: tuple[Node, ...] = tuple(all_nodes)
        self.output = output
        self.fn_name = fn_name
        self.loss_name = output.name if loss_name is None else loss_name
        self._by_name = {n.name: n for n in self.all_nodes}
        self._consumers: dict[int, tuple[Node, ...]] | None = None

    # ------------------------------------------------------------------ access
    @property
    def nodes(self) -> tuple[Node, ...]:
        """The operation nodes (no inputs, no constants), in topological order."""
        return tuple(n for n in self.all_nodes if n.kind in ("op", "group"))

    @property
    def inputs(self) -> tuple[Node, ...]:
        """The function's inputs: one node per array leaf of its arguments."""
        return tuple(n for n in self.all_nodes if n.kind == "input")

    @property
    def constants(self) -> tuple[Node, ...]:
        """Literal constants and closed-over arrays that feed operations."""
        return tuple(n for n in self.all_nodes if n.kind == "const")

    @property
    def values(self) -> dict[str, Any]:
        """name -> value, for every node."""
        return {n.name: n.value for n in self.all_nodes}

    @property
    def grads(self) -> dict[str, Any]:
        """name -> ``dL/dnode`` (``None`` where there is no gradient), for every node."""
        return {n.name: n.grad for n in self.all_nodes}

    def __getitem__(self, name: str) -> Node:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"no node named {name!r}; nodes: {list(self._by_name)}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __len__(self) -> int:
        return len(self.all_nodes)

    def __iter__(self) -> Iterator[Node]:
        return iter(self.all_nodes)

    def __repr__(self) -> str:
        return (f"Graph({self.fn_name}: {len(self.nodes)} ops, {len(self.inputs)} inputs, "
                f"{self.output.name} = {_short(self.output.value)})")

    def consumers(self, node: Node | str) -> tuple[Node, ...]:
        """The nodes that take ``node``'s value as an input.

        Args:
            node: a node or its name.

        Returns:
            The consuming nodes in topological order.
        """
        node = self[node] if isinstance(node, str) else node
        if self._consumers is None:
            table: dict[int, list[Node]] = {}
            for n in self.all_nodes:
                for i in {id(i): i for i in n.inputs}:
                    table.setdefault(i, []).append(n)
            self._consumers = {k: tuple(v) for k, v in table.items()}
        return self._consumers.get(id(node), ())

    def _dname(self, node: Node) -> str:
        return f"d{self.loss_name}/d{node.name}"

    def edge_grad(self, src: Node | str, dst: Node | str) -> Any:
        """The share of ``dL/dsrc`` that flows back along the edge ``src -> dst``.

        ``dL/dsrc`` is the sum of these shares over ``src``'s consumers (the chain rule's
        sum over paths). Each share is ``dst``'s local VJP applied to ``dL/ddst``.

        Args:
            src: the input node (or its name).
            dst: the consuming node (or its name).

        Returns:
            An array of ``src``'s shape, or ``None`` if ``src`` has no gradient.

        Raises:
            ValueError: if there is no edge from ``src`` to ``dst``.
        """
        src = self[src] if isinstance(src, str) else src
        dst = self[dst] if isinstance(dst, str) else dst
        idx = [k for k, i in enumerate(dst.inputs) if i is src]
        if not idx:
            raise ValueError(f"edge_grad: no edge {src.name!r} -> {dst.name!r}")
        if src.grad is None:
            return None
        if len(self.consumers(src)) == 1 or src is self.output:
            return src.grad
        if dst._pullback is None or dst.grad is None or isinstance(dst.grad, tuple):
            return None
        return dst._pullback(dst.grad)[idx[0]]

    # ------------------------------------------------------------------ training step
    def sgd_update(
        self, learning_rate: float, inputs: Iterable[str] | None = None
    ) -> dict[str, Any]:
        """One gradient-descent step for the inputs: ``w_new = w - learning_rate * dL/dw``.

        This is the lesson's "Step 4: update the weight", and the same as one step of
        ``optax.sgd(learning_rate)``.

        Args:
            learning_rate: the step size.
            inputs: names of the inputs to update; default every input with a gradient.

        Returns:
            name -> updated value.

        Examples:
            >>> import funcgrad as fg
            >>> g = fg.explain(lambda x, w, target: fg.squared_error(fg.mul(x, w), target),
            ...                2.0, 3.0, 2.0)
            >>> round(float(g.sgd_update(0.1, ["w"])["w"]), 5)
            1.4
        """
        nodes = self.inputs if inputs is None else [self[n] for n in inputs]
        out = {}
        for n in nodes:
            if n.grad is None:
                if inputs is not None:
                    raise ValueError(f"sgd_update: input {n.name!r} has no gradient "
                                     f"(dtype {n.dtype})")
                continue
            out[n.name] = jnp.asarray(n.value) - learning_rate * jnp.asarray(n.grad)
        return out

    # ------------------------------------------------------------------ collapse
    def collapse(self, by: str = "auto", depth: int | None = None) -> Graph:
        """Merge the operation nodes of each layer or named scope into one group node.

        Nodes are grouped by their ``jax.named_scope`` path (``by="scope"``), or by the
        layer of the parameters they consume (``by="layer"``: an op that takes
        ``params[0].w`` belongs to ``params[0]``, the ops after it inherit that layer, and
        losses form a ``loss`` group). ``"auto"`` uses scopes when the function has any.
        Consecutive nodes (in topological order) with the same key become one group named
        after the key (the group holding the output keeps the output's name), whose value
        and gradient are those of its last node.

        Args:
            by: ``"auto"``, ``"scope"`` or ``"layer"``.
            depth: with scopes, group by the first ``depth`` components of the path only.

        Returns:
            A new :class:`Graph` whose group nodes have ``kind == "group"`` and ``members``.
        """
        if by not in ("auto", "scope", "layer"):
            raise ValueError(f"collapse: by must be 'auto', 'scope' or 'layer'; got {by!r}")
        if by == "auto":
            by = "scope" if any(n.scope for n in self.nodes) else "layer"

        def key(n: Node) -> str:
            if n.kind not in ("op", "group"):
                return ""
            if by == "layer":
                return n.layer
            parts = [p for p in n.scope.split("/") if p]
            return "/".join(parts[:depth] if depth else parts)

        # Runs of consecutive op nodes with the same non-empty key.
        runs: list[list[Node]] = []
        run_keys: list[str] = []
        for n in self.all_nodes:
            k = key(n)
            if n.kind in ("input", "const"):
                continue
            if k and runs and run_keys[-1] == k:
                runs[-1].append(n)
            else:
                runs.append([n])
                run_keys.append(k)
        rep: dict[int, Node] = {}
        new_nodes: list[Node] = []
        for n in self.all_nodes:
            if n.kind in ("input", "const"):
                copy = dataclasses.replace(n)
                rep[id(n)] = copy
                new_nodes.append(copy)
        used_names = {n.name for n in new_nodes}
        seen: dict[str, int] = {}
        for members, k in zip(runs, run_keys, strict=True):
            member_ids = {id(m) for m in members}
            ext_inputs: list[Node] = []
            for m in members:
                for i in m.inputs:
                    if id(i) not in member_ids:
                        r = rep[id(i)]
                        if all(r is not e for e in ext_inputs):
                            ext_inputs.append(r)
            if len(members) == 1 and not k:
                m = members[0]
                new = dataclasses.replace(m, inputs=tuple(ext_inputs))
                if len(ext_inputs) != len(m.inputs):  # inputs merged: positions moved
                    new._pullback = None
            else:
                exit_node = members[-1]
                ops = []
                for m in members:
                    if not ops or ops[-1] != m.op:
                        ops.append(m.op)
                seen[k] = seen.get(k, 0) + 1
                name = k if seen[k] == 1 else f"{k} ({seen[k]})"
                if any(m is self.output for m in members):
                    name = self.output.name  # the loss keeps its name: dL/dL = 1
                while name in used_names:
                    name += "'"
                new = Node(name=name, op=" > ".join(ops), kind="group",
                           inputs=tuple(ext_inputs), value=exit_node.value,
                           grad=exit_node.grad,
                           formula=f"chain rule through {_plural(len(members), 'op')}: "
                                   + ", ".join(m.op for m in members),
                           scope=exit_node.scope, layer=exit_node.layer,
                           primitive=False, members=tuple(members))
            used_names.add(new.name)
            for m in members:
                rep[id(m)] = new
            new_nodes.append(new)
        return Graph(new_nodes, rep[id(self.output)], self.fn_name, self.loss_name)

    def _maybe_collapse(self, collapse: bool | None, max_nodes: int) -> tuple[Graph, str]:
        if collapse is None:
            collapse = len(self.nodes) > max_nodes
            if collapse:
                g = self.collapse()
                if len(g.nodes) < len(self.nodes):
                    return g, (f"(collapsed {len(self.nodes)} ops into {len(g.nodes)} nodes by "
                               "layer/scope; pass collapse=False to see every op)")
                return self, ""
            return self, ""
        if collapse:
            g = self.collapse()
            return g, f"(collapsed {len(self.nodes)} ops into {len(g.nodes)} nodes)"
        return self, ""

    # ------------------------------------------------------------------ text
    def _label(self, n: Node) -> str:
        v = _short(n.value)
        if n.kind == "const" and n.name.split("#")[0].rstrip("'") == v:
            return v  # a literal: its name is its value
        return f"{n.name} = {v}" if np.ndim(n.value) == 0 and not isinstance(n.value, tuple) \
            else f"{n.name}: {v}"

    def _glabel(self, n: Node) -> str:
        if n.grad is None:
            return f"{n.name} (no gradient)"
        v = _short(n.grad)
        sep = " = " if np.ndim(n.grad) == 0 and not isinstance(n.grad, tuple) else ": "
        return f"{self._dname(n)}{sep}{v}"

    def _forward_lines(self) -> list[str]:
        lines = []
        for n in self.nodes:
            labels = [self._label(i) for i in n.inputs]
            lines += _fan(labels, f"[{n.op}]", self._label(n), left=False)
        return lines

    def _edge_label(self, src: Node, dst: Node) -> str:
        """Gradient label of a backward arrow: ``dL/dx = 24``, or ``dL/dx += ...`` for one
        path's share when ``x`` feeds several nodes."""
        if src.grad is None or len(self.consumers(src)) <= 1:
            return self._glabel(src)
        share = self.edge_grad(src, dst)
        if share is None:
            return self._glabel(src) + " (total)"
        return f"{self._dname(src)} += {_short(share)}"

    def _backward_lines(self) -> list[str]:
        lines = []
        for n in reversed(self.nodes):
            labels = [self._edge_label(i, n) for i in n.inputs]
            lines += _fan(labels, f"[{n.op}]", self._glabel(n), left=True)
        return lines

    def _chain_lines(self) -> list[str]:
        """``dL/dn = dL/dc × ∂c/∂n`` for scalar nodes whose consumers have scalar partials."""
        out = self.output
        lines = [f"{self._dname(out)} = 1"]
        for n in reversed(self.all_nodes):
            if n is out or n.grad is None or np.ndim(n.grad) != 0 \
                    or isinstance(n.grad, tuple):
                continue
            terms_sym, terms_num = [], []
            ok = True
            cons = self.consumers(n)
            if not cons:
                continue
            for c in cons:
                idx = next(k for k, i in enumerate(c.inputs) if i is n)
                part = None if c.local is None else c.local[idx]
                if part is None or np.ndim(part) != 0 or c.grad is None \
                        or np.ndim(c.grad) != 0:
                    ok = False
                    break
                local = f"∂{c.name}/∂{n.name}"
                if c is out:
                    terms_sym.append(local)
                    terms_num.append(_fmt_num(part))
                else:
                    terms_sym.append(f"{self._dname(c)} × {local}")
                    terms_num.append(f"{_fmt_num(c.grad)} × {_fmt_num(part)}")
            if not ok:
                continue
            sym = " + ".join(terms_sym)
            num = " + ".join(terms_num)
            total = _fmt_num(n.grad)
            eq = f"{self._dname(n)} = {sym}"
            if num != total:
                eq += f" = {num}"
            lines.append(f"{eq} = {total}")
        return lines if len(lines) > 1 else []

    def _local_text(self, n: Node) -> str:
        text = n.formula
        if n.local is not None and n.kind == "op":
            parts = [f"∂{n.name}/∂{i.name} = {_short(p)}"
                     for i, p in zip(n.inputs, n.local, strict=True) if p is not None]
            if parts:
                text = f"{text}; {', '.join(parts)}" if text else ", ".join(parts)
        return text

    def table(self, learning_rate: float | None = None,
              update: Iterable[str] | None = None) -> str:
        """The node table: node, op, value, local derivative and ``dL/dnode``.

        Args:
            learning_rate: if given, add a column with ``w - learning_rate * dL/dw`` for the
                inputs.
            update: the inputs to update (default all inputs with a gradient).

        Returns:
            The table as text.
        """
        headers = ["node", "op", "value", "local derivative", f"d{self.loss_name}/dnode"]
        new = self.sgd_update(learning_rate, update) if learning_rate is not None else {}
        if new:
            headers.append("w - lr * grad")
        rows = []
        for n in self.all_nodes:
            if n.kind in ("input", "const"):
                op = n.kind
            else:
                op = f"{n.op}({', '.join(n.input_names)})"
            row = [n.name, op, summarize(n.value), self._local_text(n), summarize(n.grad)]
            if new:
                row.append(summarize(new[n.name]) if n.name in new else "")
            rows.append(row)
        return text_table(rows, headers)

    def to_text(
        self,
        learning_rate: float | None = None,
        update: Iterable[str] | None = None,
        collapse: bool | None = None,
        max_nodes: int = 40,
        ascii: bool = False,  # noqa: A002
        title: str | None = None,
    ) -> str:
        """Draw the forward and backward passes in the lesson's style, then the node table.

        Forward arrows carry values (``x = 2 ──┐ ... ├─→ [mul] ──→ y = 6``); backward
        arrows carry gradients (``dL/dw = 16 ←──┘``). For scalar graphs the chain rule is
        written out node by node (``dL/dw = dL/dy × ∂y/∂w = 8 × 2 = 16``).

        Args:
            learning_rate: if given, also show the gradient-descent update
                ``w_new = w - learning_rate * dL/dw`` for the inputs.
            update: the inputs to update (default all inputs with a gradient).
            collapse: group nodes by layer or named scope (:meth:`collapse`); the default
                ``None`` collapses only graphs with more than ``max_nodes`` operations.
            max_nodes: the threshold for automatic collapsing.
            ascii: use plain ASCII instead of box-drawing characters (``∂`` becomes ``p``).
            title: a line to print first.

        Returns:
            The drawing and the table as one string.
        """
        g, note = self._maybe_collapse(collapse, max_nodes)
        lines = [f"Computational graph of {self.fn_name}: {_plural(len(g.nodes), 'op')}, "
                 f"{_plural(len(g.inputs), 'input')}, {g.output.name} = "
                 f"{_short(g.output.value)}"]
        if title:
            lines[:0] = [title, ""]
        if note:
            lines.append(note)
        if not g.nodes:
            lines.append(f"(no operations: the output is {g.output.kind} {g.output.name})")
        lines += ["", "Forward pass (values flow left to right):", *g._forward_lines()]
        lines += ["", "Backward pass (gradients flow right to left; += is one path's share "
                      "of a gradient that sums over paths):"
                  if any(len(g.consumers(n)) > 1 for n in g.all_nodes if n.grad is not None)
                  else "Backward pass (gradients flow right to left):", *g._backward_lines()]
        chain = g._chain_lines()
        if chain:
            lines += ["", "Chain rule, node by node (d = total derivative, ∂ = local "
                      "derivative):", *(f"  {c}" for c in chain)]
        lines += ["", g.table(learning_rate, update)]
        if learning_rate is not None:
            new = g.sgd_update(learning_rate, update)
            if new:
                lines += ["", f"Gradient-descent update (learning_rate = {learning_rate}): "
                              "w_new = w - learning_rate × dL/dw"]
                for name, v in new.items():
                    n = g[name]
                    if np.ndim(v) == 0:
                        lines.append(f"  {name}_new = {_fmt_num(n.value)} - {learning_rate} × "
                                     f"{_fmt_num(n.grad)} = {_fmt_num(v)}")
                    else:
                        lines.append(f"  {name}_new = {name} - {learning_rate} × "
                                     f"{g._dname(n)}: {summarize(v)}")
        text = "\n".join(lines)
        return text.translate(_ASCII) if ascii else text

    def __str__(self) -> str:
        return self.to_text()

    # ------------------------------------------------------------------ DOT
    def to_dot(self, collapse: bool | None = False, backward: bool = True,
               max_nodes: int = 40) -> str:
        """Graphviz DOT text: one box per node with its value and gradient.

        Forward edges are labelled with the value that flows along them; with
        ``backward=True`` a dashed red edge runs back along every edge into a node that has
        a gradient, labelled with that gradient. No Graphviz installation is needed to make
        the text (only to draw it, see :meth:`render`).

        Args:
            collapse: group nodes by layer or scope (``None``: only above ``max_nodes``).
            backward: add the dashed gradient edges.
            max_nodes: the threshold for automatic collapsing.

        Returns:
            The DOT source.
        """
        g, _ = self._maybe_collapse(collapse, max_nodes)
        ids = {id(n): f"n{k}" for k, n in enumerate(g.all_nodes)}
        out = [f"digraph {_dot_id(self.fn_name)} {{", "  rankdir=LR;",
               '  node [fontname="Helvetica", fontsize=10];',
               '  edge [fontname="Helvetica", fontsize=9];']
        for n in g.all_nodes:
            if n.kind == "input":
                head, shape, style = f"{n.name} (input)", "ellipse", ""
            elif n.kind == "const":
                head, shape, style = f"{n.name} (constant)", "ellipse", ', style="dashed"'
            else:
                head = f"{n.name} = {n.op}({', '.join(n.input_names)})"
                shape = "box"
                style = ', style="rounded,filled", fillcolor="#eef3fb"' if n.primitive else \
                    ', style="rounded"'
            rows = [head, f"value = {summarize(n.value)}",
                    f"{g._dname(n)} = {summarize(n.grad)}"]
            if n.formula and n.kind != "group":
                rows.append(f"local: {n.formula}")
            elif n.kind == "group":
                rows.append(f"{len(n.members)} ops")
            label = "\\n".join(_dot_escape(r) for r in rows)
            out.append(f'  {ids[id(n)]} [shape={shape}{style}, label="{label}"];')
        for n in g.all_nodes:
            for i in n.inputs:
                out.append(f'  {ids[id(i)]} -> {ids[id(n)]} '
                           f'[label="{_dot_escape(_short(i.value))}"];')
        if backward:
            for n in g.all_nodes:
                for i in n.inputs:
                    if i.grad is None:
                        continue
                    label = _dot_escape(g._edge_label(i, n))
                    out.append(f'  {ids[id(n)]} -> {ids[id(i)]} [style=dashed, '
                               f'color="#c0392b", fontcolor="#c0392b", constraint=false, '
                               f'label="{label}"];')
        out.append("}")
        return "\n".join(out) + "\n"

    def render(self, path: str | os.PathLike[str], format: str | None = None,  # noqa: A002
               collapse: bool | None = False) -> Path:
        """Write the graph as DOT, SVG, PNG or PDF, chosen by ``format`` or the suffix.

        ``.dot``/``.gv`` is written directly. The other formats run the Graphviz ``dot``
        program, which must be installed.

        Args:
            path: the output file.
            format: ``"dot"``, ``"svg"``, ``"png"`` or ``"pdf"``; default from the suffix.
            collapse: as in :meth:`to_dot`.

        Returns:
            The path written.

        Raises:
            GraphvizNotFoundError: for SVG/PNG/PDF when ``dot`` is not on ``PATH``.
            ValueError: for an unknown format.
        """
        path = Path(path)
        fmt = (format or path.suffix.lstrip(".")).lower()
        if fmt in ("gv",):
            fmt = "dot"
        if fmt not in ("dot", "svg", "png", "pdf"):
            raise ValueError(f"render: unknown format {fmt!r} for {str(path)!r}; use a .dot, "
                             ".svg, .png or .pdf file name (or format=...)")
        text = self.to_dot(collapse=collapse)
        if fmt == "dot":
            path.write_text(text, encoding="utf-8")
            return path
        exe = shutil.which("dot")
        if exe is None:
            raise GraphvizNotFoundError(
                f"writing {fmt.upper()} ({str(path)!r}) needs the Graphviz 'dot' program, which "
                "is not installed (not found on PATH). Install Graphviz: 'apt-get install "
                "graphviz' (Debian/Ubuntu), 'brew install graphviz' (macOS) or 'conda install "
                "-c conda-forge graphviz'; or write DOT text instead (a .dot file, "
                "Graph.to_dot()) and render it elsewhere.")
        proc = subprocess.run([exe, f"-T{fmt}", "-o", str(path)], input=text.encode("utf-8"),
                              capture_output=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"render: dot failed with exit code {proc.returncode}: "
                               f"{proc.stderr.decode('utf-8', 'replace').strip()}")
        return path


def _fan(labels: list[str], box: str, out: str, left: bool) -> list[str]:
    """Draw inputs converging on one op, the lesson's ``──┐ ├─→ ──┘`` shape.

    Forward (``left=False``): ``x = 2 ──┐ / ├─→ [mul] ──→ y = 6 / w = 3 ──┘``. Backward
    (``left=True``): ``dL/dx = 24 ←─┐ / ├── [mul] ←── dL/dy = 8 / dL/dw = 16 ←─┘``.
    """
    stem, tail = ("←─", f"── {box} ←── {out}") if left else ("──", f"─→ {box} ──→ {out}")
    k = len(labels)
    if k == 0:
        return [f"  {box} {'←──' if left else '──→'} {out}"]
    if k == 1:
        return [f"  {labels[0]} {stem}{tail}"]
    w = max(len(s) for s in labels)
    rows = []
    for i, lab in enumerate(labels):
        corner = "┐" if i == 0 else ("┘" if i == k - 1 else "┤")
        rows.append(f"  {lab.ljust(w)} {stem}{corner}")
    if k % 2:
        mid = k // 2
        rows[mid] = f"  {labels[mid].ljust(w)} {stem}┼{tail}"
    else:
        rows.insert(k // 2, " " * (w + 5) + "├" + tail)
    return rows


def _dot_escape(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"')


_DOT_KEYWORDS = {"node", "edge", "graph", "digraph", "subgraph", "strict"}


def _dot_id(s: str) -> str:
    """A DOT identifier: bare when safe, quoted otherwise (DOT keywords are case-blind)."""
    if s.isidentifier() and s.isascii() and s.lower() not in _DOT_KEYWORDS:
        return s
    return '"' + _dot_escape(s) + '"'


# ----------------------------------------------------------------------------- registry map
@functools.cache
def primitive_names() -> dict[str, str]:
    """Map each registered primitive's private ``jax.custom_vjp`` function to its name.

    The public wrapper ``funcgrad.mul`` calls ``_mul``, a ``jax.custom_vjp`` object in the
    same module; in a jaxpr the call appears as a ``custom_vjp_call`` named ``_mul``. The
    map is built by looking up, in the wrapper's module, the names its code refers to.

    Returns:
        private function name -> registry name (``{"_mul": "mul", ...}``).

    Examples:
        >>> primitive_names()["_sigmoid_bce"]
        'sigmoid_binary_cross_entropy'
    """
    return {k[0]: v for k, v in _primitive_keys().items()}


@functools.cache
def _primitive_keys() -> dict[tuple[str, str], str]:
    """(private name, real source file) -> registry name."""
    from .registry import PRIMITIVES

    out: dict[tuple[str, str], str] = {}
    for name, prim in PRIMITIVES.items():
        fn = inspect.unwrap(prim.fn)
        module = sys.modules.get(fn.__module__)
        code = getattr(fn, "__code__", None)
        candidates = list(code.co_names) if code is not None else []
        candidates.append("_" + name)
        found = None
        for attr in candidates:
            obj = getattr(module, attr, None)
            if isinstance(obj, jax.custom_vjp):
                found = obj
                break
        if found is None:
            continue
        inner = getattr(found, "fun", None)
        pname = getattr(inner, "__name__", None) or getattr(found, "__name__", attr)
        try:
            src = os.path.realpath(inspect.getsourcefile(inner) or "")
        except TypeError:
            src = ""
        out[(pname, src)] = name
    return out


def _custom_vjp_info(params: Mapping[str, Any]) -> tuple[list[tuple[str, str]], str]:
    """Candidate (function name, source file) pairs of a ``custom_vjp_call`` equation, best
    first, and the backward rule's name."""
    candidates = []
    for key in ("call_jaxpr", "fun_jaxpr"):
        j = params.get(key)
        if j is not None:
            name, src = _parse_src_info(getattr(getattr(j, "jaxpr", j), "debug_info", None))
            if name:
                candidates.append((name, src))
    bwd_name, bwd_src = _parse_src_info(getattr(params.get("bwd"), "debug_info", None))
    if bwd_name.endswith("_bwd"):
        candidates.append((bwd_name[: -len("_bwd")], bwd_src))
    return candidates, bwd_name


def _parse_src_info(dbg: Any) -> tuple[str, str]:
    if dbg is None:
        return "", ""
    info = getattr(dbg, "func_src_info", None) or ""
    name = getattr(dbg, "func_name", None) or info.split(" at ")[0]
    src = ""
    if " at " in info:
        src = info.split(" at ", 1)[1].rsplit(":", 1)[0]
        src = os.path.realpath(src)
    return name.rsplit(".", 1)[-1], src


def _registry_name(candidates: Sequence[tuple[str, str]]) -> str | None:
    """The registry name for a custom_vjp function, matched by name and source file."""
    keys = _primitive_keys()
    for fname, src in candidates:
        if (fname, src) in keys:
            return keys[(fname, src)]
    # The same file seen through another path (a symlink, a copied tree): match the name
    # and the file's base name.
    for fname, src in candidates:
        for (kname, ksrc), reg in keys.items():
            if fname == kname and (not src or os.path.basename(src) == os.path.basename(ksrc)):
                return reg
    return None


def _jaxpr_func_name(params: Mapping[str, Any]) -> str:
    for key in ("call_jaxpr", "fun_jaxpr", "jaxpr"):
        j = params.get(key)
        if j is not None:
            name, _ = _parse_src_info(getattr(getattr(j, "jaxpr", j), "debug_info", None))
            if name:
                return name
    return ""


# ----------------------------------------------------------------------------- tracing
def _primitives_dir() -> str:
    from . import primitives

    return os.path.realpath(os.path.dirname(primitives.__file__)) + os.sep


@dataclasses.dataclass
class _Eqn:
    prim: Any
    params: Any
    ctx: Any
    ins: list[int]
    outs: list[int | None]
    scope: str
    op: str
    formula: str
    primitive: bool
    hidden: bool


class _Program:
    """The inlined equations of a jaxpr over integer value ids."""

    def __init__(self) -> None:
        self.eqns: list[_Eqn] = []
        self.avals: dict[int, Any] = {}
        self.consts: dict[int, Any] = {}
        self.literal: set[int] = set()
        self.producer: dict[int, int] = {}
        self._next = 0

    def new_id(self, aval: Any) -> int:
        i = self._next
        self._next += 1
        self.avals[i] = aval
        return i

    def new_const(self, value: Any, literal: bool) -> int:
        arr = jnp.asarray(value)
        i = self.new_id(jax.ShapeDtypeStruct(arr.shape, arr.dtype))
        self.consts[i] = arr
        if literal:
            self.literal.add(i)
        return i


def _is_literal(atom: Any) -> bool:
    return isinstance(atom, _Literal)


def _is_dropvar(atom: Any) -> bool:
    return isinstance(atom, _DropVar)


def _sub_jaxpr(params: Mapping[str, Any]) -> tuple[Any, Sequence[Any]] | None:
    for key in ("jaxpr", "call_jaxpr"):
        sub = params.get(key)
        if sub is None:
            continue
        if hasattr(sub, "consts") and hasattr(sub, "jaxpr"):
            return sub.jaxpr, sub.consts
        if hasattr(sub, "eqns"):
            return sub, ()
    return None


def _join_scope(outer: str, inner: str) -> str:
    return "/".join(p for p in (outer, inner) if p)


def _from_primitives(eqn: Any, prim_dir: str) -> bool:
    tb = getattr(eqn.source_info, "traceback", None)
    if tb is None:
        return False
    try:
        frames = tb.frames
    except Exception:  # pragma: no cover - depends on the jaxlib build
        return False
    return any(_realpath(fr.file_name).startswith(prim_dir) for fr in frames)


@functools.lru_cache(maxsize=4096)
def _realpath(path: str) -> str:
    return os.path.realpath(path)


def _flatten(jaxpr: Any, consts: Sequence[Any], in_ids: Sequence[int], scope: str,
             prog: _Program, prim_dir: str) -> list[int]:
    env: dict[Any, int] = {}
    for v, c in zip(jaxpr.constvars, consts, strict=True):
        env[v] = prog.new_const(c, literal=False)
    for v, i in zip(jaxpr.invars, in_ids, strict=True):
        env[v] = i

    def read(a: Any) -> int:
        return prog.new_const(a.val, literal=True) if _is_literal(a) else env[a]

    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        ins = [read(a) for a in eqn.invars]
        eqn_scope = _join_scope(scope, str(eqn.source_info.name_stack))
        sub = _sub_jaxpr(eqn.params) if name in _INLINE_PRIMITIVES else None
        if sub is not None:
            outs = _flatten(sub[0], sub[1], ins, eqn_scope, prog, prim_dir)
            for v, o in zip(eqn.outvars, outs, strict=True):
                if not _is_dropvar(v):
                    env[v] = o
            continue
        out_ids: list[int | None] = []
        for v in eqn.outvars:
            i = prog.new_id(v.aval)
            out_ids.append(i)
            if not _is_dropvar(v):
                env[v] = i
        primitive = False
        if name in _CUSTOM_VJP_PRIMITIVES:
            candidates, bwd_name = _custom_vjp_info(eqn.params)
            reg = _registry_name(candidates)
            if reg is not None:
                from .registry import PRIMITIVES

                op, formula, primitive = reg, PRIMITIVES[reg].formula, True
            else:
                op = (candidates[0][0] if candidates else "").lstrip("_") or name
                formula = f"custom VJP rule {bwd_name or ''}".rstrip()
            hidden = False
        else:
            if name in _CUSTOM_JVP_PRIMITIVES:
                op = _jaxpr_func_name(eqn.params) or name
                formula = _JAX_FORMULAS["custom_jvp_call"]
            else:
                op = name
                formula = _JAX_FORMULAS.get(name, f"JAX's built-in rule for {name}")
            identity_cast = (name == "convert_element_type" and len(eqn.invars) == 1
                             and np.dtype(eqn.invars[0].aval.dtype)
                             == np.dtype(eqn.outvars[0].aval.dtype))
            hidden = identity_cast or _from_primitives(eqn, prim_dir)
        k = len(prog.eqns)
        for o in out_ids:
            prog.producer[o] = k
        prog.eqns.append(_Eqn(eqn.primitive, eqn.params, getattr(eqn, "ctx", None), ins,
                              out_ids, eqn_scope, op, formula, primitive, hidden))
    return [read(a) for a in jaxpr.outvars]


def _bind(e: _Eqn, invals: Sequence[Any]) -> list[Any]:
    """Evaluate one equation, as ``jax.core.eval_jaxpr`` does."""
    params = e.prim.get_bind_params(e.params)
    manager = getattr(e.ctx, "manager", None)
    with manager if manager is not None else contextlib.nullcontext():
        if isinstance(params, tuple):  # older JAX: (subfuns, params)
            subfuns, params = params
            out = e.prim.bind(*subfuns, *invals, **params)
        else:
            out = e.prim.bind(*invals, **params)
    return list(out) if e.prim.multiple_results else [out]


def _is_float(aval: Any) -> bool:
    return jnp.issubdtype(aval.dtype, jnp.inexact)


# ----------------------------------------------------------------------------- arguments
def _key_str(k: Any) -> str:
    if isinstance(k, jax.tree_util.DictKey):
        key = k.key
        if isinstance(key, str) and key.isidentifier() and not keyword.iskeyword(key):
            return f".{key}"
        return f"[{key!r}]"
    if isinstance(k, jax.tree_util.GetAttrKey):
        return f".{k.name}"
    if isinstance(k, jax.tree_util.SequenceKey):
        return f"[{k.idx}]"
    if isinstance(k, jax.tree_util.FlattenedIndexKey):
        return f"[{k.key}]"
    return jax.tree_util.keystr((k,))


def _is_array_leaf(x: Any) -> bool:
    return isinstance(x, (jax.Array, np.ndarray, np.generic, bool, int, float, complex)) \
        or hasattr(x, "__jax_array__")


def _bind_arguments(fn: Callable[..., Any], args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> tuple[list[tuple[str, Any]], Callable]:
    """[(argument name, value)] and a function of those values that calls ``fn``."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        sig = None
    if sig is None:
        items = [(f"arg{i}", a) for i, a in enumerate(args)] + list(kwargs.items())
        n = len(args)

        def call(values: Sequence[Any]) -> Any:
            return fn(*values[:n], **dict(zip(kwargs, values[n:], strict=True)))

        return items, call
    bound = sig.bind(*args, **kwargs)
    items = list(bound.arguments.items())

    def call_bound(values: Sequence[Any]) -> Any:
        b = inspect.BoundArguments(sig, dict(zip([k for k, _ in items], values, strict=True)))
        return fn(*b.args, **b.kwargs)

    return items, call_bound


# ----------------------------------------------------------------------------- explain
def explain(
    fn: Callable[..., Any],
    *args: Any,
    names: Mapping[str | int, str] | Sequence[str | None] | None = None,
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
        **kwargs: keyword arguments for ``fn`` (traced like ``args``).

    Returns:
        The :class:`Graph`.

    Raises:
        ValueError: if ``fn`` does not return one real scalar (the message suggests
            wrapping it in ``funcgrad.sum`` or ``funcgrad.mean``), or if ``names`` is
            invalid.
        TypeError: if an argument is not made of arrays; the message names it.

    Examples:
        >>> import funcgrad as fg
        >>> def loss(x, w, target):
        ...     return fg.squared_error(fg.mul(x, w), target)
        >>> g = explain(loss, 2.0, 3.0, 2.0, names={"mul": "y"})
        >>> [(n.name, float(n.value), float(n.grad)) for n in g.inputs]
        [('x', 2.0, 24.0), ('w', 3.0, 16.0), ('target', 2.0, -8.0)]
        >>> float(g["y"].local[1])     # dy/dw = x
        2.0
    """
    fn_name = getattr(fn, "__name__", None) or type(fn).__name__
    items, call = _bind_arguments(fn, args, kwargs)

    # Validate and flatten the arguments; name every leaf.
    leaves: list[Any] = []
    leaf_names: list[str] = []
    treedefs = []
    for argname, value in items:
        with_path, treedef = jax.tree_util.tree_flatten_with_path(value)
        for path, leaf in with_path:
            pname = argname + "".join(_key_str(k) for k in path)
            if not _is_array_leaf(leaf):
                where = f" (at {pname})" if path else ""
                raise TypeError(
                    f"explain: argument {argname!r} must be an array, a number or a pytree of "
                    f"them; got a {type(leaf).__name__} ({leaf!r}){where}. Pass non-array "
                    "options through functools.partial or a closure instead.")
            if isinstance(leaf, int) and not isinstance(leaf, bool):
                leaf = float(leaf)  # the lesson's "x = 2": a number to differentiate
            leaves.append(jnp.asarray(leaf))
            leaf_names.append(pname)
        treedefs.append((treedef, len(with_path)))

    def flat_fn(*flat: Any) -> Any:
        values, k = [], 0
        for treedef, count in treedefs:
            values.append(jax.tree_util.tree_unflatten(treedef, flat[k:k + count]))
            k += count
        return call(values)

    closed = jax.make_jaxpr(flat_fn)(*leaves)
    outs = closed.jaxpr.outvars
    out_avals = closed.out_avals
    if len(outs) != 1:
        raise ValueError(
            f"explain: {fn_name} must return one scalar (a loss); it returned {len(outs)} "
            f"arrays {[_aval_str(a) for a in out_avals]}. Return a single scalar, e.g. the "
            "loss alone, or wrap it in funcgrad.sum or funcgrad.mean.")
    aval = out_avals[0]
    if aval.shape != ():
        raise ValueError(
            f"explain: {fn_name} must return a scalar; it returned an array of shape "
            f"{tuple(aval.shape)} ({aval.dtype}). Reduce it to a scalar: wrap it in "
            "funcgrad.sum or funcgrad.mean, e.g. explain(lambda *a: funcgrad.mean(f(*a)), ...).")
    if not jnp.issubdtype(aval.dtype, jnp.floating):
        raise ValueError(
            f"explain: {fn_name} must return a real floating-point scalar; it returned "
            f"{aval.dtype}. Gradients need a float loss.")

    prog = _Program()
    in_ids = [prog.new_id(a) for a in closed.in_avals]
    (out_id,) = _flatten(closed.jaxpr, closed.consts, in_ids, "", prog, _primitives_dir())
    return _build_graph(prog, in_ids, out_id, leaves, leaf_names, names, fn_name)


def _resolve(prog: _Program, ids: Sequence[int], visible_ids: set[int]
             ) -> tuple[list[int], list[int]]:
    """Follow ids through hidden equations to visible sources; return (sources, segment)."""
    sources: list[int] = []
    segment: set[int] = set()
    stack = list(reversed(ids))
    seen: set[int] = set()
    while stack:
        i = stack.pop()
        if i in seen:
            continue
        seen.add(i)
        if i in visible_ids or i not in prog.producer:
            if i not in sources:
                sources.append(i)
            continue
        k = prog.producer[i]
        e = prog.eqns[k]
        if not e.hidden:
            sources.append(i)
            continue
        segment.add(k)
        stack.extend(reversed(e.ins))
    return sources, sorted(segment)


def _build_graph(prog: _Program, in_ids: list[int], out_id: int, leaves: list[Any],
                 leaf_names: list[str], names: Any, fn_name: str) -> Graph:
    visible = [k for k, e in enumerate(prog.eqns) if not e.hidden]
    visible_out: set[int] = {o for k in visible for o in prog.eqns[k].outs if o is not None}
    input_set = set(in_ids)

    # Edges of each visible equation, through hidden ones.
    shown = visible_out | input_set
    edges: dict[int, tuple[list[int], list[int]]] = {}
    for k in visible:
        edges[k] = _resolve(prog, prog.eqns[k].ins, shown)
    (out_src,), _ = _resolve(prog, [out_id], shown)
    used_consts: list[int] = []
    for k in visible:
        for s in edges[k][0]:
            if s in prog.consts and s not in used_consts:
                used_consts.append(s)
    if out_src in prog.consts and out_src not in used_consts:
        used_consts.append(out_src)

    # Probes on every displayed float value: inputs, used constants, visible outputs.
    probe_ids = [i for i in (*in_ids, *used_consts) if _is_float(prog.avals[i])]
    probe_ids += [o for k in visible for o in prog.eqns[k].outs
                  if o is not None and _is_float(prog.avals[o])]
    probe_set = set(probe_ids)

    def run(probes: dict[int, Any], leaves: list[Any]) -> tuple[Any, dict[int, Any]]:
        env: dict[int, Any] = dict(prog.consts)
        env.update(zip(in_ids, leaves, strict=True))
        for i in (*in_ids, *used_consts):
            if i in probes:
                env[i] = env[i] + probes[i]
        for e in prog.eqns:
            vals = _bind(e, [env[i] for i in e.ins])
            for o, v in zip(e.outs, vals, strict=True):
                if o is None:
                    continue
                env[o] = v + probes[o] if o in probes and not e.hidden else v
        return env[out_id], {i: env[i] for i in (*in_ids, *used_consts, *visible_out)}

    zeros = {i: np.zeros(prog.avals[i].shape, prog.avals[i].dtype) for i in probe_ids}
    # Small graphs: one XLA compilation beats compiling each operation eagerly. Deep graphs
    # repeat the same few layer shapes, whose eager executables JAX caches across calls.
    forward_backward = jax.value_and_grad(run, has_aux=True)
    if len(prog.eqns) <= _JIT_MAX_EQNS:
        forward_backward = jax.jit(forward_backward)
    (_, values), grads = forward_backward(zeros, leaves)

    # Default names.
    nodes_by_id: dict[int, Node] = {}
    all_nodes: list[Node] = []
    taken: set[str] = set()
    for i, pname in zip(in_ids, leaf_names, strict=True):
        node = Node(name=pname, op="input", kind="input", value=values[i],
                    grad=grads.get(i) if i in probe_set else None)
        nodes_by_id[i] = node
        all_nodes.append(node)
        taken.add(pname)
    lit_count: dict[str, int] = {}
    const_k = 0
    for i in used_consts:
        val = values[i]
        if i in prog.literal and np.ndim(val) == 0:
            base = _fmt_num(val)
        else:
            const_k += 1
            base = f"const{const_k}"
        lit_count[base] = lit_count.get(base, 0) + 1
        name = base if lit_count[base] == 1 else f"{base}#{lit_count[base]}"
        while name in taken:
            name += "'"
        taken.add(name)
        node = Node(name=name, op="const", kind="const", value=val,
                    grad=grads.get(i) if i in probe_set else None)
        nodes_by_id[i] = node
        all_nodes.append(node)

    op_counts: dict[str, int] = {}
    for k in visible:
        op_counts[prog.eqns[k].op] = op_counts.get(prog.eqns[k].op, 0) + 1
    op_seen: dict[str, int] = {}
    default_names: list[str] = []
    for k in visible:
        op = prog.eqns[k].op
        op_seen[op] = op_seen.get(op, 0) + 1
        base = op if op_counts[op] == 1 else f"{op}_{op_seen[op]}"
        name = base
        while name in taken:
            name += "'"
        taken.add(name)
        default_names.append(name)
    out_k = prog.producer.get(out_src)
    out_pos = visible.index(out_k) if out_k in visible else None
    final_names = list(default_names)
    output_default = ""
    if out_pos is not None and "L" not in taken:
        final_names[out_pos] = "L"
        output_default = default_names[out_pos]
    final_names, input_renames = _apply_names(names, default_names, final_names,
                                              output_default, [n.name for n in all_nodes])
    for node in all_nodes:
        if node.name in input_renames:
            node.name = input_renames[node.name]

    # Operation nodes.
    layer_of: dict[int, str] = {}
    for pos, k in enumerate(visible):
        e = prog.eqns[k]
        srcs, segment = edges[k]
        inputs = tuple(nodes_by_id[s] for s in srcs)
        outs = [o for o in e.outs if o is not None]
        vals = tuple(values[o] for o in outs)
        gs = tuple(grads[o] if o in probe_set else None for o in outs)
        node = Node(name=final_names[pos], op=e.op, kind="op", inputs=inputs,
                    value=vals[0] if len(vals) == 1 else vals,
                    grad=gs[0] if len(gs) == 1 else gs, formula=e.formula, scope=e.scope,
                    primitive=e.primitive)
        fn, diff = _segment(prog, k, srcs, segment, values)
        node._pullback = _make_pullback(fn, diff, len(srcs), [values[srcs[j]] for j in diff])
        node.layer = _layer(node, e, layer_of)
        layer_of[id(node)] = node.layer
        for o in outs:
            nodes_by_id[o] = node
        all_nodes.append(node)
    names_seen: set[str] = set()
    for node in all_nodes:
        if node.name in names_seen:
            raise ValueError(f"explain: two nodes are named {node.name!r}; choose distinct "
                             "names")
        names_seen.add(node.name)
    return Graph(all_nodes, nodes_by_id[out_src], fn_name)


def _apply_names(names: Any, default_names: list[str], final_names: list[str],
                 output_default: str, input_names: list[str]
                 ) -> tuple[list[str], dict[str, str]]:
    if names is None:
        return final_names, {}
    final = list(final_names)
    input_renames: dict[str, str] = {}
    if isinstance(names, Mapping):
        for key, new in names.items():
            if not isinstance(new, str) or not new:
                raise ValueError(f"explain: names[{key!r}] must be a non-empty string")
            if isinstance(key, int) and not isinstance(key, bool):
                if not -len(final) <= key < len(final):
                    raise ValueError(f"explain: names key {key} is out of range for "
                                     f"{len(final)} op nodes")
                final[key] = new
            elif key in default_names:
                final[default_names.index(key)] = new
            elif key == "L" and output_default:
                final[default_names.index(output_default)] = new
            elif key in input_names:
                input_renames[key] = new
            else:
                raise ValueError(
                    f"explain: names has an unknown key {key!r}; the nodes are "
                    f"{input_names + default_names}" + (" (the output is 'L')"
                                                        if output_default else ""))
        return final, input_renames
    if isinstance(names, str) or not isinstance(names, Sequence):
        raise ValueError("explain: names must be a mapping {default name: new name} or a "
                         "sequence of names for the op nodes in order")
    if len(names) > len(final):
        raise ValueError(f"explain: {len(names)} names given for {len(final)} op nodes "
                         f"({default_names})")
    for pos, new in enumerate(names):
        if new is not None:
            final[pos] = str(new)
    return final, input_renames


def _segment(prog: _Program, k: int, srcs: list[int], segment: list[int],
             values: dict[int, Any]) -> tuple[Callable[..., Any], list[int]]:
    """The node's own computation as a function of its float inputs (and their positions).

    It replays the hidden equations between the node's input nodes and the equation
    itself (the primitives' input casts), then the equation.
    """
    e = prog.eqns[k]
    outs = [o for o in e.outs if o is not None]
    diff = [j for j, s in enumerate(srcs) if _is_float(prog.avals[s])]

    def fn(*xs: Any) -> Any:
        env = {s: values[s] for s in srcs}
        env.update({srcs[j]: x for j, x in zip(diff, xs, strict=True)})
        for h in (*segment, k):
            he = prog.eqns[h]
            vals = _bind(he, [env[i] if i in env else prog.consts[i] for i in he.ins])
            env.update((o, v) for o, v in zip(he.outs, vals, strict=True) if o is not None)
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


def _layer(node: Node, e: _Eqn, layer_of: dict[int, str]) -> str:
    """The layer a node belongs to, from the parameter inputs it consumes."""
    for i in node.inputs:
        if i.kind == "input":
            name = i.name
            cut = max(name.rfind("."), name.rfind("["))
            if cut > 0:
                return name[:cut]
    if e.primitive:
        from .registry import PRIMITIVES

        if PRIMITIVES[e.op].category == "loss":
            return "loss"
    ops = [i for i in node.inputs if i.kind in ("op", "group")]
    return layer_of.get(id(ops[-1]), "") if ops else ""


# ----------------------------------------------------------------------------- the lesson
@dataclasses.dataclass(frozen=True)
class LessonExample:
    """One of the lesson's worked examples, ready for :func:`explain`.

    Attributes:
        title: what the example shows.
        fn: the function.
        args: its arguments.
        names: readable names for the intermediate nodes.
        learning_rate: the step size of the update shown, or ``None``.
        update: the inputs the update is shown for.
    """

    title: str
    fn: Callable[..., Any]
    args: tuple[float, ...]
    names: Mapping[str, str]
    learning_rate: float | None = None
    update: tuple[str, ...] | None = None


def _lesson_graph_fn(x: Any, y: Any, w: Any) -> Any:
    from . import primitives as fg

    return fg.mul(fg.add(x, y), w)


def _lesson_backprop_fn(x: Any, w: Any, target: Any) -> Any:
    from . import primitives as fg

    return fg.squared_error(fg.mul(x, w), target)


def _lesson_pytorch_fn(x: Any, w: Any) -> Any:
    from . import primitives as fg

    y = fg.mul(x, w)
    return fg.square(fg.sub(y, 4.0))


def _lesson_chain_fn(x: Any) -> Any:
    from . import primitives as fg

    return fg.sigmoid(fg.square(x))


#: The lesson's worked examples, by the names ``funcgrad explain --example`` accepts.
LESSON_EXAMPLES: Mapping[str, LessonExample] = {
    "backprop": LessonExample(
        "the lesson's step-by-step example: y = x × w, L = (y - target)², then one "
        "gradient-descent step", _lesson_backprop_fn, (2.0, 3.0, 2.0), {"mul": "y"},
        learning_rate=0.1, update=("w",)),
    "graph": LessonExample(
        "the lesson's first computational graph: z = (x + y) × w", _lesson_graph_fn,
        (2.0, 3.0, 4.0), {"add": "s", "mul": "z"}),
    "pytorch": LessonExample(
        "the lesson's PyTorch snippet: y = x × w, loss = (y - 4)²", _lesson_pytorch_fn,
        (2.0, 3.0), {"mul": "y", "sub": "r", "square": "loss"}),
    "chain": LessonExample(
        "the chain rule: y = x², z = sigmoid(y), dz/dx = dz/dy × dy/dx", _lesson_chain_fn,
        (1.0,), {"square": "y", "sigmoid": "z"}),
}


def lesson_graph(example: str = "backprop") -> Graph:
    """Explain one of the lesson's worked examples (see :data:`LESSON_EXAMPLES`).

    Args:
        example: ``"backprop"`` (default), ``"graph"``, ``"pytorch"`` or ``"chain"``.

    Returns:
        The example's :class:`Graph`.

    Examples:
        >>> g = lesson_graph("backprop")
        >>> [float(g[n].value) for n in ("y", "L")], float(g["w"].grad), float(g["x"].grad)
        ([6.0, 16.0], 16.0, 24.0)
    """
    try:
        ex = LESSON_EXAMPLES[example]
    except KeyError:
        raise ValueError(f"unknown example {example!r}; choose one of "
                         f"{sorted(LESSON_EXAMPLES)}") from None
    g = explain(ex.fn, *ex.args, names=ex.names)
    g.fn_name = ex.fn.__name__.removeprefix("_lesson_").removesuffix("_fn")
    return g
