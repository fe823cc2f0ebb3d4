#!/usr/bin/env bash
# Long recordings on one GPU: whole recordings (by default 16 of 10 minutes) through chunked transcription, host work
# included (finite checks, silence search, windows, stitching, decoding), against PyTorch eager fp32 in the same run.
#
#   bash benchmarks/gpu/long-form.sh                              # asr-optimize bench --cases 16x600
#   WINDOW_BATCHES=32,64 PROFILE=1 bash benchmarks/gpu/long-form.sh  # window-batch sweep of the fused engine
#
# Without WINDOW_BATCHES it runs `asr-optimize bench --cases $CASES` for the backends in ONLY. With WINDOW_BATCHES it
# runs the fused-engine probe's long-form mode instead (`python -m benchmarks.engine_probe --longform`): fused fp16 +
# CUDA graphs at each window batch size (windows per engine call), eager fp32 at 16.
#
# Environment (defaults in brackets):
#   PYTHON          the Python with asr-optimize installed                         [python3]
#   OUT             results folder                                                 [reports/long-form-<date>-<time>]
#   CASES           recordings x seconds                                           [16x600]
#   ONLY            backends for the bench mode                                    [fused:engine+graphs:fp16,optimized+graphs]
#   ITERATIONS      timed runs (bench mode)                                        [3]
#   WARMUP          untimed runs first (bench mode)                                [1]
#   MODEL           bench mode: model to time; empty: the replica (random weights) []
#   WINDOW_BATCHES  comma list of window batch sizes: switches to the probe mode   []
#   PROFILE         probe mode, 1: also write longform_profile.txt (runner alone,
#                   time inside infer vs host, cProfile, CUDA kernels)             [0]
#   FIXED_WINDOWS   probe mode, 1: no silence splitting, every window one length   [0]
#   CUDA_VISIBLE_DEVICES  the GPU to use                                           [0]
# Results: bench mode: benchmarks.csv, bench.md, summary.json; probe mode: longform.csv (+ longform_profile.txt).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}
start_results long-form
CASES=${CASES:-16x600}

if [ -z "${WINDOW_BATCHES:-}" ]; then
  args=(bench --device cuda --cases "$CASES" --only "${ONLY:-fused:engine+graphs:fp16,optimized+graphs}"
        --iterations "${ITERATIONS:-3}" --warmup "${WARMUP:-1}" --skip-accuracy --out "$OUT")
  [ -n "${MODEL:-}" ] && args+=(--model "$MODEL")
  echo "+ asr-optimize ${args[*]}"
  "${CLI[@]}" "${args[@]}"
else
  args=(--longform "$CASES" --window-batches "$WINDOW_BATCHES" --out "$OUT")
  [ "${PROFILE:-0}" = 1 ] && args+=(--profile)
  [ "${FIXED_WINDOWS:-0}" = 1 ] && args+=(--fixed-windows)
  echo "+ python -m benchmarks.engine_probe ${args[*]}"
  "$PYTHON" -m benchmarks.engine_probe "${args[@]}"
fi
