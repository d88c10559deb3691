"""Overhead of flow statistics and of full taps in a training step (issue 11 targets).

Three jitted steps per model, built here from funcgrad primitives and optax (no training
code of funcgrad), taking turns so that a load change on a shared machine hits them alike
(the fastest round of each counts):

* ``plain``: ``jax.value_and_grad`` of the softmax cross-entropy of a relu MLP
  (``fg.dense``/``fg.relu``), then ``optax.sgd``;
* ``flow``: the same step through :func:`funcgrad.flow.taps.tapped_value_and_grad` with
  ``activations=True`` (saturated and dead shares read from the step's own forward pass,
  no second run of the model), plus :func:`funcgrad.flow.layer_stats` of grads, params and
  updates;
* ``taps``: the same step with ``taps=True``: a :class:`~funcgrad.flow.taps.Tap` record of
  the cotangent reaching every primitive call.

Targets: on 784-1024-1024-10 (batch 1024) flow <= 1.15x and taps <= 1.25x the plain step;
on 64-128-128-10 (batch 128) both <= 1.5x. Prints PASS/FAIL per ratio and the load average.

    python benchmarks/taps.py [--big-batch 1024] [--repeats 5] [--json F]
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp

import funcgrad as fg
from funcgrad import flow
from funcgrad.flow.taps import tapped_value_and_grad

#: (sizes, batch, flow target, taps target)
MODELS = (((784, 1024, 1024, 10), 1024, 1.15, 1.25), ((64, 128, 128, 10), 128, 1.5, 1.5))


def _init(sizes: tuple[int, ...]) -> list[dict[str, jax.Array]]:
    keys = jax.random.split(jax.random.PRNGKey(0), len(sizes) - 1)
    return [{"w": jax.random.normal(k, (m, n)) * jnp.sqrt(2.0 / m), "b": jnp.zeros(n)}
            for k, m, n in zip(keys, sizes[:-1], sizes[1:], strict=True)]


def _loss(params: list, batch: tuple) -> tuple[jax.Array, dict]:
    x, y = batch
    for layer in params[:-1]:
        x = fg.relu(fg.dense(x, layer["w"], layer["b"]))
    logits = fg.dense(x, params[-1]["w"], params[-1]["b"])
    return fg.mean(fg.softmax_cross_entropy(logits, y)), {}


def _steps() -> dict:
    import optax

    tx = optax.sgd(0.01)

    def make(kind: str):
        if kind == "plain":
            grad_fn = jax.value_and_grad(_loss, has_aux=True)
        else:
            grad_fn = tapped_value_and_grad(_loss, taps=kind == "taps",
                                            activations=kind == "flow")

        def step(params, opt_state, batch):
            out = grad_fn(params, batch)
            (loss, _), grads = out[0], out[1]
            updates, opt_state = tx.update(grads, opt_state, params)
            new = optax.apply_updates(params, updates)
            metrics = {"loss": loss}
            if kind == "flow":
                metrics.update(flow.layer_stats(grads, params, updates))
                metrics["saturation"] = out[2]["saturation"]
                metrics["dead"] = out[2]["dead"]
            if kind == "taps":
                metrics["taps"] = out[2]["taps"]
            return new, opt_state, metrics

        return jax.jit(step)

    return {k: make(k) for k in ("plain", "flow", "taps")}, tx


def _time(steps: dict, args: tuple, repeats: int, number: int) -> dict[str, float]:
    for fn in steps.values():
        jax.block_until_ready(fn(*args))
    best = dict.fromkeys(steps, float("inf"))
    for _ in range(repeats):
        for name, fn in steps.items():
            t0 = time.perf_counter()
            for _ in range(number):
                out = fn(*args)
            jax.block_until_ready(out)
            best[name] = min(best[name], (time.perf_counter() - t0) / number)
    return best


def measure(sizes: tuple[int, ...], batch: int, repeats: int, number: int) -> dict:
    """Seconds per step of ``plain``, ``flow`` and ``taps``."""
    steps, tx = _steps()
    params = _init(sizes)
    x = jax.random.normal(jax.random.PRNGKey(1), (batch, sizes[0]))
    y = jnp.arange(batch) % sizes[-1]
    return _time(steps, (params, tx.init(params), (x, y)), repeats, number)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--big-batch", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", help="write the results to this JSON file")
    args = parser.parse_args()
    results, ok = {}, True
    print(f"backend {jax.default_backend()}, load average {os.getloadavg()}")
    for sizes, batch, flow_target, taps_target in MODELS:
        if sizes[0] == 784:
            batch = args.big_batch
        number = 3 if sizes[0] == 784 else 50
        t = measure(sizes, batch, args.repeats, number)
        name = "-".join(map(str, sizes))
        r_flow, r_taps = t["flow"] / t["plain"], t["taps"] / t["plain"]
        verdict = lambda r, target: "PASS" if r <= target else "FAIL"
        ok = ok and r_flow <= flow_target and r_taps <= taps_target
        print(f"MLP {name}, batch {batch}: plain {1e3 * t['plain']:.2f} ms | "
              f"flow {1e3 * t['flow']:.2f} ms ({r_flow:.3f}x, <= {flow_target}: "
              f"{verdict(r_flow, flow_target)}) | taps {1e3 * t['taps']:.2f} ms "
              f"({r_taps:.3f}x, <= {taps_target}: {verdict(r_taps, taps_target)})")
        results[name] = {**t, "batch": batch, "flow_ratio": r_flow, "taps_ratio": r_taps}
    print(f"load average after: {os.getloadavg()}; overall {'PASS' if ok else 'FAIL'}")
    if args.json:
        from _report import write_json

        write_json(args.json, "taps", results)


if __name__ == "__main__":
    main()
