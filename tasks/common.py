"""What every stage shares: results with an honest status, logging, retries, and store-backed caching.

Caching: a stage's key hashes its parameters, the hashes of its inputs, the model revision and the source
code of the stage module. If the store already holds a complete artifact under that key, the stage is not
run again and the log says so. Because the store can be S3, a rerun on another worker reuses it too.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from asr_optimize.errors import TransientError
from asr_optimize.hashing import stable_hash
from asr_optimize.model_source import ResolvedModel
from asr_optimize.store import ArtifactRef, ArtifactStore, Manifest, runtime_environment

Status = Literal["ok", "cached", "skipped", "failed"]


class StageResult(BaseModel):
    """The outcome of one stage, as the report and the Prefect UI show it."""

    stage: str
    status: Status
    reason: str | None = None
    artifact_dir: Path | None = None
    location: str | None = None
    key: str | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    seconds: float = 0.0

    def file(self, name: str) -> Path:
        if self.artifact_dir is None:
            raise FileNotFoundError(f"stage {self.stage} produced no artifact ({self.status}: {self.reason})")
        return self.artifact_dir / name


def get_logger() -> logging.Logger | logging.LoggerAdapter:
    """Prefect's run logger inside a flow/task run (shown in the UI), a plain logger elsewhere."""
    try:
        from prefect.exceptions import MissingContextError
        from prefect.logging import get_run_logger

        return get_run_logger()
    except (MissingContextError, RuntimeError, ImportError):
        logger = logging.getLogger("asr_optimize")
        if not logger.handlers:
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
            logger.addHandler(handler)
            logger.setLevel(logging.INFO)
        return logger


def retry_on_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect retry condition: retry network blips and endpoints that are briefly down, nothing else."""
    try:
        state.result()
    except TransientError:
        return True
    except Exception:
        return False
    return False


def module_source_hash(func: Callable[..., Any]) -> str:
    """Hash of the source of the module defining ``func``: editing a stage invalidates its cache."""
    module = sys.modules[func.__module__]
    return hashlib.sha256(inspect.getsource(module).encode()).hexdigest()[:16]


def run_cached_stage(
    store: ArtifactStore,
    model: ResolvedModel,
    stage: str,
    params: dict[str, Any],
    inputs: dict[str, str],
    build: Callable[[Path], dict[str, Any]],
    use_cache: bool = True,
) -> StageResult:
    """Return the stored artifact for these inputs, or build it in a scratch folder and publish it.

    ``build(out_dir)`` writes the artifact's files and returns its metrics. The manifest is written last.
    """
    log = get_logger()
    key = stable_hash(
        {"stage": stage, "params": params, "inputs": inputs, "revision": model.revision,
         "code": module_source_hash(build)}
    )
    ref = ArtifactRef(model_slug=model.slug, revision=model.revision, stage=stage, key=key)
    if use_cache and (found := store.get(ref)) is not None:
        log.info("%s: reusing cached artifact %s (%s)", stage, ref.path, found.location)
        return StageResult(stage=stage, status="cached", artifact_dir=found.local_dir, location=found.location,
                           key=key, metrics=found.manifest.metrics)
    start = time.perf_counter()
    with store.staging() as scratch:
        metrics = build(scratch)
        seconds = round(time.perf_counter() - start, 3)
        manifest = Manifest(
            ref=ref, source_model=model.source, source_revision=model.revision, params=params, inputs=inputs,
            metrics=metrics, timings={"build_seconds": seconds}, environment=runtime_environment(),
        )
        stored = store.put(scratch, manifest)
    log.info("%s: built in %.1f s, stored at %s", stage, seconds, stored.location)
    return StageResult(stage=stage, status="ok", artifact_dir=stored.local_dir, location=stored.location, key=key,
                       metrics=metrics, seconds=seconds)


def skipped(stage: str, reason: str) -> StageResult:
    """A stage that could not run here, with the reason logged (shown in logs, report and UI)."""
    get_logger().warning("%s: skipped: %s", stage, reason)
    return StageResult(stage=stage, status="skipped", reason=reason)
