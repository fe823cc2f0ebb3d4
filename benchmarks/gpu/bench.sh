#!/usr/bin/env bash
# In-process backends on one GPU: `asr-optimize bench`. The Hugging Face PyTorch eager fp32 baseline and every
# artifact (PyTorch fast, ONNX Runtime CUDA, TensorRT where installed, the fused engines) timed at the same shapes in
# one process, then the same backends on the demo model and test set through the accuracy gate.
#
#   bash benchmarks/gpu/bench.sh
#   ONLY=fp16@cuda ITERATIONS=12 bash benchmarks/gpu/bench.sh
#
# Environment (defaults in brackets):
#   PYTHON      the Python with asr-optimize installed                        [python3]
#   OUT         results folder                                                [reports/bench-<date>-<time>]
#   MODEL       model to time: hub id or folder; empty: the IndicWav2Vec
#               Hindi architecture with random weights (speed only)           []
#   CASES       batch x seconds list                                          [1x1,1x10,16x10,64x10]
#   ITERATIONS  timed runs per case                                           [30]
#   WARMUP      untimed runs per case first                                   [5]
#   ONLY        comma list: keep backends whose label contains one            [cuda]
#   ACCURACY    1: accuracy on the demo model and test set; 0: skip it        [1]
#   COMPILE     1: also time torch.compile + CUDA graphs (minutes to build)   [0]
#   STORE       model store for the artifacts (built once, then reused)       [ASR_OPTIMIZE_STORE or model_store]
#   CUDA_VISIBLE_DEVICES  the GPU to use                                      [0]
# Results: benchmarks.csv, accuracy.csv, bench.md, summary.json, charts; console.log, machine.txt, GPU memory.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}
start_results bench

args=(bench --device cuda --cases "${CASES:-1x1,1x10,16x10,64x10}" --iterations "${ITERATIONS:-30}"
      --warmup "${WARMUP:-5}" --only "${ONLY:-cuda}" --out "$OUT")
[ -n "${MODEL:-}" ] && args+=(--model "$MODEL")
[ -n "${STORE:-}" ] && args+=(--store "$STORE")
[ "${ACCURACY:-1}" = 1 ] || args+=(--skip-accuracy)
[ "${COMPILE:-0}" = 1 ] && args+=(--compile)
echo "+ asr-optimize ${args[*]}"
"${CLI[@]}" "${args[@]}"
