"""The asr-optimize flow: profile -> export -> optimize -> TensorRT -> benchmark -> evaluate -> report.

Run it locally with ``asr-optimize run`` (an ephemeral local Prefect API is used when no server is
configured), or as the ``asr-optimize/prod`` deployment on a GPU work pool.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from prefect import flow, task
from prefect.runtime import flow_run
from pydantic import BaseModel, Field

from asr_optimize import __version__
from asr_optimize.audio import synthetic_audio
from asr_optimize.capabilities import Capabilities, detect
from asr_optimize.errors import AsrOptimizeError
from asr_optimize.model_source import ResolvedModel, resolve_model
from asr_optimize.paths import DEFAULT_MODEL, DEMO_TESTSET
from asr_optimize.store_factory import open_store
from asr_optimize.triton.hotswap import SwapOptions
from tasks.benchmark import BenchmarkOptions, benchmark_task, pipeline_runner_specs
from tasks.common import StageResult, get_logger, retry_on_transient, skipped
from tasks.deploy_triton import canary_from_eval_set, deploy_task, health_check_task, triton_endpoint
from tasks.evaluate import EvaluateOptions, evaluate_task, load_eval_task
from tasks.export import ExportOptions, export_task
from tasks.optimize import OptimizeOptions, optimize_task
from tasks.profile import ProfileOptions, profile_task
from tasks.promote import PromotionDecision, choose_candidate_task, move_production_task
from tasks.report import report_task
from tasks.tensorrt_build import EngineOptions, tensorrt_task


class TritonOptions(BaseModel):
    """Where the promoted artifact is served. No URL: the bundled tritonserver is started on loopback."""

    enabled: bool = True
    url: str | None = None
    repository: str = "triton_repository"
    swap: SwapOptions = Field(default_factory=SwapOptions)
    canary_utterances: int = 16
    health_requests: int = 20


class PipelineOptions(BaseModel):
    """Every stage's knobs, with defaults sized for the demo model on a CPU."""

    profile: ProfileOptions = Field(default_factory=ProfileOptions)
    export: ExportOptions = Field(default_factory=ExportOptions)
    optimize: OptimizeOptions = Field(default_factory=OptimizeOptions)
    tensorrt: EngineOptions = Field(default_factory=EngineOptions)
    benchmark: BenchmarkOptions = Field(default_factory=BenchmarkOptions)
    evaluate: EvaluateOptions = Field(default_factory=EvaluateOptions)
    triton: TritonOptions = Field(default_factory=lambda: TritonOptions())
    parity_utterances: int = 4


class FlowSummary(BaseModel):
    run_name: str
    model: str
    revision: str
    stages: dict[str, str]
    report_folder: str
    capabilities: Capabilities
    promoted: str | None = None


@task(name="resolve-model", retries=3, retry_delay_seconds=[2, 10, 30], retry_condition_fn=retry_on_transient)
def resolve_task(model: str, revision: str | None) -> ResolvedModel:
    """Pin the model to an exact revision (hub sha or content hash) and a local folder."""
    resolved = resolve_model(model, revision)
    get_logger().info("model %s resolved to %s revision %s (%s)", model, resolved.kind, resolved.revision,
                      resolved.architecture)
    return resolved


def parity_audio(count: int) -> list[np.ndarray]:
    """A few real utterances from the bundled test set (synthetic audio if it is not there)."""
    if (DEMO_TESTSET / "manifest.jsonl").is_file():
        from asr_optimize.eval_data import load_eval_set

        return [u.audio for u in load_eval_set().utterances[:count]]
    return synthetic_audio(count, 1.5, seed=7)[: count - 1] + synthetic_audio(1, 2.3, seed=8)


def on_device(stage_task: Any, device: str) -> Any:
    """The task with the ``gpu`` tag when it runs on CUDA: the `gpu` concurrency limit then serialises GPU work."""
    return stage_task.with_options(tags={*stage_task.tags, "gpu"}) if device == "cuda" else stage_task


