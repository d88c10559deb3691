"""Cost of funcgrad.flow.layer_stats inside jit, alone and inside a training step.

Measures, on an MLP (default 64-512-512-512-10, the model of issue 11):

* ``layer_stats(grads, params, updates)`` alone under jit, against the floor of one plain
  sum of squares per layer (what ``layer_norms`` costs);
* an SGD step (loss, gradient, update) with and without ``layer_stats`` in it: the ratio
  is the ``--flow`` overhead of a training step (issue 11 target: <= 1.15x).

Run it against the code before a change by pointing ``PYTHONPATH`` at the old source
(``PYTHONPATH=/tmp/base/src python benchmarks/flow_stats.py``): it uses only public names
that both versions have.

    python benchmarks/flow_stats.py [--sizes 64,512,512,512,10] [--batch 128] [--json F]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

import funcgrad as fg
from funcgrad import flow, nn


def _time(programs: dict, repeats: int = 9, number: int = 20) -> dict[str, float]:
    """Seconds per call of each jitted ``fn(*args)`` in ``programs`` (name -> (fn, args)).

    Compiled and warmed up first; the programs then take turns, ``repeats`` rounds of
    ``number`` calls each, so a load change on a shared machine hits them alike, and the
    fastest round counts (the least disturbed one).
    """
    for fn, args in programs.values():
        jax.block_until_ready(fn(*args))
    best = dict.fromkeys(programs, float("inf"))
    for _ in range(repeats):
        for name, (fn, args) in programs.items():
            t0 = time.perf_counter()
            for _ in range(number):
                out = fn(*args)
            jax.block_until_ready(out)
            best[name] = min(best[name], (time.perf_counter() - t0) / number)
    return best


def measure(sizes: list[int], batch: int) -> dict[str, float]:
    """Seconds per call of the four programs, and the two ratios."""
    key_p, key_x = jax.random.split(jax.random.PRNGKey(0))
    params = nn.init_mlp(key_p, sizes)
    x = jax.random.normal(key_x, (batch, sizes[0]))
    y = jnp.arange(batch) % sizes[-1]
    loss = lambda p: fg.mean(fg.softmax_cross_entropy(nn.mlp(p, x), y))
    grads = jax.grad(loss)(params)
    updates = jax.tree.map(lambda g: -0.1 * g, grads)

    stats = jax.jit(flow.layer_stats)
    floor = jax.jit(lambda g: jnp.stack([
        sum(jnp.sum(jnp.square(v)) for v in jax.tree.leaves(layer)) for layer in g]))

    def step(p: object, with_stats: bool) -> object:
        g = jax.grad(loss)(p)
        new = jax.tree.map(lambda a, b: a - 0.1 * b, p, g)
        if with_stats:
            return new, flow.layer_stats(g, p, jax.tree.map(lambda b: -0.1 * b, g))
        return new

    plain = jax.jit(lambda p: step(p, False))
    with_flow = jax.jit(lambda p: step(p, True))
    out = _time({
        "layer_stats_s": (stats, (grads, params, updates)),
        "layer_squares_floor_s": (floor, (grads,)),
        "step_s": (plain, (params,)),
        "step_with_layer_stats_s": (with_flow, (params,)),
    })
    out["layer_stats_over_floor"] = out["layer_stats_s"] / out["layer_squares_floor_s"]
    out["step_ratio"] = out["step_with_layer_stats_s"] / out["step_s"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="64,512,512,512,10")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--json", help="write the results to this JSON file")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    r = measure(sizes, args.batch)
    print(f"MLP {'-'.join(map(str, sizes))}, batch {args.batch}, {jax.default_backend()}")
    print(f"layer_stats alone:        {1e3 * r['layer_stats_s']:8.3f} ms")
    print(f"sum of squares per layer: {1e3 * r['layer_squares_floor_s']:8.3f} ms  "
          f"(layer_stats / floor = {r['layer_stats_over_floor']:.2f}x)")
    print(f"SGD step:                 {1e3 * r['step_s']:8.3f} ms")
    print(f"SGD step + layer_stats:   {1e3 * r['step_with_layer_stats_s']:8.3f} ms  "
          f"(ratio {r['step_ratio']:.3f}x)")
    if args.json:
        from _report import write_json

        write_json(args.json, "flow_stats", r, sizes=sizes, batch=args.batch)


if __name__ == "__main__":
    main()
