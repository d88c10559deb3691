"""The lesson's first computational graph: ``z = (x + y) × w``, forward and backward.

    x ──┐
        ├─→ [+] ──→ [*] ──→ z
    y ──┘           ↑
                    w

The addition node takes x and y and produces s = x + y; the multiplication node takes s and
w and produces z. The forward pass follows the graph left to right to compute z; the
backward pass follows it right to left to compute how much each input affects z.

Run it:  python examples/computational_graph.py
"""

from __future__ import annotations

import funcgrad as fg


def z_fn(x, y, w):
    """z = (x + y) * w, built from two funcgrad primitives (two graph nodes)."""
    s = fg.add(x, y)  # the [+] node
    return fg.mul(s, w)  # the [*] node


def main(x: float = 2.0, y: float = 3.0, w: float = 4.0, verbose: bool = True) -> dict:
    """Build the graph, print it, and return its numbers.

    Returns:
        ``{"s", "z", "dz/ds", "dz/dx", "dz/dy", "dz/dw"}`` as Python floats.
    """
    graph = fg.explain(z_fn, x, y, w, names={"add": "s", "mul": "z"})
    numbers = {
        "s": float(graph["s"].value),
        "z": float(graph["z"].value),
        "dz/ds": float(graph["s"].grad),
        "dz/dx": float(graph["x"].grad),
        "dz/dy": float(graph["y"].grad),
        "dz/dw": float(graph["w"].grad),
    }
    if verbose:
        print(f"z = (x + y) * w with x = {x:g}, y = {y:g}, w = {w:g}\n")
        print(graph.to_text())
        print("\nThe same graph as Graphviz DOT (paste into any Graphviz viewer):\n")
        print(graph.to_dot())
        print("In words: z changes by dz/dw = x + y = s for each unit of w, and by "
              "dz/dx = dz/dy = w for each unit of x or y.")
    return numbers


if __name__ == "__main__":
    main()
