#!/usr/bin/env bash
# Everything a session with a lent GPU should run, in one call (see DEVELOPERS.md): the GPU test suite,
# compute-sanitizer on both backends, and the GPU benchmark.  Results go to ${OUT:-benchmarks/results}.
set -u
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
python -m parscan kernels --arch sm_90 > "$OUT/kernels.txt" 2>&1
python -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py > "$OUT/gpu-tests.txt" 2>&1; echo "gpu tests rc=$?" >> "$OUT/gpu-tests.txt"
for backend in cupy numba; do
  for tool in memcheck racecheck synccheck; do
    compute-sanitizer --tool $tool --error-exitcode 1 python benchmarks/sanitize.py $backend > "$OUT/sanitizer-$tool-$backend.txt" 2>&1
    echo "rc=$?" >> "$OUT/sanitizer-$tool-$backend.txt"
  done
done
python -m parscan bench --out "$OUT" > "$OUT/bench.txt" 2>&1; echo "bench rc=$?" >> "$OUT/bench.txt"
tail -n 3 "$OUT"/*.txt
