#!/usr/bin/env bash
# fp8 and fp8-mixed fused engines on one GPU (`python -m benchmarks.fp8_mixed`): demo-model transcripts against
# PyTorch eager fp32 on the demo test set and the calibration set, and replica-model speed at 64 x 10 s and 1 x 1 s
# beside PyTorch eager fp32 measured in the same run.
#
#   bash benchmarks/gpu/fp8-mixed.sh
#   FRACTIONS=0.25 REPS=50 bash benchmarks/gpu/fp8-mixed.sh
#
# Environment (defaults in brackets):
#   PYTHON     the Python with asr-optimize installed                           [python3]
#   OUT        results folder                                                   [reports/fp8-mixed-<date>-<time>]
#   FRACTIONS  fp8-mixed: shares of the transformer GEMMs kept in fp16          [0.125,0.25,0.5]
#   REPS       timed calls per shape (64 x 10 s takes 20)                       [30]
# Results: accuracy.csv, timings.csv, plans.json, results.md, console.log, machine.txt.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}
start_results fp8-mixed
echo "+ python -m benchmarks.fp8_mixed --out $OUT --fractions ${FRACTIONS:-0.125,0.25,0.5} --reps ${REPS:-30}"
"$PYTHON" -m benchmarks.fp8_mixed --out "$OUT" --fractions "${FRACTIONS:-0.125,0.25,0.5}" --reps "${REPS:-30}"
