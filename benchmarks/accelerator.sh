#!/usr/bin/env bash
# One prepared accelerator check for funcgrad (issue 15). Installs nothing.
#
#   bash benchmarks/accelerator.sh --platform gpu      # or tpu; cpu runs anywhere (CI)
#
# With the project installed as the README says (pip install -e ".[test]"; for a GPU
# also `pip install "jax[cuda13]"`), it:
#   1. prints JAX's version and devices;
#   2. runs `pytest -m accelerator` (tests/test_accelerator.py): every primitive's rule
#      under jit on the device against jax.devices("cpu"), and three train steps;
#   3. runs `funcgrad train --platform P` in f32, and in bf16 when the installed CLI has
#      --precision (otherwise a note says it was skipped);
#   4. runs `python benchmarks/training.py --quick` (the large step and the fraction of
#      the device's matmul peak, measured in the same run) when it has --quick;
#   5. writes every result to one JSON file (--json, default accelerator.json).
# Exit status 0 when every step that ran passed. Budget: under 5 minutes.
#
# Options: --platform {cpu,gpu,tpu}  --json FILE  --epochs N (funcgrad train; default:
# its own default)  --workdir DIR (outputs; default a temporary directory)
#   --skip-train  --skip-bench   (leave out steps 3 or 4)
set -u

usage() { sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; }

PLATFORM=gpu
JSON=accelerator.json
EPOCHS=""
WORKDIR=""
SKIP_TRAIN=0
SKIP_BENCH=0
while [ $# -gt 0 ]; do
  case "$1" in
    --platform) PLATFORM="${2:-}"; shift 2 ;;
    --json) JSON="${2:-}"; shift 2 ;;
    --epochs) EPOCHS="${2:-}"; shift 2 ;;
    --workdir) WORKDIR="${2:-}"; shift 2 ;;
    --skip-train) SKIP_TRAIN=1; shift ;;
    --skip-bench) SKIP_BENCH=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "accelerator.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
case "$PLATFORM" in
  cpu) export JAX_PLATFORMS=cpu ;;
  gpu|cuda) PLATFORM=gpu; export JAX_PLATFORMS=cuda,cpu ;;
  rocm) export JAX_PLATFORMS=rocm,cpu ;;
  tpu) export JAX_PLATFORMS=tpu,cpu ;;
  *) echo "accelerator.sh: argument '--platform' must be one of cpu, gpu, rocm, tpu; got '$PLATFORM'" >&2
     exit 2 ;;
esac
if [ -n "$EPOCHS" ] && ! [[ "$EPOCHS" =~ ^[1-9][0-9]*$ ]]; then
  echo "accelerator.sh: argument '--epochs' must be an int >= 1; got '$EPOCHS'" >&2; exit 2
fi
[ -n "$JSON" ] || { echo "accelerator.sh: argument '--json' must name a file" >&2; exit 2; }

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT" || exit 2
PY="${PYTHON:-python}"
command -v "$PY" >/dev/null || { echo "accelerator.sh: no '$PY' on PATH (activate the venv)" >&2; exit 2; }
if [ -z "$WORKDIR" ]; then WORKDIR="$(mktemp -d "${TMPDIR:-/tmp}/funcgrad-accel.XXXXXX")"; fi
mkdir -p "$WORKDIR" || exit 2
STEPS="$WORKDIR/steps.tsv"
: > "$STEPS"
FAILED=0
START=$(date +%s)

# run NAME NOTE CMD...: runs CMD, tees its output to WORKDIR/NAME.log, records the result
run() {
  local name="$1" note="$2"; shift 2
  echo
  echo "=== $name: $*"
  local t0 t1 rc
  t0=$(date +%s.%N)
  "$@" 2>&1 | tee "$WORKDIR/$name.log"
  rc=${PIPESTATUS[0]}
  t1=$(date +%s.%N)
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$rc" "$(awk "BEGIN{print $t1 - $t0}")" "$note" "$*" >> "$STEPS"
  [ "$rc" -eq 0 ] || FAILED=1
  echo "=== $name: exit $rc"
}

skip() {  # skip NAME WHY
  echo
  echo "=== $1: skipped: $2"
  printf '%s\t%s\t%s\t%s\t%s\n' "$1" "skipped" "0" "$2" "" >> "$STEPS"
}

echo "funcgrad accelerator check: platform $PLATFORM (JAX_PLATFORMS=$JAX_PLATFORMS), outputs in $WORKDIR"
uptime 2>/dev/null || true
cat > "$WORKDIR/devices.py" <<'PYDEV'
import json, platform, sys
import jax
devs = jax.devices()
print("python", platform.python_version(), "jax", jax.__version__, "backend", jax.default_backend())
for d in devs:
    print(" ", d.id, d.platform, getattr(d, "device_kind", ""))
