"""PyTorch runners: the eager fp32 baseline every speed-up is measured against, fp16, and a fast variant.

The fast variant (``fast=True``, CUDA only) applies ``torch_fast.optimize_for_inference``, lets cuDNN pick
its fastest algorithms, and replays small batches as CUDA graphs (one launch instead of hundreds). Graphs are
used only up to ``GRAPH_MAX_SAMPLES``: on the H100 a captured 16 x 10 s forward ran 2.4x slower than the same
forward uncaptured (69.7 vs 28.7 ms), while 1 x 1 s went from 9.5 to 2.7 ms.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from asr_optimize.model.io_spec import SAMPLE_RATE
from asr_optimize.model.source import load_model
from asr_optimize.runners.base import Runner, RunnerUnavailable, TorchOutputs

GRAPH_MAX_SAMPLES = 10 * SAMPLE_RATE  # batch x samples up to 10 s of audio: launch-bound, where graphs pay off


class TorchRunner(TorchOutputs, Runner):
    """Hugging Face ``Wav2Vec2ForCTC`` in eager mode (optionally fp16 on CUDA)."""

    backend = "pytorch"

    def __init__(self, model_dir: Path, device: str = "cpu", precision: str = "fp32", threads: int | None = None,
                 fast: bool = False, compile: bool = False):
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
        self.fast = fast
        if fast:
            if self.device != "cuda":
                raise RunnerUnavailable("the fast PyTorch variant (CUDA graphs) needs CUDA")
            from asr_optimize.runners.torch_fast import optimize_for_inference

            optimize_for_inference(self.model)
            torch.backends.cudnn.benchmark = True
            self.backend = "pytorch-fast"
            if compile:  # inductor fuses LayerNorm/GELU/residual adds and the feature encoder's layout copies
                self.model = torch.compile(self.model, dynamic=False)
                self.backend = "pytorch-compiled"

    def prepare(self, input_values: np.ndarray, attention_mask: np.ndarray | None) -> Any:
        torch = self.torch
        if attention_mask is not None and attention_mask.all():
            attention_mask = None  # no padding: identical output, and no data-dependent mask work
        values = torch.from_numpy(np.ascontiguousarray(input_values)).to(self.device, dtype=self.dtype)
        mask = None if attention_mask is None else torch.from_numpy(attention_mask).to(self.device)
        if self.fast and values.numel() <= GRAPH_MAX_SAMPLES:
            return self._capture(values, mask)
        return values, mask

    def _capture(self, values: Any, mask: Any) -> Any:
        """Record one forward for this shape as a CUDA graph; fall back to eager if capture is impossible."""
        torch = self.torch
        with torch.inference_mode():
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):  # warm-up: cuDNN autotuning and allocations happen outside the graph
                    self.model(values, attention_mask=mask)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(graph):
                    out = self.model(values, attention_mask=mask).logits
            except RuntimeError:
                return values, mask  # e.g. a host sync inside the forward: run this shape eagerly
        return graph, out

    def run_prepared(self, prepared: Any) -> Any:
        first, second = prepared
        if isinstance(first, self.torch.cuda.CUDAGraph):
            first.replay()
            self.torch.cuda.synchronize()
            return second
        with self.torch.inference_mode():
            logits = self.model(first, attention_mask=second).logits
        if self.device == "cuda":
            self.torch.cuda.synchronize()
        return logits

    def close(self) -> None:
        del self.model
        if self.device == "cuda":
            self.torch.cuda.empty_cache()
