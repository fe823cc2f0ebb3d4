"""Which backends a run can time and score: the pipeline's artifacts as runner specs, the baseline first.

Benchmark, evaluate and promote all take this one list, so a new backend is added here once (plus its factory in
``asr_optimize/runners/registry.py``).
"""

from __future__ import annotations

from asr_optimize.capabilities import Capabilities
from asr_optimize.model.source import ResolvedModel
from asr_optimize.runners.registry import RunnerSpec, baseline_spec
from tasks.common import StageResult
from tasks.export import ONNX_NAME
from tasks.fused_build import fused_runner_specs
from tasks.optimize import FP16_NAME, FP32_NAME
from tasks.tensorrt_build import engine_runner_specs


def pipeline_runner_specs(model: ResolvedModel, export: StageResult, optimized: StageResult, engines: StageResult,
                          caps: Capabilities, device: str, fused: StageResult | None = None,
                          include_cpu: bool = False) -> list[RunnerSpec]:
    """Every backend this machine can run for the pipeline's artifacts, PyTorch eager fp32 (the baseline) first.

    On CUDA, ONNX Runtime's CPU provider is left out unless ``include_cpu``: it is no serving candidate for a GPU
    target, and at 64 x 10 s it takes minutes.
    """
    gpu = device == "cuda"
    specs = [baseline_spec(model.local_dir, device)]
    if gpu:
        specs += [
            RunnerSpec(kind="pytorch", variant="eager", precision="fp16", device="cuda", path=model.local_dir),
            RunnerSpec(kind="pytorch", variant="fast+graphs", precision="fp16", device="cuda", path=model.local_dir,
                       options={"fast": True}),
        ]
    providers = [p for p in caps.ort_providers if p != "tensorrt" and (p != "cpu" or include_cpu)] if gpu else ["cpu"]
    for provider in providers:
        if export.artifact_dir:
            specs.append(RunnerSpec(kind="onnxruntime", variant="exported", device=provider,
                                    path=export.file(ONNX_NAME), artifact=f"export:{export.key}/{ONNX_NAME}"))
        if not optimized.artifact_dir:
            continue
        specs.append(RunnerSpec(kind="onnxruntime", variant="optimized", device=provider,
                                path=optimized.file(FP32_NAME), artifact=f"optimize:{optimized.key}/{FP32_NAME}"))
        if optimized.file(FP16_NAME).is_file():
            fp16_id = f"optimize:{optimized.key}/{FP16_NAME}"
            specs.append(RunnerSpec(kind="onnxruntime", variant="optimized", precision="fp16", device=provider,
                                    path=optimized.file(FP16_NAME), artifact=fp16_id))
            if provider == "cuda":
                specs.append(RunnerSpec(kind="onnxruntime", variant="optimized+graphs", precision="fp16",
                                        device="cuda", path=optimized.file(FP16_NAME), options={"cuda_graph": True},
                                        artifact=fp16_id))
    if gpu and engines.usable:
        specs += engine_runner_specs(engines)
    if gpu and fused is not None and fused.usable:
        specs += fused_runner_specs(fused)
    return specs
