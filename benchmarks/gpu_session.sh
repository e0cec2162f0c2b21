#!/usr/bin/env bash
# What a session with a lent GPU should run (see DEVELOPERS.md), in stages that each fit one device call
# (10 minutes at most):  bash benchmarks/gpu_session.sh STAGE [STAGE ...]
#   tests     the kernel report for sm_90, parscan check (the user's one command) and the GPU test suite
#             (the kernels, parscan.jax on XLA's GPU buffers, parscan.dask with CuPy chunks)
#   sanitize  compute-sanitizer memcheck, racecheck and synccheck on both backends (benchmarks/sanitize.py)
#   bench     parscan bench: the roofline, paper and peers suites, and latency (a GPU call's host time)
#   frameworks parscan bench --suite jax,dask on the device (issues #16, #17)
#   deer      parscan bench --suite deer-gpu (issue #8)
# Results go to ${OUT:-benchmarks/results}; each stage's log ends with its exit status.
set -u
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
[ $# -gt 0 ] || set -- tests sanitize bench frameworks deer
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
for stage in "$@"; do
  case $stage in
    tests)
      python -m parscan kernels --arch sm_90 > "$OUT/kernels.txt" 2>&1
      python -m parscan check --no-progress --out "$OUT/parscan-check.json" > "$OUT/check.txt" 2>&1
      echo "check rc=$?" >> "$OUT/check.txt"
      python -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py tests/test_jax_jit.py tests/test_dask.py \
        > "$OUT/gpu-tests.txt" 2>&1
      echo "gpu tests rc=$?" >> "$OUT/gpu-tests.txt" ;;
    sanitize)
      for backend in cupy numba; do
        for tool in memcheck racecheck synccheck; do
          compute-sanitizer --tool $tool --error-exitcode 1 python benchmarks/sanitize.py $backend \
            > "$OUT/sanitizer-$tool-$backend.txt" 2>&1
          echo "rc=$?" >> "$OUT/sanitizer-$tool-$backend.txt"
        done
      done ;;
    bench)
      python -m parscan bench --suite roofline,paper,peers,latency --out "$OUT/bench" > "$OUT/bench.txt" 2>&1
      echo "bench rc=$?" >> "$OUT/bench.txt" ;;
    frameworks)
      # JAX's GPU devices first (the jax suite times the GPU path only where JAX has a CUDA backend); XLA
      # allocates on demand, leaving the device's memory to CuPy too (parscan's kernels, dask's chunks)
      python -c "import jax; print('jax', jax.__version__, jax.devices())" > "$OUT/frameworks.txt" 2>&1
      XLA_PYTHON_CLIENT_PREALLOCATE=false python -m parscan bench --suite jax,dask --out "$OUT/frameworks" \
        >> "$OUT/frameworks.txt" 2>&1
      echo "frameworks rc=$?" >> "$OUT/frameworks.txt" ;;
    deer)
      python -m parscan bench --suite deer-gpu --out "$OUT/deer" > "$OUT/deer.txt" 2>&1
      echo "deer rc=$?" >> "$OUT/deer.txt" ;;
    *) echo "unknown stage $stage (tests, sanitize, bench, frameworks, deer)" >&2; exit 2 ;;
  esac
  tail -n 3 "$OUT"/*.txt
done
