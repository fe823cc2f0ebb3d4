"""Detect what this machine can really run. Nothing here is ever faked: absent means skipped, with why."""

from __future__ import annotations

import importlib
import importlib.util
import shutil
from pathlib import Path

from pydantic import BaseModel


class Capabilities(BaseModel):
    """What the current worker offers, recorded in every run's report."""

    cuda: bool
    gpu_name: str | None = None
    compute_capability: str | None = None
    torch_version: str
    onnxruntime_version: str
    ort_providers: list[str]
    tensorrt_version: str | None = None
    tensorrt_reason: str | None = None
    tritonserver: str | None = None

    def why_no_tensorrt(self) -> str | None:
        """None when TensorRT engines can be built here, else the reason."""
        if self.tensorrt_version is None:
            return self.tensorrt_reason or "tensorrt not importable"
        if not self.cuda:
            return "no CUDA GPU visible"
        return None


def find_tritonserver() -> str | None:
    """The tritonserver binary: on PATH, or inside the nvidia-pytriton wheel."""
    on_path = shutil.which("tritonserver")
    if on_path:
        return on_path
    spec = importlib.util.find_spec("pytriton")
    if spec and spec.submodule_search_locations:
        candidate = Path(next(iter(spec.submodule_search_locations))) / "tritonserver" / "bin" / "tritonserver"
        if candidate.is_file():
            return str(candidate)
    return None


ORT_PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
"""ONNX Runtime execution providers by the short names runners and options use."""


def available_providers() -> list[str]:
    """Short names of the execution providers this onnxruntime build offers."""
    import onnxruntime as ort

    names = set(ort.get_available_providers())
    return [short for short, full in ORT_PROVIDERS.items() if full in names]


def detect() -> Capabilities:
    """Probe torch, onnxruntime, tensorrt and tritonserver without side effects."""
    import onnxruntime as ort
    import torch

    cuda = torch.cuda.is_available()
    gpu_name = cc = None
    if cuda:
        gpu_name = torch.cuda.get_device_name(0)
        major, minor = torch.cuda.get_device_capability(0)
        cc = f"{major}.{minor}"
    trt_version = trt_reason = None
    try:
        trt = importlib.import_module("tensorrt")
        trt_version = getattr(trt, "__version__", "unknown")
    except Exception as exc:  # ImportError, or a stub package that fails on import
        trt_reason = f"tensorrt not importable ({type(exc).__name__}: {str(exc)[:120]})"
    return Capabilities(
        cuda=cuda,
        gpu_name=gpu_name,
        compute_capability=cc,
        torch_version=torch.__version__,
        onnxruntime_version=ort.__version__,
        ort_providers=available_providers(),
        tensorrt_version=trt_version,
        tensorrt_reason=trt_reason,
        tritonserver=find_tritonserver(),
    )
