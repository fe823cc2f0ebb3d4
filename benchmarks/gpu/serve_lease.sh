#!/usr/bin/env bash
# Triton on the GPU (issue #15, items 2-4): serve-bench sweep and 20-swap reload soak on the lent H100.
# Run ON the GPU machine from the repository root, one stage per device command (each stays under 10 minutes;
# state lives in $WORK=/tmp/serve-lease, which lasts while the machine is warm):
#
#   bash benchmarks/gpu/serve_lease.sh check     # versions, GPU, stub environment, CUDA EP inside the stub env
#   bash benchmarks/gpu/serve_lease.sh prepare   # replica fp16 optimized ONNX (asr-optimize bench --prepare-only)
#   bash benchmarks/gpu/serve_lease.sh prepare-fused  # or: the replica's fused fp16 engine folder (torch only)
#   bash benchmarks/gpu/serve_lease.sh repo      # GPU Triton repository: v1 deployed through the real hot_swap
#   bash benchmarks/gpu/serve_lease.sh bench     # serve-bench: pipeline + acoustic, 1 s + 10 s, concurrency 1/4/16/64
#   bash benchmarks/gpu/serve_lease.sh soak      # 20 hot-swaps under load, GPU memory after each
#   bash benchmarks/gpu/serve_lease.sh all       # everything in one go (only if the command limit allows)
# Every stage copies what it produced (CSV, markdown, JSON, charts, configs, server log tails) into $OUT.
#
# Assumptions (state them with the results):
# - The wheels arrived first: ../shared/gpu/stage-wheels.sh, then `bash .gpu-wheels/partK/device-unpack.sh N` in each
#   run, so /tmp/site holds prefect, onnxruntime-gpu (CUDA 13), nvidia-pytriton 0.7.0 (tritonserver 2.51, python
#   backend only; its own libcudart 12.6 runs on the CUDA 13 driver) and tritonclient. No registry is reachable.
# - The bundled server's python backend runs model code in a stub (python_backend_stubs/3.12 for this Python). The
#   stub embeds CPython in isolated mode: it ignores PYTHONPATH and takes packages from the `python3` first on its
#   PATH. So a small venv ($WORK/stubenv) is made here whose site-packages list, in order: numpy<2 (the stub was
#   built against numpy 1.x and corrupts tensors with numpy 2), /tmp/site (onnxruntime-gpu must win over the image's
#   CPU-only onnxruntime 1.30), then the system site-packages (torch's nvidia-* CUDA/cuDNN wheels, which
#   onnxruntime.preload_dlls() loads). ASR_OPTIMIZE_TRITON_STUB_ENV points the server at it.
# - numpy<2 for Python 3.12 is not in the image if the image has numpy 2: stage it beside the tree (18 MB), e.g.
#     python3 -m pip download --only-binary=:all: --no-deps --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .gpu-wheels/numpy1 'numpy==1.26.4'
#   and carry .gpu-wheels/numpy1 (stage-wheels.sh drops numpy wheels on purpose). If the image's numpy is < 2, the
#   system numpy is used as it is.
# - The model is the replica architecture with random weights (speed only); the optimized fp16 graph (fp32 I/O) is
#   the in-process benchmark's fastest ONNX Runtime artifact. CUDA graphs in the server are off by default
#   (CUDA_GRAPHS=1 turns them on: one fixed-shape session per (batch, samples) shape, capture on first use).
# - Knobs (environment): INSTANCES=2 acoustic instances on the GPU, PIPELINE_INSTANCES=4, QUEUE_DELAY_US=100,
#   SWAPS=20, CONCURRENCY="1 4 16 64", DURATIONS="1 10", WINDOW_S=2.
set -euo pipefail
stage=${1:-all}
root=$(git rev-parse --show-toplevel 2>/dev/null || pwd)
cd "$root"
WORK=${WORK:-/tmp/serve-lease}
OUT=${OUT:-$WORK/out}
STORE=${STORE:-$WORK/store}
mkdir -p "$WORK" "$OUT"
export PYTHONPATH=/tmp/site:$root${PYTHONPATH:+:$PYTHONPATH}
export ASR_OPTIMIZE_STORE=$STORE
export ASR_OPTIMIZE_CACHE_ROOT=$WORK/cache
export PREFECT_SERVER_ANALYTICS_ENABLED=false HF_HUB_OFFLINE=1
export ASR_OPTIMIZE_TRITON_STUB_ENV=$WORK/stubenv
REPLICA=$WORK/cache/indicwav2vec-hindi-replica-seed0
PY=python3
DEVICE_NAME=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 || echo "no GPU")
LEASE_ARGS=(--work "$WORK" --out "$OUT" --model-dir "$REPLICA" --device "$DEVICE_NAME")

