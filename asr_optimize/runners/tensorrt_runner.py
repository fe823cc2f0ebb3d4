"""TensorRT engine runner: a serialized plan, device buffers from PyTorch, async execution on one CUDA stream.

Dynamic shapes: the engine has several optimization profiles (bucketed by audio length); each batch runs in the
tightest profile whose [min, max] range contains its shape. Host<->device copies go through pinned memory.

API references (TensorRT 10.x Python API, bindings in NVIDIA/TensorRT ``python/src/infer/pyCore.cpp``):
Runtime.deserialize_cuda_engine, ICudaEngine.num_io_tensors / get_tensor_name / get_tensor_mode / get_tensor_dtype /
num_optimization_profiles / get_tensor_profile_shape(name, profile_index) -> [min, opt, max],
IExecutionContext.set_optimization_profile_async(profile_index, stream_handle) / set_input_shape / get_tensor_shape /
set_tensor_address / execute_async_v3(stream_handle): docs.nvidia.com/deeplearning/tensorrt/api/python_api/infer/Core/
ExecutionContext.html and Engine.html.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from asr_optimize.model.io_spec import WAV2VEC2_CTC as IO
from asr_optimize.runners.base import Runner, RunnerUnavailable

OUTPUT_NAME = IO.output
_NUMPY_TYPES = {"float32": np.float32, "float16": np.float16, "int32": np.int32, "int64": np.int64,
                "int8": np.int8, "uint8": np.uint8, "bool": np.bool_}


def load_tensorrt() -> Any:
    """The tensorrt module, or RunnerUnavailable saying why it cannot be used."""
    try:
        import tensorrt as trt
    except Exception as exc:  # ImportError, or a PyPI stub that fails on import
        raise RunnerUnavailable(f"tensorrt not importable ({type(exc).__name__}: {str(exc)[:160]})") from exc
    return trt


def numpy_dtype(trt: Any, dtype: Any) -> type:
    """numpy type of a TensorRT DataType (trt.nptype lacks int64 in some 10.x releases)."""
    for name, np_type in _NUMPY_TYPES.items():
        if getattr(trt, name, None) == dtype:
            return np_type
    raise RunnerUnavailable(f"engine tensor type {dtype} has no numpy equivalent")


def select_profile(profiles: list[tuple[tuple[int, ...], ...]], shape: tuple[int, ...]) -> int:
    """Index of the tightest profile (smallest max volume) whose [min, max] range contains ``shape``."""
    fits = [i for i, (lo, _, hi) in enumerate(profiles)
            if len(lo) == len(shape) and all(a <= s <= b for a, s, b in zip(lo, shape, hi, strict=True))]
    if not fits:
        ranges = ", ".join(f"{tuple(lo)}..{tuple(hi)}" for lo, _, hi in profiles)
        raise ValueError(f"batch shape {tuple(shape)} is outside every optimization profile of this engine ({ranges})")
    return min(fits, key=lambda i: int(np.prod(profiles[i][2])))


@dataclass
class Prepared:
    """Device inputs and output buffer for one batch shape, and the profile it runs in."""

    shape: tuple[int, int]
    profile: int
    inputs: dict[str, Any]
    output: Any


class TensorRTRunner(Runner):
    """Runs an ``engine.plan`` built by ``tasks.tensorrt_build`` on CUDA device 0."""

    backend = "tensorrt"
    device = "cuda"

    def __init__(self, engine_path: Path | str, precision: str = "fp32") -> None:
        trt = load_tensorrt()
        import torch

        if not torch.cuda.is_available():
            raise RunnerUnavailable("no CUDA GPU visible to PyTorch; TensorRT engines need one")
        path = Path(engine_path)
        if not path.is_file():
            raise RunnerUnavailable(f"engine file {path} does not exist")
        self.trt, self.torch, self.precision = trt, torch, precision
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise RunnerUnavailable(f"TensorRT {trt.__version__} cannot load {path.name}: engines only run on the "
                                    "GPU model and TensorRT version that built them")
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in self.input_names]
        self.output_name = OUTPUT_NAME if OUTPUT_NAME in outputs else outputs[0]
        self.uses_attention_mask = IO.mask_input in self.input_names
        self.dtypes = {n: numpy_dtype(trt, self.engine.get_tensor_dtype(n)) for n in names}
        first = self.input_names[0]
        self.profiles = [tuple(tuple(dims) for dims in self.engine.get_tensor_profile_shape(first, p))
                         for p in range(self.engine.num_optimization_profiles)]
        self.active_profile: int | None = None

    def _torch_dtype(self, name: str) -> Any:
        return self.torch.from_numpy(np.empty(0, dtype=self.dtypes[name])).dtype

    def _bind_shapes(self, prepared: Prepared) -> None:
        """Select the batch's profile (only when it changes) and set the input shapes on the context."""
        if prepared.profile != self.active_profile:
            self.context.set_optimization_profile_async(prepared.profile, self.stream.cuda_stream)
            self.active_profile = prepared.profile
        for name in self.input_names:
            if not self.context.set_input_shape(name, prepared.shape):
                raise ValueError(f"TensorRT rejected shape {prepared.shape} for {name}")

    def prepare(self, input_values: np.ndarray, attention_mask: np.ndarray | None) -> Prepared:
        """Copy the batch to the device (through pinned memory) and allocate the output for its shape."""
        torch = self.torch
        shape = (int(input_values.shape[0]), int(input_values.shape[1]))
        host = {IO.audio_input: input_values}
        if self.uses_attention_mask:
            host[IO.mask_input] = np.ones(shape, dtype=np.int64) if attention_mask is None else attention_mask
        prepared = Prepared(shape=shape, profile=select_profile(self.profiles, shape), inputs={}, output=None)
        with torch.cuda.stream(self.stream):
            for name in self.input_names:
                array = np.ascontiguousarray(host[name], dtype=self.dtypes[name])
                pinned = torch.from_numpy(array).pin_memory()
                prepared.inputs[name] = pinned.to("cuda", non_blocking=True)
            self._bind_shapes(prepared)
            out_shape = tuple(self.context.get_tensor_shape(self.output_name))
            prepared.output = torch.empty(out_shape, dtype=self._torch_dtype(self.output_name), device="cuda")
        self.stream.synchronize()  # the pinned host copies must outlive the async copies
        return prepared

    def run_prepared(self, prepared: Prepared) -> Any:
        self._bind_shapes(prepared)
        for name, tensor in prepared.inputs.items():
            self.context.set_tensor_address(name, tensor.data_ptr())
        self.context.set_tensor_address(self.output_name, prepared.output.data_ptr())
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed (see the TensorRT log)")
        self.stream.synchronize()
        return prepared.output

    def to_numpy(self, output: Any) -> np.ndarray:
        host = self.torch.empty(output.shape, dtype=output.dtype, pin_memory=True)
        with self.torch.cuda.stream(self.stream):
            host.copy_(output, non_blocking=True)
        self.stream.synchronize()
        return host.numpy().astype(np.float32, copy=False)

    def reset_peak_memory(self) -> None:
        self.torch.cuda.reset_peak_memory_stats()

    def peak_memory_mb(self) -> float | None:
        """I/O buffers (PyTorch allocator) plus the engine's own activation memory."""
        activations = getattr(self.engine, "device_memory_size_v2", 0) or 0
        return (self.torch.cuda.max_memory_allocated() + activations) / 2**20

    def close(self) -> None:
        self.stream.synchronize()
        del self.context, self.engine, self.runtime
        self.torch.cuda.empty_cache()
