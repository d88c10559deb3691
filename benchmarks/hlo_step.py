"""Compiled size of the digits MLP training step: ENTRY op count and XLA FLOPs.

The primitives' rewrite through ``funcgrad.primitive`` left the compiled training step
unchanged (34 ENTRY ops, 5,513,207 FLOPs, as in round 1); since softmax_cross_entropy's
scatter backward it is 37 ops and 5,511,159 FLOPs (docs/performance.md).
``tests/test_define.py`` checks that the factory itself adds nothing. This script lowers
and compiles the step for the default ``funcgrad train`` model (the embedded 8x8 digits:
64-512-10, relu, batch 32, ``clip_by_global_norm(1.0)`` then SGD 0.05) and prints, for each
variant:

* ``entry_ops``: the number of instructions in the ENTRY computation of the optimised HLO;
* ``flops``: XLA's ``cost_analysis()["flops"]`` of the compiled executable.

Variants:

* ``primitives``: a step written here from ``fg.dense``, ``fg.relu``,
  ``fg.softmax_cross_entropy``, ``fg.mul``, ``fg.sum`` and ``fg.div`` plus optax. Its code
  is the same for every version of funcgrad, so it isolates the primitives;
* ``train``: ``funcgrad.train.make_train_step`` (when the installed version exposes the
  old ``classification_loss``/``optimizer``/``init_state`` API), i.e. the whole step with
  its metrics.

Compare two versions of the code by pointing ``PYTHONPATH`` at each::

    PYTHONPATH=/tmp/base/src python benchmarks/hlo_step.py   # before
    python benchmarks/hlo_step.py                            # after
"""

from __future__ import annotations

import argparse
import json
import re

import jax
import jax.numpy as jnp

SIZES = (64, 512, 10)
BATCH = 32


def entry_op_count(hlo_text: str) -> int:
    """Number of instructions in the ENTRY computation of an HLO module's text."""
    lines = hlo_text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("ENTRY"))
    count = 0
    for line in lines[start + 1:]:
        if line.startswith("}"):
            break
        if re.match(r"\s+(ROOT\s+)?%?[\w.\-]+\s*=", line):
            count += 1
    return count


def measure(step, *args) -> dict[str, float]:
    """ENTRY op count and FLOPs of ``jax.jit(step)`` compiled for ``args``."""
    compiled = jax.jit(step).lower(*args).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return {"entry_ops": entry_op_count(compiled.as_text()), "flops": float(cost["flops"])}


def _batch():
    x = jax.random.normal(jax.random.PRNGKey(1), (BATCH, SIZES[0]), jnp.float32)
    y = jax.random.randint(jax.random.PRNGKey(2), (BATCH,), 0, SIZES[-1], jnp.int32)
    return x, y, jnp.ones((BATCH,), jnp.float32)


def primitives_step() -> dict[str, float]:
    """The step written directly from funcgrad primitives and optax."""
    import optax

    import funcgrad as fg

    keys = jax.random.split(jax.random.PRNGKey(0), len(SIZES) - 1)
    params = [{"w": jax.random.normal(k, (i, o)) * (2.0 / i) ** 0.5, "b": jnp.zeros(o)}
              for k, i, o in zip(keys, SIZES[:-1], SIZES[1:], strict=True)]
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.05))

    def loss(params, batch):
        x, y, w = batch
        h = x
        for layer in params[:-1]:
            h = fg.relu(fg.dense(h, layer["w"], layer["b"]))
        logits = fg.dense(h, params[-1]["w"], params[-1]["b"])
        per_example = fg.softmax_cross_entropy(logits, y)
        return fg.div(fg.sum(fg.mul(per_example, w)), jnp.maximum(jnp.sum(w), 1.0))

    def step(params, opt_state, batch):
        value, grads = jax.value_and_grad(loss)(params, batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    return measure(step, params, tx.init(params), _batch())


def train_step() -> dict[str, float] | None:
    """``funcgrad.train.make_train_step`` on the default digits MLP, if that API exists."""
    try:
        from funcgrad import nn, train
        tx = train.optimizer(0.05, clip_norm=1.0)
        loss_fn = train.classification_loss(nn.mlp)
        params = nn.init_mlp(jax.random.PRNGKey(0), list(SIZES))
        state = train.init_state(params, tx)
        step = train.make_train_step(loss_fn, tx, jit=False)
    except (ImportError, AttributeError, TypeError) as err:
        print(f"train variant skipped: {err}")
        return None
    return measure(step, state, _batch())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the numbers to this JSON file")
    args = parser.parse_args()
    results = {"primitives": primitives_step(), "train": train_step()}
    for name, r in results.items():
        if r is not None:
            print(f"{name:>10}: ENTRY ops {r['entry_ops']}, FLOPs {r['flops']:.0f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"backend": jax.default_backend(), "results": results}, fh, indent=2)


if __name__ == "__main__":
    main()
