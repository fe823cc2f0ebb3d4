"""Every default a user may want to look up or change, one section per area.

The options models, the CLI and the benchmark scripts read these constants; no default is written twice. Per-run
settings that come from the environment (folders, endpoints) live in ``asr_optimize.settings`` instead.
"""

# -- the benchmark stage of the flow (sized for the demo model on a CPU) -------------------------------------------
BENCH_CASES = "1x1,1x5,4x5"
"""Batch x seconds of audio per case."""
BENCH_WARMUP = 3
BENCH_ITERATIONS = 20
BENCH_MAX_SECONDS_PER_CASE = 30.0

# -- the GPU benchmark suite (``asr-optimize bench``) ---------------------------------------------------------------
SUITE_CASES = "1x1,1x10,16x10,64x10"
SUITE_WARMUP = 5
SUITE_ITERATIONS = 30
SUITE_MAX_SECONDS_PER_CASE = 20.0

# -- Triton model names ---------------------------------------------------------------------------------------------
TRITON_MODEL_NAME = "wav2vec2_ctc"
"""The acoustic model (audio -> logits), one version per deployed artifact."""
TRITON_PIPELINE_NAME = "asr"
"""The model clients call (audio -> text)."""

# -- the serving benchmark (``asr-optimize serve-bench``), perf_analyzer's concurrency mode -------------------------
SERVE_CONCURRENCY = "1,4,16,64"
SERVE_TARGETS = "pipeline,acoustic"
SERVE_WINDOW_S = 5.0
"""Measurement window (perf_analyzer's default measurement interval is 5 s)."""
SERVE_STABILITY = 0.10
SERVE_STABLE_WINDOWS = 3
SERVE_MAX_WINDOWS = 10
SERVE_MIN_WINDOW_REQUESTS = 5
SERVE_MAX_LEVEL_S = 120.0
SERVE_REQUEST_TIMEOUT_S = 60.0
SERVE_PROCESSES = 1
SERVE_UTTERANCES = 16
"""Demo test-set utterances the load cycles through."""

# -- Triton's perf_analyzer (``asr-optimize perf-analyzer``, ``make perf-analyzer``) --------------------------------
PERF_CONCURRENCY = "1,4,16,64"
PERF_DURATIONS = "1,10"
"""Request lengths in seconds: every request of a sweep is exactly this long (demo speech, tiled or cropped)."""
PERF_MEASUREMENT_INTERVAL_MS = 5000
"""perf_analyzer's own default measurement window."""
PERF_STABILITY_PERCENTAGE = 10.0
PERF_MAX_TRIALS = 10
PERF_LEVEL_TIMEOUT_S = 600.0
"""A perf_analyzer run (one concurrency level) still going after this long is stopped and recorded as unstable."""
PERF_UTTERANCES = 16

# -- the swap-under-load soak (``asr-optimize soak``) ---------------------------------------------------------------
SOAK_SWAPS = 20
SOAK_CONCURRENCY = 4

# -- the evaluate stage sharded over Dask (``options.evaluate.dask``) -----------------------------------------------
EVAL_SHARD_SIZE = 64
"""Utterances per shard (rounded up to whole batches): each shard loads every backend once, so shards are large."""
EVAL_DASK_CPU_WORKERS = 2
"""Workers of the temporary LocalCluster on a host without GPUs (one thread each); with GPUs: one per GPU."""

# -- fleets (``asr-optimize fleet``, the ``asr-optimize-fleet/fleet`` deployment) ------------------------------------
FLEET_DEPLOYMENT = "asr-optimize/prod"
"""The deployment each (model, GPU type) of a fleet runs."""
FLEET_MAX_PARALLEL = 4
"""Children started and not yet finished at any one time (a fleet file's ``max_parallel`` overrides it)."""
FLEET_TIMEOUT_S = 12 * 3600.0
"""How long a fleet waits for its children; those still going are reported as not finished (and keep running)."""
FLEET_POLL_S = 15.0
"""Seconds between two looks at the children's states."""
