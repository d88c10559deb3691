"""Time ``funcgrad check``: the full battery on every built-in primitive, against 20 s.

Runs ``funcgrad check`` (all registered built-ins, every check: reference over the shape
grid, float64 finite differences, dot product, grad of grad, kinks, edge points, four
dtypes, jit/vmap/scan/remat) in a fresh subprocess, ``--repeat`` times, and reports the
wall time and the CPU time (user + system of the subprocess; on a shared machine the CPU
time is the steadier number). Prints PASS when the best wall time is at most ``--budget``
seconds, FAIL otherwise, and exits 1 on FAIL or if the check itself failed.

Run ``python benchmarks/check_time.py --help``.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time


def run_once(extra: list[str]) -> tuple[float, float, int]:
    """One ``funcgrad check`` in a subprocess: (wall s, CPU s, exit status)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "funcgrad.cli", "check", *extra],
                          capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-2000:])
    return wall, cpu, proc.returncode


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=1, help="runs (default %(default)s)")
    p.add_argument("--budget", type=float, default=20.0,
                   help="seconds allowed for the best wall time (default %(default)s)")
    p.add_argument("extra", nargs="*", help="arguments passed on to funcgrad check")
    args = p.parse_args(argv)
    runs = [run_once(args.extra) for _ in range(args.repeat)]
    for k, (wall, cpu, rc) in enumerate(runs):
        print(f"run {k + 1}: wall {wall:.1f} s, CPU {cpu:.1f} s, exit status {rc}")
    best = min(w for w, _, _ in runs)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    ok = best <= args.budget and all(rc == 0 for *_, rc in runs)
    print(f"funcgrad check: best wall {best:.1f} s, best CPU {min(c for _, c, _ in runs):.1f} s"
          f" on {os.cpu_count()} cores (load average {load:.1f}); budget {args.budget:.0f} s: "
          f"{'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
