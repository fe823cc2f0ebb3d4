"""The runner registry: one name scheme for every backend, and one place that builds a runner from a spec.

A runner is named ``<kind>:<variant>:<precision>@<device>``, e.g. ``pytorch:eager:fp32@cpu`` (the baseline every
ratio is measured against), ``onnxruntime:optimized+graphs:fp16@cuda`` or ``triton:wav2vec2_ctc:fp32@server``.
Benchmarks, WER, parity, promotion and the report all use that label.

Factories import their backend lazily, so listing or describing runners never imports torch, onnxruntime,
TensorRT or tritonclient. A new backend is one ``register`` call.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from asr_optimize.runners.base import Runner, RunnerUnavailable

GPU_BOUND_KINDS = frozenset({"tensorrt", "fused"})
"""Backends whose artifact is an engine built for one GPU type: keyed and promoted per GPU type."""


class RunnerSpec(BaseModel):
    """How to build a runner; built lazily where it is used, so a backend that cannot run here is a row, not a crash."""

    kind: str  # a registered backend: pytorch | onnxruntime | tensorrt | triton | fused
    variant: str = "eager"  # what was done to the model: eager, exported, optimized, optimized+graphs, engine, ...
    precision: str = "fp32"
    device: str = "cpu"
    path: Path  # model folder, ONNX file, engine file or engine folder (triton: unused)
    options: dict[str, Any] = Field(default_factory=dict)  # passed to the runner's constructor
    artifact: str | None = None  # worker-independent identity of a stored artifact: ``<stage>:<key>/<file>``

    @property
    def label(self) -> str:
        return runner_label(self.kind, self.variant, self.precision, self.device)

    @property
    def gpu_bound(self) -> bool:
        """Its artifact only runs on the GPU type it was built for (``GPU_BOUND_KINDS``)."""
        return self.kind in GPU_BOUND_KINDS


def runner_label(kind: str, variant: str, precision: str, device: str) -> str:
    return f"{kind}:{variant}:{precision}@{device}"


def baseline_label(device: str) -> str:
    """The reference every speed-up and every parity check is measured against: Hugging Face eager fp32."""
    return runner_label("pytorch", "eager", "fp32", device)


def baseline_spec(model_dir: Path, device: str) -> RunnerSpec:
    return RunnerSpec(kind="pytorch", variant="eager", precision="fp32", device=device, path=model_dir)


Factory = Callable[[RunnerSpec], Runner]
_FACTORIES: dict[str, Factory] = {}


def register(kind: str) -> Callable[[Factory], Factory]:
    """Decorator: ``@register("mybackend") def build(spec) -> Runner``."""

    def add(factory: Factory) -> Factory:
        _FACTORIES[kind] = factory
        return factory

    return add


def registered_kinds() -> list[str]:
    return sorted(_FACTORIES)


def build_runner(spec: RunnerSpec) -> Runner:
    """Instantiate the runner a spec describes; raises ``RunnerUnavailable`` (with the reason) where it cannot run."""
    factory = _FACTORIES.get(spec.kind)
    if factory is None:
        raise RunnerUnavailable(f"unknown runner kind {spec.kind!r} (registered: {', '.join(registered_kinds())})")
    runner = factory(spec)
    runner.label = spec.label
    return runner


@register("pytorch")
def _pytorch(spec: RunnerSpec) -> Runner:
    from asr_optimize.runners.torch_runner import TorchRunner

    return TorchRunner(spec.path, device=spec.device, precision=spec.precision, **spec.options)


@register("onnxruntime")
def _onnxruntime(spec: RunnerSpec) -> Runner:
    from asr_optimize.runners.ort_runner import OrtRunner

    return OrtRunner(spec.path, provider=spec.device, precision=spec.precision, **spec.options)


@register("tensorrt")
def _tensorrt(spec: RunnerSpec) -> Runner:
    from asr_optimize.runners.tensorrt_runner import TensorRTRunner

    return TensorRTRunner(spec.path, **spec.options)


@register("triton")
def _triton(spec: RunnerSpec) -> Runner:
    """Options: ``url`` (required), ``model_name``, ``version``; the spec's variant is the served model's name."""
    from asr_optimize.runners.triton_runner import TritonRunner

    return TritonRunner(device=spec.device, precision=spec.precision, **spec.options)


@register("fused")
def _fused(spec: RunnerSpec) -> Runner:
    """The project's own fused wav2vec2 engine (fp16, or fp8 transformer GEMMs); ``path`` is the engine folder."""
    from asr_optimize.runners.fused_engine import FusedRunner

    return FusedRunner(spec.path, device=spec.device, precision=spec.precision, **spec.options)
