"""Vanishing gradients: why deep sigmoid networks stop learning, and the lesson's cures.

The lesson: "In deep networks, gradients become very small in early layers ... Multiplying
many small derivatives together (chain rule) makes the result tiny." Its cures: relu,
skip connections, better weight initialisation, batch normalisation. Its check: "plot
gradient magnitudes across layers during training".

This script builds 20-layer MLPs (19 hidden layers of 32 units) from funcgrad primitives,
trains each for 300 plain SGD steps on the embedded digits, and measures every layer's
gradient norm with :func:`funcgrad.flow.layer_stats` before and after training. It prints
the ratio of the first layer's gradient norm to the last layer's, the flags of
:func:`funcgrad.flow.diagnose`, the share of saturated sigmoid/tanh units, and the
gradient magnitude across the layers (the lesson's plot, drawn in text). Fixed seeds.

Run it:  python examples/vanishing_gradients.py [--out DIR] [--steps N]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

from funcgrad import experiments, flow


def profile(norms: np.ndarray, width: int = 40) -> list[str]:
    """The lesson's plot in text: one bar per layer, length ~ log10 of the gradient norm."""
    logs = np.log10(np.maximum(norms, 1e-30))
    lo, hi = math.floor(min(logs.min(), -1)), math.ceil(max(logs.max(), 0))
    lines = []
    for i, (n, lg) in enumerate(zip(norms, logs, strict=True)):
        bar = "#" * max(1, round((lg - lo) / (hi - lo) * width))
        lines.append(f"  layer {i:>2}  {n:9.2e}  {bar}")
    return lines


def main(out: str | Path | None = None, verbose: bool = True, **settings) -> dict:
    """Run the vanishing-gradient experiment.

    Args:
        out: a directory for the PNG plots (``flow_vanishing_*.png``); ``None``: no plots.
        verbose: print the table and the gradient profiles.
        **settings: passed to :func:`funcgrad.experiments.run_config` (``depth``, ``width``,
            ``steps``, ``batch_size``, ``seed``).

    Returns:
        network name -> its numbers (ratios, flags, losses, saturation, per-layer norms),
        plus ``"plots"``: the PNG paths (empty without ``out`` or matplotlib).
    """
    results = experiments.vanishing_experiment(**settings)
    numbers: dict = {}
    for r in results:
        numbers[r.config.name] = {
            "init_ratio": r.init_ratio,
            "final_ratio": r.final_ratio,
            "init_flags": r.init_flags.to_dict(),
            "final_flags": r.final_flags.to_dict(),
            "init_loss": float(r.init["loss"]),
            "final_loss": float(r.final["loss"]),
            "init_saturation": r.init["saturation"].tolist(),
            "final_saturation": r.final["saturation"].tolist(),
            "init_grad_norm": r.init["grad_norm"].tolist(),
            "final_grad_norm": r.final["grad_norm"].tolist(),
            "first_nonfinite": r.first_nonfinite,
        }
    if verbose:
        s = results[0].settings
        print(f"{s['depth']}-layer MLPs, width {s['width']}, {s['steps']} plain SGD steps "
              f"(batch {s['batch_size']}) on the digits; statistics on a fixed probe batch")
        print(experiments.format_vanishing_table(results))
        for r in results[:2] + results[3:4]:
            print(f"\ngradient norm per layer at init: {r.config.name}")
            print("\n".join(profile(r.init["grad_norm"])))
    numbers["plots"] = []
    if out is not None:
        try:
            paths = flow.plot({r.config.name: r.history for r in results},
                              Path(out) / "flow_vanishing", title="vanishing gradients")
        except ImportError as err:  # the message names the extra to install
            print(f"skipping the plots: {err}")
            paths = []
        numbers["plots"] = [str(p) for p in paths]
        if verbose and numbers["plots"]:
            print("\nwrote " + ", ".join(numbers["plots"]))
    return numbers


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", metavar="DIR", help="write flow_vanishing_*.png here")
    parser.add_argument("--steps", type=int, default=300, help="SGD steps (default 300)")
    args = parser.parse_args()
    main(out=args.out, steps=args.steps)
