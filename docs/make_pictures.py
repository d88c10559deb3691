"""Regenerate every picture in docs/img from the real code (never drawn by hand).

Run from the repository root: ``python docs/make_pictures.py``. Graph pictures need the
Graphviz ``dot`` program (``apt-get install graphviz``); plots need matplotlib.
"""

from __future__ import annotations

import importlib.util
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
IMG = ROOT / "docs" / "img"


def _example(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def graphs() -> list[pathlib.Path]:
    """The lesson's three graphs, as SVG."""
    from funcgrad.explain import lesson_graph

    return [lesson_graph(name).render(IMG / f"{name}.svg") for name in
            ("graph", "backprop", "pytorch")]


def activations() -> list[pathlib.Path]:
    """relu, sigmoid and tanh with their derivatives."""
    result = _example("activation_derivatives").main(out=IMG, verbose=False)
    return [pathlib.Path(result["plot"])] if result.get("plot") else []


def flow() -> list[pathlib.Path]:
    """The vanishing and exploding gradient experiments (docs/gradient_flow.md)."""
    paths = []
    for name in ("vanishing_gradients", "exploding_gradients"):
        paths += [pathlib.Path(p) for p in _example(name).main(out=IMG, verbose=False)["plots"]]
    return paths


def main(argv: list[str]) -> int:
    IMG.mkdir(parents=True, exist_ok=True)
    jobs = {"graphs": graphs, "activations": activations, "flow": flow}
    for name in argv or list(jobs):
        for path in jobs[name]():
            print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
