# Shared by the scripts in benchmarks/gpu/ (sourced, not run). Every script runs from the repository root, writes its
# results into $OUT and its console into $OUT/console.log, and records the machine it ran on.
#
#   PYTHON  the Python with asr-optimize installed                       [python3]
#   WORK    reusable intermediate files: the replica model, engines,
#           model stores, Triton repositories (large; not results)       [reports/gpu-work]

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
PYTHON=${PYTHON:-python3}
WORK=${WORK:-reports/gpu-work}
export PYTHONUNBUFFERED=1 PREFECT_SERVER_ANALYTICS_ENABLED=${PREFECT_SERVER_ANALYTICS_ENABLED:-false}
CLI=("$PYTHON" -m flows.cli)

# start_results NAME: create $OUT (default reports/NAME-<time>), send the console there too, record the machine.
start_results() {
  OUT=${OUT:-reports/$1-$(date +%Y%m%d-%H%M%S)}
  mkdir -p "$OUT" "$WORK"
  exec > >(tee -a "$OUT/console.log") 2>&1
  echo "==> $1: results in $OUT"
  record_machine > "$OUT/machine.txt" 2>&1 || true
  gpu_memory "$OUT/gpu-memory-before.csv"
  trap 'gpu_memory "$OUT/gpu-memory-after.csv"; echo "==> done after $SECONDS s; results in $OUT"' EXIT
}

record_machine() {
  echo "## date"; date -u +%Y-%m-%dT%H:%M:%SZ
  echo "## CPU cores"; nproc
  echo "## GPUs"; nvidia-smi || echo "nvidia-smi not found"
  echo "## Python"; "$PYTHON" --version
  echo "## asr-optimize capabilities"; "${CLI[@]}" capabilities
  echo "## packages"
  "$PYTHON" -m pip list 2>/dev/null | grep -iE '^(torch|onnxruntime|onnxruntime-gpu|tensorrt|triton|transformers|numpy|prefect|nvidia-pytriton|tritonclient) ' || true
}

gpu_memory() {  # nvidia-smi memory snapshot (CSV) into $1
  nvidia-smi --query-gpu=index,name,memory.used,memory.total --format=csv > "$1" 2>/dev/null || rm -f "$1"
}

# prepare_artifact: sets MODEL (default: the replica architecture with random weights, written once into $WORK) and
# ARTIFACT_PATH from ARTIFACT:
#   fused-fp16  the fused engine folder of MODEL, fp16 (built once into $WORK)                 [default]
#   onnx-fp16   the optimized fp16 ONNX graph of MODEL, from `asr-optimize bench --prepare-only`
#   <path>      an existing artifact: an ONNX file or a fused engine folder
prepare_artifact() {
  if [ -z "${MODEL:-}" ]; then
    MODEL=$WORK/replica
    SPEED_ONLY=${SPEED_ONLY:-1}  # random weights: transcripts are noise, timings are real
    if [ ! -f "$MODEL/config.json" ]; then
      local config
      config=$("$PYTHON" -c 'from asr_optimize.paths import REPLICA_CONFIG; print(REPLICA_CONFIG)')
      "${CLI[@]}" init-random "$config" "$MODEL" --seed 0
    fi
  fi
  SPEED_ONLY=${SPEED_ONLY:-0}
  case "${ARTIFACT:-fused-fp16}" in
    fused-fp16)
      ARTIFACT_PATH=$WORK/engine-fp16-$(basename "$MODEL")
      "$PYTHON" benchmarks/gpu/triton_deploy.py build-fused "$MODEL" "$ARTIFACT_PATH" --precision fp16 ;;
    onnx-fp16)
      local store=${STORE:-$WORK/store}
      "${CLI[@]}" bench --device cuda --only cuda --prepare-only --model "$MODEL" --store "$store" \
        --out "$WORK/bench-prepare"
      ARTIFACT_PATH=$(find "$store" -name model.fp16.onnx -path "*$(basename "$MODEL")*" -print -quit)
      [ -n "$ARTIFACT_PATH" ] || { echo "no model.fp16.onnx for $MODEL under $store" >&2; exit 2; } ;;
    *)
      ARTIFACT_PATH=$ARTIFACT
      [ -e "$ARTIFACT_PATH" ] || { echo "ARTIFACT=$ARTIFACT: no such file or folder" >&2; exit 2; } ;;
  esac
  echo "model: $MODEL; artifact: $ARTIFACT_PATH"
}

# deploy_options: the Triton batching/instance options shared by serve.sh and soak.sh (triton_deploy.py's options).
deploy_options() {
  DEPLOY_OPTS=(--instances "${INSTANCES:-1}" --pipeline-instances "${PIPELINE_INSTANCES:-4}"
               --queue-delay-us "${QUEUE_DELAY_US:-200}" --profile-every "${PROFILE_EVERY:-0}")
  [ "${GPU_INPUTS:-1}" = 1 ] && DEPLOY_OPTS+=(--gpu-inputs) || DEPLOY_OPTS+=(--host-inputs)
  [ "${CUDA_GRAPHS:-0}" = 1 ] && DEPLOY_OPTS+=(--cuda-graphs)
  [ "${ONE_HOP:-1}" = 1 ] && DEPLOY_OPTS+=(--one-hop) || DEPLOY_OPTS+=(--bls)
  [ "$SPEED_ONLY" = 1 ] && DEPLOY_OPTS+=(--speed-only)
  local arg
  for arg in ${SERVER_ARGS:-}; do DEPLOY_OPTS+=("--server-arg=$arg"); done
  return 0
}
