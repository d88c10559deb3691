"""The graph model: :class:`Node` and the rendering-free part of a graph.

:class:`GraphModel` holds the nodes in topological order and answers questions about
them: look-up by name, consumers, each edge's share of a gradient, the gradient-descent
update and grouping by layer or scope. :class:`funcgrad.explain.Graph` adds the text and
DOT renderings on top.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from .values import plural, short, summarize

__all__ = ["GraphModel", "Node"]


@dataclasses.dataclass(eq=False, repr=False)
class Node:
    """One node of a :class:`~funcgrad.explain.Graph`: an input, a constant, an operation
    or a group.

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
        length: for a ``scan`` node (a scan longer than ``explain``'s ``unroll_limit``),
            its number of iterations; else ``None``.
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
    length: int | None = None
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
        grad = "None" if self.grad is None else short(self.grad)
        return (f"Node(name={self.name!r}, op={self.op!r}, inputs={list(self.input_names)}, "
                f"value={short(self.value)}, grad={grad})")


class GraphModel:
    """Nodes in topological order, each with a value and a gradient (no rendering).

    Attributes:
        all_nodes: every node (inputs, constants, operations) in topological order.
        output: the node whose value is the function's (scalar) result ``L``.
        fn_name: the traced function's name.
        loss_name: the name gradients are written against (``dL/dw``).
    """

    def __init__(self, all_nodes: Sequence[Node], output: Node, fn_name: str = "fn",
                 loss_name: str | None = None) -> None:
        self.all_nodes: tuple[Node, ...] = tuple(all_nodes)
        self.output = output
        self.fn_name = fn_name
        self.loss_name = output.name if loss_name is None else loss_name
        self._by_name = {n.name: n for n in self.all_nodes}
        self._consumers: dict[int, tuple[Node, ...]] | None = None
        #: the ``unroll_limit`` the graph was built with (``None``: not by ``explain``).
        self.unroll_limit: int | None = None
        self._rebuild: Callable[[int], Any] | None = None

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
                f"{self.output.name} = {short(self.output.value)})")

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

        Raises:
            ValueError: if a named input has no gradient (an integer input).

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

    def collapse(self, by: str = "auto", depth: int | None = None) -> GraphModel:
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
            A new graph (of the same class) whose group nodes have ``kind == "group"`` and
            ``members``.

        Raises:
            ValueError: for an unknown ``by``.
        """
        if by not in ("auto", "scope", "layer"):
            raise ValueError(f"collapse: argument 'by' must be 'auto', 'scope' or 'layer'; "
                             f"got {by!r}")
        if by == "auto":
            by = "scope" if any(n.scope for n in self.nodes) else "layer"

        def key(n: Node) -> str:
            if by == "layer":
                return n.layer
            parts = [p for p in n.scope.split("/") if p]
            return "/".join(parts[:depth] if depth else parts)

        runs: list[tuple[str, list[Node]]] = []  # consecutive op nodes with the same key
        for n in self.nodes:
            k = key(n)
            if k and runs and runs[-1][0] == k:
                runs[-1][1].append(n)
            else:
                runs.append((k, [n]))
        rep: dict[int, Node] = {}
        new_nodes: list[Node] = []
        for n in self.all_nodes:
            if n.kind in ("input", "const"):
                rep[id(n)] = dataclasses.replace(n)
                new_nodes.append(rep[id(n)])
        used_names = {n.name for n in new_nodes}
        seen: dict[str, int] = {}
        for k, members in runs:
            new = self._group(k, members, rep, seen, used_names)
            used_names.add(new.name)
            for m in members:
                rep[id(m)] = new
            new_nodes.append(new)
        return type(self)(new_nodes, rep[id(self.output)], self.fn_name, self.loss_name)

    def _group(self, k: str, members: list[Node], rep: dict[int, Node], seen: dict[str, int],
               used_names: set[str]) -> Node:
        """One node of a collapsed graph: a run of ``members`` sharing the key ``k``."""
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
            return new
        exit_node = members[-1]
        ops: list[str] = []
        for m in members:
            if not ops or ops[-1] != m.op:
                ops.append(m.op)
        seen[k] = seen.get(k, 0) + 1
        name = k if seen[k] == 1 else f"{k} ({seen[k]})"
        if any(m is self.output for m in members):
            name = self.output.name  # the loss keeps its name: dL/dL = 1
        while name in used_names:
            name += "'"
        return Node(name=name, op=" > ".join(ops), kind="group", inputs=tuple(ext_inputs),
                    value=exit_node.value, grad=exit_node.grad,
                    formula=f"chain rule through {plural(len(members), 'op')}: "
                            + ", ".join(m.op for m in members),
                    scope=exit_node.scope, layer=exit_node.layer, primitive=False,
                    members=tuple(members))

    def _maybe_collapse(self, collapse: bool | None, max_nodes: int
                        ) -> tuple[GraphModel, str]:
        if collapse is None:
            if len(self.nodes) <= max_nodes:
                return self, ""
            g = self.collapse()
            if len(g.nodes) < len(self.nodes):
                return g, (f"(collapsed {len(self.nodes)} ops into {len(g.nodes)} nodes by "
                           "layer/scope; pass collapse=False to see every op)")
            return self, ""
        if collapse:
            g = self.collapse()
            return g, f"(collapsed {len(self.nodes)} ops into {len(g.nodes)} nodes)"
        return self, ""
