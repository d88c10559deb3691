"""Custom VJP rules against jax.nn: training-step time and backward residual memory.

Two MLP classifiers are trained with the same optimizer,
``optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.01))``:

* ``large``: 784-1024-1024-10, relu, batch 1024;
* ``small``: 64-128-128-10, relu, batch 128.

Each model is written twice over the same parameters (He init, fixed key) and the same
batch (random float32 inputs, random int labels):

* ``funcgrad``: ``fg.dense``, ``fg.relu`` and ``fg.mean(fg.softmax_cross_entropy(...))``,
  every one a ``jax.custom_vjp`` with a hand-written backward rule;
* ``builtin``: ``x @ w + b``, ``jax.nn.relu``,
  ``optax.softmax_cross_entropy_with_integer_labels`` and ``jnp.mean``, differentiated by
  JAX's own autodiff.

The step is ``jax.jit(step, donate_argnums=0)`` over ``(params, opt_state)``; it computes
``jax.value_and_grad(loss)`` and applies the optax update. Both variants are compiled first
(compile time reported), then timed in interleaved repetitions: each repetition runs a few
steps of one variant and then of the other, and the order alternates from one repetition to
the next (A B, B A, A B, ...) so that slow drift of a noisy machine does not favour either.

Residual memory is JAX's own accounting of what reverse mode keeps for the backward pass
(``jax._src.ad_checkpoint.saved_residuals``, the data behind
``jax.ad_checkpoint.print_saved_residuals``) of ``params -> loss(params, x, y)``: the batch is
closed over, so only the parameters are differentiated, as in training. It is measured on the
traced program, before XLA fuses anything. Run ``python benchmarks/primitives.py --help``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _report import write_json
from jax._src.ad_checkpoint import saved_residuals  # no public API returns the data

import funcgrad as fg

MODELS = {
    # name: (layer sizes, batch, default reps, default steps per repetition)
    "large": ((784, 1024, 1024, 10), 1024, 15, 3),
    "small": ((64, 128, 128, 10), 128, 21, 200),
}
TIME_TARGET = 1.00  # funcgrad / builtin median step time
ACT_TARGET = 0.60  # funcgrad / builtin activation residual bytes
MiB = 2.0**20


# ----------------------------------------------------------------------------- models
def init_params(key, sizes):
    """He-normal weights ``N(0, 2 / fan_in)`` and zero biases, one ``(w, b)`` per layer."""
    params = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        w = jax.random.normal(jax.random.fold_in(key, i), (n_in, n_out), jnp.float32)
        params.append((w * np.float32(np.sqrt(2.0 / n_in)), jnp.zeros((n_out,), jnp.float32)))
    return params


def loss_funcgrad(params, x, y):
    h = x
    for w, b in params[:-1]:
        h = fg.relu(fg.dense(h, w, b))
    w, b = params[-1]
    return fg.mean(fg.softmax_cross_entropy(fg.dense(h, w, b), y))


def loss_builtin(params, x, y):
    h = x
    for w, b in params[:-1]:
        h = jax.nn.relu(h @ w + b)
    w, b = params[-1]
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(h @ w + b, y))


VARIANTS = {"funcgrad": loss_funcgrad, "builtin": loss_builtin}


def make_optimizer():
    return optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.01))


def make_step(loss_fn, opt):
    def step(state, x, y):
        params, opt_state = state
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = opt.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    return jax.jit(step, donate_argnums=0)


def make_data(sizes, batch, seed=1):
    kx, ky = jax.random.split(jax.random.PRNGKey(seed))
    x = jax.random.normal(kx, (batch, sizes[0]), jnp.float32)
    y = jax.random.randint(ky, (batch,), 0, sizes[-1], jnp.int32)
    return x, y


# -------------------------------------------------------------------------- residuals
def nbytes(aval):
    return int(np.prod(aval.shape, dtype=np.int64)) * jnp.dtype(aval.dtype).itemsize


def residual_report(loss_fn, params, x, y):
    """Classify the residuals of ``params -> loss_fn(params, x, y)`` and sum their bytes.

    Classes: ``params`` (entries 'from the argument ...': the parameters are the only
    arguments), ``input_x`` (the closed-over batch ``x``: a constant with its shape and
    dtype), and ``activations`` (everything else, including anything derived from the
    labels and any labels kept as they are).
    """
    out = {"params": 0, "input_x": 0, "activations": 0, "count": 0, "entries": []}
    for aval, desc in saved_residuals(lambda p: loss_fn(p, x, y), params):
        size = nbytes(aval)
        if desc.startswith("from the argument"):
            kind = "params"
        elif desc == "from a constant" and aval.shape == x.shape and aval.dtype == x.dtype:
            kind = "input_x"
        else:
            kind = "activations"
        out[kind] += size
        out["count"] += 1
        short = desc.split(" from /")[0].split(" from <")[0]
        out["entries"].append({"aval": aval.str_short(), "bytes": size, "kind": kind,
                               "what": short})
    out["total"] = out["params"] + out["input_x"] + out["activations"]
    # Informational only: jax.nn.relu's JVP rule is select(x > 0, g, full_like(g, 0)), and the
    # traced program keeps that zero fill (a broadcast_in_dim) as a residual; a compiled
    # program never stores it.
    out["activations_without_broadcasts"] = out["activations"] - sum(
        e["bytes"] for e in out["entries"]
        if e["kind"] == "activations" and e["what"].startswith("output of broadcast_in_dim"))
    return out


def compiled_grad_temp_bytes(loss_fn, params, x, y):
    """XLA's temporary buffer bytes for the compiled ``value_and_grad`` (informational)."""
    try:
        compiled = jax.jit(jax.value_and_grad(loss_fn)).lower(params, x, y).compile()
        mem = compiled.memory_analysis()
        return None if mem is None else int(mem.temp_size_in_bytes)
    except Exception:  # noqa: BLE001 - memory analysis is optional per backend
        return None


