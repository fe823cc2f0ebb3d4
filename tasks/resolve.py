"""Stage 0, resolve: pin the model reference to an exact revision and a local folder (retried on network faults)."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from asr_optimize.model.source import ResolvedModel, resolve_model
from tasks.common import get_logger, retry_on_transient


def resolve_stage(model: str, revision: str | None) -> ResolvedModel:
    """Pin ``model`` (hub id, folder or s3:// URI) to its revision: hub commit sha or ``sha256:<content hash>``."""
    resolved = resolve_model(model, revision)
    get_logger().info("model %s resolved to %s revision %s (%s)", model, resolved.kind, resolved.revision,
                      resolved.architecture)
    return resolved


resolve_task = task(resolve_stage, name="resolve-model", retries=3, retry_delay_seconds=[2, 10, 30],
                    retry_condition_fn=retry_on_transient, cache_policy=NO_CACHE)
