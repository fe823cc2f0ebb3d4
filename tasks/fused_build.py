"""Stage 4b, the project's own fused engines: fp16, and fp8 (e4m3) transformer GEMMs with calibrated scales.

The engine (``asr_optimize/runners/fused_engine.py``) folds the model's weights ahead of time and runs a fused
forward under CUDA graphs. Each precision is its own store artifact (stage ``fused-<precision>``: the folded
weights, ``engine.json`` and, for fp8, the calibrated scales), cached by model revision, options, calibration
audio, code and the GPU identity (``capabilities.GpuIdentity``: GPU name, compute capability, CUDA and torch
versions, also in the manifest), so a worker with another GPU type never reuses another type's engine. The engines
target CUDA: on a CPU run the stage says "skipped" and why. Whether an engine may ship is decided like every other
backend's: by the benchmark and the accuracy gate.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from asr_optimize.capabilities import GpuIdentity, detect_gpu
from asr_optimize.hashing import hash_waves
from asr_optimize.model.source import ResolvedModel
from asr_optimize.options import Options
from asr_optimize.runners.registry import RunnerSpec
from asr_optimize.store.local import ArtifactStore
from tasks.common import StageResult, get_logger, run_cached_stage, skipped, stage_task

if TYPE_CHECKING:
    from asr_optimize.runners.fused_engine import FusedEngineOptions

STAGE = "fused-engine"


class FusedBuildOptions(Options):
    enabled: bool = True
    precisions: list[Literal["fp16", "fp8", "fp8-mixed"]] = Field(
        default_factory=lambda: ["fp16", "fp8", "fp8-mixed"])
    calibration_utterances: int = Field(32, ge=1)  # fp8 activation scales come from this much real speech
    calibration_manifest: Path | None = None
    """Speech for fp8 scales and the fp8-mixed plan (a manifest, like the evaluation's); None: the bundled
    calibration set. Never the evaluation set: the audio that judges an engine must not have tuned it."""


class FusedEngineRecord(BaseModel):
    """One precision's outcome: its engine folder and store identity, or why it failed."""

    status: str
    dir: str | None = None
    location: str | None = None
    key: str | None = None
    reason: str | None = None


class FusedEngines(BaseModel):
    """The stage's typed output: one record per precision built."""

    engines: dict[str, FusedEngineRecord] = Field(default_factory=dict)


def engine_params(engine_opts: FusedEngineOptions, gpu: GpuIdentity | None) -> dict[str, Any]:
    """Store-key parameters of one engine: its build options (not where the scales were computed: they do not depend
    on it) and the GPU identity it is bound to (none when built without a GPU)."""
    return {**engine_opts.model_dump(exclude={"calibration_device"}), **(gpu.key() if gpu else {})}


def build_fused_engines(store: ArtifactStore, model: ResolvedModel, opts: FusedBuildOptions, device: str,
                        calibration_waves: list[np.ndarray],
                        gpu: GpuIdentity | None = None) -> StageResult[FusedEngines]:
    """Build (or reuse) one engine folder per precision; one precision failing does not cost the others. ``gpu``:
    the run's ``Capabilities.gpu_identity()`` (None: this machine's, probed here)."""
    if not opts.enabled:
        return skipped(STAGE, "disabled (options.fused.enabled = false)")
    if device != "cuda":
        return skipped(STAGE, "the fused engines run on CUDA (fp16 / fp8 tensor cores); this run is on the CPU")
    import torch

    from asr_optimize.runners.fused_engine import FusedEngineOptions, build_fused_engine

    log = get_logger()
    start = time.perf_counter()
    gpu = gpu or detect_gpu()
    waves = calibration_waves[: opts.calibration_utterances]
    calibration_device = "cuda" if torch.cuda.is_available() else "cpu"  # the scales do not depend on it
    engines: dict[str, FusedEngineRecord] = {}
    for precision in opts.precisions:
        engine_opts = FusedEngineOptions(precision=precision, calibration_utterances=opts.calibration_utterances,
                                         calibration_device=calibration_device)
        try:
            result = run_cached_stage(
                store, model, f"fused-{precision}", engine_params(engine_opts, gpu),
                {"model": model.revision,
                 "calibration_audio": hash_waves(waves) if precision.startswith("fp8") else ""},
                lambda out, o=engine_opts: build_fused_engine(model.local_dir, out, o, waves),
            )
            engines[precision] = FusedEngineRecord(status=result.status, dir=str(result.artifact_dir),
                                                   location=result.location, key=result.key)
        except Exception as exc:  # e.g. an architecture the engine does not cover: recorded, the run goes on
            log.error("%s: %s failed: %s: %s", STAGE, precision, type(exc).__name__, exc)
            engines[precision] = FusedEngineRecord(status="failed", reason=f"{type(exc).__name__}: {str(exc)[:500]}")
    failed = {p: e.reason for p, e in engines.items() if e.status == "failed"}
    statuses = {e.status for e in engines.values()}
    status = "failed" if len(failed) == len(engines) else ("cached" if statuses == {"cached"} else "ok")
    return StageResult(stage=STAGE, status=status, seconds=round(time.perf_counter() - start, 3),
                       reason="; ".join(f"{p} failed: {r}" for p, r in failed.items()) or None,
                       metrics={"engines": {p: e.model_dump(exclude_none=True) for p, e in engines.items()},
                                **(gpu.key() if gpu else {})},
                       output=FusedEngines(engines=engines))


def fused_runner_specs(result: StageResult[FusedEngines]) -> list[RunnerSpec]:
    """Runner specs (kind ``fused``, CUDA graphs per length bucket) for every engine the stage produced."""
    engines = result.output.engines if result.output else {}
    return [
        RunnerSpec(kind="fused", variant="engine+graphs", precision=precision, device="cuda", path=record.dir,
                   artifact=f"fused-{precision}:{record.key}")
        for precision, record in engines.items() if record.dir
    ]


fused_task = stage_task(build_fused_engines, name="fused-engines")  # the flow adds `gpu` on CUDA (on_device)
