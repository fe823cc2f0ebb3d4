"""The ``asr-optimize`` command line, the top layer: run the flow, benchmark, inspect capabilities, make test models.

Defaults come from ``asr_optimize.settings`` (env ``ASR_OPTIMIZE_*``) and the stage options models, never from
copies here. Exit codes: 0 ok; 1 the run finished but a stage failed (report written); 2 bad input or a clear,
non-retryable error; 3 a transient fault that outlasted its retries (Triton, S3 or the hub unreachable); 4 an
unexpected error (one line; ``ASR_OPTIMIZE_DEBUG=1`` shows the traceback).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console

from asr_optimize import defaults
from asr_optimize.errors import AsrOptimizeError, TransientError
from asr_optimize.paths import DEFAULT_MODEL
from asr_optimize.settings import get_settings

if TYPE_CHECKING:
    from asr_optimize.capabilities import GpuIdentity

PREFECT_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",  # workers often have no internet: no telemetry, no resolver errors
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",  # the temporary API on a busy 2-core host
}
for _name, _value in PREFECT_DEFAULTS.items():
    os.environ.setdefault(_name, _value)

app = typer.Typer(help="Optimize, verify and deploy wav2vec2 CTC speech models.", no_args_is_help=True)
console = Console()

EXIT_STAGE_FAILED, EXIT_BAD_INPUT, EXIT_TRANSIENT, EXIT_UNEXPECTED = 1, 2, 3, 4
MAX_OPTIONS_FILE_BYTES = 1_000_000


def _fail(code: int, message: str) -> typer.Exit:
    console.print(f"[bold red]asr-optimize failed:[/] {message}")
    return typer.Exit(code)


def _exit_on_sigterm() -> None:
    """Turn SIGTERM into a normal exit, so context managers stop what the run started (the temporary Prefect
    server, the bundled tritonserver) instead of leaving them behind."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))


def load_options_file(path: Path | None) -> dict[str, Any]:
    """``--options FILE.yaml`` (or .json): any ``PipelineOptions`` field, validated when the options are built."""
    if path is None:
        return {}
    import yaml

    try:
        if path.stat().st_size > MAX_OPTIONS_FILE_BYTES:
            raise typer.BadParameter(f"options file {path} is larger than {MAX_OPTIONS_FILE_BYTES:,} bytes; stage "
                                     "options fit in a few hundred lines")
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise typer.BadParameter(f"cannot read options file {path}: {exc}") from None
    except RecursionError:
        raise typer.BadParameter(f"options file {path} is nested too deeply to be stage options") from None
    if not isinstance(data, dict):
        raise typer.BadParameter(f"options file {path} must hold a mapping of stage options, got {type(data).__name__}")
    return data


def build_options(options_file: Path | None, overrides: dict[str, Any]) -> Any:
    """``PipelineOptions`` from the file, then the explicit command-line flags on top; errors name the field."""
    from flows.asr_optimize import PipelineOptions

    data = load_options_file(options_file)
    for dotted, value in overrides.items():
        section, _, field = dotted.partition(".")
        data.setdefault(section, {})[field] = value
    try:
        return PipelineOptions.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise typer.BadParameter(f"invalid options: {problems}") from None


def eval_source(text: str) -> dict[str, Any]:
    """``demo``, ``longform``, a manifest path (CSV/TSV/JSONL), or ``hf:<dataset_id>[:<config>[:<split>]]``."""
    if text in ("demo", "longform"):
        return {"kind": text}
    if text.startswith("hf:"):
        dataset, config, split = [*text[3:].split(":"), "hi", "test"][:3]
        return {"kind": "hf", "dataset_id": dataset, "config": config, "split": split}
    return {"kind": "manifest", "path": text}


