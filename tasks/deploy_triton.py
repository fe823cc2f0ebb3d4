"""Stage: deploy the chosen artifact to Triton with a zero-downtime hot-swap, then health-check it.

Plain functions first (``deploy``, ``health_check``); ``deploy_task`` / ``health_check_task`` add Prefect
retries (only when Triton is unreachable before anything changed) and a markdown artifact with the decision
and its evidence. With no Triton URL, ``triton_endpoint`` starts the tritonserver bundled in nvidia-pytriton
on loopback for the duration of a ``with`` block.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from asr_optimize.triton import repository as repo_mod
from asr_optimize.triton.health import health_check as run_health_check
from asr_optimize.triton.hotswap import CanarySet, SwapDecision, SwapOptions, hot_swap
from tasks.common import StageResult, get_logger, retry_on_transient

STAGE = "deploy-triton"
HEALTH_STAGE = "triton-health"


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
    from asr_optimize.runners.base import transcribe
    from asr_optimize.runners.torch_runner import TorchRunner

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
        artifact_dir=repository / opts.model_name / str(serving) if serving else None,
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


def _markdown_artifact(key: str, markdown: str, description: str) -> None:
    from prefect.artifacts import create_markdown_artifact

    create_markdown_artifact(key=key, markdown=markdown, description=description)


@task(name="deploy-triton", retries=2, retry_delay_seconds=10, retry_condition_fn=retry_on_transient,
      cache_policy=NO_CACHE)
def deploy_task(
    artifact: Path,
    model_dir: Path,
    repository: Path,
    url: str,
    canary: CanarySet,
    opts: SwapOptions | None = None,
    source: str = "",
    artifact_manifest: dict[str, Any] | None = None,
) -> StageResult:
    """Hot-swap with canary and rollback; the decision and its evidence become the 'triton-deploy' artifact."""
    result, decision = deploy(artifact, model_dir, repository, url, canary, opts, source, artifact_manifest)
    _markdown_artifact("triton-deploy", decision.markdown(), decision.summary())
    return result


@task(name="triton-health", retries=1, retry_delay_seconds=5, retry_condition_fn=retry_on_transient,
      cache_policy=NO_CACHE)
def health_check_task(
    url: str, repository: Path, audio: list[np.ndarray], model_name: str = repo_mod.DEFAULT_MODEL_NAME,
    pipeline_name: str = repo_mod.DEFAULT_PIPELINE_NAME, n_requests: int = 20, max_p99_ms: float | None = None,
) -> StageResult:
    """Health check of the serving version; the report becomes the 'triton-health' artifact."""
    result, report = health_check(url, repository, audio, model_name, pipeline_name, n_requests, max_p99_ms)
    _markdown_artifact("triton-health", report.markdown(), report.summary())
    return result
