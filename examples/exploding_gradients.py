"""Exploding gradients: a too-large initialisation makes the loss overflow, and the
lesson's three cures (gradient clipping, a lower learning rate, a better initialisation).

The lesson: "Gradients become extremely large, causing unstable training ... Multiplying
many large derivatives together." This script builds a 20-layer relu MLP whose He init is
scaled by 1.5: each layer multiplies the signal, and the gradient, by about 1.5, so the
first loss is in the thousands and layer gradients are around 1e4. Plain SGD steps (never
skipped, unlike ``funcgrad.train``'s step, which skips non-finite steps) show the loss
overflowing to inf/NaN within a few steps; ``clip_by_global_norm(1.0)``, a learning rate
of 1e-4, or the proper He init keep it finite and falling. Fixed seeds.

Run it:  python examples/exploding_gradients.py [--out DIR] [--steps N]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from funcgrad import experiments, flow


def main(out: str | Path | None = None, verbose: bool = True, **settings) -> dict:
    """Run the exploding-gradient experiment.

    Args:
        out: a directory for the PNG plots (``flow_exploding_*.png``); ``None``: no plots.
        verbose: print the table.
        **settings: passed to :func:`funcgrad.experiments.run_config`.

    Returns:
        run name -> its numbers (first non-finite step, losses, gradient norms, flags),
        plus ``"plots"``.
    """
    results = experiments.exploding_experiment(**settings)
    numbers: dict = {}
    for r in results:
        loss = r.history.array("loss").astype(np.float64)
        numbers[r.config.name] = {
            "first_nonfinite": r.first_nonfinite,
            "init_loss": float(r.init["loss"]),
            "final_loss": float(r.final["loss"]),
            "loss_curve": loss.tolist(),
            "init_max_grad_norm": float(np.max(r.init["grad_norm"])),
            "init_flags": r.init_flags.to_dict(),
            "final_flags": r.final_flags.to_dict(),
        }
    if verbose:
        s = results[0].settings
        print(f"{s['depth']}-layer relu MLPs, width {s['width']}, {s['steps']} plain SGD "
              f"steps (batch {s['batch_size']}) on the digits")
        print(experiments.format_exploding_table(results))
        bad = results[0]
        if bad.first_nonfinite is not None:
            loss = bad.history.array("loss")
            shown = ", ".join(f"{v:.3g}" for v in loss[: bad.first_nonfinite + 2])
            print(f"\n{bad.config.name}: loss per step {shown}, ...")
    numbers["plots"] = []
    if out is not None:
        try:
            paths = flow.plot({r.config.name: r.history for r in results},
                              Path(out) / "flow_exploding", title="exploding gradients")
        except ImportError as err:  # the message names the extra to install
            print(f"skipping the plots: {err}")
            paths = []
        numbers["plots"] = [str(p) for p in paths]
        if verbose and numbers["plots"]:
            print("\nwrote " + ", ".join(numbers["plots"]))
    return numbers


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", metavar="DIR", help="write flow_exploding_*.png here")
    parser.add_argument("--steps", type=int, default=300, help="SGD steps (default 300)")
    args = parser.parse_args()
    main(out=args.out, steps=args.steps)
