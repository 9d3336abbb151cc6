#!/usr/bin/env bash
# The GPU benchmark in one call: float32 and bfloat16 side by side against PyTorch on the
# same card, then the per-layer profile. For a machine whose Python already holds jax
# (with CUDA), flax, optax and torch (with CUDA); each log is also written to OUT_DIR.
#
#   make gpu-wheels                       # here: wheels of what such images lack -> .whl/
#   bash benchmarks/gpu.sh [OUT_DIR]      # there (default OUT_DIR: $OUT, else benchmarks/out)
#
# Each step has its own time limit (STEP_S seconds, default 240), so one slow step
# cannot eat the others' time on a borrowed machine. Exit status 3: JAX saw no GPU.
set -uo pipefail
out=${1:-${OUT:-benchmarks/out}}
py=${PYTHON:-python3}
step_s=${STEP_S:-240}
mkdir -p "$out"
if compgen -G '.whl/*.whl' > /dev/null; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --target /tmp/mipae_site .whl/*.whl \
    || { echo "could not install the wheels in .whl/"; exit 1; }
  export PYTHONPATH=/tmp/mipae_site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1

{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  "$py" -c 'import jax, flax, optax, torch; print("jax", jax.__version__, jax.devices(),
"| flax", flax.__version__, "| optax", optax.__version__, "| torch", torch.__version__,
"cuda", torch.cuda.is_available())'
} 2>&1 | tee "$out/machine.txt"

# Borrowed GPU time is short: stop at once if JAX fell back to the CPU (a CUDA plugin
# that does not match the driver, say). ALLOW_CPU=1 runs anyway (a dry run on a CPU).
if [ "${ALLOW_CPU:-0}" != 1 ] && ! "$py" -c 'import jax, sys; sys.exit(jax.default_backend() != "gpu")'; then
  echo "JAX does not see a GPU here (see $out/machine.txt); nothing was benchmarked."
  exit 3
fi

step() {  # step NAME MODULE ARGS...: one benchmark, its log in $out/NAME.log
  local name=$1; shift
  echo "== $name: $*"
  timeout "$step_s" "$py" -m "$@" 2>&1 | tee "$out/$name.log"
  local rc=${PIPESTATUS[0]}
  [ "$rc" -eq 0 ] || echo "== $name ended with status $rc (124: over ${step_s} s)"
}
step float32 benchmarks.run --quick --threads "$(nproc)"
step bfloat16 benchmarks.run --quick --threads "$(nproc)" --dtype bfloat16 --skip sweep
step conv_float32 benchmarks.conv_backends --quick
step conv_bfloat16 benchmarks.conv_backends --quick --dtype bfloat16
