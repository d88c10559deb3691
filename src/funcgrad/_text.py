"""Plain-text formatting shared by the CLI, graphs and gradient-flow reports."""

from __future__ import annotations

from collections.abc import Sequence


def text_table(rows: Sequence[Sequence[str]], headers: Sequence[str]) -> str:
    """Left-aligned columns separated by two spaces, a dashed rule under the headers.

    Args:
        rows: the cells, one sequence per row, as strings.
        headers: one header per column.

    Returns:
        The table, without trailing spaces.

    Examples:
        >>> print(text_table([["x", "2"]], ["node", "value"]))
        node  value
        ----  -----
        x     2
    """
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    return "\n".join([line(headers), "  ".join("-" * w for w in widths), *map(line, rows)])
