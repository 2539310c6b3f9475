#!/usr/bin/env bash
# Everything that needs a CUDA GPU, in one go, for a machine lent for minutes: the gpu-marked tests and the rest of
# the suite (which runs on the GPU there: trainer.accelerator=auto) side by side, then bench/gpu.py alone so that
# nothing else shares the GPU while it times. Each part has a time limit, after which it is interrupted (SIGINT:
# pytest still prints the failures it has), and prints each test's outcome as it ends. Logs go to $OUT (else
# bench/results/). On an H200 with 16 cores the suite took 2:45 with 14 workers.
# Usage: bash bench/gpu_checks.sh   (from the repository root, with tlx and its dependencies importable)
set -u
out=${OUT:-bench/results}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 TLX_CACHE_DIR=${TLX_CACHE_DIR:-$(mktemp -d)}
{
  nvidia-smi -L
  python -c "import sys, torch, timm, pytorch_lightning as pl, hydra
print(sys.version.split()[0], 'torch', torch.__version__, 'timm', timm.__version__, 'lightning', pl.__version__,
      'hydra', hydra.__version__, 'cuda', torch.cuda.is_available())"
} > "$out/env.txt" 2>&1
cat "$out/env.txt"
tests=(python -m pytest -p no:cacheprovider -v --tb=short -rfE)

# The suite, one thread a worker; packages a GPU image lacks take their tests along (SUITE_ARGS="--ignore ...").
(
  OMP_NUM_THREADS=1 timeout -s INT -k 15 "${SUITE_S:-300}" "${tests[@]}" -n "${WORKERS:-14}" --timeout 150 \
    ${SUITE_ARGS:-} > "$out/suite.log" 2>&1
  echo "rc $?" >> "$out/suite.log"
) &
timeout -s INT -k 15 "${GPU_TESTS_S:-300}" "${tests[@]}" -m gpu --timeout 200 tests/test_gpu.py > "$out/gpu_tests.log" 2>&1
echo "rc $?" >> "$out/gpu_tests.log"
wait
grep -E "^(FAILED|ERROR)|^rc |passed|failed" "$out/gpu_tests.log" "$out/suite.log"

timeout -s INT -k 15 "${BENCH_S:-600}" python bench/gpu.py ${BENCH_ARGS:-} > "$out/bench_gpu.log" 2>&1
echo "rc $?" >> "$out/bench_gpu.log"
[ "$out" = bench/results ] || cp bench/results/gpu.json "$out/" 2>/dev/null
tail -n 40 "$out/bench_gpu.log"
