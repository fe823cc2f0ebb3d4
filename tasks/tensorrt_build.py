"""Stage 4, TensorRT engines (fp32, fp16, mixed). Built only where ``tensorrt`` imports and a GPU is present.

Without TensorRT the stage reports "skipped" with the reason; production deployments set
``require_tensorrt`` and fail loudly instead.
"""

from __future__ import annotations

from prefect import task

from asr_optimize.capabilities import Capabilities
from asr_optimize.model_source import ResolvedModel
from asr_optimize.store import ArtifactStore
from tasks.common import StageResult, skipped


@task(name="tensorrt-engines", tags=["gpu"])
def tensorrt_task(store: ArtifactStore, model: ResolvedModel, optimized: StageResult, caps: Capabilities) -> StageResult:
    """Build engines, or skip with the reason this machine cannot."""
    reason = caps.why_no_tensorrt()
    if reason:
        return skipped("tensorrt", reason)
    return skipped("tensorrt", "engine builder not implemented yet")
