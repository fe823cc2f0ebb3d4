#!/usr/bin/env bash
# The asr-optimize/prod deployment, run for real on the lent GPU machine (issue #15 item 1). Run ON that machine,
# from the repository root, after the wheels are installed in /tmp/site and the Triton stub environment exists
# (`bash benchmarks/gpu/serve_lease.sh check`). It starts a Prefect server on loopback, a process worker on
# gpu-pool, registers the blocks and the deployments from prefect.yaml, runs
#     prefect deployment run asr-optimize/prod
# with only the overrides this machine forces (the bundled demo model: the hub is unreachable; require_tensorrt
# false: TensorRT cannot be installed), then writes the flow run's and task runs' final states (from the Prefect
# API) and the run's report into $OUT. A dry run on a CPU machine (with the project's venv first on PATH):
#     PY=.venv/bin/python EXTRA_PARAMS="--param device=cpu --param require_gpu=false" bash benchmarks/gpu/prod_run.sh
set -uo pipefail
root=$(pwd)
WORK=${WORK:-/tmp/prod-lease}
OUT=${OUT:-$WORK/out}
mkdir -p "$WORK" "$OUT"
export PYTHONPATH=/tmp/site:$root PATH=/tmp/site/bin:$PATH
export PREFECT_HOME=$WORK/prefect-home PREFECT_API_URL=http://127.0.0.1:4200/api
export PREFECT_SERVER_ANALYTICS_ENABLED=false HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
export ASR_OPTIMIZE_HOME=$root ASR_OPTIMIZE_STORE=$WORK/store ASR_OPTIMIZE_REPORTS_DIR=$WORK/reports
export ASR_OPTIMIZE_TRITON_REPOSITORY=$WORK/triton ASR_OPTIMIZE_CACHE_ROOT=$WORK/cache
# the python backend stub's environment made by `serve_lease.sh check` (numpy<2, onnxruntime-gpu), where it exists
[ -d /tmp/serve-lease/stubenv ] && export ASR_OPTIMIZE_TRITON_STUB_ENV=/tmp/serve-lease/stubenv
PY=${PY:-python3}
step() { printf '\n==> %s\n' "$*"; }
trap 'kill $(jobs -p) 2>/dev/null' EXIT  # the server and the worker end with this script

step "prefect server on loopback"
$PY -m prefect server start --host 127.0.0.1 --port 4200 > "$OUT/prefect-server.log" 2>&1 &
for _ in $(seq 60); do curl -sf http://127.0.0.1:4200/api/health >/dev/null && break; sleep 1; done
curl -sf http://127.0.0.1:4200/api/health || { echo "prefect server did not start"; tail -30 "$OUT/prefect-server.log"; exit 1; }

step "work pool, blocks, deployments (prefect.yaml)"
$PY -m prefect work-pool create gpu-pool --type process
$PY -m deploy.register_blocks
$PY -m prefect --no-prompt deploy --name prod 2>&1 | tail -15

step "process worker on gpu-pool"
$PY -m prefect worker start --pool gpu-pool --limit 1 > "$OUT/worker.log" 2>&1 &

step "prefect deployment run asr-optimize/prod"
$PY -m prefect deployment run asr-optimize/prod \
  --param model="$root/asr_optimize/assets/demo-model" --param require_tensorrt=false ${EXTRA_PARAMS:-} \
  --watch --watch-timeout 420 2>&1 | tail -20

step "evidence from the Prefect API"
$PY benchmarks/gpu/prod_evidence.py --out "$OUT" --reports "$root/reports"
tail -60 "$OUT/worker.log" > "$OUT/worker-tail.log"
