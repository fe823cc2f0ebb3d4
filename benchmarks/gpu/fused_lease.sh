#!/usr/bin/env bash
# The fused-engine GPU lease (issues #14, #15, #16): one step per device command, run ON the GPU machine from the
# repository root after the wheels arrived (../shared/gpu/stage-wheels.sh nvidia-pytriton==0.7.0
# "tritonclient[http,grpc]==2.73.0" "jiwer>=3.0" soundfile "altair>=5" vl-convert-python pydantic-settings
# indic-nlp-library: no onnxruntime-gpu needed, 4 parts), with .whl/numpy1 (numpy 1.26.4 cp312, for the Triton stub)
# carried. Device time: a machine start costs ~7 min held; serve ~3-4 min; soak ~20 s per swap since swaps reload
# two versions instead of five (it was ~41 s); multi ~3 min, on an nvidia-h100-x2 (or larger) lease.
#
#   bash benchmarks/gpu/fused_lease.sh measure  # torch only: long-form 16 x 600 s (+ profile), the engine probe
#   bash benchmarks/gpu/fused_lease.sh serve    # GPU 0: check, fused engine v1 via hot_swap, serve-bench sweep
#   bash benchmarks/gpu/fused_lease.sh soak     # GPU 0: SWAPS (20) hot swaps of the fused engine under load
#   bash benchmarks/gpu/fused_lease.sh multi    # all GPUs: 10 s at concurrency 64 / 128 / 256 (2-GPU host)
#   bash benchmarks/gpu/fused_lease.sh diagnose # 10 s c64: stub phases, 2 load generators, 2 GPU instances
# Each step leaves $OUT/<step>.tgz (console, CSV, markdown, charts, configs, server log tails).
set -uo pipefail
root=$(git rev-parse --show-toplevel 2>/dev/null || pwd)
cd "$root"
export PYTHONPATH=/tmp/site:$root
export WORK=${WORK:-/tmp/serve-lease}
export LABEL="replica fp16, fused engine (speed only)"
export INSTANCES=${INSTANCES:-1} PIPELINE_INSTANCES=${PIPELINE_INSTANCES:-4} QUEUE_DELAY_US=${QUEUE_DELAY_US:-200}
step=${1:?measure | serve | soak | multi | diagnose | final}
lease=benchmarks/gpu/lease_step.sh
sl=benchmarks/gpu/serve_lease.sh
case "$step" in
  measure)
    bash $lease longform -- timeout 250 bash -c \
      'python3 -m asr_optimize.fused_probe --longform 16x600 --window-batches 32,64 --profile --out "$OUT"'
    bash $lease probe -- timeout 300 bash -c \
      'python3 -m asr_optimize.fused_probe --out "$OUT" --budget-s 240 --variants noresidual --skip-hf32-big' ;;
  serve)  # concurrency 128 too: the 1-GPU side of the 2-GPU comparison (multi)
    CUDA_VISIBLE_DEVICES=0 CONCURRENCY=${CONCURRENCY:-1 4 16 64 128} bash $lease serve -- timeout 560 bash -c \
      "bash $sl check && bash $sl prepare-fused && bash $sl repo && bash $sl bench" ;;
  soak)
    CUDA_VISIBLE_DEVICES=0 STEADY_S=${STEADY_S:-5} PAUSE_S=${PAUSE_S:-1} bash $lease soak -- timeout 570 bash $sl soak ;;
  multi)  # every visible GPU (one acoustic instance each); the 1-GPU side is serve's (GPU1=1: measure it here too)
    [ -f "$WORK/artifact.txt" ] || bash $sl prepare-fused
    if [ "${GPU1:-0}" = 1 ]; then
      CUDA_VISIBLE_DEVICES=0 TARGETS=pipeline CONCURRENCY="64 128" DURATIONS=10 bash $lease gpu1 -- timeout 280 \
        bash -c "bash $sl repo && bash $sl bench"
    fi
    TARGETS=${TARGETS:-pipeline acoustic} CONCURRENCY=${CONCURRENCY:-64 128 256} DURATIONS=10 bash $lease gpus -- \
      timeout 330 bash -c "bash $sl repo && bash $sl bench" ;;
  diagnose)  # where does a 10 s batch's server time go? GPU 0: stub phases, 2 load generators, 2 instances on the GPU
    export CUDA_VISIBLE_DEVICES=0 DURATIONS=10 PROFILE_EVERY=50
    bash $lease diag-base -- timeout 240 bash -c \
      "bash $sl check >/dev/null && bash $sl prepare-fused && bash $sl repo && TARGETS=acoustic CONCURRENCY=64 bash $sl bench"
    TARGETS=acoustic CLIENTS=2 CONCURRENCY=64 bash $lease diag-clients -- timeout 120 bash $sl bench
    INSTANCES=2 bash $lease diag-2inst -- timeout 240 bash -c \
      "bash $sl repo && TARGETS='pipeline acoustic' CONCURRENCY=64 bash $sl bench"
    TARGETS=pipeline CLIENTS=2 CONCURRENCY=64 bash $lease diag-2inst-clients -- timeout 120 bash $sl bench ;;
  final)  # the goal rows after the row-padding mask fix: pipeline 1 s c1 + 10 s c64, acoustic 10 s c64 (GPU 0)
    export CUDA_VISIBLE_DEVICES=0 PROFILE_EVERY=50
    bash $lease final -- timeout 300 bash -c "bash $sl check >/dev/null && bash $sl prepare-fused && bash $sl repo && \
      CONCURRENCY='1 64' DURATIONS='1 10' bash $sl bench" ;;
  *) echo "unknown step $step" >&2; exit 2 ;;
esac
