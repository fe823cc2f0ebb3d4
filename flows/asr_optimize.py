"""The asr-optimize flow, read top to bottom as the pipeline diagram:

    resolve -> profile -> artifacts (export -> optimize -> TensorRT, fused engines) -> benchmark -> evaluate
            -> release (promote -> deploy: Triton hot-swap + health -> production pointer) -> report

Every stage is a plain function in ``tasks/`` returning a ``StageResult``; this module only wires them (the artifact
stages through ``flows.artifacts``, the release through ``flows.release``). Run it with
``asr-optimize run`` (a temporary local Prefect API is used when no server is configured), or as the
``asr-optimize/prod`` deployment on a GPU work pool.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from prefect import flow
from prefect.runtime import flow_run
from pydantic import BaseModel, Field

from asr_optimize import __version__
from asr_optimize.capabilities import Capabilities, detect
from asr_optimize.errors import AsrOptimizeError
from asr_optimize.fleet import promotion_lines
from asr_optimize.paths import DEFAULT_MODEL
from asr_optimize.quality.eval_sets import calibration_audio
from asr_optimize.quality.parity import parity_audio
from asr_optimize.settings import get_settings
from blocks.model_store import open_store
from flows.artifacts import ArtifactOptions, build_artifacts
from flows.release import release, triton_options_from_block
from tasks.benchmark import BenchmarkOptions, benchmark_task
from tasks.common import get_logger, on_device
from tasks.deploy_triton import TritonOptions
from tasks.evaluate import EvaluateOptions, evaluate_task, load_eval_task
from tasks.profile import ProfileOptions, profile_task
from tasks.report import report_task
from tasks.resolve import resolve_task


class PipelineOptions(ArtifactOptions):
    """Every stage's knobs, with defaults sized for the demo model on a CPU (``--options FILE.yaml`` sets them)."""

    profile: ProfileOptions = Field(default_factory=ProfileOptions)
    benchmark: BenchmarkOptions = Field(default_factory=BenchmarkOptions)
    evaluate: EvaluateOptions = Field(default_factory=EvaluateOptions)
    triton: TritonOptions = Field(default_factory=TritonOptions)
    parity_utterances: int = Field(4, ge=1)


class FlowSummary(BaseModel):
    run_name: str
    model: str
    revision: str
    stages: dict[str, str]
    report_folder: str
    capabilities: Capabilities
    promoted: str | None = None

    def failed(self) -> dict[str, str]:
        return {stage: status for stage, status in self.stages.items() if status == "failed"}


class StagesFailed(AsrOptimizeError):
    """The run finished and wrote its report, but a stage failed (e.g. the Triton swap was rolled back)."""


def run_device(device: str, caps: Capabilities, require_gpu: bool, require_tensorrt: bool) -> str:
    """``cuda`` or ``cpu`` for this run; production requirements fail loudly here, before any work."""
    if require_gpu and not caps.cuda:
        raise AsrOptimizeError("this deployment requires a CUDA GPU, and none is visible to PyTorch on this worker")
    if require_tensorrt and caps.why_no_tensorrt():
        raise AsrOptimizeError(f"this deployment requires TensorRT: {caps.why_no_tensorrt()}")
    if device == "cuda" and not caps.cuda:
        raise AsrOptimizeError("device=cuda was requested, but no CUDA GPU is visible to PyTorch")
    return "cuda" if device == "cuda" or (device == "auto" and caps.cuda) else "cpu"


def writable_report_dir(root: Path, run_name: str) -> Path:
    """The run's report folder, checked before any work so a bad path fails in seconds, not after the benchmark."""
    folder = root / run_name
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise AsrOptimizeError(f"reports folder {folder} is not writable: {exc.strerror or exc}") from None
    return folder


@flow(name="asr-optimize", log_prints=True)
def asr_optimize_flow(
    model: str = str(DEFAULT_MODEL),
    revision: str | None = None,
    store: str | None = None,  # a folder, s3://bucket/prefix or block:<name>; default: settings (model_store)
    reports_dir: str | None = None,  # default: settings (reports)
    device: Literal["auto", "cpu", "cuda"] = "auto",
    require_gpu: bool = False,
    require_tensorrt: bool = False,
    options: PipelineOptions | None = None,
) -> FlowSummary:
    """Turn a wav2vec2 CTC model into verified, benchmarked artifacts in the model store, and serve the best."""
    settings = get_settings()
    opts = options or PipelineOptions()
    caps = detect()
    get_logger().info("capabilities: %s", caps.model_dump_json())
    dev = run_device(device, caps, require_gpu, require_tensorrt)
    run_name = flow_run.get_name() or datetime.now(UTC).strftime("run-%Y%m%d-%H%M%S")
    report_dir = writable_report_dir(Path(reports_dir or settings.reports_dir), run_name)
    artifact_store = open_store(store or settings.store)
    get_logger().info("model store: %s", artifact_store.describe())
    triton_opts = triton_options_from_block(opts.triton)

    resolved = resolve_task(model, revision)
    eval_set = load_eval_task(opts.evaluate.source)
    profile = on_device(profile_task, dev)(artifact_store, resolved, opts.profile.model_copy(update={"device": dev}))
    calibration = calibration_audio(opts.fused.calibration_manifest) if dev == "cuda" and opts.fused.enabled else []
    built = build_artifacts(artifact_store, resolved, caps, dev, opts, parity_audio(opts.parity_utterances),
                            calibration, as_tasks=True)
    specs = built.runner_specs(resolved, caps, dev)
    benchmark = on_device(benchmark_task, dev)(specs, opts.benchmark, report_dir)
    evaluation = on_device(evaluate_task, dev)(specs, eval_set, resolved.local_dir, opts.evaluate, report_dir)
    released = release(specs, evaluation, benchmark, artifact_store, dev, resolved, eval_set, caps,
                       opts.evaluate.gate, triton_opts)
    promotion, deployment, decision = released.promotion, released.deployment, released.decision

    stages = [profile, *built.stages(), benchmark, evaluation, promotion, deployment]
    run_info: dict[str, Any] = {
        "run_name": run_name, "model": resolved.source, "revision": resolved.revision, "code_version": __version__,
        "device": dev, "gpu": caps.gpu_name or "none", "tensorrt": caps.tensorrt_version or caps.tensorrt_reason,
        "store": artifact_store.describe(),
    }
    extra = [*promotion_lines(bool(decision and decision.promoted), (decision.reason if decision else
                                                                      promotion.reason) or ""),
             f"- evaluation set: {evaluation.output.eval_set if evaluation.output else 'none'}"]
    report = report_task(report_dir, run_info, stages, benchmark.output.frame() if benchmark.output else pd.DataFrame(),
                         profile.file("operators.csv") if profile.usable else None,
                         evaluation.output.table() if evaluation.output else None, extra)
    summary = FlowSummary(
        run_name=run_name, model=resolved.source, revision=resolved.revision,
        stages={s.stage: s.status for s in [*stages, report]}, report_folder=str(report_dir), capabilities=caps,
        promoted=decision.candidate if decision and decision.promoted else None)
    if summary.failed():
        reasons = "; ".join(f"{s.stage}: {s.reason}" for s in stages if s.status == "failed")
        raise StagesFailed(f"{reasons} (report in {report_dir})")
    return summary
