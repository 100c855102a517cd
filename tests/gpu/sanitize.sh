#!/usr/bin/env bash
# make gpu-check's sanitizer stage: compute-sanitizer over tests/gpu/kernel_smoke.py. memcheck over every native CUDA
# kernel without torch's caching allocator (an out-of-bounds access then leaves its allocation), racecheck over the
# kernels with shared-memory reductions, memcheck over the Triton kernels (a subset: compiled kernels under the
# sanitizer are slow). Reports go to $1 (a folder).
set -u
R=${1:?usage: sanitize.sh RESULTS_DIR}
PY=${PY:-python3}
SAN=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
[ -z "$SAN" ] && { echo "compute-sanitizer not found"; exit 3; }
S="$SAN --report-api-errors no --error-exitcode 42 --print-limit 30"
SMOKE="$PY tests/gpu/kernel_smoke.py"
rc=0
run() {  # run NAME ARGS...: one sanitizer pass, its report in $R/NAME.txt
  local name=$1; shift
  "$@" > "$R/$name.out" 2>&1 || rc=$?
  echo "$name: rc=$rc; $(tail -1 "$R/$name.txt" 2>/dev/null)"
}
run memcheck_cuda env PYTORCH_NO_CUDA_MEMORY_CACHING=1 $S --tool memcheck --log-file "$R/memcheck_cuda.txt" \
  $SMOKE --backend cuda
run racecheck_cuda $S --tool racecheck --log-file "$R/racecheck_cuda.txt" $SMOKE --backend cuda \
  --only "element float32,element bfloat16,GRDA float32,block (64, 64),block (3, 5) float32,40 tensors"
run memcheck_triton env PYTORCH_NO_CUDA_MEMORY_CACHING=1 $S --tool memcheck --log-file "$R/memcheck_triton.txt" \
  $SMOKE --backend triton --only "element float32,GRDA float32,block (64, 64) float32,block (3, 5) float32,unaligned,40 tensors"
exit $rc
