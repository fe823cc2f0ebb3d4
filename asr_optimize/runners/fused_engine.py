"""Runner for the project's fused wav2vec2 CTC engine (``asr_optimize.engine``): fp32 on CPU, fp16 / fp8 on CUDA.

Why CUDA graphs per length bucket: at 1 x 1 s the engine's ~150 kernels are launch-bound (eager PyTorch spends
most of its wall time launching); one graph replay per call removes that. Inputs are padded up to the smallest
bucket ``(batch, samples)`` that fits (or get a graph of their own exact shape when no buckets are configured),
with the attention mask marking the padding, so a padded run gives the same valid logits as an unpadded one.
Graphs of one runner share a memory pool: the returned logits are a view of the graph's output and stay valid
until the next call of the same runner.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from asr_optimize.engine.fused import (
    FusedEngineOptions,
    FusedModel,
    build_fused_engine,
    load_engine,
    output_frames,
)
from asr_optimize.model.io_spec import SAMPLE_RATE
from asr_optimize.runners.base import Runner, RunnerUnavailable, TorchOutputs

__all__ = ["FusedEngineOptions", "FusedRunner", "build_fused_engine", "fp8_support"]

FP8_MIN_ROWS = 0
"""``fp8_min_rows``: below this many frames per call (batch x frames) the fp8 engine runs its GEMMs in fp16 (at
1 x 1 s on the H100 the e4m3 GEMMs were slower: 1.48 vs 1.17 ms per call). Off by default: with it, a batch and
its utterances run alone can take different precisions, and their transcripts need no longer be identical."""
FP8_NEEDS = "needs CUDA compute capability >= 8.9 (Ada / Hopper) and a PyTorch with torch._scaled_mm"


def fp8_support(device: str = "cuda") -> tuple[bool, str]:
    """Whether e4m3 ``torch._scaled_mm`` can run here, and why not."""
    import torch

    if not str(device).startswith("cuda"):
        return False, f"{FP8_NEEDS}; device is {device!r}"
    if not torch.cuda.is_available():
        return False, f"{FP8_NEEDS}; CUDA is not available to PyTorch here"
    cap = torch.cuda.get_device_capability()
    if cap < (8, 9):
        return False, f"{FP8_NEEDS}; this GPU is compute capability {cap[0]}.{cap[1]}"
    if not hasattr(torch, "_scaled_mm") or not hasattr(torch, "float8_e4m3fn"):
        return False, f"{FP8_NEEDS}; torch {torch.__version__} lacks it"
    return True, "ok"


def detect_fp8_mode(device: str = "cuda") -> tuple[str, Any]:
    """The ``torch._scaled_mm`` flavour that works here: per-channel (rowwise) fp16, rowwise bf16, or per-tensor."""
    import torch

    a = torch.randn(32, 64, device=device).to(torch.float8_e4m3fn)
    w = torch.randn(48, 64, device=device).to(torch.float8_e4m3fn)
    errors = []
    for mode, dtype in (("rowwise", torch.float16), ("rowwise", torch.bfloat16), ("tensorwise", torch.float16)):
        bias = torch.zeros(48, device=device, dtype=dtype)
        if mode == "rowwise":
            sa, sb = torch.ones(32, 1, device=device), torch.ones(1, 48, device=device)
        else:
            sa, sb = torch.ones((), device=device), torch.ones((), device=device)
        try:
            torch._scaled_mm(a, w.t(), scale_a=sa, scale_b=sb, bias=bias, out_dtype=dtype)
            torch.cuda.synchronize()
            return mode, dtype
        except (RuntimeError, NotImplementedError) as exc:
            errors.append(f"{mode}/{dtype}: {str(exc).splitlines()[0]}")
    raise RunnerUnavailable(f"torch._scaled_mm does not run here: {'; '.join(errors)}")


@dataclass
class _Graph:
    graph: Any
    x: Any
    mask: Any
    out: Any


@dataclass
class _Prepared:
    x: Any
    mask: Any
    batch: int
    frames: int
    entry: _Graph | None


class FusedRunner(TorchOutputs, Runner):
    """The fused engine behind the common runner interface.

    Options: ``cuda_graphs`` (CUDA only), ``buckets`` [(batch, samples)] (default: the engine's), ``use_triton``
    (False: PyTorch ops for the fused kernels), ``gelu_epilogue`` (cuBLASLt bias+GELU on the FFN up GEMM, tanh
    GELU; CUDA only), ``fast_gelu`` (the same tanh-form GELU inside the Triton kernels: feature encoder, fp8
    quantize), ``sdpa_backend`` (flash | cudnn | efficient | math), ``fp8_min_rows``, ``group_norm_stats``,
    ``bucket_seconds`` (graph mode without configured buckets: pad to whole seconds, batch to a power of two),
    ``max_graphs`` (past it, new shapes run eagerly), ``residual_epilogue`` (pre-LN: the out / FFN-down GEMMs add
    into the residual stream).
    """

    backend = "fused"

    def __init__(self, engine_dir: Path, device: str = "cuda", precision: str = "fp16", cuda_graphs: bool = True,
                 buckets: list[tuple[int, int]] | None = None, use_triton: bool = True,
                 gelu_epilogue: bool = True, group_norm_stats: str | None = None, sdpa_backend: str | None = None,
                 fp8_min_rows: int = FP8_MIN_ROWS, fast_gelu: bool = True, bucket_seconds: float = 1.0,
                 max_graphs: int = 64, residual_epilogue: bool = True, **kw: Any) -> None:
        import torch

        if kw:
            raise TypeError(f"FusedRunner: unknown options {sorted(kw)}")
        self.torch = torch
        device = "cuda" if str(device).startswith("cuda") else str(device)
        if precision not in ("fp32", "fp16", "fp8", "fp8-mixed"):
            raise RunnerUnavailable(f"fused engine precision {precision!r}: expected fp32, fp16, fp8 or fp8-mixed")
        if precision.startswith("fp8"):
            ok, why = fp8_support(device)
            if not ok:
                raise RunnerUnavailable(why)
        if device == "cuda" and not torch.cuda.is_available():
            raise RunnerUnavailable("CUDA is not available to PyTorch on this machine")
        if precision == "fp16" and device != "cuda":
            raise RunnerUnavailable("the fused fp16 engine runs only on CUDA (use precision fp32 on CPU)")
        meta, weights, fp8_tensors = load_engine(Path(engine_dir))
        fp8 = None
        dtype = torch.float32 if precision == "fp32" else torch.float16
        self.fp8_mode = None
        if precision.startswith("fp8"):
            if fp8_tensors is None:
                raise RunnerUnavailable(f"{engine_dir} was built without fp8 scales (build it with precision fp8)")
            if precision == "fp8-mixed" and not meta["fp8"].get("mixed_plan"):
                raise RunnerUnavailable(f"{engine_dir} has no fp8-mixed plan (build it with precision fp8-mixed)")
            mode, out_dtype = detect_fp8_mode(device)
            self.fp8_mode = f"{mode}/{str(out_dtype).removeprefix('torch.')}"
            dtype = out_dtype
            fp8 = {"mode": mode, "act_scales": meta["fp8"]["activation_scales"], "weights": fp8_tensors,
                   "fp16_gemms": meta["fp8"].get("fp16_gemms", []) if precision == "fp8-mixed" else []}
        self.meta = meta
        self.arch = meta["architecture"]
        self.device = device
        self.precision = precision
        self.dtype = dtype
        self.model = FusedModel(self.arch, weights, device, dtype, fp8=fp8, use_triton=use_triton,
                                gelu_epilogue=gelu_epilogue, sdpa_backend=sdpa_backend, fp8_min_rows=fp8_min_rows,
                                fast_gelu=fast_gelu, residual_epilogue=residual_epilogue,
                                group_norm_stats=group_norm_stats or meta.get("group_norm_stats", "valid"))
        del weights
        self.cuda_graphs = cuda_graphs and device == "cuda"
        self.buckets = sorted(tuple(b) for b in (buckets if buckets is not None else meta.get("buckets", [])))
        self.bucket_samples = max(0, int(bucket_seconds * SAMPLE_RATE))
        self.max_graphs = max_graphs
        self._graphs: dict[tuple[int, int, bool], _Graph] = {}
        self._pool = torch.cuda.graph_pool_handle() if self.cuda_graphs else None
        self._staging: Any = None  # pinned host buffer for input copies (CUDA)

    # -- shapes ------------------------------------------------------------------------------------------------
    def _bucket(self, batch: int, samples: int) -> tuple[int, int]:
        """The configured bucket that fits; else (graphs only) batch up to a power of two, samples up to a whole
        ``bucket_seconds``, so a stream of varied lengths reuses a few graphs instead of capturing one per shape."""
        for b, s in self.buckets:
            if b >= batch and s >= samples:
                return b, s
        if self.cuda_graphs and self.bucket_samples:
            step = self.bucket_samples
            return 1 << (batch - 1).bit_length(), -(-samples // step) * step
        return batch, samples

    def prepare(self, input_values: np.ndarray, attention_mask: np.ndarray | None) -> _Prepared:
        values = np.ascontiguousarray(input_values, dtype=np.float32)
        # the engine reads only each row's length (``mask.sum(1)``): send that, not the mask
        lengths = None if attention_mask is None else np.asarray(attention_mask).sum(axis=1, dtype=np.int64)
        return self.prepare_blocks([values], lengths)

    def prepare_blocks(self, blocks: list[Any], lengths: np.ndarray | None = None,
                       width: int | None = None) -> _Prepared:
        """Prepare the rows of several blocks as one batch, with each row's valid length (None: all full). A block
        is a float32 host array or a torch tensor (a CUDA one stays on the device). Without ``width`` every block is
        equally wide; with it, narrower blocks (the ``asr`` model's utterances, one row each) are zero-padded to
        ``width`` and ``lengths`` says where each row's audio ends.

        Why blocks: the Triton models get one block per request or utterance; stacking them here writes each row
        once, straight into the padded pinned staging buffer (or the device tensor), instead of concatenating,
        padding and staging in three host copies."""
        batch = sum(int(b.shape[0]) for b in blocks)
        samples = int(blocks[0].shape[1]) if width is None else int(width)
        widths = {int(b.shape[1]) for b in blocks}
        if width is None and len(widths) > 1:
            raise ValueError(f"blocks of different widths: {sorted(widths)}")
        if max(widths) > samples:
            raise ValueError(f"a block of {max(widths)} samples does not fit width {samples}")
        if widths != {samples} and lengths is None:
            raise ValueError("blocks narrower than the width need their rows' lengths")
        frames = output_frames(self.arch, samples)
        if frames < 1:
            raise ValueError(f"{samples} samples is shorter than one frame of this model")
        if lengths is not None and (np.asarray(lengths) == samples).all():
            lengths = None
        gb, gs = self._bucket(batch, samples)  # buckets apply without graphs too (same padding rule)
        # a mask only when some row is shorter than the bucket: filler rows (batch padding) are full-length silence.
        # Why it matters: a masked batch cannot use flash attention; on the H100 a 32 x 10 s batch of full rows took
        # 45 ms masked vs ~26 ms unmasked in Triton
        use_mask = lengths is not None or gs != samples
        if use_mask:
            rows = np.full(gb, gs, dtype=np.int64)  # filler rows: full length, never an all-masked softmax
            rows[:batch] = samples if lengths is None else lengths
            lengths = rows
        x = self._stack(blocks, gb, gs)
        m = self._mask_on_device(lengths, gs) if use_mask else None
        graphable = self.cuda_graphs and ((gb, gs, use_mask) in self._graphs or len(self._graphs) < self.max_graphs)
        entry = self._graph_for(gb, gs, use_mask, x, m) if graphable else None
        return _Prepared(x=x, mask=m, batch=batch, frames=frames, entry=entry)

    def _stack(self, blocks: list[Any], batch: int, samples: int) -> Any:
        """The blocks' rows, zero-padded to ``(batch, samples)``, on the device in the engine's dtype.

        Host rows go through one reused pinned buffer (grown, never shrunk). Why: on the H100 host a pageable copy
        of a 32 x 20 s batch (41 MB) took 14 ms per call, the whole GPU time of long-form windows being ~56 ms; from
        pinned memory the DMA runs at full speed. The copy is synchronous, so the buffer is free again when this
        returns. Rows already on the GPU (Triton's GPU input tensors, via DLPack) are copied device to device."""
        torch = self.torch
        tensors = [torch.from_numpy(np.ascontiguousarray(b, dtype=np.float32)) if isinstance(b, np.ndarray) else b
                   for b in blocks]
        on_device = self.device == "cuda" and all(t.is_cuda for t in tensors)
        if on_device:
            out = torch.empty((batch, samples), device=self.device, dtype=self.dtype)
        elif self.device == "cuda":
            if self._staging is None or self._staging.numel() < batch * samples:
                self._staging = torch.empty(batch * samples, dtype=torch.float32, pin_memory=True)
            out = self._staging[: batch * samples].view(batch, samples)
        else:
            out = torch.empty((batch, samples), dtype=torch.float32)
        row = 0
        for t in tensors:
            out[row : row + t.shape[0], : t.shape[1]].copy_(t)
            if t.shape[1] < samples:
                out[row : row + t.shape[0], t.shape[1] :].zero_()
            row += t.shape[0]
        if row < batch:
            out[row:].zero_()
        if on_device:
            return out
        return out.to(self.device, dtype=self.dtype) if self.device == "cuda" else out.to(dtype=self.dtype)

    def _mask_on_device(self, lengths: np.ndarray, samples: int) -> Any:
        """The int64 ``[batch, samples]`` mask made on the device from row lengths (a few bytes cross the bus)."""
        torch = self.torch
        lens = torch.from_numpy(lengths).to(self.device)
        return (torch.arange(samples, device=self.device)[None, :] < lens[:, None]).to(torch.int64)

    def _graph_for(self, batch: int, samples: int, use_mask: bool, x: Any, mask: Any) -> _Graph:
        key = (batch, samples, use_mask)
        entry = self._graphs.get(key)
        if entry is not None:
            return entry
        torch = self.torch
        sx, sm = x.clone(), (mask.clone() if mask is not None else None)
        with torch.inference_mode():
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):  # Triton JIT, cuBLAS heuristics and lazily made tensors happen outside capture
                    self.model.forward(sx, sm)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool):
                out = self.model.forward(sx, sm)
        entry = self._graphs[key] = _Graph(graph=graph, x=sx, mask=sm, out=out)
        return entry

    def run_prepared(self, prepared: _Prepared) -> Any:
        torch = self.torch
        entry = prepared.entry
        if entry is not None:
            entry.x.copy_(prepared.x)
            if entry.mask is not None:
                entry.mask.copy_(prepared.mask)
            entry.graph.replay()
            out = entry.out
        else:
            with torch.inference_mode():
                out = self.model.forward(prepared.x, prepared.mask)
        if self.device == "cuda":
            torch.cuda.synchronize()
        return out[: prepared.batch, : prepared.frames]  # drop filler rows and the bucket's extra frames

    def close(self) -> None:
        self._graphs.clear()
        self._staging = None
        self.model = None
        if self.device == "cuda":
            self.torch.cuda.empty_cache()
