"""Fused kernels of the engine: Triton on CUDA, plain PyTorch everywhere else (the CPU fp32 reference path).

Why Triton for these and not for the GEMMs: the big GEMMs already run near peak in cuBLAS(Lt); what the H100
profile shows beyond them is memory traffic between small ops (layout copies around the feature encoder's
LayerNorms, LayerNorm / GELU / residual adds as separate passes, the grouped positional conv in a slow cuDNN
algorithm). Each kernel here does one read and one write of the activations:

- ``conv0_ln_gelu``: the first feature-encoder conv (1 input channel, kernel 10, stride 5) + LayerNorm + GELU,
  reading the audio and writing channels-last features once (the biggest activation of the model);
- ``add_ln``: optional residual add (+ bias), LayerNorm (affine optional), optional GELU, optional fp8 output;
- ``pos_conv``: the grouped positional convolution as an implicit GEMM over its 128 taps (``tl.dot``), with
  bias + GELU + the frame mask + the residual add in the epilogue;
- ``quantize_fp8``: activation -> e4m3 with a calibrated per-tensor scale (optionally after GELU).

Every function has a PyTorch fallback with the same semantics, used on CPU, when Triton is missing, or when
``use_triton=False``; the CPU tests check the fallbacks against Hugging Face, the GPU probe checks the Triton
kernels against the fallbacks.
"""

from __future__ import annotations

import inspect
import os
from typing import Any

import torch
import torch.nn.functional as F

FP8_MAX = 448.0

try:  # Triton ships with CUDA builds of PyTorch; CPU machines usually lack it
    import triton
    import triton.language as tl

    HAVE_TRITON = True
except ImportError:  # pragma: no cover - depends on the machine
    triton = None
    tl = None
    HAVE_TRITON = False


def triton_usable(device: torch.device | str) -> bool:
    """Triton kernels run on CUDA tensors (or under TRITON_INTERPRET=1 for debugging)."""
    if not HAVE_TRITON:
        return False
    return torch.device(device).type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


def _gelu(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x)


def _quant(x: torch.Tensor, inv_scale: float) -> torch.Tensor:
    return (x.float() * inv_scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)