@app.command()
def run(
    model: Annotated[str, typer.Option(help="hub id, local folder or s3:// URI")] = str(DEFAULT_MODEL),
    revision: Annotated[str | None, typer.Option(help="hub revision (branch, tag or commit sha)")] = None,
    store: Annotated[str | None, typer.Option(help="a folder, s3://bucket/prefix, or block:<name> "
                                                   "[default: ASR_OPTIMIZE_STORE or model_store]")] = None,
    reports: Annotated[Path | None, typer.Option(help="folder for per-run reports [default: reports]")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    options: Annotated[Path | None, typer.Option(help="YAML/JSON file with any stage options")] = None,
    bench_cases: Annotated[str | None, typer.Option(help="batch x seconds list, e.g. '1x1,1x5,4x5'")] = None,
    iterations: Annotated[int | None, typer.Option(help="timed iterations per benchmark case", min=1)] = None,
    eval_set: Annotated[str | None, typer.Option(
        "--eval-source", help="demo | longform | manifest path | hf:<dataset>[:<config>[:<split>]]")] = None,
    triton_url: Annotated[str | None, typer.Option(help="Triton HTTP URL (default: start the bundled server)")] = None,
    triton_repository: Annotated[Path | None, typer.Option(help="Triton model repository folder")] = None,
    require_gpu: bool = False,
    require_tensorrt: bool = False,
) -> None:
    """Run the whole asr-optimize flow once."""
    from tasks.benchmark import BenchCase

    overrides: dict[str, Any] = {}
    if bench_cases is not None:
        try:
            overrides["benchmark.cases"] = [c.model_dump() for c in BenchCase.parse_list(bench_cases)]
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--bench-cases") from None
    if iterations is not None:
        overrides["benchmark.iterations"] = iterations
    if eval_set is not None:
        overrides["evaluate.source"] = eval_source(eval_set)
    if triton_url is not None:
        overrides["triton.url"] = triton_url
    if triton_repository is not None:
        overrides["triton.repository"] = str(triton_repository)
    pipeline_options = build_options(options, overrides)

    from flows.asr_optimize import StagesFailed, asr_optimize_flow
    from flows.prefect_api import prefect_api

    _exit_on_sigterm()
    try:
        with prefect_api():
            summary = asr_optimize_flow(model=model, revision=revision, store=store,
                                        reports_dir=str(reports) if reports else None, device=device,
                                        require_gpu=require_gpu, require_tensorrt=require_tensorrt,
                                        options=pipeline_options)
    except StagesFailed as exc:
        raise _fail(EXIT_STAGE_FAILED, str(exc)) from exc
    except AsrOptimizeError as exc:
        raise _fail(EXIT_BAD_INPUT, str(exc)) from exc
    except TransientError as exc:
        raise _fail(EXIT_TRANSIENT, f"{exc} (a transient fault that outlasted the retries; try again later)") from exc
    console.print(f"[bold green]done[/]: report in {summary.report_folder}")
    for stage, status in summary.stages.items():
        console.print(f"  {stage:<14} {status}")


@app.command()
def bench(
    device: Annotated[str, typer.Option(help="cuda (the suite's purpose) or cpu")] = "cuda",
    model: Annotated[str | None, typer.Option(help="model to time; default: the replica architecture")] = None,
    cases: Annotated[str, typer.Option(help="batch x seconds list")] = defaults.SUITE_CASES,
    iterations: Annotated[int, typer.Option(min=1)] = defaults.SUITE_ITERATIONS,
    warmup: Annotated[int, typer.Option(min=0, help="untimed runs per case first")] = defaults.SUITE_WARMUP,
    store: Annotated[str | None, typer.Option(help="model store [default: ASR_OPTIMIZE_STORE or model_store]")] = None,
    out: Annotated[Path | None, typer.Option(help="output folder (default reports/bench-<time>)")] = None,
    only: Annotated[str, typer.Option(help="comma list: keep runners whose label contains one")] = "",
    include_cpu: Annotated[bool, typer.Option(help="on CUDA, also time ONNX Runtime on the CPU (slow)")] = False,
    skip_accuracy: bool = False,
    prepare_only: Annotated[bool, typer.Option(help="only build/reuse the artifacts")] = False,
    compile: Annotated[bool, typer.Option(help="also time torch.compile + CUDA graphs (slow to build)")] = False,
) -> None:
    """GPU benchmark: eager fp32 baseline and every artifact, side by side, plus accuracy on the demo model."""
    from flows.bench import BenchSuiteOptions, run_suite
    from tasks.benchmark import BenchCase

    try:
        parsed = BenchCase.parse_list(cases)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--cases") from None
    try:
        summary = run_suite(BenchSuiteOptions(
            model=model, device=device, cases=parsed, iterations=iterations, warmup=warmup,
            store=store or get_settings().store,
            out_dir=out, only=[o for o in only.split(",") if o], include_cpu=include_cpu,
            skip_accuracy=skip_accuracy, prepare_only=prepare_only, compile=compile,
        ))
    except AsrOptimizeError as exc:
        raise _fail(EXIT_BAD_INPUT, str(exc)) from exc
    bench_md = Path(summary["out_dir"]) / "bench.md"
    console.print(bench_md.read_text() if bench_md.is_file() else summary)


def production_spec(store_spec: str, model: str, device: str, gpu: GpuIdentity | None = None) -> Any:
    """The runner spec of the model's ``production`` artifact, as the promote stage recorded it in the pointer: on
    ``cuda``, the engine promoted for this GPU type (``gpu``, a ``GpuIdentity``; None: this machine's) if there is
    one, else the model's plain pointer."""
    from asr_optimize.capabilities import detect_gpu
    from asr_optimize.runners.registry import RunnerSpec
    from asr_optimize.store.local import artifact_ref, production_pointer, slugify_model
    from blocks.model_store import open_store

    store, slug = open_store(store_spec), slugify_model(model)
    gpu = (gpu or detect_gpu()) if device == "cuda" else None
    names = [production_pointer(slug, gpu.gpu_type)] if gpu else []
    pointers = (store.read_pointer(name) for name in [*names, production_pointer(slug)])
    pointer = next((p for p in pointers if p and p.get("spec")), None)
    if not pointer:
        raise AsrOptimizeError(f"no production artifact for {model} in {store_spec}: run `asr-optimize run` first")
    spec = RunnerSpec.model_validate(pointer["spec"])
    if spec.kind != "pytorch":  # a stored artifact (pytorch: the model folder itself): its files are checked against
        # the manifest's sha256 before anything runs, a damaged one is refused (StoreError naming the file)
        ref, file = artifact_ref(pointer.get("artifact_id") or "", slug, str(pointer.get("revision") or ""))
        stored = store.verify_artifact(ref)
        spec = spec.model_copy(update={"path": stored.file(file) if file else stored.local_dir})
    if not spec.path.exists():
        raise AsrOptimizeError(f"production artifact {pointer.get('artifact_id')} is not on this machine "
                               f"({spec.path}); run `asr-optimize run` here to fetch or rebuild it")
    if device != spec.device:  # e.g. a CUDA artifact tried on a laptop: same file, this machine's device
        spec = spec.model_copy(update={"device": device, "options": {}})
    return spec


@app.command()
def transcribe(
    files: Annotated[list[Path], typer.Argument(help="audio files: WAV/FLAC/MP3/OGG, any rate or channel count")],
    model: Annotated[str, typer.Option(help="model folder (vocabulary, config; the PyTorch reference by "
                                            "default)")] = str(DEFAULT_MODEL),
    production: Annotated[bool, typer.Option(help="run the store's production artifact for --model")] = False,
    via: Annotated[str, typer.Option(help="local | triton (the served acoustic model at --triton-url)")] = "local",
    triton_url: Annotated[str | None, typer.Option(help="Triton HTTP URL for --via triton")] = None,
    device: Annotated[str, typer.Option(help="cpu | cuda")] = "cpu",
    store: Annotated[str | None, typer.Option(help="model store for --production")] = None,
    timestamps: Annotated[bool, typer.Option(help="word start/end times (20 ms CTC frames)")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the whole result as JSON")] = False,
    chunk_s: Annotated[float | None, typer.Option(help="window length for long recordings (s)")] = None,
    stride_s: Annotated[float | None, typer.Option(help="context each side of a window (s)")] = None,
) -> None:
    """Transcribe audio files of any length (long ones in overlapping windows) with a model or the served one."""
    from asr_optimize.model.source import resolve_model
    from asr_optimize.runners.base import RunnerUnavailable
    from asr_optimize.runners.registry import RunnerSpec, baseline_spec, build_runner
    from asr_optimize.transcribe import ChunkingOptions, transcribe_files_output

    try:
        chunking = ChunkingOptions(**{k: v for k, v in {"chunk_s": chunk_s, "stride_s": stride_s}.items()
                                      if v is not None})
    except ValidationError as exc:
        raise typer.BadParameter(str(exc.errors()[0]["msg"])) from None
    try:
        resolved = resolve_model(model)
        if via == "triton":
            url = triton_url or get_settings().triton_url
            if not url:
                raise typer.BadParameter("--via triton needs --triton-url (or ASR_OPTIMIZE_TRITON_URL)")
            spec = RunnerSpec(kind="triton", variant=defaults.TRITON_MODEL_NAME, device="server",
                              path=resolved.local_dir, options={"url": url})
        elif via != "local":
            raise typer.BadParameter(f"--via must be local or triton, not {via!r}")
        elif production:
            spec = production_spec(store or get_settings().store, resolved.source, device)
        else:
            spec = baseline_spec(resolved.local_dir, device)
        runner = build_runner(spec)
        try:
            output = transcribe_files_output(files, resolved.local_dir, runner, model_label=resolved.source,
                                             chunking=chunking, timestamps=timestamps)
        finally:
            runner.close()
    except (AsrOptimizeError, RunnerUnavailable) as exc:
        raise _fail(EXIT_BAD_INPUT, str(exc)) from exc
    if as_json:
        print(output.model_dump_json(indent=2))
        return
    for item in output.files:
        console.print(f"[bold]{item.path}[/] ({item.duration_s:.1f} s)")
        print(item.text)
        for word in item.words or []:
            print(f"  {word.start_s:8.2f} {word.end_s:8.2f}  {word.word}")


def _int_list(text: str, flag: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected a comma list of whole numbers, got {text!r}", param_hint=flag) from None
    if not values or min(values) < 1:
        raise typer.BadParameter(f"expected numbers >= 1, got {text!r}", param_hint=flag)
    return values


def _triton_endpoint(address: str | None, repository: Path) -> Any:
    """A context yielding ``address``, or (None) the URL of the bundled tritonserver started on ``repository``. Why
    here: load tests against a running server must not need the flow's packages (Prefect) on the load host."""
    if address is not None:
        return contextlib.nullcontext(address)
    from tasks.deploy_triton import triton_endpoint

    return triton_endpoint(None, repository)


@app.command("serve-bench")
def serve_bench_command(
    url: Annotated[str | None, typer.Option(help="Triton gRPC endpoint, host:port; default: start the bundled "
                                                 "tritonserver on --triton-repository")] = None,
    triton_repository: Annotated[Path | None, typer.Option(help="repository for the bundled server")] = None,
    concurrency: Annotated[str, typer.Option(help="requests kept in flight, a comma list")] = (
        defaults.SERVE_CONCURRENCY),
    targets: Annotated[str, typer.Option(help="pipeline (audio -> text), acoustic (the model alone)")] = (
        defaults.SERVE_TARGETS),
    durations: Annotated[str, typer.Option(help="request lengths in seconds, a comma list; empty: the demo "
                                                "utterances as they are")] = "",
    window_s: Annotated[float, typer.Option(help="measurement window (s)", min=0.1)] = defaults.SERVE_WINDOW_S,
    stability: Annotated[float, typer.Option(help="windows agree within this fraction", min=0.001)] = (
        defaults.SERVE_STABILITY),
    stable_windows: Annotated[int, typer.Option(help="windows that must agree", min=1)] = (
        defaults.SERVE_STABLE_WINDOWS),
    max_windows: Annotated[int, typer.Option(help="windows per level before giving up on stability", min=1)] = (
        defaults.SERVE_MAX_WINDOWS),
    min_window_requests: Annotated[int, typer.Option(help="requests a window needs", min=1)] = (
        defaults.SERVE_MIN_WINDOW_REQUESTS),
    max_level_s: Annotated[float, typer.Option(help="time limit per level (s)", min=0.1)] = (
        defaults.SERVE_MAX_LEVEL_S),
    request_timeout_s: Annotated[float, typer.Option(help="per request (s)", min=0.1)] = (
        defaults.SERVE_REQUEST_TIMEOUT_S),
    processes: Annotated[int, typer.Option(help="load-generator processes per level", min=1)] = (
        defaults.SERVE_PROCESSES),
    model_name: Annotated[str, typer.Option(help="acoustic model name")] = defaults.TRITON_MODEL_NAME,
    pipeline_name: Annotated[str, typer.Option(help="pipeline model name")] = defaults.TRITON_PIPELINE_NAME,
    acoustic_version: Annotated[str, typer.Option(help="acoustic version ('' = the highest loaded)")] = "",
    utterances: Annotated[int, typer.Option(help="demo test-set utterances to cycle through", min=1)] = (
        defaults.SERVE_UTTERANCES),
    label: str = "",
    device: Annotated[str, typer.Option(help="label for the rows (e.g. the GPU's name)")] = "",
    speed_only: Annotated[bool, typer.Option(help="label the results speed-only (random-weight model)")] = False,
    pcm16: Annotated[bool, typer.Option(help="send the pipeline 16-bit PCM (audio_pcm16) instead of float32")] = False,
    out: Annotated[Path | None, typer.Option(help="output folder (default reports/serve-bench-<time>)")] = None,
) -> None:
    """Serving benchmark: a concurrency sweep against Triton (throughput, p50/p90/p99, queue vs compute, failures)."""
    from datetime import UTC, datetime

    from asr_optimize.loadtest.loadgen import ServeBenchOptions, demo_audio, serve_bench
    from asr_optimize.triton.endpoint import EndpointError, parse_address

    try:
        address = parse_address(url, "grpc") if url is not None else None
        opts = ServeBenchOptions(
            concurrency=_int_list(concurrency, "--concurrency"), targets=[t for t in targets.split(",") if t],
            durations_s=[float(d) for d in durations.split(",") if d] or None, window_s=window_s,
            stability=stability, stable_windows=stable_windows, max_windows=max_windows,
            min_window_requests=min_window_requests, max_level_s=max_level_s, request_timeout_s=request_timeout_s,
            processes=processes, model_name=model_name, pipeline_name=pipeline_name,
            acoustic_version=acoustic_version, label=label, speed_only=speed_only, pcm16=pcm16)
    except (ValidationError, ValueError, EndpointError) as exc:
        raise typer.BadParameter(str(exc)) from None
    folder = out or get_settings().reports_dir / datetime.now(UTC).strftime("serve-bench-%Y%m%d-%H%M%S")
    repository = (triton_repository or get_settings().triton_repository).resolve()
    try:
        with _triton_endpoint(address, repository) as endpoint:
            result = serve_bench(endpoint, demo_audio(utterances), opts, folder, device=device,
                                 progress=lambda row: console.print(
                                     f"  {row.target:<9} c={row.concurrency:<3} {row.throughput_rps:8.1f} req/s "
                                     f"p50 {row.p50_ms or 0:7.2f} ms p99 {row.p99_ms or 0:7.2f} ms "
                                     f"failed {row.failed}"))
    except (AsrOptimizeError, TransientError, ConnectionError) as exc:
        raise _fail(EXIT_BAD_INPUT, f"{exc} (is Triton up at {address or 'the bundled server'}?)") from exc
    console.print(result.markdown())
    console.print(f"results in {folder}")
    if result.failed:
        raise typer.Exit(EXIT_STAGE_FAILED)


@app.command("perf-analyzer")
def perf_analyzer_command(
    url: Annotated[str | None, typer.Option(help="Triton endpoint, host:port (gRPC; HTTP with --protocol http); "
                                                 "default: the bundled tritonserver on --triton-repository")] = None,
    triton_repository: Annotated[Path | None, typer.Option(help="repository for the bundled server")] = None,
    model: Annotated[str, typer.Option(help="the model perf_analyzer calls")] = defaults.TRITON_PIPELINE_NAME,
    model_version: Annotated[str, typer.Option(help="model version ('' = the highest loaded)")] = "",
    protocol: Annotated[str, typer.Option(help="grpc or http")] = "grpc",
    concurrency: Annotated[str, typer.Option(help="requests kept in flight, a comma list (one perf_analyzer run "
                                                  "per level)")] = defaults.PERF_CONCURRENCY,
    durations: Annotated[str, typer.Option(help="request lengths in seconds, a comma list")] = (
        defaults.PERF_DURATIONS),
    measurement_interval: Annotated[int, typer.Option(help="perf_analyzer's measurement window (ms)", min=10)] = (
        defaults.PERF_MEASUREMENT_INTERVAL_MS),
    stability_percentage: Annotated[float, typer.Option(help="3 windows agree within this % (throughput, "
                                                             "latency)", min=0.001)] = (
        defaults.PERF_STABILITY_PERCENTAGE),
    max_trials: Annotated[int, typer.Option(help="windows per level before it is recorded as unstable", min=1)] = (
        defaults.PERF_MAX_TRIALS),
    input_dtype: Annotated[str, typer.Option(help="float32 (input `audio`) or int16 (input `audio_pcm16`, 16-bit "
                                                  "PCM)")] = "float32",
    utterances: Annotated[int, typer.Option(help="demo test-set utterances in the input data", min=1)] = (
        defaults.PERF_UTTERANCES),
    level_timeout_s: Annotated[float, typer.Option(help="time limit per level (s); past it the level is "
                                                        "recorded as unstable", min=1)] = defaults.PERF_LEVEL_TIMEOUT_S,
    binary: Annotated[Path | None, typer.Option(help="the perf_analyzer binary (default: $ASR_OPTIMIZE_PERF_ANALYZER, "
                                                     "PATH, then this venv; `make perf-analyzer` installs it)")] = None,
    label: str = "",
    device: Annotated[str, typer.Option(help="label for the rows (e.g. the GPU's name)")] = "",
    out: Annotated[Path | None, typer.Option(help="output folder (default reports/perf-analyzer-<time>)")] = None,
) -> None:
    """Triton's perf_analyzer: a concurrency sweep per request length with real speech (inferences/s, x real time,
    p50/p90/p95/p99, Triton's queue and compute time)."""
    from datetime import UTC, datetime

    from asr_optimize.loadtest.perf_analyzer import (
        PerfAnalyzerError,
        PerfAnalyzerOptions,
        find_perf_analyzer,
        perf_analyzer_version,
        run_perf_analyzer,
    )
    from asr_optimize.triton.endpoint import EndpointError, parse_address

    try:
        address = parse_address(url, "http" if protocol == "http" else "grpc") if url is not None else None
        opts = PerfAnalyzerOptions(
            model_name=model, model_version=model_version, protocol=protocol,
            concurrency=_int_list(concurrency, "--concurrency"), durations_s=[float(d) for d in durations.split(",")
                                                                               if d.strip()],
            measurement_interval_ms=measurement_interval, stability_percentage=stability_percentage,
            max_trials=max_trials, input_dtype=input_dtype, utterances=utterances, level_timeout_s=level_timeout_s,
            label=label)
    except (ValidationError, ValueError, EndpointError) as exc:
        raise typer.BadParameter(" ".join(str(exc).split())) from None
    try:
        program = binary if binary is not None else find_perf_analyzer()
        version = perf_analyzer_version(program)
    except PerfAnalyzerError as exc:
        raise _fail(EXIT_BAD_INPUT, str(exc)) from exc
    console.print(f"perf_analyzer {version} ({program})")
    folder = out or get_settings().reports_dir / datetime.now(UTC).strftime("perf-analyzer-%Y%m%d-%H%M%S")
    repository = (triton_repository or get_settings().triton_repository).resolve()
    try:
        with _triton_endpoint(address, repository) as endpoint:
            result = run_perf_analyzer(endpoint, opts, out_dir=folder, device=device, binary=program,
                                       progress=lambda row: console.print(
                                           f"  {row.duration_s:g} s c={row.concurrency:<3} " + (
                                               f"{row.inferences_per_s:8.1f} infer/s p50 {row.p50_ms:7.2f} ms "
                                               f"p99 {row.p99_ms:7.2f} ms" if row.stable else
                                               f"unstable: {row.reason}")))
    except (AsrOptimizeError, TransientError, ConnectionError) as exc:
        message = " ".join(str(exc).split())
        if "connect" in message.lower():
            message += f" (is Triton up at {address or 'the bundled server'}?)"
        raise _fail(EXIT_BAD_INPUT, message) from exc
    console.print(result.markdown())
    if result.unstable:
        console.print(f"[yellow]{len(result.unstable)} level(s) did not reach a stable measurement[/] (raise "
                      "--measurement-interval or --stability-percentage)")
    console.print(f"results in {folder}")


@app.command()
def soak(
    repository: Annotated[Path, typer.Option(help="the served model repository (already serving)")],
    url: Annotated[str, typer.Option(help="Triton HTTP endpoint (model control, canary)")],
    grpc_url: Annotated[str, typer.Option(help="Triton gRPC endpoint (the load)")],
    model_dir: Annotated[Path, typer.Option(help="the model folder (vocabulary, config)")],
    artifacts: Annotated[list[Path], typer.Option("--artifact", help="two artifacts to swap between (give twice)")],
    reference: Annotated[str, typer.Option(help="canary reference: self (what Triton answers now; random-weight "
                                                "speed runs) or torch")] = "self",
    swaps: Annotated[int, typer.Option(min=1)] = defaults.SOAK_SWAPS,
    concurrency: Annotated[int, typer.Option(min=1)] = defaults.SOAK_CONCURRENCY,
    request_s: Annotated[float | None, typer.Option(help="request length (s); default: the utterances")] = None,
    batching: Annotated[str, typer.Option(help="BatchingOptions as JSON: must match the repository's")] = "{}",
    label: str = "",
    out: Annotated[Path | None, typer.Option(help="output folder (default reports/soak-<time>)")] = None,
) -> None:
    """Swap two artifacts back and forth under load: failed requests, latency during swaps, GPU memory per swap."""
    from datetime import UTC, datetime

    from asr_optimize.loadtest.soak import SoakOptions, soak_canary
    from asr_optimize.loadtest.soak import soak as run_soak
    from asr_optimize.triton.endpoint import EndpointError, parse_address
    from asr_optimize.triton.hotswap import SwapOptions
    from asr_optimize.triton.repository import BatchingOptions

    if len(artifacts) != 2 or reference not in ("self", "torch"):
        raise typer.BadParameter("give --artifact exactly twice, and --reference self or torch")
    try:
        http, grpc = parse_address(url, "http"), parse_address(grpc_url, "grpc")
        opts = SoakOptions(swaps=swaps, concurrency=concurrency, request_s=request_s, label=label,
                           swap=SwapOptions(grace_s=1.0, batching=BatchingOptions.model_validate_json(batching)))
    except (ValidationError, EndpointError) as exc:
        raise typer.BadParameter(str(exc)) from None
    folder = out or get_settings().reports_dir / datetime.now(UTC).strftime("soak-%Y%m%d-%H%M%S")
    try:
        canary = soak_canary(http, model_dir, reference, opts.swap.pipeline_name)
        result = run_soak(repository, (artifacts[0], artifacts[1]), model_dir, canary, http, grpc, opts, folder,
                          progress=lambda r: console.print(r.model_dump_json()))
    except (AsrOptimizeError, TransientError, ConnectionError) as exc:
        raise _fail(EXIT_BAD_INPUT, str(exc)) from exc
    console.print(result.markdown())
    if result.failed or result.promoted < len(result.swaps):
        raise typer.Exit(EXIT_STAGE_FAILED)


@app.command()
def watch(
    models: Annotated[list[str] | None, typer.Option("--model", help="hub id to watch (repeatable)")] = None,
    store: Annotated[str | None, typer.Option(help="model store [default: ASR_OPTIMIZE_STORE or model_store]")] = None,
) -> None:
    """Check watched hub models for new revisions once (the nightly watcher's flow run); prints what it found."""
    from flows.prefect_api import prefect_api
    from flows.watch_upstream import DEFAULT_WATCHED, watch_upstream_flow

    _exit_on_sigterm()
    with prefect_api():
        results = watch_upstream_flow(models=models or DEFAULT_WATCHED, store=store)
    print(json.dumps([r.model_dump() for r in results]))


@app.command()
def fleet(
    fleet_file: Annotated[Path, typer.Argument(metavar="FLEET.yaml", help="models x GPU types (see "
                                                                       "deploy/fleet.example.yaml)")],
    deployment: Annotated[str | None, typer.Option(help="the deployment each child runs [default: the file's "
                                                        f"`deployment`, else {defaults.FLEET_DEPLOYMENT}]")] = None,
    key: Annotated[str | None, typer.Option(help="fleet key: a rerun with the same key reuses completed children "
                                                 "[default: this fleet run's id]")] = None,
    timeout_s: Annotated[float, typer.Option(help="how long to wait for the children (s)", min=1)] = (
        defaults.FLEET_TIMEOUT_S),
    poll_s: Annotated[float, typer.Option(help="seconds between looks at the children's states", min=0.1)] = (
        defaults.FLEET_POLL_S),
    reports: Annotated[Path | None, typer.Option(help="folder for the fleet report [default: reports]")] = None,
) -> None:
    """Run the asr-optimize deployment for every model x GPU type of FLEET.yaml on the configured Prefect server
    (PREFECT_API_URL; the deployment registered, a worker on each GPU type's work queue), in this process."""
    from prefect.settings import PREFECT_API_URL

    from asr_optimize.fleet import load_fleet_file
    from flows.fleet import FleetFailed, asr_optimize_fleet, read_deployment

    spec = load_fleet_file(fleet_file)  # a bad file: one line (FleetError), before anything starts
    if not PREFECT_API_URL.value():
        raise _fail(EXIT_BAD_INPUT, "a fleet runs children on a Prefect server's workers: set PREFECT_API_URL to it "
                                    "(e.g. http://prefect:4200/api)")
    from prefect import get_client

    target = deployment or spec.deployment or defaults.FLEET_DEPLOYMENT
    with get_client(sync_client=True) as client:
        read_deployment(client, target)  # a missing deployment: one line, before a fleet run is created
    _exit_on_sigterm()
    try:
        report = asr_optimize_fleet(fleet=str(fleet_file), deployment=target, key=key, timeout_s=timeout_s,
                                    poll_s=poll_s, reports_dir=str(reports) if reports else None)
    except FleetFailed as exc:
        raise _fail(EXIT_STAGE_FAILED, str(exc)) from exc
    counts = ", ".join(f"{n} {k}" for k, n in sorted(report.counts().items()))
    console.print(f"[bold green]done[/]: fleet {report.fleet_key}: {counts}")
    for row in report.rows:
        console.print(f"  {row.model:<40} {row.gpu_type:<28} {row.outcome:<10} {row.flow_run_name}")


@app.command()
def capabilities() -> None:
    """Print what this machine can run (GPU, ONNX Runtime providers, TensorRT, tritonserver)."""
    from asr_optimize.capabilities import detect

    console.print_json(detect().model_dump_json())


@app.command("init-random")
def init_random(
    config_dir: Path, out_dir: Path, seed: int = 0,
    overrides: Annotated[str, typer.Option(help="JSON dict of config overrides")] = "{}",
) -> None:
    """Write a randomly initialised model of the architecture in CONFIG_DIR (for speed measurements only)."""
    from asr_optimize.model.source import init_random_model

    init_random_model(config_dir, out_dir, seed=seed, overrides=json.loads(overrides))
    console.print(f"random-weight model written to {out_dir}")


def main() -> None:
    """The console entry point: every failure is one line and an exit code, never a traceback (set
    ``ASR_OPTIMIZE_DEBUG=1`` to see one)."""
    try:
        app()
    except MemoryError:
        console.print("[bold red]asr-optimize failed:[/] out of memory (a larger machine, or smaller batches, "
                      "inputs or models)")
        sys.exit(EXIT_UNEXPECTED)
    except Exception as exc:
        if os.environ.get("ASR_OPTIMIZE_DEBUG"):
            raise
        code = EXIT_BAD_INPUT if isinstance(exc, AsrOptimizeError) else (
            EXIT_TRANSIENT if isinstance(exc, TransientError) else EXIT_UNEXPECTED)
        message = " ".join(str(exc).split())[:500] or "(no message)"
        console.print(f"[bold red]asr-optimize failed:[/] {type(exc).__name__}: {message} "
                      "(ASR_OPTIMIZE_DEBUG=1 shows the traceback)")
        sys.exit(code)


if __name__ == "__main__":
    main()