def deploy_stage(promotion: PromotionDecision, eval_set: Any, model: ResolvedModel, caps: Capabilities,
                 opts: TritonOptions) -> StageResult:
    """Hot-swap the promoted artifact into Triton (canary, rollback) and health-check it, or say why not."""
    if not opts.enabled:
        return skipped("deploy-triton", "disabled (options.triton.enabled = false)")
    if not promotion.promoted or not promotion.artifact:
        return skipped("deploy-triton", f"nothing to deploy: {promotion.reason}")
    if opts.url is None and not caps.tritonserver:
        return skipped("deploy-triton", "no Triton URL configured and no tritonserver binary found "
                                        "(pip install --no-deps nvidia-pytriton==0.7.0)")
    if opts.url is None and not promotion.artifact.endswith(".onnx"):
        return skipped("deploy-triton", "the bundled tritonserver serves only ONNX through its python backend; "
                                        f"{promotion.artifact} needs a Triton URL (NGC image)")
    repository = Path(opts.repository).resolve()
    canary = canary_from_eval_set(eval_set, model.local_dir, limit=opts.canary_utterances)
    with triton_endpoint(opts.url, repository) as url:
        result = deploy_task(Path(promotion.artifact), model.local_dir, repository, url, canary, opts.swap,
                             source=promotion.candidate or "")
        if result.status == "ok":
            health = health_check_task(url, repository, canary.waves, model_name=opts.swap.model_name,
                                       pipeline_name=opts.swap.pipeline_name, n_requests=opts.health_requests)
            result.metrics["health"] = health.status
            result.metrics["health_p50_ms"] = health.metrics.get("latency_p50_ms")
            result.metrics["health_p99_ms"] = health.metrics.get("latency_p99_ms")
    return result


@flow(name="asr-optimize", log_prints=True)
def asr_optimize_flow(
    model: str = str(DEFAULT_MODEL),
    revision: str | None = None,
    store: str = "model_store",  # a folder, s3://bucket/prefix, or block:<model-store block name>
    reports_dir: str = "reports",
    device: Literal["auto", "cpu", "cuda"] = "auto",
    require_gpu: bool = False,
    require_tensorrt: bool = False,
    options: PipelineOptions | None = None,
) -> FlowSummary:
    """Turn a wav2vec2 CTC model into verified, benchmarked artifacts in the model store."""
    log = get_logger()
    opts = options or PipelineOptions()
    caps = detect()
    log.info("capabilities: %s", caps.model_dump_json())
    if require_gpu and not caps.cuda:
        raise AsrOptimizeError("this deployment requires a CUDA GPU, and none is visible to PyTorch on this worker")
    if require_tensorrt and caps.why_no_tensorrt():
        raise AsrOptimizeError(f"this deployment requires TensorRT: {caps.why_no_tensorrt()}")
    run_device = "cuda" if device == "cuda" or (device == "auto" and caps.cuda) else "cpu"
    if run_device == "cuda" and not caps.cuda:
        raise AsrOptimizeError("device=cuda was requested, but no CUDA GPU is visible to PyTorch")
    run_name = flow_run.get_name() or datetime.now(UTC).strftime("run-%Y%m%d-%H%M%S")
    artifact_store = open_store(store)
    log.info("model store: %s", artifact_store.describe())

    resolved = resolve_task(model, revision)
    waves = parity_audio(opts.parity_utterances)
    profile_opts = opts.profile.model_copy(update={"device": run_device})
    profile = on_device(profile_task, run_device)(artifact_store, resolved, profile_opts)
    export = export_task(artifact_store, resolved, opts.export, waves)
    optimized = optimize_task(artifact_store, resolved, export, opts.optimize, waves)
    engines = tensorrt_task(artifact_store, resolved, optimized, caps, opts.tensorrt, export=export)
    stages = [profile, export, optimized, engines]

    report_dir = Path(reports_dir) / run_name
    specs = pipeline_runner_specs(resolved, export, optimized, engines, caps, run_device)
    benchmarks: pd.DataFrame = on_device(benchmark_task, run_device)(specs, opts.benchmark, report_dir)
    eval_set = load_eval_task(opts.evaluate.source)
    evaluation = on_device(evaluate_task, run_device)(specs, eval_set, resolved.local_dir, opts.evaluate, report_dir)
    promotion = choose_candidate_task(specs, evaluation, benchmarks, artifact_store, run_device, resolved.source)
    deployment = deploy_stage(promotion, eval_set, resolved, caps, opts.triton)
    stages.append(deployment)
    if promotion.promoted and deployment.status in ("ok", "skipped"):
        move_production_task(artifact_store, promotion, run_device, resolved.source, resolved.revision,
                             {"triton": deployment.status, **deployment.metrics})
    run_info: dict[str, Any] = {
        "run_name": run_name, "model": resolved.source, "revision": resolved.revision, "code_version": __version__,
        "device": run_device, "gpu": caps.gpu_name or "none", "tensorrt": caps.tensorrt_version or caps.tensorrt_reason,
        "store": artifact_store.describe(),
    }
    extra = [
        "## Promotion", f"- promoted: **{promotion.promoted}**", f"- {promotion.reason}",
        f"- evaluation set: {evaluation.eval_set}",
    ]
    report = report_task(report_dir, run_info, stages, benchmarks, profile.file("operators.csv"),
                         evaluation.table(), extra)
    return FlowSummary(run_name=run_name, model=resolved.source, revision=resolved.revision,
                       stages={s.stage: s.status for s in stages}, report_folder=report["folder"], capabilities=caps,
                       promoted=promotion.candidate if promotion.promoted else None)