if HAVE_TRITON:
    # Autotuning results kept on disk (Triton >= 3.2) beside the compiled kernels: a new process (each Triton model
    # version is one) then skips the benchmarking, which made up much of a hot swap's ~34 s warm-up.
    _CACHE_TUNING = {"cache_results": True} if "cache_results" in inspect.signature(triton.autotune).parameters else {}

    @triton.jit
    def _gelu_tl(x):
        return 0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476))

    @triton.jit
    def _gelu_fast_tl(x):
        # tanh-form GELU, x * sigmoid(2 * sqrt(2/pi) * (x + 0.044715 x^3)), via exp2: the same approximation as
        # cuBLASLt's GELU epilogue (|error| < 5e-4), a third of erf's instructions where the feature encoder's
        # first conv is ALU-bound
        return x / (1.0 + tl.exp2(-2.3022082 * (x + 0.044715 * x * x * x)))

    @triton.jit
    def _add_ln_kernel(
        X, R, BIAS, W, B, SUM_OUT, OUT, n_rows, n_cols, eps, inv_scale,
        HAS_RES: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_AFFINE: tl.constexpr, STORE_SUM: tl.constexpr,
        GELU: tl.constexpr, FP8_OUT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        FAST_GELU: tl.constexpr = False,
    ):
        pid = tl.program_id(0)
        rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = tl.arange(0, BLOCK_N)
        rmask = rows < n_rows
        cmask = cols < n_cols
        mask = rmask[:, None] & cmask[None, :]
        offs = rows[:, None].to(tl.int64) * n_cols + cols[None, :]
        x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
        if HAS_RES:
            x += tl.load(R + offs, mask=mask, other=0.0).to(tl.float32)
        if HAS_BIAS:
            x += tl.load(BIAS + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
        if STORE_SUM:
            tl.store(SUM_OUT + offs, x.to(SUM_OUT.dtype.element_ty), mask=mask)
        mean = tl.sum(x, axis=1) / n_cols
        d = tl.where(mask, x - mean[:, None], 0.0)
        var = tl.sum(d * d, axis=1) / n_cols
        y = d * tl.rsqrt(var + eps)[:, None]
        if HAS_AFFINE:
            w = tl.load(W + cols, mask=cmask, other=1.0).to(tl.float32)
            b = tl.load(B + cols, mask=cmask, other=0.0).to(tl.float32)
            y = y * w[None, :] + b[None, :]
        if GELU:
            if FAST_GELU:  # noqa: SIM108 - a Triton constexpr branch
                y = _gelu_fast_tl(y)
            else:
                y = _gelu_tl(y)
        if FP8_OUT:
            y = tl.minimum(tl.maximum(y * inv_scale, -448.0), 448.0)
        tl.store(OUT + offs, y.to(OUT.dtype.element_ty), mask=mask)

    @triton.autotune(
        configs=[triton.Config({"BLOCK_M": bm}, num_warps=w) for bm, w in ((16, 4), (32, 4), (32, 8), (64, 8))],
        key=["n_cols", "size_class"], **_CACHE_TUNING,
    )
    @triton.jit
    def _conv0_ln_gelu_kernel(
        X, WT, CB, LW, LB, OUT, n_frames, x_row_stride, n_cols, eps, size_class,
        KSIZE: tl.constexpr, STRIDE: tl.constexpr, HAS_BIAS: tl.constexpr, NORM: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, FAST_GELU: tl.constexpr,
    ):
        pid = tl.program_id(0)
        b = tl.program_id(1)
        frames = pid * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = tl.arange(0, BLOCK_N)
        fmask = frames < n_frames
        cmask = cols < n_cols
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        xbase = X + b.to(tl.int64) * x_row_stride + frames * STRIDE
        for j in tl.static_range(KSIZE):
            xv = tl.load(xbase + j, mask=fmask, other=0.0).to(tl.float32)
            wv = tl.load(WT + j * n_cols + cols, mask=cmask, other=0.0).to(tl.float32)  # [k, C]: coalesced
            acc += xv[:, None] * wv[None, :]
        if HAS_BIAS:
            acc += tl.load(CB + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
        if NORM:
            # one pass over the row for both moments (padded columns are exact zeros)
            mean = tl.sum(acc, axis=1) / n_cols
            var = tl.maximum(tl.sum(acc * acc, axis=1) / n_cols - mean * mean, 0.0)
            y = (acc - mean[:, None]) * tl.rsqrt(var + eps)[:, None]
            w = tl.load(LW + cols, mask=cmask, other=1.0).to(tl.float32)
            bb = tl.load(LB + cols, mask=cmask, other=0.0).to(tl.float32)
            acc = y * w[None, :] + bb[None, :]
            if FAST_GELU:  # noqa: SIM108 - a Triton constexpr branch
                acc = _gelu_fast_tl(acc)
            else:
                acc = _gelu_tl(acc)
        offs = (b.to(tl.int64) * n_frames + frames[:, None]) * n_cols + cols[None, :]
        tl.store(OUT + offs, acc.to(OUT.dtype.element_ty), mask=fmask[:, None] & cmask[None, :])

    @triton.autotune(
        configs=[triton.Config({"BLOCK_T": bt}, num_warps=w, num_stages=st)
                 for bt, w, st in ((64, 4, 3), (128, 4, 3), (128, 8, 3), (64, 4, 4), (128, 8, 4))],
        key=["n_cols", "size_class"], **_CACHE_TUNING,
    )
    @triton.jit
    def _pos_conv_kernel(
        X, WT, BIAS, LENS, OUT, n_frames, n_cols, size_class,
        TAPS: tl.constexpr, CG: tl.constexpr, BLOCK_T: tl.constexpr, ADD_RESIDUAL: tl.constexpr,
    ):
        pid_t = tl.program_id(0)
        g = tl.program_id(1)
        b = tl.program_id(2)
        length = tl.load(LENS + b)
        t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
        c = tl.arange(0, CG)
        xbase = X + b.to(tl.int64) * n_frames * n_cols + g * CG
        acc = tl.zeros((BLOCK_T, CG), dtype=tl.float32)
        for j in range(TAPS):
            src = t + j - TAPS // 2
            ok = (src >= 0) & (src < length)
            a = tl.load(xbase + src[:, None] * n_cols + c[None, :], mask=ok[:, None], other=0.0)
            w = tl.load(WT + ((g * TAPS + j) * CG + c[:, None]) * CG + c[None, :])
            acc = tl.dot(a, w, acc)
        acc += tl.load(BIAS + g * CG + c).to(tl.float32)[None, :]
        y = _gelu_tl(acc)
        tmask = t < n_frames
        if ADD_RESIDUAL:
            keep = t < length
            res = tl.load(xbase + t[:, None] * n_cols + c[None, :], mask=(tmask & keep)[:, None], other=0.0)
            y += res.to(tl.float32)
        offs = b.to(tl.int64) * n_frames * n_cols + t[:, None] * n_cols + g * CG + c[None, :]
        tl.store(OUT + offs, y.to(OUT.dtype.element_ty), mask=tmask[:, None])

    @triton.jit
    def _quant_kernel(X, OUT, n, inv_scale, GELU: tl.constexpr, BLOCK: tl.constexpr, FAST_GELU: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        m = offs < n
        x = tl.load(X + offs, mask=m, other=0.0).to(tl.float32)
        if GELU:
            if FAST_GELU:  # noqa: SIM108 - a Triton constexpr branch
                x = _gelu_fast_tl(x)
            else:
                x = _gelu_tl(x)
        x = tl.minimum(tl.maximum(x * inv_scale, -448.0), 448.0)
        tl.store(OUT + offs, x.to(OUT.dtype.element_ty), mask=m)


def _tuned(kernel: Any, interpret_config: dict[str, int]) -> Any:
    """The autotuned kernel; under TRITON_INTERPRET=1 (CPU debugging, no autotuner) its function with a fixed config."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        return kernel
    fn = kernel.fn

    class _Fixed:
        def __getitem__(self, grid: Any) -> Any:
            return lambda *args, **kw: fn[lambda meta: grid({**meta, **interpret_config})](
                *args, **kw, **interpret_config)

    return _Fixed()


def size_class(rows: int) -> int:
    """Autotuning key: one tuning per power of two of the row count, not per exact length."""
    return max(int(rows), 1).bit_length()


def _block_rows(n_cols: int) -> tuple[int, int]:
    block_n = triton.next_power_of_2(n_cols)
    return max(1, min(16, 4096 // block_n)), block_n


def add_ln(
    x: torch.Tensor, residual: torch.Tensor | None, bias: torch.Tensor | None, weight: torch.Tensor | None,
    ln_bias: torch.Tensor | None, eps: float, *, store_sum: bool = False, gelu: bool = False,
    fp8_inv_scale: float | None = None, use_triton: bool = True, out: torch.Tensor | None = None,
    fast_gelu: bool = False,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """``s = x (+ residual) (+ bias)``; returns ``(s if store_sum, LN(s) [-> GELU] [-> fp8])`` on 2-D rows.

    ``out`` may be ``x`` itself (in place: each row is read whole before it is written).
    """
    n_rows, n_cols = x.shape
    if use_triton and triton_usable(x.device):
        out_dtype = torch.float8_e4m3fn if fp8_inv_scale is not None else x.dtype
        if out is None:
            out = torch.empty((n_rows, n_cols), device=x.device, dtype=out_dtype)
        summed = torch.empty_like(x) if store_sum else out
        block_m, block_n = _block_rows(n_cols)
        _add_ln_kernel[(triton.cdiv(n_rows, block_m),)](
            x, residual if residual is not None else x, bias if bias is not None else x,
            weight if weight is not None else x, ln_bias if ln_bias is not None else x, summed, out,
            n_rows, n_cols, eps, fp8_inv_scale or 1.0,
            HAS_RES=residual is not None, HAS_BIAS=bias is not None, HAS_AFFINE=weight is not None,
            STORE_SUM=store_sum, GELU=gelu, FP8_OUT=fp8_inv_scale is not None,
            BLOCK_M=block_m, BLOCK_N=block_n, FAST_GELU=fast_gelu, num_warps=4 if block_n <= 1024 else 8,
        )
        return (summed if store_sum else None), out
    s = x if residual is None else x + residual
    if bias is not None:
        s = s + bias
    y = F.layer_norm(s, (n_cols,), weight, ln_bias, eps)
    if gelu:
        y = _gelu(y)
    if fp8_inv_scale is not None:
        y = _quant(y, fp8_inv_scale)
    if out is not None:
        out.copy_(y)
        y = out
    return (s if store_sum else None), y


def conv0_ln_gelu(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, ln_w: torch.Tensor, ln_b: torch.Tensor,
    eps: float, kernel: int, stride: int, n_frames: int, use_triton: bool = True, out: torch.Tensor | None = None,
    weight_t: torch.Tensor | None = None, fast_gelu: bool = False,
) -> torch.Tensor:
    """First conv (one input channel) + LayerNorm over channels + GELU, channels-last ``[B, n_frames, C]``.

    ``weight`` is ``[C, kernel]``; frames read samples ``[stride*u, stride*u + kernel)``, which must lie in ``x``.
    """
    batch = x.shape[0]
    n_cols = weight.shape[0]
    if use_triton and triton_usable(x.device):
        if out is None:
            out = torch.empty((batch, n_frames, n_cols), device=x.device, dtype=x.dtype)
        wt = weight_t if weight_t is not None else weight.t().contiguous()
        _tuned(_conv0_ln_gelu_kernel, {"BLOCK_M": 32})[lambda meta: (triton.cdiv(n_frames, meta["BLOCK_M"]), batch)](
            x, wt, bias if bias is not None else weight, ln_w, ln_b, out, n_frames, x.stride(0), n_cols, eps,
            size_class(batch * n_frames), KSIZE=kernel, STRIDE=stride, HAS_BIAS=bias is not None, NORM=True,
            BLOCK_N=triton.next_power_of_2(n_cols), FAST_GELU=fast_gelu,
        )
        return out
    cols = x.as_strided((batch, n_frames, kernel), (x.stride(0), stride, 1))
    h = _gelu(F.layer_norm(F.linear(cols, weight, bias), (n_cols,), ln_w, ln_b, eps))
    if out is not None:
        out.copy_(h)
        return out
    return h


def pos_conv(
    x: torch.Tensor, weight: torch.Tensor, weight_t: torch.Tensor | None, bias: torch.Tensor,
    lengths: torch.Tensor | None, groups: int, add_residual: bool, use_triton: bool = True,
) -> torch.Tensor:
    """``mask(x) (+) GELU(grouped_conv(mask(x)) + bias)`` on channels-last ``[B, T, C]`` (same padding, HF style).

    ``weight`` is the folded conv weight ``[C, C/groups, taps]``; ``weight_t`` its ``[groups, taps, cg, cg]``
    copy for the Triton kernel; ``lengths`` (int32 ``[B]``) are valid frames (None: all).
    """
    batch, frames, channels = x.shape
    taps = weight.shape[-1]
    cg = channels // groups
    if (use_triton and weight_t is not None and triton_usable(x.device) and cg >= 16
            and (cg & (cg - 1)) == 0):
        lens = lengths if lengths is not None else torch.full((batch,), frames, device=x.device, dtype=torch.int32)
        out = torch.empty_like(x)
        _tuned(_pos_conv_kernel, {"BLOCK_T": 64})[lambda meta: (triton.cdiv(frames, meta["BLOCK_T"]), groups, batch)](
            x, weight_t, bias, lens, out, frames, channels, size_class(batch * frames),
            TAPS=taps, CG=cg, ADD_RESIDUAL=add_residual,
        )
        return out
    if lengths is not None:
        keep = torch.arange(frames, device=x.device)[None, :] < lengths[:, None]
        x = torch.where(keep[..., None], x, torch.zeros((), dtype=x.dtype, device=x.device))
    y = F.conv1d(x.transpose(1, 2), weight, bias, padding=taps // 2, groups=groups)
    if taps % 2 == 0:
        y = y[:, :, :-1]
    y = _gelu(y).transpose(1, 2)
    return x + y if add_residual else y.contiguous()


def quantize_fp8(x: torch.Tensor, inv_scale: float, gelu: bool = False, use_triton: bool = True,
                 fast_gelu: bool = False) -> torch.Tensor:
    """Activation -> float8_e4m3fn with a per-tensor scale (``x * inv_scale``, saturating); GELU first if asked."""
    if use_triton and triton_usable(x.device):
        out = torch.empty(x.shape, device=x.device, dtype=torch.float8_e4m3fn)
        n = x.numel()
        _quant_kernel[(triton.cdiv(n, 4096),)](x, out, n, inv_scale, GELU=gelu, BLOCK=4096, FAST_GELU=fast_gelu,
                                                    num_warps=8)
        return out
    return _quant(_gelu(x) if gelu else x, inv_scale)


def pos_conv_weight_t(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """``[C, cg, taps]`` -> ``[groups, taps, cg_in, cg_out]`` contiguous, the layout the Triton kernel reads."""
    channels, cg, taps = weight.shape
    return weight.reshape(groups, channels // groups, cg, taps).permute(0, 3, 2, 1).contiguous()


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)

