"""Node names: inputs after their argument paths, ops after their op, the output ``L``,
and the user's renames (``names=``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["apply_names", "default_op_names", "step_names"]


def default_op_names(ops: Sequence[str], taken: set[str]) -> list[str]:
    """``mul``, or ``dense_1``, ``dense_2`` when an op repeats; never a name in ``taken``.

    Args:
        ops: the op of each op node, in order.
        taken: names already used (updated with the new ones).

    Returns:
        One name per op node.

    Examples:
        >>> default_op_names(["dense", "relu", "dense"], {"x"})
        ['dense_1', 'relu', 'dense_2']
    """
    counts: dict[str, int] = {}
    for op in ops:
        counts[op] = counts.get(op, 0) + 1
    seen: dict[str, int] = {}
    out = []
    for op in ops:
        seen[op] = seen.get(op, 0) + 1
        name = op if counts[op] == 1 else f"{op}_{seen[op]}"
        while name in taken:
            name += "'"
        taken.add(name)
        out.append(name)
    return out


def step_names(ops: Sequence[str], loops: Sequence[tuple[tuple[int, ...], tuple[int, ...]]],
               labels: Sequence[str], taken: set[str]) -> list[str]:
    """Default names for op nodes, some of them inside unrolled scans.

    Ops outside scans are named by :func:`default_op_names`. Ops of one scan iteration are
    numbered among themselves and get the iteration as a suffix (``tanh[3]``,
    ``matmul_2[3]``); a label (the carry ``h[3]``) wins over both.

    Args:
        ops: the op of each op node, in order.
        loops: per op node, ``(loop ids, iterations)`` of its enclosing scans (``((), ())``
            outside scans).
        labels: per op node, its fixed name or ``""``.
        taken: names already used (updated with the new ones).

    Returns:
        One name per op node.

    Examples:
        >>> step_names(["matmul", "tanh", "matmul", "tanh", "sum"],
        ...            [((0,), (0,)), ((0,), (0,)), ((0,), (1,)), ((0,), (1,)), ((), ())],
        ...            ["", "h[0]", "", "h[1]", ""], {"x"})
        ['matmul[0]', 'h[0]', 'matmul[1]', 'h[1]', 'sum']
    """
    top = [k for k, key in enumerate(loops) if not key[0]]
    names = [""] * len(ops)
    for k, name in zip(top, default_op_names([ops[k] for k in top], taken), strict=True):
        names[k] = name
    groups: dict[Any, list[int]] = {}
    for k, key in enumerate(loops):
        if key[0]:
            groups.setdefault(key, []).append(k)
    for (_, iteration), members in groups.items():
        local = default_op_names([ops[k] for k in members], set())
        suffix = "".join(f"[{t}]" for t in iteration)
        for k, name in zip(members, local, strict=True):
            name = labels[k] or name + suffix
            while name in taken:
                name += "'"
            taken.add(name)
            names[k] = name
    for k in top:
        if labels[k]:
            taken.discard(names[k])
            name = labels[k]
            while name in taken:
                name += "'"
            taken.add(name)
            names[k] = name
    return names


def _apply_mapping(names: Mapping[Any, Any], default_names: list[str], final: list[str],
                   output_default: str, input_names: list[str]) -> dict[str, str]:
    input_renames: dict[str, str] = {}
    for key, new in names.items():
        if not isinstance(new, str) or not new:
            raise ValueError(f"explain: argument 'names' must map to non-empty strings; "
                             f"names[{key!r}] is {new!r}")
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
    return input_renames


def apply_names(names: Any, default_names: list[str], final_names: list[str],
                output_default: str, input_names: list[str]
                ) -> tuple[list[str], dict[str, str]]:
    """Apply the user's ``names=`` to the op nodes' (and inputs') default names.

    Args:
        names: ``None``, a mapping ``{default name or op position: new name}``, or a
            sequence of names for the op nodes in order (``None`` keeps a default).
        default_names: the op nodes' default names.
        final_names: the names so far (the output already ``L``).
        output_default: the output's default name (``""`` if the output is not an op).
        input_names: the input and constant nodes' names.

    Returns:
        ``(op node names, {input name: new name})``.

    Raises:
        ValueError: for an unknown key, a key out of range or too many names.
    """
    if names is None:
        return final_names, {}
    final = list(final_names)
    if isinstance(names, Mapping):
        renames = _apply_mapping(names, default_names, final, output_default, input_names)
        return final, renames
    if isinstance(names, str) or not isinstance(names, Sequence):
        raise ValueError("explain: argument 'names' must be a mapping {default name: new "
                         "name} or a sequence of names for the op nodes in order; got "
                         f"{type(names).__name__}")
    if len(names) > len(final):
        raise ValueError(f"explain: {len(names)} names given for {len(final)} op nodes "
                         f"({default_names})")
    for pos, new in enumerate(names):
        if new is not None:
            final[pos] = str(new)
    return final, {}
