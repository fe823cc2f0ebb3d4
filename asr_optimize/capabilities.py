"""Detect what this machine can really run. Nothing here is ever faked: absent means skipped, with why."""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from asr_optimize.fileio import slugify


class GpuIdentity(BaseModel):
    """The GPU type and the software an engine or an autotuning result is bound to. Every GPU-bound artifact has it
    in its store key and manifest, so a worker with another GPU type (or CUDA / torch version) never reuses it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    gpu_name: str
    compute_capability: str
    cuda_version: str | None = None
    torch_version: str

    @property
    def gpu_type(self) -> str:
        """The hardware alone, as one name segment without dots (``nvidia-h100-80gb-hbm3-sm90``): what a
        production pointer is kept per, while versions only decide whether a stored engine is reused."""
        return slugify(f"{self.gpu_name}-sm{self.compute_capability}".replace(".", "")).lower()

    def key(self) -> dict[str, str]:
        """The store-key (and manifest) fields: GPU name, compute capability, CUDA and torch versions."""
        return {"gpu": self.gpu_name, "compute_capability": self.compute_capability,
                "cuda": self.cuda_version or "none", "torch": self.torch_version}


class Capabilities(BaseModel):
    """What the current worker offers, recorded in every run's report."""

    cuda: bool
    gpu_name: str | None = None
    compute_capability: str | None = None
    cuda_version: str | None = None
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

    def gpu_identity(self) -> GpuIdentity | None:
        """What GPU-bound artifacts made here are keyed by; None without a CUDA GPU (nothing GPU-bound is built)."""
        if not self.cuda:
            return None
        return GpuIdentity(gpu_name=self.gpu_name or "unknown", compute_capability=self.compute_capability or "unknown",
                           cuda_version=self.cuda_version, torch_version=self.torch_version)


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


def cuda_device_ids() -> list[str]:
    """The CUDA devices this process may use, as ``CUDA_VISIBLE_DEVICES`` entries (its own list when set)."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    visible = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return visible[:count] if visible else [str(i) for i in range(count)]


def detect_gpu() -> GpuIdentity | None:
    """This machine's GPU identity (CUDA device 0), or None without CUDA; cheaper than ``detect()``."""
    import torch

    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability(0)
    return GpuIdentity(gpu_name=torch.cuda.get_device_name(0), compute_capability=f"{major}.{minor}",
                       cuda_version=torch.version.cuda, torch_version=torch.__version__)


def detect() -> Capabilities:
    """Probe torch, onnxruntime, tensorrt and tritonserver without side effects."""
    import onnxruntime as ort
    import torch

    gpu = detect_gpu()
    trt_version = trt_reason = None
    try:
        trt = importlib.import_module("tensorrt")
        trt_version = getattr(trt, "__version__", "unknown")
    except Exception as exc:  # ImportError, or a stub package that fails on import
        trt_reason = f"tensorrt not importable ({type(exc).__name__}: {str(exc)[:120]})"
    return Capabilities(
        cuda=gpu is not None,
        gpu_name=gpu.gpu_name if gpu else None,
        compute_capability=gpu.compute_capability if gpu else None,
        cuda_version=torch.version.cuda,
        torch_version=torch.__version__,
        onnxruntime_version=ort.__version__,
        ort_providers=available_providers(),
        tensorrt_version=trt_version,
        tensorrt_reason=trt_reason,
        tritonserver=find_tritonserver(),
    )
