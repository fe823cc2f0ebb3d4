"""GPU memory as the driver reports it (pynvml when importable, else ``nvidia-smi``): None on a machine without GPUs.

Why: a hot-swap loads version N+1 beside N, so for a moment both live on the GPU; Triton users report memory
growth across reloads (triton-inference-server issues #4528, #4966, #7727). The swap checks free memory first and
the soak records it after every swap.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from pydantic import BaseModel


class GpuMemory(BaseModel):
    index: int
    name: str = ""
    total_mb: float
    used_mb: float
    free_mb: float


def _from_nvml() -> list[GpuMemory] | None:
    try:
        import pynvml  # type: ignore[import-not-found]
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:
        return None
    try:
        out = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            info = pynvml.nvmlDeviceGetMemoryInfo(handle)
            name = pynvml.nvmlDeviceGetName(handle)
            out.append(GpuMemory(index=i, name=name.decode() if isinstance(name, bytes) else str(name),
                                 total_mb=info.total / 2**20, used_mb=info.used / 2**20, free_mb=info.free / 2**20))
        return out
    finally:
        pynvml.nvmlShutdown()


def _from_smi() -> list[GpuMemory] | None:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        text = subprocess.run(
            [smi, "--query-gpu=index,name,memory.total,memory.used,memory.free", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    out = []
    for line in text.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 5:
            out.append(GpuMemory(index=int(parts[0]), name=parts[1], total_mb=float(parts[2]),
                                 used_mb=float(parts[3]), free_mb=float(parts[4])))
    return out or None


def artifact_bytes(artifact: Path) -> int:
    """Bytes of a model file, or of every file under a folder (a fused engine: weights, fp8 weights, configs)."""
    artifact = Path(artifact)
    if artifact.is_dir():
        return sum(p.stat().st_size for p in artifact.rglob("*") if p.is_file())
    return artifact.stat().st_size


def gpu_memory() -> list[GpuMemory] | None:
    """Per-GPU memory, or None when no NVIDIA GPU (or no way to ask) is present."""
    return _from_nvml() or _from_smi()