stub_env() {
  # the stub's Python environment (see the assumptions above); rebuilt only when missing
  [ -f "$WORK/stubenv/ok" ] && return 0
  rm -rf "$WORK/stubenv"
  $PY -m venv --without-pip "$WORK/stubenv"
  local site sys_site
  site=$("$WORK/stubenv/bin/python3" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  sys_site=$($PY -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  if $PY -c 'import numpy, sys; sys.exit(int(numpy.__version__.split(".")[0]) < 2)'; then
    local wheel
    wheel=$(ls .gpu-wheels/numpy1/numpy-1.*-cp312-*.whl .whl/numpy1/numpy-1.*-cp312-*.whl 2>/dev/null | head -1 || true)
    if [ -z "$wheel" ]; then
      echo "the image has numpy 2 and no numpy<2 wheel was carried (.gpu-wheels/numpy1/): the python backend stub" \
           "would corrupt tensors. Stage one (see the header of this script)." >&2
      exit 2
    fi
    $PY -m pip install -q --no-index --no-deps --target "$site" "$wheel"
  fi
  # the repository root last: the fused engine's python backend imports asr_optimize from it
  printf 'import site; site.addsitedir("/tmp/site"); site.addsitedir("%s"); site.addsitedir("%s")\n' "$sys_site" "$root" \
    > "$site/zz_asr_optimize_parent_env.pth"
  echo "stub env for the triton python backend: numpy<2, /tmp/site, $sys_site" > "$WORK/stubenv/ok"
}

check() {
  { echo "## machine"; nvidia-smi || true; echo; $PY --version
    $PY - <<'PY'
import importlib, numpy
print("numpy", numpy.__version__)
try:
    import onnxruntime as ort
    print("onnxruntime", ort.__version__, ort.get_available_providers())
except ImportError as exc:
    print("no onnxruntime (a fused-engine lease does not need it):", exc)
from asr_optimize.capabilities import find_tritonserver
print("tritonserver:", find_tritonserver())
for name in ("tritonclient.grpc.aio", "prefect", "altair", "vl_convert"):
    try:
        importlib.import_module(name); print("ok", name)
    except Exception as exc:
        print("MISSING", name, exc)
PY
    echo "## inside the stub's environment (what the python backend will import)"
    "$WORK/stubenv/bin/python3" -c 'import numpy, torch; print("numpy", numpy.__version__, "| torch", torch.__version__,
torch.cuda.is_available()); from asr_optimize.runners.fused_engine import FusedRunner; print("fused engine importable")'
  } 2>&1 | tee "$OUT/check.txt"
}

prepare() {
  # the replica's optimized fp16 graph through the project's own stages (cached in $STORE)
  local cli=""
  for mod in asr_optimize.cli flows.cli; do
    if $PY -c "import $mod" 2>/dev/null; then cli=$mod; break; fi
  done
  [ -n "$cli" ] || { echo "no asr-optimize CLI module importable" >&2; exit 2; }
  $PY -m "$cli" bench --device cuda --only cuda --prepare-only --store "$STORE" --out "$WORK/bench" \
    2>&1 | tail -40 | tee "$OUT/prepare.txt"
  local artifact
  artifact=$(find "$STORE" -name model.fp16.onnx -path "*replica*" 2>/dev/null | head -1)
  [ -n "$artifact" ] || artifact=$(find "$STORE" -name model.fp16.onnx | head -1)
  [ -n "$artifact" ] || { echo "no model.fp16.onnx under $STORE" >&2; exit 2; }
  [ -f "$REPLICA/config.json" ] || { echo "replica model folder $REPLICA missing" >&2; exit 2; }
  echo "$artifact" > "$WORK/artifact.txt"
  ls -la "$artifact" | tee -a "$OUT/prepare.txt"
}

run_stage() {
  $PY benchmarks/gpu/serve_lease.py "$1" "${LEASE_ARGS[@]}" "${@:2}" 2>&1 | tee "$OUT/$1.txt"
}

nvidia-smi --query-gpu=index,name,memory.used,memory.total --format=csv > "$OUT/gpu-$stage-before.csv" 2>/dev/null || true
case "$stage" in
  check) stub_env; check ;;
  prepare) prepare ;;
  prepare-fused) run_stage prepare-fused ;;
  repo) stub_env; run_stage repo ;;
  bench)
    stub_env
    # shellcheck disable=SC2086
    run_stage bench --concurrency ${CONCURRENCY:-1 4 16 64} --durations ${DURATIONS:-1 10} --window-s "${WINDOW_S:-2}" ;;
  soak) stub_env; run_stage soak --swaps "${SWAPS:-20}" ;;
  all)
    stub_env; check; prepare; run_stage repo
    # shellcheck disable=SC2086
    run_stage bench --concurrency ${CONCURRENCY:-1 4 16 64} --durations ${DURATIONS:-1 10} --window-s "${WINDOW_S:-2}"
    run_stage soak --swaps "${SWAPS:-20}" ;;
  *) echo "unknown stage $stage (check | prepare | prepare-fused | repo | bench | soak | all)" >&2; exit 2 ;;
esac
nvidia-smi --query-gpu=index,name,memory.used,memory.total --format=csv > "$OUT/gpu-$stage-after.csv" 2>/dev/null || true
echo "stage $stage done; results in $OUT:"; ls -R "$OUT" | head -50
