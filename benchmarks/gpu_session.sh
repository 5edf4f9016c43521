#!/usr/bin/env bash
# What to run on a machine with a CUDA GPU, in one command (the device tool's `run`, repository root):
#
#     bash benchmarks/gpu_session.sh            # env, GPU tests, benchmark of both fused kernels
#     bash benchmarks/gpu_session.sh sweep      # the integer kernel's launch shapes and register caps
#
# Writes under $OUT (or ./gpu-results): env.txt, gpu_tests.log, gpu_fused.{json,txt} or
# sweep_*.{json,txt}. Commit them to benchmarks/results/ with the device, date and command.
# Each part stays under the device tool's 10 minutes per command on an H100.
set -u
out=${OUT:-gpu-results}
mkdir -p "$out"
python3 -m pip install --no-deps -e . > "$out/install.log" 2>&1 || { tail "$out/install.log"; exit 1; }
{
  date -u +%Y-%m-%dT%H:%M:%SZ
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv,noheader
  python3 -c "import numba, numpy; print('numba', numba.__version__, 'numpy', numpy.__version__)"
  python3 -c "import cupy; print('cupy', cupy.__version__)"
  python3 -m pip show numba-cuda 2>/dev/null | grep -i '^version'
} > "$out/env.txt" 2>&1
cat "$out/env.txt"

if [ "${1:-}" = "sweep" ]; then
  # groups, steps, register cap (0: the compiler's); tile = 256 threads x 8 x groups x steps <= 32768
  for cfg in "4 4 0" "4 4 64" "2 8 0" "8 2 0"; do
    set -- $cfg
    tag="g$1_s$2_r$3"
    PETFEAT_CUDA_GROUPS=$1 PETFEAT_CUDA_STEPS=$2 PETFEAT_CUDA_MAX_REGISTERS=$3 \
      timeout 140 python3 benchmarks/gpu_fused.py --labels 10 60 --repeats 10 --no-cpu-check \
      --out "$out/sweep_$tag.json" > "$out/sweep_$tag.txt" 2>&1
    echo "$tag: $(tail -3 "$out/sweep_$tag.txt" | tr '\n' ' ')"
  done
  exit 0
fi

python3 -m pytest -q -p no:cacheprovider tests/test_kernels.py tests/test_kernels_gpu_int.py tests/test_features.py \
  tests/test_lesions.py > "$out/gpu_tests.log" 2>&1
tail -3 "$out/gpu_tests.log"
python3 benchmarks/gpu_fused.py --shape 800 440 440 --labels 10 60 --out "$out/gpu_fused.json" > "$out/gpu_fused.txt" 2>&1
tail -6 "$out/gpu_fused.txt"
