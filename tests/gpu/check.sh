#!/usr/bin/env bash
# make gpu-check: everything a GPU can tell us, in one run of at most BUDGET seconds (default 480: the 8 minutes a
# lent H200 gives a session), from the repository root. Each stage runs under its own timeout (a hang costs one
# stage, not the run) and is skipped once the budget is spent; stages come in priority order:
#   env        the machine, the packages, the tree                                              ~5 s
#   build      the extension for this GPU (TORCH_CUDA_ARCH_LIST from its capability, 9.0a on an H100/H200), from
#              a clean tree: pip install -e . --no-build-isolation --no-index                ~60-90 s
#   smoke      tests/gpu/kernel_smoke.py on the native CUDA kernels (a crash here is not the sanitizer's)
#   then three jobs at once:                                                                ~150-240 s
#     tests_gpu   pytest -m gpu (serial): CUDA graphs, host traffic per step, the kernels in 16-bit dtypes, ...
#     tests_rest  the rest of the suite (-n 6 with xdist): the CUDA paths of the tests that switch to CUDA when
#                 there is one, and the CPU suite on this machine's torch and triton
#     sanitizer   compute-sanitizer: memcheck and racecheck over the native CUDA kernels, memcheck over Triton's
#   bench_*    quick benchmarks on the quiet GPU: optimizer step (ResNet-18/50, 1B transformer, fp32; the 1B set
#              in bf16), masked matmul, training step, 2:4 semi-structured linear, a 5-candidate tuning sweep                ~150-250 s
# Results: $RESULTS (default $OUT/gpu-check when OUT is set, as on the device machine, else
# bench/results/gpu-check): every stage's log, junit xml, the benchmarks' JSON/markdown, the sanitizer reports, and
# summary.txt (one line per stage: rc, seconds, limit, last line of its log).
# Without a GPU (CI) the GPU stages say "skipped: no GPU"; the smoke workload runs on the native CPU kernels
# instead, so the script and its stages are checked end to end. It expects the packages already installed
# (the device machine has no registry): torch, pytest (pytest-xdist if there), numpy; triton for its stages.
set -u
START=$(date +%s)
BUDGET=${BUDGET:-480}
PY=${PY:-python3}
cd "$(dirname "$0")/../.."
if [ -n "${OUT:-}" ]; then RESULTS=${RESULTS:-$OUT/gpu-check}; else RESULTS=${RESULTS:-bench/results/gpu-check}; fi
mkdir -p "$RESULTS/bench"
R=$(cd "$RESULTS" && pwd)
SUMMARY=$R/summary.txt
: > "$SUMMARY"
unset TRITON_INTERPRET  # the kernels run compiled on the GPU; the interpreter is for CPU tests only
export PYTHONUNBUFFERED=1 CUDA_MODULE_LOADING=LAZY

left() { echo $(( BUDGET - ($(date +%s) - START) )); }
note() { echo "$*" | tee -a "$SUMMARY"; }
skip() { note "$(printf '%-20s skipped: %s' "$1" "$2")"; }
# stage NAME MAX_SECONDS CMD...: CMD under min(MAX, budget left) seconds, its output in $R/NAME.log
stage() {
  local name=$1 max=$2; shift 2
  local budget; budget=$(left)
  local limit=$(( max < budget - 5 ? max : budget - 5 ))
  if [ "$limit" -lt 15 ]; then skip "$name" "budget spent"; return 0; fi
  local t0; t0=$(date +%s)
  timeout -k 10 "$limit" "$@" > "$R/$name.log" 2>&1
  local rc=$?
  note "$(printf '%-20s rc=%-3s %4ss (limit %ss)  ' "$name" "$rc" "$(( $(date +%s) - t0 ))" "$limit")$(
    grep -v '^\s*$' "$R/$name.log" | tail -1 | cut -c1-150)"
  return $rc
}

GPU=$($PY -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)

# ------------------------------------------------------------------------------------------------ env
{
  date -u
  [ "$GPU" = 1 ] && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv
  $PY -V; command -v nvcc > /dev/null && nvcc --version | tail -2
  command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null
  $PY - <<'PYEOF'
import importlib
for name in ("torch", "triton", "numpy", "setuptools", "pytest", "xdist", "hypothesis", "pytest_benchmark", "ninja"):
    try:
        print(name, getattr(importlib.import_module(name), "__version__", "?"))
    except Exception as err:
        print(name, f"MISSING ({type(err).__name__})")
import torch
print("cuda", torch.version.cuda, torch.cuda.is_available(),
      *((torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0)) if torch.cuda.is_available() else ()))
