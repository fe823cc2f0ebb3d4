"""ONNX Runtime runner for any available execution provider (CPU, CUDA, TensorRT EP).

On CUDA, inputs are bound to device memory once (I/O binding), so timings measure the model, not copies.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from asr_optimize.runners.base import Runner, RunnerUnavailable

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


def available_providers() -> list[str]:
    """Short names of the execution providers this onnxruntime build offers."""
    import onnxruntime as ort

    names = set(ort.get_available_providers())
    return [short for short, full in PROVIDERS.items() if full in names]


class OrtRunner(Runner):
    """An ``onnxruntime.InferenceSession`` over an exported (or optimized) wav2vec2 graph."""

    backend = "onnxruntime"

    def __init__(self, onnx_path: Path, provider: str = "cpu", precision: str = "fp32", threads: int | None = None):
        import onnxruntime as ort

        if provider not in available_providers():
            raise RunnerUnavailable(
                f"onnxruntime {ort.__version__} has no {PROVIDERS.get(provider, provider)} here "
                f"(available: {ort.get_available_providers()})"
            )
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        chain = [PROVIDERS[provider]] + (["CUDAExecutionProvider"] if provider == "tensorrt" else [])
        if provider != "cpu":
            chain.append("CPUExecutionProvider")
        self.session = ort.InferenceSession(str(onnx_path), sess_options=options, providers=chain)
        self.ort = ort
        self.device = provider
        self.precision = precision
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.uses_attention_mask = "attention_mask" in self.input_names
        self.on_gpu = provider in ("cuda", "tensorrt")

    def prepare(self, input_values: np.ndarray, attention_mask: np.ndarray | None) -> Any:
        feeds = {"input_values": np.ascontiguousarray(input_values, dtype=np.float32)}
        if self.uses_attention_mask:
            if attention_mask is None:
                attention_mask = np.ones(input_values.shape, dtype=np.int64)
            feeds["attention_mask"] = np.ascontiguousarray(attention_mask, dtype=np.int64)
        if not self.on_gpu:
            return feeds
        binding = self.session.io_binding()
        for name, array in feeds.items():
            binding.bind_ortvalue_input(name, self.ort.OrtValue.ortvalue_from_numpy(array, "cuda", 0))
        binding.bind_output("logits", "cuda", 0)
        return binding

    def run_prepared(self, prepared: Any) -> Any:
        if not self.on_gpu:
            return self.session.run(["logits"], prepared)[0]
        self.session.run_with_iobinding(prepared)
        prepared.synchronize_outputs()
        return prepared

    def to_numpy(self, output: Any) -> np.ndarray:
        if isinstance(output, np.ndarray):
            return output.astype(np.float32, copy=False)
        return output.copy_outputs_to_cpu()[0].astype(np.float32, copy=False)

    def close(self) -> None:
        del self.session
