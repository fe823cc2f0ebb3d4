"""PyTorch runners: the eager fp32 baseline every speed-up is measured against, and fp16 on CUDA."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from asr_optimize.model_source import load_model
from asr_optimize.runners.base import Runner, RunnerUnavailable


class TorchRunner(Runner):
    """Hugging Face ``Wav2Vec2ForCTC`` in eager mode (optionally fp16 on CUDA)."""

    backend = "pytorch"

    def __init__(self, model_dir: Path, device: str = "cpu", precision: str = "fp32", threads: int | None = None):
        import torch

        if device.startswith("cuda") and not torch.cuda.is_available():
            raise RunnerUnavailable("CUDA is not available to PyTorch on this machine")
        if precision == "fp16" and not device.startswith("cuda"):
            raise RunnerUnavailable("fp16 PyTorch runs only on CUDA (CPU fp16 kernels are slow or missing)")
        if threads:
            torch.set_num_threads(threads)
        self.torch = torch
        self.device = "cuda" if device.startswith("cuda") else "cpu"
        self.precision = precision
        self.dtype = torch.float16 if precision == "fp16" else torch.float32
        self.model = load_model(model_dir).to(device=device, dtype=self.dtype)

    def prepare(self, input_values: np.ndarray, attention_mask: np.ndarray | None) -> Any:
        torch = self.torch
        values = torch.from_numpy(np.ascontiguousarray(input_values)).to(self.device, dtype=self.dtype)
        mask = None if attention_mask is None else torch.from_numpy(attention_mask).to(self.device)
        return values, mask

    def run_prepared(self, prepared: Any) -> Any:
        values, mask = prepared
        with self.torch.inference_mode():
            logits = self.model(values, attention_mask=mask).logits
        if self.device == "cuda":
            self.torch.cuda.synchronize()
        return logits

    def to_numpy(self, output: Any) -> np.ndarray:
        return output.float().cpu().numpy()

    def reset_peak_memory(self) -> None:
        if self.device == "cuda":
            self.torch.cuda.reset_peak_memory_stats()

    def peak_memory_mb(self) -> float | None:
        if self.device == "cuda":
            return self.torch.cuda.max_memory_allocated() / 2**20
        return None

    def close(self) -> None:
        del self.model
        if self.device == "cuda":
            self.torch.cuda.empty_cache()
