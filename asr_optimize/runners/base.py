"""The runner interface.

A runner takes a padded batch (numpy, float32 audio + int64 attention mask) and returns float32 logits
``[batch, frames, vocab]`` as numpy. For timing, ``prepare`` puts inputs where the backend wants them
(device memory) once, and ``run_prepared`` runs the model and waits for it: benchmarks time only that.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np


class RunnerUnavailable(Exception):
    """The backend cannot run here (missing package, no GPU, no provider). The message says why."""


class Runner(ABC):
    """Base class of every backend runner."""

    backend: str = "base"  # pytorch | onnxruntime | tensorrt | triton | fused
    precision: str = "fp32"
    device: str = "cpu"
    uses_attention_mask: bool = True
    label: str = ""  # set by ``registry.build_runner``: ``<kind>:<variant>:<precision>@<device>``

    @abstractmethod
    def prepare(self, input_values: np.ndarray, attention_mask: np.ndarray | None) -> Any:
        """Stage inputs for repeated timed runs (e.g. copy to the GPU)."""

    @abstractmethod
    def run_prepared(self, prepared: Any) -> Any:
        """Run once on staged inputs and wait for completion; returns backend-native output."""

    @abstractmethod
    def to_numpy(self, output: Any) -> np.ndarray:
        """Backend-native output -> float32 numpy logits."""

    def infer(self, input_values: np.ndarray, attention_mask: np.ndarray | None = None) -> np.ndarray:
        """Logits for one padded batch (host in, host out)."""
        mask = attention_mask if self.uses_attention_mask else None
        return self.to_numpy(self.run_prepared(self.prepare(input_values, mask)))

    def reset_peak_memory(self) -> None:
        """Start a new peak-memory window (GPU runners)."""

    def peak_memory_mb(self) -> float | None:
        """Peak device memory since the last reset, if the backend can tell."""
        return None

    def close(self) -> None:
        """Release sessions and device memory."""


class TorchOutputs:
    """Output and memory methods shared by the runners whose results are torch tensors (PyTorch, fused engine)."""

    torch: Any
    device: str

    def to_numpy(self, output: Any) -> np.ndarray:
        return output.float().cpu().numpy()

    def reset_peak_memory(self) -> None:
        if self.device == "cuda":
            self.torch.cuda.reset_peak_memory_stats()

    def peak_memory_mb(self) -> float | None:
        if self.device == "cuda":
            return self.torch.cuda.max_memory_allocated() / 2**20
        return None
