"""One function builds a run's artifacts: export, optimize, TensorRT engines, fused engines, through the store's cache.

The ``asr-optimize`` flow and the GPU benchmark suite (``asr-optimize bench``) both call ``build_artifacts``, so what
the suite measures is exactly what the flow would promote. In a flow the stages run as Prefect tasks (one task run
each in the UI, GPU stages tagged ``gpu``); outside one they run as plain functions.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from asr_optimize.capabilities import Capabilities
from asr_optimize.model.source import ResolvedModel
from asr_optimize.options import Options
from asr_optimize.runners.registry import RunnerSpec
from asr_optimize.store.local import ArtifactStore
from tasks.backends import pipeline_runner_specs
from tasks.common import StageResult, on_device
from tasks.export import ExportOptions, export_stage, export_task
from tasks.fused_build import FusedBuildOptions, build_fused_engines, fused_task
from tasks.optimize import OptimizeOptions, optimize_stage, optimize_task
from tasks.tensorrt_build import EngineOptions, build_engines, tensorrt_task


class ArtifactOptions(Options):
    """The options of the stages that build artifacts (a run's ``PipelineOptions`` adds the others)."""

    export: ExportOptions = Field(default_factory=ExportOptions)
    optimize: OptimizeOptions = Field(default_factory=OptimizeOptions)
    tensorrt: EngineOptions = Field(default_factory=EngineOptions)
    fused: FusedBuildOptions = Field(default_factory=FusedBuildOptions)


class BuiltArtifacts(BaseModel):
    """The four artifact stages' results, and the runner specs of every backend they give this machine."""

    export: StageResult
    optimized: StageResult
    engines: StageResult
    fused: StageResult

    def stages(self) -> list[StageResult]:
        return [self.export, self.optimized, self.engines, self.fused]

    def runner_specs(self, model: ResolvedModel, caps: Capabilities, device: str,
                     include_cpu: bool = False) -> list[RunnerSpec]:
        return pipeline_runner_specs(model, self.export, self.optimized, self.engines, caps, device, self.fused,
                                     include_cpu=include_cpu)


def build_artifacts(store: ArtifactStore, model: ResolvedModel, caps: Capabilities, device: str,
                    opts: ArtifactOptions, parity_waves: list[np.ndarray], calibration_waves: list[np.ndarray],
                    as_tasks: bool = False) -> BuiltArtifacts:
    """Export (parity on ``parity_waves``), optimize, build TensorRT engines where TensorRT exists and the fused engines
    on CUDA (fp8 scales from ``calibration_waves``); every stage is reused from the store when it is complete."""
    stage: dict[str, Any] = (
        {"export": export_task, "optimize": optimize_task, "tensorrt": tensorrt_task,
         "fused": on_device(fused_task, device)}
        if as_tasks else
        {"export": export_stage, "optimize": optimize_stage, "tensorrt": build_engines, "fused": build_fused_engines}
    )
    export = stage["export"](store, model, opts.export, parity_waves)
    optimized = stage["optimize"](store, model, export, opts.optimize, parity_waves)
    engines = stage["tensorrt"](store, model, optimized, caps, opts.tensorrt, export)
    fused = stage["fused"](store, model, opts.fused, device, calibration_waves, caps.gpu_identity())
    return BuiltArtifacts(export=export, optimized=optimized, engines=engines, fused=fused)
