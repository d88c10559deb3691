"""The targets of ``benchmarks/training.py`` and the rows of its verdict table."""

from __future__ import annotations

from _timing import n_cores

TARGETS = {  # name: (comparison, target, unit)
    "scalar_fused_over_loop": (">=", 1000.0, "x"),
    "small_fused_over_loop": (">=", 1.4, "x"),
    "small_fused_over_torch": (">=", 3.5, "x"),
    "large_fraction_of_peak": (">=", 0.75, ""),
    "large_time_over_plain": ("<=", 1.05, ""),
    "compile_small_s": ("<", 1.0, " s"),
    "compile_large_s": ("<", 1.0, " s"),
    "fit_over_step": (">=", 0.8, "x"),
    "fit_large_time_over_step": ("<=", 1.05, ""),
    # reported beside its target row, not judged: 40 steps of a compute-bound model whose
    # first call is mostly compilation (the pure step it is compared with is compiled)
    "fit_large_first_call": (None, None, ""),
    "cli_over_torch": (">=", 2.0, "x"),
    "digits_speedup": (">=", 3.0, "x"),
}


def meets(name, value):
    op, target, _ = TARGETS[name]
    if op is None:
        return "info"
    if value is None:
        return None
    return {">=": value >= target, "<=": value <= target, "<": value < target}[op]


def verdict(ok):
    if ok == "info":
        return "reported"
    return "n/a" if ok is None else ("PASS" if ok else "MISS")


def rows_for(results):
    rows = []

    def add(section, what, name, value, fmt, spread=""):
        op, target, unit = TARGETS[name]
        rows.append({"section": section, "comparison": what, "key": name, "value": value,
                     "text": "skipped (no torch)" if value is None
                     else fmt.format(value) + spread,
                     "target": "(not judged)" if op is None else f"{op} {target:g}{unit}",
                     "ok": meets(name, value)})

    def iqr(r, fmt):
        return f" (IQR {fmt.format(r['q25'])}-{fmt.format(r['q75'])})"

    if "scalar" in results:
        r = results["scalar"]["fused_over_loop"]
        add("scalar", "fused steps/s / per-step loop steps/s", "scalar_fused_over_loop",
            r["median"], "{:,.0f}x", iqr(r, "{:,.0f}"))
    if "small" in results:
        s = results["small"]
        r = s["fused_over_loop"]
        add("small", "fused steps/s / per-step loop steps/s", "small_fused_over_loop",
            r["median"], "{:.2f}x", iqr(r, "{:.2f}"))
        for key, label in (("fused_over_torch", f"{n_cores()} torch threads"),
                           ("fused_over_torch_1thread", "1 torch thread")):
            r = s[key]
            add("small", f"fused steps/s / torch eager steps/s ({label})",
                "small_fused_over_torch", None if r is None else r["median"], "{:.2f}x",
                "" if r is None else iqr(r, "{:.2f}"))
    if "large" in results:
        g = results["large"]
        r = g["fraction_of_peak"]
        add("large", "funcgrad step GFLOP/s / matmul peak GFLOP/s", "large_fraction_of_peak",
            r["median"], "{:.3f}", iqr(r, "{:.3f}"))
        r = g["time_over_plain"]
        add("large", "funcgrad step time / plain jax.nn step time", "large_time_over_plain",
            r["median"], "{:.3f}", iqr(r, "{:.3f}"))
    if "fit" in results:
        _fit_rows(results["fit"], add, iqr)
    if "compile" in results:
        for name in ("small", "large"):
            c = results["compile"][name]
            add("compile", f"{name} train step lower+compile (median; first "
                f"{c['first_s']:.2f} s)", f"compile_{name}_s", c["total_s"]["median"],
                "{:.3f} s")
    return rows



def _fit_rows(f, add, iqr):
    s, g = f["small"], f["large"]
    add("fit", "fit steps/s / fused step steps/s, first call (compile included)",
        "fit_over_step", s["first_call_over_step"], "{:.3f}x")
    if s.get("warm_first_call_over_step") is not None:
        floors = s.get("warm_first_call_floors") or {}
        refs = ", ".join(f"{k} step's own {v:.3f}x" for k, v in floors.items())
        add("fit", "the same, first call in a fresh process with a warm compilation cache "
            f"(median of paired runs; the same first call of the {refs})",
            "fit_over_step", s["warm_first_call_over_step"], "{:.3f}x")
    r = s["fit_over_step"]
    add("fit", "fit steps/s / fused step steps/s, repeated calls (programs reused)",
        "fit_over_step", r["median"], "{:.3f}x", iqr(r, "{:.3f}"))
    r = g["fit_over_step"]
    add("fit", "large: fit time / step time, repeated calls (programs compiled, as the "
        "step is)", "fit_large_time_over_step", 1 / r["median"], "{:.3f}")
    add("fit", "large: fit time / step time, first call (compile included; 40 steps)",
        "fit_large_first_call", 1 / g["first_call_over_step"], "{:.3f}")
    c = f["cli_3600"]
    r = f["cli_over_torch"]
    add("fit", f"funcgrad train 3,600 steps, warm cache ({c['warm_steps_per_s']:,.0f} "
        f"steps/s end to end; cold {c['cold_steps_per_s']:,.0f}): torch eager end-to-end "
        "time / funcgrad's", "cli_over_torch", None if r is None else r["median"], "{:.2f}x",
        "" if r is None else iqr(r, "{:.2f}"))
    r = f["digits_speedup"]
    add("fit", "funcgrad train (digits defaults) end to end: baseline time / now (warm "
        "cache)", "digits_speedup", None if r is None else r["median"], "{:.2f}x",
        "" if r is None else iqr(r, "{:.2f}"))
