#!/usr/bin/env bash
# The served model through Triton: an artifact deployed into the bundled tritonserver on the GPU (through the
# product's hot swap: canary, promotion), then an `asr-optimize serve-bench` concurrency sweep against it, through the
# `asr` pipeline (audio -> text) and the acoustic model alone: throughput, x real time, p50/p90/p99, Triton's queue and
# compute time, the acoustic batch size, failed requests.
#
#   bash benchmarks/gpu/serve.sh                                          # fused fp16 engine, GPU 0
#   CONCURRENCY=64,128,256 DURATIONS=10 CUDA_VISIBLE_DEVICES=0,1 bash benchmarks/gpu/serve.sh   # two GPUs
#   ARTIFACT=onnx-fp16 INSTANCES=2 QUEUE_DELAY_US=100 bash benchmarks/gpu/serve.sh   # ONNX Runtime CUDA fp16
#
# Environment (defaults in brackets):
#   PYTHON              the Python with asr-optimize installed                       [python3]
#   OUT                 results folder                                               [reports/serve-<date>-<time>]
#   WORK                reusable intermediate files (model, engine, repository)      [reports/gpu-work]
#   MODEL               model folder; empty: the replica architecture with random
#                       weights, written into $WORK (results labelled speed only)    []
#   ARTIFACT            fused-fp16 | onnx-fp16 | path of an ONNX file or engine folder [fused-fp16]
#   CUDA_VISIBLE_DEVICES  GPUs Triton uses; one acoustic instance group per GPU      [0]
#   INSTANCES           acoustic model instances per GPU                             [1]
#   PIPELINE_INSTANCES  instances of the `asr` pipeline model                        [4]
#   QUEUE_DELAY_US      dynamic batching: max queue delay of the acoustic model (us)  [200]
#   GPU_INPUTS          1: request tensors stay on the GPU; 0: host memory           [1]
#   CUDA_GRAPHS         1: CUDA graphs for ONNX Runtime artifacts in the server      [0]
#   PROFILE_EVERY       fused engine: log execute phases every N batches into
#                       tritonserver.log (0: off)                                    [0]
#   SERVER_ARGS         extra tritonserver arguments, space separated                []
#   CONCURRENCY         requests kept in flight, comma list                          [1,4,16,64]
#   TARGETS             pipeline, acoustic (comma list)                              [pipeline,acoustic]
#   DURATIONS           request lengths in seconds, comma list                       [1,10]
#   WINDOW_S            measurement window (s)                                       [2]
#   MAX_WINDOWS         windows per level before giving up on stability              [8]
#   PROCESSES           load-generator processes (serve-bench --processes)           [1]
#   LABEL               title of the results                      [<model folder>, <artifact> (speed only)]
#   ONE_HOP             1: a fused engine runs inside the `asr` model; 0: by BLS       [1]
#   PCM16               1: requests carry 16-bit PCM (audio_pcm16) instead of float32 [0]
#   LONG_DURATIONS      a second serve-bench sweep of long requests (s), comma list   []
#   LONG_CONCURRENCY    its requests in flight                                       [16]
#   LONG_WINDOW_S       its measurement window (s)                                   [8]
#   PERF_ANALYZER       1: after serve-bench, the same sweep with Triton's perf_analyzer   [0]
#   PERF_ANALYZER_BIN   its binary                     [$ASR_OPTIMIZE_PERF_ANALYZER, PATH, then the venv]
#   PERF_MODEL          the model perf_analyzer calls                                [asr]
#   PERF_INTERVAL_MS    perf_analyzer's measurement window (ms)                      [5000]
# Results: serve-bench/ (serve_bench.csv, .json, .md, charts), perf_analyzer/ (perf_analyzer.csv, .json, .md, raw/:
# its own CSV and console per level; with PERF_ANALYZER=1), deploy.md, the generated config.pbtxt files,
# tritonserver.log, console.log, machine.txt, GPU memory before and after.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}
start_results serve

