#!/usr/bin/env bash
# Swaps under load: the served model is hot-swapped SWAPS times (between the artifact and a copy of it at another
# path) while CONCURRENCY requests stay in flight through the `asr` pipeline. Per swap: promoted or rolled back, its
# phases (write, load, canary, promote), requests and failures during it, p99, GPU memory right after it, live
# versions. The canary runs for real on every swap.
#
#   bash benchmarks/gpu/soak.sh
#   ARTIFACT=onnx-fp16 INSTANCES=2 QUEUE_DELAY_US=100 STEADY_S=10 PAUSE_S=2 bash benchmarks/gpu/soak.sh
#
# Environment (defaults in brackets):
#   PYTHON              the Python with asr-optimize installed                       [python3]
#   OUT                 results folder                                               [reports/soak-<date>-<time>]
#   WORK                reusable intermediate files (model, engine, repository)      [reports/gpu-work]
#   MODEL               model folder; empty: the replica architecture with random
#                       weights (the canary gate is then opened: speed only)         []
#   ARTIFACT            fused-fp16 | onnx-fp16 | path of an ONNX file or engine folder [fused-fp16]
#   SWAPS               hot swaps                                                    [20]
#   CONCURRENCY         requests kept in flight during the soak                      [8]
#   STEADY_S            load before the first and after the last swap (s)            [5]
#   PAUSE_S             load between swaps (s)                                       [1]
#   CUDA_VISIBLE_DEVICES, INSTANCES, PIPELINE_INSTANCES, QUEUE_DELAY_US, GPU_INPUTS, CUDA_GRAPHS, PROFILE_EVERY,
#   SERVER_ARGS         the deployment, as in serve.sh                               [0, 1, 4, 200, 1, 0, 0, -]
#   LABEL               title of the results                                [<model folder>, <artifact>]
# Results: soak/ (soak.csv, .json, .md, charts), deploy.md, tritonserver-soak.log, console.log, machine.txt.
# Time: about 20-25 s per swap of the fused engine, plus 2-4 minutes to build and deploy it.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}
start_results soak

prepare_artifact
deploy_options
deploy=("$PYTHON" benchmarks/gpu/triton_deploy.py --repository "$WORK/triton-soak-repo" "${DEPLOY_OPTS[@]}")
echo "==> deploy $ARTIFACT_PATH as version 1"
"${deploy[@]}" deploy --artifact "$ARTIFACT_PATH" --model-dir "$MODEL" --out "$OUT"
echo "==> ${SWAPS:-20} swaps under load"
"${deploy[@]}" soak --artifact "$ARTIFACT_PATH" --model-dir "$MODEL" --out "$OUT" --swaps "${SWAPS:-20}" \
  --concurrency "${CONCURRENCY:-8}" --steady-s "${STEADY_S:-5}" --pause-s "${PAUSE_S:-1}" \
  --label "${LABEL:-"$(basename "$MODEL"), $(basename "${ARTIFACT:-fused-fp16}")"}"
