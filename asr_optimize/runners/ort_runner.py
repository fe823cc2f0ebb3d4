"""ONNX Runtime runner for any available execution provider (CPU, CUDA, TensorRT EP).

On CUDA, inputs are bound to device memory once (I/O binding), so timings measure the model, not copies.
With ``cuda_graph=True`` each batch shape gets its own session that captures the whole run as one CUDA graph
(ONNX Runtime replays a graph only for the shapes and buffers it was captured with). Those sessions load the graph
with its input shapes fixed: ONNX Runtime then folds the shape arithmetic, which it would otherwise place on the
CPU, and a graph with any CPU node cannot be captured ("cannot use the graph capture feature").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from asr_optimize.capabilities import ORT_PROVIDERS as PROVIDERS
from asr_optimize.capabilities import available_providers
from asr_optimize.model.io_spec import WAV2VEC2_CTC as IO
from asr_optimize.runners.base import Runner, RunnerUnavailable


class OrtRunner(Runner):
    """An ``onnxruntime.InferenceSession`` over an exported (or optimized) wav2vec2 graph."""

    backend = "onnxruntime"

    def __init__(self, onnx_path: Path, provider: str = "cpu", precision: str = "fp32", threads: int | None = None,
                 cuda_graph: bool = False):
        import onnxruntime as ort

        if provider not in available_providers():
            raise RunnerUnavailable(
                f"onnxruntime {ort.__version__} has no {PROVIDERS.get(provider, provider)} here "
                f"(available: {ort.get_available_providers()})"
            )
        if provider in ("cuda", "tensorrt") and hasattr(ort, "preload_dlls"):
            ort.preload_dlls()  # CUDA/cuDNN from the nvidia-* wheels torch uses, when not on the library path
        if cuda_graph and provider != "cuda":
            raise RunnerUnavailable("CUDA graphs need the CUDA execution provider")
        self.ort = ort
        self.onnx_path, self.threads, self.cuda_graph = onnx_path, threads, cuda_graph
        self.session = self._session(provider)
        self.graph_sessions: dict[tuple[int, ...], Any] = {}
        self.device = provider
        self.precision = precision
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.uses_attention_mask = IO.mask_input in self.input_names
        self.on_gpu = provider in ("cuda", "tensorrt")
        if cuda_graph:
            self.backend = "onnxruntime-graph"

    def _session(self, provider: str, cuda_graph: bool = False, fixed_shape: tuple[int, ...] | None = None) -> Any:
        ort = self.ort
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        if self.threads:
            options.intra_op_num_threads = self.threads
        chain: list[Any] = [PROVIDERS[provider]] + (["CUDAExecutionProvider"] if provider == "tensorrt" else [])
        if cuda_graph:
            chain = [("CUDAExecutionProvider", {"enable_cuda_graph": "1"})]
        if provider != "cpu":
            chain.append("CPUExecutionProvider")
        model: Any = str(self.onnx_path)
        if fixed_shape is not None:
            model = self._fixed_shape_model(fixed_shape)
        return ort.InferenceSession(model, sess_options=options, providers=chain)

    def _fixed_shape_model(self, shape: tuple[int, ...]) -> bytes:
        """The graph with every input fixed to ``shape`` (input_values and attention_mask share it)."""
        import onnx
        from onnxruntime.tools.onnx_model_utils import make_input_shape_fixed

        model = onnx.load(str(self.onnx_path))
        for graph_input in model.graph.input:
            make_input_shape_fixed(model.graph, graph_input.name, list(shape))
        return model.SerializeToString()

    def prepare(self, input_values: np.ndarray, attention_mask: np.ndarray | None) -> Any:
        feeds = {IO.audio_input: np.ascontiguousarray(input_values, dtype=np.float32)}
        if self.uses_attention_mask:
            if attention_mask is None:
                attention_mask = np.ones(input_values.shape, dtype=np.int64)
            feeds[IO.mask_input] = np.ascontiguousarray(attention_mask, dtype=np.int64)
        if not self.on_gpu:
            return feeds
        if self.cuda_graph:
            return self._graph_binding(feeds)
        binding = self.session.io_binding()
        for name, array in feeds.items():
            binding.bind_ortvalue_input(name, self.ort.OrtValue.ortvalue_from_numpy(array, "cuda", 0))
        binding.bind_output(IO.output, "cuda", 0)
        return binding

    def _graph_binding(self, feeds: dict[str, np.ndarray]) -> Any:
        """A session + binding with fixed device buffers for this shape; the first run captures the graph."""
        shape = feeds[IO.audio_input].shape
        logits_shape = self.session.run([IO.output], feeds)[0].shape  # output size for this input shape
        session = self.graph_sessions.get(shape) or self._session("cuda", cuda_graph=True, fixed_shape=shape)
        self.graph_sessions[shape] = session
        binding = session.io_binding()
        for name, array in feeds.items():
            binding.bind_ortvalue_input(name, self.ort.OrtValue.ortvalue_from_numpy(array, "cuda", 0))
        output = self.ort.OrtValue.ortvalue_from_shape_and_type(logits_shape, np.float32, "cuda", 0)
        binding.bind_ortvalue_output(IO.output, output)
        return session, binding

    def run_prepared(self, prepared: Any) -> Any:
        if not self.on_gpu:
            return self.session.run([IO.output], prepared)[0]
        session, binding = prepared if isinstance(prepared, tuple) else (self.session, prepared)
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        return binding

    def to_numpy(self, output: Any) -> np.ndarray:
        if isinstance(output, np.ndarray):
            return output.astype(np.float32, copy=False)
        return output.copy_outputs_to_cpu()[0].astype(np.float32, copy=False)

    def close(self) -> None:
        self.graph_sessions.clear()
        del self.session
