"""ReLU, sigmoid and tanh with their derivatives: the textbook formula, funcgrad's rule and
``jax.grad`` of a plain reference, side by side.

    ReLU     f(x) = max(0, x)        f'(x) = 1 if x > 0 else 0
    Sigmoid  f(x) = 1/(1 + e^(-x))   f'(x) = f(x)(1 - f(x))
    Tanh     f(x) = tanh(x)          f'(x) = 1 - f(x)²

With ``--out DIR`` (and matplotlib installed) it also draws each function and its
derivative to ``DIR/activation_derivatives.png``.

Run it:  python examples/activation_derivatives.py [--out DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import funcgrad as fg
from funcgrad.registry import PRIMITIVES

POINTS = (-3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0)


def _np_sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


#: name -> (funcgrad function, textbook f'(x) in NumPy, textbook formula)
ACTIVATIONS = {
    "relu": (fg.relu, lambda x: np.where(x > 0, 1.0, 0.0), "1 if x > 0 else 0"),
    "sigmoid": (fg.sigmoid, lambda x: _np_sigmoid(x) * (1.0 - _np_sigmoid(x)),
                "f(x) × (1 - f(x))"),
    "tanh": (fg.tanh, lambda x: 1.0 - np.tanh(x) ** 2, "1 - f(x)²"),
}


def derivatives(name: str, points=POINTS) -> dict:
    """f(x) and f'(x) three ways at ``points``, as lists of floats."""
    fn, textbook, formula = ACTIVATIONS[name]
    xs = jnp.asarray(points, dtype=jnp.float32)
    reference = PRIMITIVES[name].reference
    return {
        "x": [float(v) for v in xs],
        "f": [float(v) for v in jax.vmap(fn)(xs)],
        "textbook": [float(v) for v in textbook(np.asarray(xs, dtype=np.float32))],
        "funcgrad": [float(v) for v in jax.vmap(jax.grad(fn))(xs)],  # the custom VJP rule
        "jax.grad": [float(v) for v in jax.vmap(jax.grad(reference))(xs)],
        "formula": formula,
        "registry formula": PRIMITIVES[name].formula,
    }


#: f'(x) in float64 closed forms that stay accurate for large |x| (the textbook forms lose
#: relative precision there even in float64: sigma(1 - sigma) is 0.1% off at x = 30)
TRUTH64 = {
    "sigmoid": lambda x: np.exp(-np.abs(x)) / (1.0 + np.exp(-np.abs(x))) ** 2,
    "tanh": lambda x: 4.0 * np.exp(-2.0 * np.abs(x)) / (1.0 + np.exp(-2.0 * np.abs(x))) ** 2,
}


def edge_gradients(name: str) -> dict:
    """At the record's edge points: funcgrad's float32 rule, the float32 textbook formula
    and the float64 truth (the points where rounding makes the textbook form fail)."""
    _, textbook, _ = ACTIVATIONS[name]
    points = PRIMITIVES[name].edge_points
    xs = jnp.asarray(points, dtype=jnp.float32)
    truth = [float(v) for v in TRUTH64[name](np.asarray(points, dtype=np.float64))]
    return {
        "x": [float(v) for v in points],
        "funcgrad": [float(v) for v in jax.vmap(jax.grad(ACTIVATIONS[name][0]))(xs)],
        "textbook": [float(v) for v in textbook(np.asarray(xs, dtype=np.float32))],
        "float64": truth,
    }


def plot(out_dir: str | Path) -> Path | None:
    """Draw f and f' for each activation; return the PNG path, or None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: skipping the plot (pip install matplotlib)")
        return None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    xs = jnp.linspace(-5.0, 5.0, 401)
    fig, axes = plt.subplots(1, len(ACTIVATIONS), figsize=(4 * len(ACTIVATIONS), 3.2))
    for ax, (name, (fn, _, formula)) in zip(axes, ACTIVATIONS.items(), strict=True):
        ax.plot(xs, jax.vmap(fn)(xs), label=f"{name}(x)")
        ax.plot(xs, jax.vmap(jax.grad(fn))(xs), "--", label=f"{name}'(x) = {formula}")
        ax.axhline(0.0, color="grey", linewidth=0.5)
        ax.set_title(name)
        ax.set_xlabel("x")
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "activation_derivatives.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(out: str | Path | None = None, verbose: bool = True) -> dict:
    """Tabulate the derivatives and optionally plot them.

    Args:
        out: a directory for the PNG plot; ``None`` (the default) draws no plot.
        verbose: print the tables.

    Returns:
        name -> :func:`derivatives` dict, plus ``"edges"`` (name -> :func:`edge_gradients`)
        and ``"plot"``: the PNG path or ``None``.
    """
    results: dict = {name: derivatives(name) for name in ACTIVATIONS}
    if verbose:
        for name, r in results.items():
            print(f"{name}: f'(x) = {r['formula']}   (funcgrad's rule: {r['registry formula']})")
            print(f"  {'x':>6}  {'f(x)':>9}  {'textbook':>9}  {'funcgrad':>9}  {'jax.grad':>9}")
            for row in zip(r["x"], r["f"], r["textbook"], r["funcgrad"], r["jax.grad"],
                           strict=True):
                print("  " + "  ".join(f"{v:>9.6g}" if i else f"{v:>6g}"
                                       for i, v in enumerate(row)))
            print()
    results["edges"] = {name: edge_gradients(name) for name in TRUTH64}
    if verbose:
        print("float32 at the edge points (textbook form vs funcgrad's rule vs float64 truth)")
        for name, e in results["edges"].items():
            for row in zip(e["x"], e["textbook"], e["funcgrad"], e["float64"], strict=True):
                print(f"  {name:8s} x={row[0]:>6g}  textbook {row[1]:<11.4g} "
                      f"funcgrad {row[2]:<11.4g} float64 {row[3]:.4g}")
        print()
    results["plot"] = str(plot(out)) if out is not None else None
    if verbose and results["plot"]:
        print(f"wrote {results['plot']}")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", metavar="DIR", help="write activation_derivatives.png here")
    args = parser.parse_args()
    main(out=args.out)
