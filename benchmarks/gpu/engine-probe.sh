#!/usr/bin/env bash
# The fused-engine probe on one GPU (`python -m benchmarks.engine_probe`), in one process: the replica model (real
# IndicWav2Vec shape, random weights) and its fused fp16 / fp8 engines; correctness against Hugging Face fp32 (logits
# on the replica, transcripts on the demo model); p50 timings at 1x1, 1x10, 16x10 and 64x10 s beside HF eager fp32
# and fp16; CUDA kernel time per category; and the extra fused variants in VARIANTS.
#
#   bash benchmarks/gpu/engine-probe.sh
#   VARIANTS=noresidual SKIP_HF32_BIG=1 BUDGET_S=240 bash benchmarks/gpu/engine-probe.sh
#
# Environment (defaults in brackets):
#   PYTHON         the Python with asr-optimize installed                            [python3]
#   OUT            results folder                                                    [reports/engine-probe-<date>-<time>]
#   VARIANTS       extra fused variants, comma list: nograph, noepilogue, notriton,
#                  flash, efficient, cudnn, fp8rows, exactgelu, fp8exactgelu,
#                  cublaslt, fp8cublaslt, noresidual                                 [exactgelu,fp8exactgelu]
#   REPS           timed calls per shape (batched shapes take 20)                    [25]
#   BUDGET_S       skip optional sections once the run is past this many seconds     [480]
#   SKIP_HF32_BIG  1: skip HF eager fp32 at 16 and 64 x 10 s                         [0]
#   COMPILE        1: also try torch.compile of the forward                          [0]
#   CUDA_VISIBLE_DEVICES  the GPU to use                                             [0]
# Results: timings.csv, correctness.csv, kernels_<precision>_<shape>.csv, results.json, console.log.
# The demo transcripts need soundfile; without it the probe reads benchmarks/gpu/demo_audio.npz, made on any machine
# that has it with `python -m benchmarks.engine_probe --make-demo-npz`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}
start_results engine-probe

args=(--out "$OUT" --reps "${REPS:-25}" --budget-s "${BUDGET_S:-480}" --variants "${VARIANTS:-exactgelu,fp8exactgelu}")
[ "${SKIP_HF32_BIG:-0}" = 1 ] && args+=(--skip-hf32-big)
[ "${COMPILE:-0}" = 1 ] && args+=(--compile)
echo "+ python -m benchmarks.engine_probe ${args[*]}"
"$PYTHON" -m benchmarks.engine_probe "${args[@]}"
