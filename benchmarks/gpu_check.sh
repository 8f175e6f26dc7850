#!/usr/bin/env bash
# One-shot check on a GPU machine (about 7 minutes on one H200), from a plain checkout:
#
#   PYTHONPATH=. bash benchmarks/gpu_check.sh            # results under $OUT if set, else benchmarks/results/
#   XFORMERS_WHEEL=/path/xformers-*.whl bash benchmarks/gpu_check.sh   # also test the xformers backend
#   bash benchmarks/gpu_check.sh --dry-run                # print the steps, run nothing
#
# Needs only torch >= 2.11, triton >= 3.6, timm, numpy and pytest (no DALI, no xformers unless its wheel is
# given; matplotlib only for the charts). Steps, each under its own time limit:
#   1. the environment (nvidia-smi, versions)      2. the GPU-marked tests: python -m pytest -m gpu tests
#   3. benchmarks/ops.py at GPU sizes              4. benchmarks/e2e.py at GPU sizes (ViT-B/16, B = 64, 32, 128)
#   5. RESULTS.md + charts from the results (when matplotlib is importable)
# A failing step is reported and the next one still runs; the exit status is 1 if any step failed.
set -euo pipefail

DRY=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY=1; fi
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-$(command -v python || command -v python3 || echo python)}"
RES="${OUT:-benchmarks/results}"
LOG="$RES/gpu_check"
# Seconds per step; the sum stays under 8 minutes (compiles of the fast-compiled rows dominate step 4).
T_TESTS="${GPU_CHECK_TEST_TIMEOUT:-150}"
T_OPS="${GPU_CHECK_OPS_TIMEOUT:-60}"
T_E2E="${GPU_CHECK_E2E_TIMEOUT:-230}"
FAILED=()

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $LOG/NAME.log, record a failure
  local name="$1" limit="$2"
  shift 2
  echo "== [$name] (limit ${limit}s) $*"
  if (( DRY )); then return 0; fi
  local t0=$SECONDS rc=0
  timeout --signal=INT --kill-after=15 "$limit" "$@" 2>&1 | tee "$LOG/$name.log" || rc=$?
  echo "== [$name] exit $rc after $(( SECONDS - t0 ))s"
  if (( rc == 124 )); then
    FAILED+=("$name (timed out after ${limit}s; what it finished before is kept)")
  elif (( rc != 0 )); then
    FAILED+=("$name (exit $rc)")
  fi
  return 0
}

if (( ! DRY )); then mkdir -p "$LOG"; fi
if [[ -n "${XFORMERS_WHEEL:-}" ]]; then
  step install-xformers 120 "$PY" -m pip install --no-deps --no-index "$XFORMERS_WHEEL"
fi
VERSIONS='import torch, triton, timm
print("torch", torch.__version__, "cuda", torch.version.cuda, "triton", triton.__version__, "timm", timm.__version__)
print(torch.cuda.get_device_name(0))'
step environment 60 bash -c "nvidia-smi; $PY -c '$VERSIONS'"
step gpu-tests "$T_TESTS" "$PY" -m pytest -m gpu tests -q -rs --junitxml="$LOG/gpu_tests.xml" -p no:cacheprovider
step ops "$T_OPS" "$PY" benchmarks/ops.py --out "$RES"
step e2e "$T_E2E" "$PY" benchmarks/e2e.py --device cuda --batches 64,32,128 --warmup 2 --repeats 10 --out "$RES" \
  --note "benchmarks/gpu_check.sh"
if "$PY" -c "import matplotlib" 2>/dev/null || (( DRY )); then
  step report 60 "$PY" benchmarks/report.py --results "$RES" --out "$RES/RESULTS.md"
else
  echo "== [report] skipped: matplotlib is not installed (the JSON/CSV results are complete)"
fi

if (( DRY )); then echo "== dry run: nothing ran"; exit 0; fi
echo "== results in $RES (logs in $LOG)"
if (( ${#FAILED[@]} )); then
  printf '== FAILED: %s\n' "${FAILED[@]}"
  exit 1
fi
echo "== all steps passed"