# ------------------------------------------------------------------------------ timing
def fresh_state(params, opt):
    params = jax.tree.map(jnp.copy, params)
    return params, opt.init(params)


def compile_variant(loss_fn, params, opt, x, y):
    step = make_step(loss_fn, opt)
    state = fresh_state(params, opt)
    t0 = time.perf_counter()
    lowered = step.lower(state, x, y)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    flops = None
    try:
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        flops = float(cost.get("flops")) if cost and "flops" in cost else None
    except Exception:  # noqa: BLE001 - cost analysis is optional per backend
        pass
    return compiled, state, {"trace_lower_s": t1 - t0, "compile_s": t2 - t1, "flops": flops}


def run_steps(compiled, state, x, y, n):
    for _ in range(n):
        state, loss = compiled(state, x, y)
    jax.block_until_ready((state, loss))
    return state, loss


def bench_model(name, reps, steps, log):
    sizes, batch, _, _ = MODELS[name]
    params = init_params(jax.random.PRNGKey(0), sizes)
    x, y = make_data(sizes, batch)
    opt = make_optimizer()
    log(f"\n=== {name}: MLP {'-'.join(map(str, sizes))}, relu, batch {batch}, "
        f"{reps} interleaved repetitions x {steps} steps ===")

    # Same function? Compare loss and gradients at the initial parameters.
    vg = {k: jax.jit(jax.value_and_grad(f))(params, x, y) for k, f in VARIANTS.items()}
    (l_fg, g_fg), (l_bi, g_bi) = vg["funcgrad"], vg["builtin"]
    gdiff = max(float(jnp.max(jnp.abs(a - b)))
                for a, b in zip(jax.tree.leaves(g_fg), jax.tree.leaves(g_bi), strict=True))
    gscale = max(float(jnp.max(jnp.abs(b))) for b in jax.tree.leaves(g_bi))
    log(f"check: loss funcgrad {float(l_fg):.6f} builtin {float(l_bi):.6f}; "
        f"max |grad difference| {gdiff:.2e} (max |grad| {gscale:.2e})")

    compiled, states, info = {}, {}, {}
    for k, f in VARIANTS.items():
        compiled[k], states[k], info[k] = compile_variant(f, params, opt, x, y)
        log(f"compile {k:9s}: trace+lower {info[k]['trace_lower_s']:.3f} s, "
            f"XLA compile {info[k]['compile_s']:.3f} s"
            + (f", step {info[k]['flops'] / 1e9:.3f} GFLOP (XLA cost analysis)"
               if info[k]["flops"] else ""))
    for k in VARIANTS:  # warm-up: first runs, allocations
        states[k], _ = run_steps(compiled[k], states[k], x, y, max(2, steps // 5))

    times = {k: [] for k in VARIANTS}
    ratios = []
    order = list(VARIANTS)
    for r in range(reps):
        per = {}
        for k in (order if r % 2 == 0 else order[::-1]):
            t0 = time.perf_counter()
            states[k], _ = run_steps(compiled[k], states[k], x, y, steps)
            per[k] = (time.perf_counter() - t0) / steps
            times[k].append(per[k])
        ratios.append(per["funcgrad"] / per["builtin"])
    med = {k: statistics.median(v) for k, v in times.items()}
    q = np.percentile(ratios, [25, 75])
    ratio = statistics.median(ratios)
    for k in VARIANTS:
        extra = ""
        if info[k]["flops"]:
            extra = f" ({info[k]['flops'] / med[k] / 1e9:.0f} GFLOP/s)"
        log(f"time    {k:9s}: median {med[k] * 1e3:9.3f} ms/step, min "
            f"{min(times[k]) * 1e3:9.3f}, max {max(times[k]) * 1e3:9.3f}{extra}")
    log(f"time ratio funcgrad/builtin: median of per-pair ratios {ratio:.3f} "
        f"(IQR {q[0]:.3f}-{q[1]:.3f}, min {min(ratios):.3f}, max {max(ratios):.3f})")

    res = {k: residual_report(f, params, x, y) for k, f in VARIANTS.items()}
    temp = {k: compiled_grad_temp_bytes(f, params, x, y) for k, f in VARIANTS.items()}
    for k in VARIANTS:
        rr = res[k]
        log(f"residuals {k:9s}: {rr['count']:2d} arrays, total {rr['total'] / MiB:8.3f} MiB = "
            f"params {rr['params'] / MiB:.3f} + input x {rr['input_x'] / MiB:.3f} + "
            f"activations {rr['activations'] / MiB:.3f} MiB")
        for e in rr["entries"]:
            log(f"    {e['kind']:11s} {e['bytes'] / MiB:8.3f} MiB  {e['aval']:20s} {e['what']}")
        if temp[k] is not None:
            log(f"    (informational) XLA temp buffers of compiled value_and_grad: "
                f"{temp[k] / MiB:.3f} MiB")
    act_ratio = res["funcgrad"]["activations"] / res["builtin"]["activations"]
    tot_ratio = res["funcgrad"]["total"] / res["builtin"]["total"]
    log(f"residual ratio funcgrad/builtin: activations {act_ratio:.3f}, total {tot_ratio:.3f}")
    nob = {k: res[k]["activations_without_broadcasts"] for k in VARIANTS}
    log(f"    (informational) activations without broadcast_in_dim residuals (jax.nn.relu's zero "
        f"fill): funcgrad {nob['funcgrad'] / MiB:.3f} MiB, builtin {nob['builtin'] / MiB:.3f} MiB,"
        f" ratio {nob['funcgrad'] / nob['builtin']:.3f}")
    temp_ratio = None
    if temp["funcgrad"] is not None and temp["builtin"]:
        temp_ratio = temp["funcgrad"] / temp["builtin"]
        log(f"    (informational) XLA temp buffers of compiled value_and_grad, ratio "
            f"{temp_ratio:.3f}")

    return {
        "model": name, "sizes": list(sizes), "batch": batch, "reps": reps,
        "steps_per_rep": steps,
        "loss_at_init": {"funcgrad": float(l_fg), "builtin": float(l_bi)},
        "max_abs_grad_difference": gdiff,
        "compile": info,
        "step_time_s": {k: {"median": med[k], "all": times[k]} for k in VARIANTS},
        "time_ratio": {"median": ratio, "q25": float(q[0]), "q75": float(q[1]),
                       "all": ratios},
        "residuals": res,
        "xla_temp_bytes_value_and_grad": temp,
        "xla_temp_ratio": temp_ratio,
        "activation_ratio_without_broadcasts": nob["funcgrad"] / nob["builtin"],
        "activation_residual_ratio": act_ratio,
        "total_residual_ratio": tot_ratio,
        "targets": {
            "time_ratio<=1.00": ratio <= TIME_TARGET,
            "activation_residual_ratio<=0.60": act_ratio <= ACT_TARGET,
        },
    }


def verdict(ok):
    return "PASS" if ok else "MISS"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["large", "small", "all"], default="all")
    p.add_argument("--reps", type=int, default=None,
                   help="interleaved repetitions per model (default: large 15, small 21)")
    p.add_argument("--steps", type=int, default=None,
                   help="training steps timed per repetition (default: large 3, small 200)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = p.parse_args(argv)

    names = ["large", "small"] if args.model == "all" else [args.model]
    print(f"funcgrad primitives benchmark: jax {jax.__version__}, optax {optax.__version__}, "
          f"backend {jax.default_backend()}, {jax.device_count()} device(s), "
          f"{os.cpu_count()} CPU core(s), {platform.machine()}, Python {platform.python_version()}")
    print("optimizer: optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.01)); "
          "step: jax.jit(step, donate_argnums=0)")
    t_start = time.perf_counter()
    results = []
    for name in names:
        _, _, reps, steps = MODELS[name]
        results.append(bench_model(name, args.reps or reps, args.steps or steps, print))

    print("\nWhat is counted. 'total residual bytes': every array JAX's saved_residuals lists")
    print("for the backward pass of params -> loss(params, x, y), measured on the traced")
    print("(unfused) program. 'activation residual bytes': total minus the parameters")
    print("(entries 'from the argument ...') minus the closed-over input batch x; labels and")
    print("anything derived from them stay in. XLA may fuse away some traced residuals (e.g.")
    print("jax.nn.relu's broadcast zero fill), so two informational figures follow the")
    print("table: the activation ratio without broadcast_in_dim residuals, and the ratio of")
    print("XLA's temporary buffer bytes for the compiled value_and_grad (no target on either).")

    print("\n| model | funcgrad ms/step | builtin ms/step | time ratio | target <= 1.00 | "
          "act. residuals fg / builtin (MiB) | act. ratio | target <= 0.60 | "
          "total residuals fg / builtin (MiB) | total ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        st, rs = r["step_time_s"], r["residuals"]
        print(f"| {r['model']} | {st['funcgrad']['median'] * 1e3:.3f} | "
              f"{st['builtin']['median'] * 1e3:.3f} | {r['time_ratio']['median']:.3f} | "
              f"{verdict(r['targets']['time_ratio<=1.00'])} | "
              f"{rs['funcgrad']['activations'] / MiB:.3f} / "
              f"{rs['builtin']['activations'] / MiB:.3f} | "
              f"{r['activation_residual_ratio']:.3f} | "
              f"{verdict(r['targets']['activation_residual_ratio<=0.60'])} | "
              f"{rs['funcgrad']['total'] / MiB:.3f} / {rs['builtin']['total'] / MiB:.3f} | "
              f"{r['total_residual_ratio']:.3f} |")
    print("\n| model | act. ratio without broadcast_in_dim residuals | "
          "XLA temp bytes fg / builtin (MiB) | XLA temp ratio |")
    print("|---|---|---|---|")
    for r in results:
        t = r["xla_temp_bytes_value_and_grad"]
        tt = ("n/a" if None in t.values() else
              f"{t['funcgrad'] / MiB:.3f} / {t['builtin'] / MiB:.3f}")
        tr = "n/a" if r["xla_temp_ratio"] is None else f"{r['xla_temp_ratio']:.3f}"
        print(f"| {r['model']} | {r['activation_ratio_without_broadcasts']:.3f} | {tt} | {tr} |")
    print(f"\nwall time {time.perf_counter() - t_start:.1f} s")

    if args.json:
        write_json(args.json, "benchmarks/primitives.py", results, cpu_count=os.cpu_count())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
