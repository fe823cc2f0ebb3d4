"""Stage: deploy the chosen artifact to Triton with a zero-downtime hot-swap, then health-check it.

Plain functions first (``deploy``, ``health_check``); ``deploy_task`` / ``health_check_task`` add Prefect
retries (only when Triton is unreachable before anything changed) and a markdown artifact with the decision
and its evidence. With no Triton URL, ``triton_endpoint`` starts the tritonserver bundled in nvidia-pytriton
on loopback for the duration of a ``with`` block.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, model_validator

from asr_optimize.capabilities import Capabilities
from asr_optimize.errors import AsrOptimizeError
from asr_optimize.model.source import ResolvedModel
from asr_optimize.options import Options
from asr_optimize.settings import get_settings
from asr_optimize.triton import repository as repo_mod
from asr_optimize.triton.health import health_check as run_health_check
from asr_optimize.triton.hotswap import CanarySet, SwapDecision, SwapOptions, hot_swap
from asr_optimize.triton.names import repo_path
from tasks.common import StageResult, get_logger, in_prefect_run, skipped, stage_task
from tasks.promote import PromotionDecision

STAGE = "deploy-triton"
HEALTH_STAGE = "triton-health"


class TritonReplica(Options):
    """One more Triton server that serves the same models from its own repository."""

    url: str
    repository: Path


class TritonOptions(Options):
    """Where the promoted artifact is served. No URL: the bundled tritonserver is started on loopback."""

    enabled: bool = True
    url: str | None = Field(default_factory=lambda: get_settings().triton_url)
    repository: Path = Field(default_factory=lambda: get_settings().triton_repository)
    target_block: str | None = None
    """Name of a saved ``asr-optimize triton target`` block; its URL, repository and model names win."""
    swap: SwapOptions = Field(default_factory=SwapOptions)
    canary_utterances: int = Field(16, ge=1)
    health_requests: int = Field(20, ge=1)
    url_serves_fused: bool = False
    """The Triton at ``url`` can serve fused engines: its python backend's environment has torch (CUDA build) and this
    package installed (the stock NGC image has neither). The bundled server always can: its stub uses this venv."""
    replicas: list[TritonReplica] = Field(default_factory=list)
    """More servers behind the same traffic, each with its own repository and the same model names. The deploy swaps
    the artifact into ``url`` first (the canary replica), then into each replica in turn while the others serve, and
    reverts every replica already promoted if one fails (``asr_optimize.triton.rolling``); each is health-checked.
    Needs ``url``."""

    @model_validator(mode="after")
    def _replicas_need_a_url(self) -> TritonOptions:
        if self.replicas and self.url is None:
            raise ValueError("triton.replicas needs triton.url: the first replica (the canary) is a running server, "
                             "not the bundled one")
        return self


def models_in_repository(root: Path) -> list[str]:
    """Model folders that have a config.pbtxt (what a freshly started explicit-mode server should load)."""
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "config.pbtxt").is_file())


@contextlib.contextmanager
def triton_endpoint(url: str | None, repository: Path) -> Iterator[str]:
    """Yield ``url``; when it is None, start the bundled tritonserver on ``repository`` and yield its URL."""
    if url:
        yield url
        return
    from asr_optimize.triton.server import bundled_triton

    repository.mkdir(parents=True, exist_ok=True)
    with bundled_triton(repository, load=models_in_repository(repository)) as server:
        get_logger().info("started the bundled tritonserver at %s (log %s)", server.http_url, server.log_path)
        yield server.http_url


def canary_from_eval_set(eval_set: Any, model_dir: Path, limit: int = 16) -> CanarySet:
    """Canary utterances with fp32 PyTorch reference transcripts (use the WER stage's if you have them)."""
    from asr_optimize.runners.torch_runner import TorchRunner
    from asr_optimize.transcribe import transcribe

    utts = eval_set.utterances[:limit]
    runner = TorchRunner(model_dir)
    try:
        texts, _ = transcribe(runner, [u.audio for u in utts], model_dir)
    finally:
        runner.close()
    return CanarySet([u.id for u in utts], [u.audio for u in utts], texts, [u.text for u in utts])


def deploy(
    artifact: Path,
    model_dir: Path,
    repository: Path,
    url: str,
    canary: CanarySet,
    opts: SwapOptions | None = None,
    source: str = "",
    artifact_manifest: dict[str, Any] | None = None,
) -> tuple[StageResult, SwapDecision]:
    """Hot-swap ``artifact`` in as the next version; status ok = promoted, failed = rolled back / refused."""
    opts = opts or SwapOptions()
    decision = hot_swap(repository, artifact, model_dir, canary, url, opts, source=source,
                        artifact_manifest=artifact_manifest)
    log = get_logger()
    (log.info if decision.promoted else log.warning)("%s: %s", STAGE, decision.summary())
    serving = decision.serving_version
    result = StageResult(
        stage=STAGE,
        status="ok" if decision.promoted else "failed",
        reason=None if decision.promoted else decision.summary(),
        artifact_dir=repo_path(repository, opts.model_name, serving) if serving else None,
        location=f"{url}/v2/models/{opts.pipeline_name}",
        metrics={
            "action": decision.action,
            "serving_version": serving,
            "candidate_version": decision.candidate_version,
            "previous_version": decision.previous_version,
            "live_versions": decision.live_versions,
            "retired_versions": decision.retired_versions,
            "gate_passed": decision.gate.passed if decision.gate else None,
            **{f"{k}_s": v for k, v in decision.timings.items()},
        },
        seconds=round(sum(decision.timings.values()), 3),
        output=decision,
    )
    return result, decision


def health_check(
    url: str, repository: Path, audio: list[np.ndarray], model_name: str = repo_mod.DEFAULT_MODEL_NAME,
    pipeline_name: str = repo_mod.DEFAULT_PIPELINE_NAME, n_requests: int = 20, max_p99_ms: float | None = None,
) -> tuple[StageResult, Any]:
    """Live/ready, models ready, metadata vs manifest, p50/p99 over ``n_requests`` pipeline requests."""
    report = run_health_check(url, repository, audio, model_name, pipeline_name, n_requests, max_p99_ms=max_p99_ms)
    (get_logger().info if report.passed else get_logger().error)("%s: %s", HEALTH_STAGE, report.summary())
    result = StageResult(
        stage=HEALTH_STAGE, status="ok" if report.passed else "failed",
        reason=None if report.passed else report.summary(),
        location=f"{url}/v2/models/{pipeline_name}",
        metrics=report.model_dump(exclude={"problems"}) | {"problems": report.problems},
    )
    return result, report


def servable_kinds(opts: TritonOptions) -> set[str] | None:
    """Runner kinds whose artifacts the configured Triton can serve (None when deployment is off: no constraint).

    The bundled tritonserver has the python backend only: ONNX through ONNX Runtime, and the fused engines through
    ``fused_acoustic.py``, which imports torch and ``asr_optimize`` from this worker's environment. A Triton URL (the
    NGC image) also serves TensorRT plans, and fused engines only when ``url_serves_fused`` says its python backend
    can import them.
    """
    if not opts.enabled:
        return None
    if opts.url is None:
        return {"onnxruntime", "fused"}
    return {"onnxruntime", "tensorrt"} | ({"fused"} if opts.url_serves_fused else set())


def deploy_stage(promotion: StageResult[PromotionDecision], eval_set: Any, model: ResolvedModel, caps: Capabilities,
                 opts: TritonOptions) -> StageResult:
    """Hot-swap the promoted artifact into Triton (canary, rollback) and health-check it, or say why not.

    Status ``ok`` only when the swap promoted the new version AND the health check passed; a failure is a
    ``failed`` result with the reason (the run still writes its report, and the production pointer stays).
    """
    decision = promotion.output
    if not opts.enabled:
        return skipped(STAGE, "disabled (options.triton.enabled = false)")
    if decision is None or not decision.promoted or not decision.artifact:
        return skipped(STAGE, f"nothing to deploy: {decision.reason if decision else promotion.reason}")
    if opts.url is None and not caps.tritonserver:
        return skipped(STAGE, "no Triton URL configured and no tritonserver binary found "
                              "(pip install --no-deps nvidia-pytriton==0.7.0)")
    artifact = Path(decision.artifact)
    try:
        kind = opts.swap.kind or repo_mod.kind_for_artifact(artifact)
    except repo_mod.RepositoryError:
        kind = None
    if opts.url is None and kind not in repo_mod.PYTHON_KINDS:
        return skipped(STAGE, "the bundled tritonserver serves only ONNX and fused engines through its python "
                              f"backend; {decision.artifact} needs a Triton URL (NGC image)")
    if opts.url is not None and kind == "python_fused" and not opts.url_serves_fused:
        return skipped(STAGE, f"{decision.artifact} is a fused engine and the Triton at {opts.url} is not marked "
                              "as able to import torch + asr_optimize (options.triton.url_serves_fused)")
    repository = Path(opts.repository).resolve()
    swap = opts.swap
    if swap.batching.instance_kind == "auto" and opts.url is None and (caps.cuda or kind == "python_fused"):
        # the bundled server runs on this worker: its acoustic model goes on the GPU the benchmark measured
        # (a fused engine on a worker without CUDA runs fp32 on CPU instances)
        group = "KIND_GPU" if caps.cuda else "KIND_CPU"
        swap = swap.model_copy(update={"batching": swap.batching.model_copy(update={"instance_kind": group})})
    manifest = {"precision": decision.spec.precision} if decision.spec and decision.spec.kind == "fused" else None
    try:
        canary = canary_from_eval_set(eval_set, model.local_dir, limit=opts.canary_utterances)
        with triton_endpoint(opts.url, repository) as url:
            if opts.replicas:
                return deploy_replicas([(repository, url)] + [(Path(r.repository).resolve(), r.url)
                                                              for r in opts.replicas],
                                       artifact, model.local_dir, canary, swap, opts, decision.candidate or "",
                                       manifest)
            result, _ = deploy(artifact, model.local_dir, repository, url, canary, swap,
                               source=decision.candidate or "", artifact_manifest=manifest)
            publish_deploy_artifact(result)
            if result.status == "ok":
                health, report = health_check(url, repository, canary.waves, model_name=opts.swap.model_name,
                                              pipeline_name=opts.swap.pipeline_name, n_requests=opts.health_requests)
                _markdown_artifact("triton-health", report.markdown(), report.summary())
                result.metrics.update(health=health.status, health_p50_ms=health.metrics.get("latency_p50_ms"),
                                      health_p99_ms=health.metrics.get("latency_p99_ms"))
                if health.status != "ok":
                    result.status, result.reason = "failed", f"health check failed: {health.reason}"
    except (AsrOptimizeError, OSError) as exc:  # TransientError propagates: the task retries it
        get_logger().error("%s: %s: %s", STAGE, type(exc).__name__, exc)
        return StageResult(stage=STAGE, status="failed", reason=f"{type(exc).__name__}: {exc}",
                           location=opts.url or str(repository))
    return result


def deploy_replicas(replicas: list[tuple[Path, str]], artifact: Path, model_dir: Path, canary: CanarySet,
                    swap: SwapOptions, opts: TritonOptions, source: str,
                    manifest: dict[str, Any] | None) -> StageResult:
    """Rolling swap across ``replicas`` (the first is the canary), then a health check of each; status ok only when
    every replica was promoted and is healthy. Health per replica is in the metrics and the markdown artifact."""
    from asr_optimize.triton.rolling import rolling_swap

    start = time.perf_counter()
    rolled = rolling_swap(replicas, artifact, model_dir, canary, swap, source=source, artifact_manifest=manifest)
    (get_logger().info if rolled.promoted else get_logger().warning)("%s: %s", STAGE, rolled.summary())
    failures = []
    if rolled.promoted:
        for (root, url), outcome in zip(replicas, rolled.replicas, strict=True):
            health, report = health_check(url, root, canary.waves, model_name=swap.model_name,
                                          pipeline_name=swap.pipeline_name, n_requests=opts.health_requests)
            outcome.health = report.summary()
            if health.status != "ok":
                failures.append(f"{url}: {health.reason}")
    _markdown_artifact("triton-deploy", rolled.markdown(), rolled.summary())
    ok = rolled.promoted and not failures
    reason = None if ok else rolled.summary() if not rolled.promoted else "health check failed: " + "; ".join(failures)
    return StageResult(
        stage=STAGE, status="ok" if ok else "failed", reason=reason,
        location=", ".join(f"{url}/v2/models/{swap.pipeline_name}" for _, url in replicas),
        metrics={"action": "promoted" if rolled.promoted else "rolled_back",
                 "replicas": [r.model_dump() for r in rolled.replicas]},
        seconds=round(time.perf_counter() - start, 3), output=rolled,
    )


def publish_deploy_artifact(result: StageResult) -> None:
    """The swap decision and its evidence as the 'triton-deploy' markdown artifact (inside a Prefect run only)."""
    decision = result.output
    if isinstance(decision, SwapDecision):
        _markdown_artifact("triton-deploy", decision.markdown(), decision.summary())


def _markdown_artifact(key: str, markdown: str, description: str) -> None:
    from prefect.artifacts import create_markdown_artifact

    if not in_prefect_run():
        return  # called outside a flow/task run (tests, the bench suite): nothing to attach it to
    create_markdown_artifact(key=key, markdown=markdown, description=description)


deploy_task = stage_task(deploy_stage, name="deploy-triton", retries=2)
