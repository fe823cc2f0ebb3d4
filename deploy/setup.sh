#!/usr/bin/env bash
# Set up a Prefect server for asr-optimize: work pools, the `gpu` tag concurrency limit, blocks, deployments.
#
#   PREFECT_API_URL=http://prefect:4200/api bash deploy/setup.sh
#
# Idempotent: run it again after changing prefect.yaml. Environment:
#   PREFECT_API_URL   the server (required; `prefect server start` prints it)
#   GPU_SLOTS         how many `gpu`-tagged tasks may run at once across all workers (default 1: one GPU; a fleet
#                     sets the number of GPUs of all its GPU workers together)
#   GPU_QUEUES        gpu-pool's work queues, one per GPU type a fleet builds for (default: default)
#   GPU_QUEUE_LIMIT   how many flow runs each of them runs at once (default 1: one run per GPU machine of that type)
#   DEPLOY            set to 0 to set up pools, limits and blocks without registering deployments
#   PYTHON, PREFECT   the interpreter and CLI to use (default: the ones on PATH)
#   REGISTER_BLOCKS_ARGS  extra arguments for deploy/register_blocks.py (e.g. "--s3-bucket models --s3-endpoint ...")
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
PREFECT=${PREFECT:-prefect}
GPU_SLOTS=${GPU_SLOTS:-1}
GPU_QUEUES=${GPU_QUEUES:-default}
GPU_QUEUE_LIMIT=${GPU_QUEUE_LIMIT:-1}
: "${PREFECT_API_URL:?set PREFECT_API_URL to the Prefect server API, e.g. http://127.0.0.1:4200/api}"

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

say "work pools (process type): gpu-pool, cpu-pool"
for pool in gpu-pool cpu-pool; do
  if "$PREFECT" work-pool inspect "$pool" >/dev/null 2>&1; then
    echo "work pool $pool exists"
  else
    "$PREFECT" work-pool create "$pool" --type process
  fi
done

say "gpu-pool work queues ($GPU_QUEUES), each running at most $GPU_QUEUE_LIMIT flow run(s) at once"
for queue in $GPU_QUEUES; do
  if "$PREFECT" work-queue inspect "$queue" --pool gpu-pool >/dev/null 2>&1; then
    "$PREFECT" work-queue set-concurrency-limit "$queue" "$GPU_QUEUE_LIMIT" --pool gpu-pool
  else
    "$PREFECT" work-queue create "$queue" --pool gpu-pool --limit "$GPU_QUEUE_LIMIT"
  fi
done

say "task concurrency limit: tag gpu -> $GPU_SLOTS (one GPU stage at a time per GPU)"
"$PREFECT" concurrency-limit create gpu "$GPU_SLOTS"

say "automation: crash flow runs whose heartbeats stopped (deploy/automations/crash-unresponsive-flow-runs.yaml)"
for automation in deploy/automations/*.yaml; do
  name=$("$PYTHON" -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["name"])' "$automation")
  if "$PREFECT" automation inspect "$name" >/dev/null 2>&1; then
    echo "automation $name exists (to apply a changed file: prefect automation delete $name, then run this again)"
  else
    "$PREFECT" automation create --from-file "$automation"
  fi
done

if [ -f deploy/register_blocks.py ]; then
  say "blocks (python -m deploy.register_blocks ${REGISTER_BLOCKS_ARGS:-})"
  # shellcheck disable=SC2086
  "$PYTHON" -m deploy.register_blocks ${REGISTER_BLOCKS_ARGS:-}
fi

if [ "${DEPLOY:-1}" != "0" ]; then
  say "deployments from prefect.yaml"
  "$PREFECT" --no-prompt deploy --all
  "$PREFECT" deployment ls
fi
