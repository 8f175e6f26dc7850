#!/usr/bin/env bash
# One-shot check on a GPU machine (about 7 minutes on one H200), from a checkout:
#
#   bash benchmarks/gpu_check.sh                          # results under $OUT if set, else benchmarks/results/
#   (under $OUT it writes 6 files: gpu_check.log, ops.{json,csv,png}, e2e.{json,csv}; the report step is
#   skipped there so everything fits what the device tool brings back: render RESULTS.md afterwards)
#   XFORMERS_WHEEL=/path/xformers-*.whl bash benchmarks/gpu_check.sh   # also test the xformers backend
#   bash benchmarks/gpu_check.sh --dry-run                # print the steps, run nothing
#
# Needs only torch >= 2.11, triton >= 3.6, timm, numpy, setuptools and pytest (no DALI, no xformers unless its
# wheel is given; matplotlib only for the charts). Steps, each under its own time limit:
#   0. install the checkout (pip install --no-deps --no-build-isolation -e ., else a non-editable copy)
#   1. the environment (nvidia-smi, versions)      2. the GPU-marked tests (python -m pytest -m gpu ...)
#   3. python -m benchmarks.ops at GPU sizes       4. python -m benchmarks.e2e at GPU sizes (ViT-B/16, B = 64, 32, 128)
#   5. RESULTS.md + charts from the results (when matplotlib is importable)
# A failing step is reported and the next one still runs; the exit status is 1 if any step failed.
set -euo pipefail

DRY=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY=1; fi
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PYTHON:-$(command -v python || command -v python3 || echo python)}"
RES="${OUT:-benchmarks/results}"
LOG="$RES/gpu_check.log"
# Seconds per step; the sum stays under 8 minutes (compiles of the fast-compiled rows dominate step 4; ops.py
# saves each size as it finishes, target sizes first, so a time-out keeps what finished).
T_TESTS="${GPU_CHECK_TEST_TIMEOUT:-100}"
T_OPS="${GPU_CHECK_OPS_TIMEOUT:-140}"
T_E2E="${GPU_CHECK_E2E_TIMEOUT:-190}"
FAILED=()
PYTEST_COPY=()

step() {  # step NAME SECONDS COMMAND...: run with a time limit, append to $LOG, record a failure
  local name="$1" limit="$2"
  shift 2
  echo "== [$name] (limit ${limit}s) $*"
  if (( DRY )); then return 0; fi
  local t0=$SECONDS rc=0
  timeout --signal=INT --kill-after=15 "$limit" "$@" 2>&1 | tee -a "$LOG" || rc=$?
  echo "== [$name] exit $rc after $(( SECONDS - t0 ))s" | tee -a "$LOG"
  LAST_RC=$rc
  if (( rc == 124 )); then
    FAILED+=("$name (timed out after ${limit}s; what it finished before is kept)")
  elif (( rc != 0 )); then
    FAILED+=("$name (exit $rc)")
  fi
  return 0
}

if (( ! DRY )); then mkdir -p "$RES"; : > "$LOG"; fi
# The package as users get it: `maavt_fast.kernels` is the checkout's kernels/ through the install (no PYTHONPATH).
LAST_RC=0
step install 120 "$PY" -m pip install --no-deps --no-build-isolation -e .
if (( LAST_RC )); then
  FAILED=()
  step install-copy 120 "$PY" -m pip install --no-deps --no-build-isolation .
  # a copy in site-packages: keep the checkout's maavt_fast/ (no kernels/ inside) off sys.path, `benchmarks` on it
  SHIM="$(mktemp -d)"
  ln -s "$PWD/benchmarks" "$SHIM/benchmarks"
  export PYTHONSAFEPATH=1 PYTHONPATH="$SHIM${PYTHONPATH:+:$PYTHONPATH}"
  PYTEST_COPY=(-o "pythonpath=")
fi
if [[ -n "${XFORMERS_WHEEL:-}" ]]; then
  step install-xformers 120 "$PY" -m pip install --no-deps --no-index "$XFORMERS_WHEEL"
fi
VERSIONS='import torch, triton, timm
print("torch", torch.__version__, "cuda", torch.version.cuda, "triton", triton.__version__, "timm", timm.__version__)
print(torch.cuda.get_device_name(0))'
step environment 60 bash -c "nvidia-smi; $PY -c '$VERSIONS'"
# only the modules holding GPU tests: the others import the data stack (PyAV, soundfile, DALI) the GPU box lacks
step gpu-tests "$T_TESTS" "$PY" -m pytest -m gpu tests/test_gpu_model.py tests/test_ops_contrastive.py \
  tests/test_ops_sigmoid.py tests/test_ops_group_attention.py -q -rs -p no:cacheprovider "${PYTEST_COPY[@]}"
step ops "$T_OPS" "$PY" -m benchmarks.ops --out "$RES"
step e2e "$T_E2E" "$PY" -m benchmarks.e2e --device cuda --batches 64,32,128 --warmup 2 --repeats 10 --out "$RES" \
  --note "benchmarks/gpu_check.sh"
if [[ -n "${OUT:-}" ]]; then
  echo "== [report] skipped under \$OUT (few files come back): run python -m benchmarks.report after copying the JSON"
elif "$PY" -c "import matplotlib" 2>/dev/null || (( DRY )); then
  step report 60 "$PY" -m benchmarks.report --results "$RES" --out "$RES/RESULTS.md"
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
