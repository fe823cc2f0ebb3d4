#!/usr/bin/env bash
# The prod deployment end to end on this GPU host: a Prefect server on loopback, the work pools, blocks and the
# `prod` deployment from prefect.yaml (deploy/setup.sh), a process worker on gpu-pool, then
#     prefect deployment run asr-optimize/prod --watch
# and, from the Prefect API and the run's report folder, the evidence: the flow run's and every task run's final
# state and duration (prod_run.json), report.md, stages.csv, benchmarks.csv, accuracy.csv.
#
#   bash benchmarks/gpu/prod-run.sh
#   MODEL=asr_optimize/assets/demo-model REQUIRE_TENSORRT=false bash benchmarks/gpu/prod-run.sh
#
# Environment (defaults in brackets):
#   PYTHON            the Python with asr-optimize installed; its `prefect` is used    [python3]
#   OUT               results folder                                                   [reports/prod-run-<date>-<time>]
#   WORK              its prod-run/ subfolder holds the Prefect home (emptied at the
#                     start of every run), model store, Triton repository and cache   [reports/gpu-work]
#   MODEL             the deployment's `model` parameter; empty: prefect.yaml's        []
#   REQUIRE_TENSORRT  the deployment's `require_tensorrt`; empty: prefect.yaml's (true) []
#   EXTRA_PARAMS      more `--param key=value` overrides, space separated              []
#   WATCH_TIMEOUT_S   how long to wait for the flow run                                [900]
#   PREFECT_PORT      loopback port of the Prefect server                              [4200]
# A dry run on a CPU host: EXTRA_PARAMS="--param device=cpu --param require_gpu=false".
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
WORK=${WORK%/}/prod-run
start_results prod-run

port=${PREFECT_PORT:-4200}
PATH="$(dirname "$(command -v "$PYTHON")"):$PATH"
rm -rf "$WORK/prefect-home"
export PREFECT_HOME=$WORK/prefect-home PREFECT_API_URL=http://127.0.0.1:$port/api
export ASR_OPTIMIZE_HOME=$root ASR_OPTIMIZE_STORE=$WORK/store ASR_OPTIMIZE_REPORTS_DIR=$WORK/reports
export ASR_OPTIMIZE_TRITON_REPOSITORY=$WORK/triton ASR_OPTIMIZE_CACHE_ROOT=$WORK/cache
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait "${pids[@]}" 2>/dev/null || true; gpu_memory "$OUT/gpu-memory-after.csv"
      echo "==> done after $SECONDS s; results in $OUT"' EXIT

echo "==> prefect server on 127.0.0.1:$port"
prefect server start --host 127.0.0.1 --port "$port" > "$OUT/prefect-server.log" 2>&1 &
pids+=($!)
for _ in $(seq 90); do curl -sf "$PREFECT_API_URL/health" >/dev/null && break; sleep 1; done
curl -sf "$PREFECT_API_URL/health" >/dev/null || { tail -30 "$OUT/prefect-server.log"; exit 1; }

echo "==> work pools, limits, blocks (deploy/setup.sh), the prod deployment (prefect.yaml)"
DEPLOY=0 PYTHON=$PYTHON PREFECT=prefect bash deploy/setup.sh
prefect --no-prompt deploy --name prod 2>&1 | tail -15

echo "==> process worker on gpu-pool"
prefect worker start --pool gpu-pool --limit 1 > "$OUT/worker.log" 2>&1 &
pids+=($!)

params=()
if [ -n "${MODEL:-}" ]; then
  [ -e "$MODEL" ] && MODEL=$(cd "$MODEL" && pwd)  # a local folder: absolute, for the worker
  params+=(--param "model=$MODEL")
fi
[ -n "${REQUIRE_TENSORRT:-}" ] && params+=(--param "require_tensorrt=$REQUIRE_TENSORRT")
# shellcheck disable=SC2206
params+=(${EXTRA_PARAMS:-})
echo "+ prefect deployment run asr-optimize/prod ${params[*]}"
rc=0
prefect deployment run asr-optimize/prod "${params[@]}" --watch --watch-timeout "${WATCH_TIMEOUT_S:-900}" 2>&1 \
  | tail -20 || rc=$?

echo "==> evidence from the Prefect API and the run's report"
"$PYTHON" benchmarks/gpu/collect_prod_run.py --out "$OUT" --reports "$root/reports" || rc=$?
tail -60 "$OUT/worker.log" > "$OUT/worker-tail.log"
exit "$rc"