json.dump({"python": platform.python_version(), "jax": jax.__version__,
           "backend": jax.default_backend(),
           "devices": [f"{d.platform}:{d.id} {getattr(d, 'device_kind', '')}" for d in devs]},
          open(sys.argv[1], "w"))
PYDEV
run devices "" "$PY" "$WORKDIR/devices.py" "$WORKDIR/devices.json"

run accelerator_tests "every rule and three train steps on the device vs the CPU" \
  "$PY" -m pytest -q -p no:cacheprovider -m accelerator tests/test_accelerator.py

TRAIN_PLATFORM="$PLATFORM"
EPOCH_ARGS=()
[ -n "$EPOCHS" ] && EPOCH_ARGS=(--epochs "$EPOCHS")
if [ "$SKIP_TRAIN" -eq 1 ]; then
  skip train_f32 "--skip-train"
  skip train_bf16 "--skip-train"
else
  HAS_PRECISION=0
  "$PY" -m funcgrad.cli train --help 2>/dev/null | grep -q -- "--precision" && HAS_PRECISION=1
  if [ "$HAS_PRECISION" -eq 1 ]; then
    run train_f32 "" "$PY" -m funcgrad.cli train --platform "$TRAIN_PLATFORM" --precision f32 \
      --no-progress --out "$WORKDIR/train_f32" "${EPOCH_ARGS[@]}"
    run train_bf16 "" "$PY" -m funcgrad.cli train --platform "$TRAIN_PLATFORM" --precision bf16 \
      --no-progress --out "$WORKDIR/train_bf16" "${EPOCH_ARGS[@]}"
  else
    run train_f32 "float32 (the CLI has no --precision flag)" "$PY" -m funcgrad.cli train \
      --platform "$TRAIN_PLATFORM" --no-progress --out "$WORKDIR/train_f32" "${EPOCH_ARGS[@]}"
    skip train_bf16 "funcgrad train --help has no --precision flag in this version"
  fi
fi

if [ "$SKIP_BENCH" -eq 1 ]; then
  skip training_quick "--skip-bench"
elif "$PY" benchmarks/training.py --help 2>/dev/null | grep -q -- "--quick"; then
  BENCH_ARGS=(--quick)
  "$PY" benchmarks/training.py --help 2>/dev/null | grep -q -- "--json" \
    && BENCH_ARGS+=(--json "$WORKDIR/training_quick.json")
  run training_quick "benchmarks/training.py --quick: large step, fraction of the matmul peak" \
    "$PY" benchmarks/training.py "${BENCH_ARGS[@]}"
else
  skip training_quick "benchmarks/training.py has no --quick option in this version"
fi

"$PY" - "$WORKDIR" "$JSON" "$PLATFORM" "$(( $(date +%s) - START ))" <<'EOF'
import json, math, pathlib, sys

work, out, platform, seconds = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]

def load(path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None

steps = {}
for line in (work / "steps.tsv").read_text().splitlines():
    name, rc, secs, note, cmd = (line.split("\t") + [""] * 5)[:5]
    steps[name] = {"status": "skipped" if rc == "skipped" else ("passed" if rc == "0" else "failed"),
                   "exit": None if rc == "skipped" else int(rc), "seconds": round(float(secs or 0), 2),
                   "note": note, "command": cmd}
for name in ("train_f32", "train_bf16"):
    s = load(work / name / "summary.json")
    if s and name in steps:
        steps[name]["summary"] = {k: s.get(k) for k in ("test_accuracy", "test_loss", "steps",
                                                        "epochs", "steps_per_second",
                                                        "wall_seconds", "devices")}
bench = load(work / "training_quick.json")
if bench is not None and "training_quick" in steps:
    steps["training_quick"]["results"] = bench

def clean(x):  # strict JSON: NaN/inf become null
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: clean(v) for k, v in x.items()}
    if isinstance(x, list):
        return [clean(v) for v in x]
    return x

result = clean({"platform": platform, "environment": load(work / "devices.json"),
                "passed": all(s["status"] != "failed" for s in steps.values()),
                "total_seconds": int(seconds), "workdir": str(work), "steps": steps})
pathlib.Path(out).write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
print()
for name, s in steps.items():
    extra = ""
    if "summary" in s:
        extra = f"  test_accuracy {s['summary']['test_accuracy']}"
    print(f"{name:18s} {s['status']:8s} {s['seconds']:8.1f} s  {s['note']}{extra}")
print(f"wrote {out} ({'PASS' if result['passed'] else 'FAIL'}, {seconds} s)")
EOF
[ $? -eq 0 ] || FAILED=1
exit "$FAILED"