PYEOF
  git log --oneline -1 2>/dev/null; git status --short 2>/dev/null | head -20
} > "$R/env.log" 2>&1
note "env: $(grep -E '^(torch|triton|numpy|xdist) ' "$R/env.log" | tr '\n' ' ')gpu=$GPU"

# ------------------------------------------------------------------------------------------------ build
if [ "$GPU" = 1 ]; then
  ARCH=$($PY -c "import torch; m, n = torch.cuda.get_device_capability(); print(f'{m}.{n}' + ('a' if m == 9 else ''))")
  rm -rf build sparse_rda/_C*.so  # from a clean tree: no object or library of an earlier build is reused
  BUILD_ENV="env TORCH_CUDA_ARCH_LIST=$ARCH MAX_JOBS=$(nproc)"
  if ! stage build 240 $BUILD_ENV SPARSE_RDA_WERROR=1 $PY -m pip install -v --no-build-isolation --no-deps --no-index -e .
  then  # pip or this setuptools could not: the same sources through torch's JIT builder, imported from the tree
    stage build_fallback 240 $BUILD_ENV $PY tests/gpu/jit_build.py && export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
  fi
  stage backends 30 $PY -c "import sparse_rda, sys; b = sparse_rda.backends(); print('backends', b); sys.exit('cuda' not in b)"
  SO=$(ls sparse_rda/_C*.so 2>/dev/null | head -1)
  [ -n "$SO" ] && command -v cuobjdump > /dev/null && cuobjdump --dump-resource-usage "$SO" > "$R/kernel_resources.txt" 2>&1
else
  skip build "no GPU (make test builds and tests the CPU extension)"
fi

# ------------------------------------------------------------------------------------------------ correctness
PT="-q -p no:cacheprovider -rfEs"
if [ "$GPU" = 1 ]; then
  stage smoke 90 $PY tests/gpu/kernel_smoke.py --backend cuda
  XDIST=$($PY -c "import xdist" 2>/dev/null && echo "-n 6" || echo "")
  T=$(( $(left) - 10 )); [ "$T" -gt 240 ] && T=240
  ( stage tests_gpu "$T" $PY -m pytest $PT -m gpu tests --junitxml="$R/tests_gpu.xml" ) &
  ( stage tests_rest "$T" $PY -m pytest $PT $XDIST -m "not gpu" tests --junitxml="$R/tests_rest.xml" ) &
  ( stage sanitizer "$T" bash tests/gpu/sanitize.sh "$R" ) &
  wait
else
  stage smoke 90 $PY tests/gpu/kernel_smoke.py --device cpu --backend cpu
  for name in tests_gpu tests_rest sanitizer; do skip $name "no GPU"; done
fi

# ------------------------------------------------------------------------------------------------ benchmarks
if [ "$GPU" = 1 ]; then
  B="--device cuda --out $R/bench"
  stage bench_optimizer_step 150 $PY bench/optimizer_step.py --quick $B
  stage bench_masked_matmul 120 $PY bench/masked_matmul.py --quick $B
  stage bench_train_step 120 $PY bench/train_step.py --quick $B
  stage bench_optimizer_bf16_1b 60 $PY bench/optimizer_step.py --quick --dtype bf16 --sets transformer-1b $B
  stage bench_semi_structured 60 $PY bench/semi_structured.py --shapes mlp-up,mlp-down $B
  stage bench_tune_64_bf16 90 $PY bench/tune_masked_matmul.py --sides 64 --dtypes bf16 $B \
    --candidates 64,4,3 128,4,3 128,4,5 128,8,3 256,8,3  # (128, 4, 5) is the default
  nvidia-smi --query-gpu=clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv >> "$R/env.log" 2>&1
else
  for name in bench_optimizer_step bench_masked_matmul bench_train_step bench_optimizer_bf16_1b bench_semi_structured \
      bench_tune_64_bf16; do
    skip $name "no GPU"
  done
fi
note "total $(( $(date +%s) - START ))s of BUDGET=${BUDGET}s; results in $R"
! grep -qE 'rc=[1-9]' "$SUMMARY"  # the run fails when a stage failed