prepare_artifact
deploy_options
repo=$WORK/triton-repo
deploy=("$PYTHON" benchmarks/gpu/triton_deploy.py --repository "$repo" "${DEPLOY_OPTS[@]}")
echo "==> deploy $ARTIFACT_PATH as version 1"
"${deploy[@]}" deploy --artifact "$ARTIFACT_PATH" --model-dir "$MODEL" --out "$OUT"

echo "==> start tritonserver on $repo"
url_file=$WORK/triton-url
rm -f "$url_file"
"${deploy[@]}" serve --url-file "$url_file" --log "$OUT/tritonserver.log" &
server_pid=$!
trap 'kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; gpu_memory "$OUT/gpu-memory-after.csv"
      echo "==> done after $SECONDS s; results in $OUT"' EXIT
for _ in $(seq 600); do
  [ -s "$url_file" ] && break
  kill -0 "$server_pid" 2>/dev/null || { echo "tritonserver did not start" >&2; exit 1; }
  sleep 1
done
[ -s "$url_file" ] || { echo "tritonserver not ready after 600 s" >&2; exit 1; }

label=${LABEL:-"$(basename "$MODEL"), $(basename "${ARTIFACT:-fused-fp16}")"}
[ "$SPEED_ONLY" = 1 ] && [ -z "${LABEL:-}" ] && label="$label (speed only)"
args=(serve-bench --url "$(cat "$url_file")" --concurrency "${CONCURRENCY:-1,4,16,64}"
      --targets "${TARGETS:-pipeline,acoustic}" --durations "${DURATIONS:-1,10}" --window-s "${WINDOW_S:-2}"
      --max-windows "${MAX_WINDOWS:-8}" --utterances 16 --label "$label" --out "$OUT/serve-bench")
[ "$SPEED_ONLY" = 1 ] && args+=(--speed-only)
[ "${PROCESSES:-1}" = 1 ] || args+=(--processes "$PROCESSES")
[ "${PCM16:-0}" = 1 ] && args+=(--pcm16)
echo "+ asr-optimize ${args[*]}"
"${CLI[@]}" "${args[@]}"

if [ -n "${LONG_DURATIONS:-}" ]; then  # long recordings through the pipeline's long-form path
  long_args=(serve-bench --url "$(cat "$url_file")" --concurrency "${LONG_CONCURRENCY:-16}" --targets pipeline
             --durations "$LONG_DURATIONS" --window-s "${LONG_WINDOW_S:-8}" --max-windows "${MAX_WINDOWS:-8}"
             --utterances 16 --label "$label" --out "$OUT/serve-bench-long")
  [ "$SPEED_ONLY" = 1 ] && long_args+=(--speed-only)
  [ "${PCM16:-0}" = 1 ] && long_args+=(--pcm16)
  echo "+ asr-optimize ${long_args[*]}"
  "${CLI[@]}" "${long_args[@]}"
fi

if [ "${PERF_ANALYZER:-0}" = 1 ]; then
  # `make perf-analyzer` installs perf_analyzer 2.51 into the venv; the CLI puts its CUDA runtime on the library path
  pa_args=(perf-analyzer --url "$(cat "$url_file")" --model "${PERF_MODEL:-asr}" --concurrency "${CONCURRENCY:-1,4,16,64}"
           --durations "${DURATIONS:-1,10}" --measurement-interval "${PERF_INTERVAL_MS:-5000}" --label "$label"
           --out "$OUT/perf_analyzer")
  [ "${PCM16:-0}" = 1 ] && pa_args+=(--input-dtype int16)
  [ -n "${PERF_ANALYZER_BIN:-}" ] && pa_args+=(--binary "$PERF_ANALYZER_BIN")
  echo "+ asr-optimize ${pa_args[*]}"
  "${CLI[@]}" "${pa_args[@]}"
fi
