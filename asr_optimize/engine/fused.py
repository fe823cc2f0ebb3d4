"""The fused wav2vec2 CTC engine: folded weights, an engine folder, and one forward for CPU fp32 and CUDA fp16/fp8.

Why its own forward instead of patching Hugging Face modules: the H100 profile of HF eager fp16 spends about half
its kernel time outside the GEMMs (layout copies around the feature encoder's LayerNorms, NCHW/NHWC conversions,
separate LayerNorm / GELU / residual passes, a slow grouped positional conv, the weight norm recomputed per call).
Here the whole model runs channels-last ``[rows, channels]``:

- feature-encoder convs are GEMMs over *views* of the previous layer's buffer: a conv with stride ``s`` and
  kernel ``k`` is ``ceil(k/s)`` GEMMs whose A matrices are the flat buffer read with row stride ``s*C`` (no
  im2col copy); each utterance's buffer gets a row count that is a multiple of the remaining strides, so
  utterances never read each other's valid rows (the last conv layer may produce one junk frame, dropped);
- LayerNorm + GELU, residual add + LayerNorm (+ fp8 quantization) are single Triton passes;
- the positional conv is an implicit-GEMM Triton kernel with bias, GELU, frame mask and residual add fused;
- Q/K/V are one GEMM with 1/sqrt(d) folded into Q; LayerNorm affines that feed only a Linear are folded into it;
- attention is ``F.scaled_dot_product_attention`` (flash when no padding mask is needed).

Padding rule (identical transcripts batched or alone): padded frames are zeroed before the positional conv and
masked as attention keys, exactly as HF does with an attention mask; a group-norm feature encoder normalizes each
utterance over its own valid frames (``group_norm_stats="valid"``, HF's statistics then match one-at-a-time runs;
``"padded"`` reproduces HF's batched statistics over the padded length instead).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from asr_optimize.engine import kernels as K
from asr_optimize.errors import UnsupportedModelError
from asr_optimize.options import Options

ENGINE_FORMAT = 1
ENGINE_JSON = "engine.json"
WEIGHTS_FILE = "weights.safetensors"
FP8_FILE = "fp8.safetensors"
GEMMS = ("qkv", "out", "up", "down")
COPIED_FILES = ("config.json", "vocab.json", "preprocessor_config.json", "tokenizer_config.json",
                "special_tokens_map.json", "added_tokens.json")


class FusedEngineOptions(Options):
    """How to build (and by default run) a fused engine."""

    precision: Literal["fp16", "fp8", "fp8-mixed"] = "fp16"
    """fp8: every transformer GEMM in e4m3; fp8-mixed: the GEMMs most sensitive to e4m3 stay in fp16 (a plan chosen
    on the calibration audio, ``mixed_*`` below)."""
    buckets: list[tuple[int, int]] = Field(
        default_factory=list,
        description="CUDA-graph buckets (batch, samples); inputs are padded up to the smallest that fits. "
        "Empty: one graph per exact input shape.",
    )
    calibration_utterances: int = 32
    calibration_device: str = "cpu"
    calibration_margin: float = 1.0  # activation scale = amax * margin / 448
    group_norm_stats: Literal["valid", "padded"] = "valid"
    mixed_fp16_fraction: float = Field(0.25, ge=0, le=1)
    """fp8-mixed: the share of transformer GEMMs kept in fp16, those with the largest e4m3 error on the calibration
    audio (measured: docs/fused-engine.md, "fp8-mixed")."""


def _act_ok(name: str, value: Any) -> None:
    if value not in ("gelu",):
        raise UnsupportedModelError(f"fused engine: {name}={value!r} is not supported (only 'gelu')")


def architecture_from_config(config: dict[str, Any]) -> dict[str, Any]:
    """The engine's architecture block, refusing configs the fused forward does not implement."""
    archs = config.get("architectures") or []
    if config.get("model_type") != "wav2vec2" or "Wav2Vec2ForCTC" not in archs:
        raise UnsupportedModelError(
            f"fused engine supports Wav2Vec2ForCTC (model_type wav2vec2), got {archs} / {config.get('model_type')!r}"
        )
    if config.get("add_adapter") or config.get("adapter_attn_dim") is not None:
        raise UnsupportedModelError("fused engine: adapters (add_adapter / adapter_attn_dim) are not supported")
    if config.get("use_weighted_layer_sum"):
        raise UnsupportedModelError("fused engine: use_weighted_layer_sum is not supported")
    _act_ok("hidden_act", config.get("hidden_act", "gelu"))
    _act_ok("feat_extract_activation", config.get("feat_extract_activation", "gelu"))
    norm = config.get("feat_extract_norm", "group")
    if norm not in ("group", "layer"):
        raise UnsupportedModelError(f"fused engine: feat_extract_norm={norm!r}")
    hidden = int(config.get("hidden_size", 768))
    heads = int(config.get("num_attention_heads", 12))
    conv_dim = [int(c) for c in config.get("conv_dim", [512] * 7)]
    return {
        "hidden_size": hidden,
        "num_layers": int(config.get("num_hidden_layers", 12)),
        "num_heads": heads,
        "head_dim": hidden // heads,
        "intermediate_size": int(config.get("intermediate_size", 3072)),
        "vocab_size": int(config["vocab_size"]),
        "conv_dim": conv_dim,
        "conv_kernel": [int(k) for k in config.get("conv_kernel", [10, 3, 3, 3, 3, 2, 2])],
        "conv_stride": [int(s) for s in config.get("conv_stride", [5, 2, 2, 2, 2, 2, 2])],
        "conv_bias": bool(config.get("conv_bias", False)),
        "feat_extract_norm": norm,
        "feat_norm_eps": 1e-5,  # nn.LayerNorm / nn.GroupNorm defaults in the HF feature encoder
        "layer_norm_eps": float(config.get("layer_norm_eps", 1e-5)),
        "do_stable_layer_norm": bool(config.get("do_stable_layer_norm", False)),
        "pos_conv_kernel": int(config.get("num_conv_pos_embeddings", 128)),
        "pos_conv_groups": int(config.get("num_conv_pos_embedding_groups", 16)),
        "activation": "gelu",
    }


def _fold_ln_into_linear(
    ln_w: torch.Tensor, ln_b: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``Linear(LN_affine(n)) == Linear'(n)`` with ``W' = W * g`` and ``b' = b + W @ beta`` (float64 for exactness)."""
    w64, g64, beta64 = w.double(), ln_w.double(), ln_b.double()
    bias = (b.double() if b is not None else torch.zeros(w.shape[0], dtype=torch.float64)) + w64 @ beta64
    return (w64 * g64[None, :]).float(), bias.float()


def fold_weights(model: Any) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Folded fp32 weights of a HF ``Wav2Vec2ForCTC`` and a list of what was folded (for the manifest)."""
    cfg = model.config
    w2v = model.wav2vec2
    stable = bool(cfg.do_stable_layer_norm)
    scale = (cfg.hidden_size // cfg.num_attention_heads) ** -0.5
    out: dict[str, torch.Tensor] = {}
    folded: list[str] = []
    with torch.no_grad():
        for i, layer in enumerate(w2v.feature_extractor.conv_layers):
            out[f"fe.{i}.w"] = layer.conv.weight.detach().float().clone()
            if layer.conv.bias is not None:
                out[f"fe.{i}.b"] = layer.conv.bias.detach().float().clone()
            norm = getattr(layer, "layer_norm", None)
            if norm is not None:
                out[f"fe.{i}.norm_w"] = norm.weight.detach().float().clone()
                out[f"fe.{i}.norm_b"] = norm.bias.detach().float().clone()
        fp = w2v.feature_projection
        out["fp.w"], out["fp.b"] = _fold_ln_into_linear(
            fp.layer_norm.weight, fp.layer_norm.bias, fp.projection.weight, fp.projection.bias
        )
        folded.append("feature_projection.layer_norm affine -> projection")
        enc = w2v.encoder
        out["pos.w"] = enc.pos_conv_embed.conv.weight.detach().float().clone()  # weight norm evaluated once here
        out["pos.b"] = enc.pos_conv_embed.conv.bias.detach().float().clone()
        folded.append("pos_conv weight_norm (g, v) -> plain weight")
        for i, layer in enumerate(enc.layers):
            att = layer.attention
            wq, bq = att.q_proj.weight * scale, att.q_proj.bias * scale
            wqkv = torch.cat([wq, att.k_proj.weight, att.v_proj.weight]).float()
            bqkv = torch.cat([bq, att.k_proj.bias, att.v_proj.bias]).float()
            up_w, up_b = layer.feed_forward.intermediate_dense.weight, layer.feed_forward.intermediate_dense.bias
            if stable:
                wqkv, bqkv = _fold_ln_into_linear(layer.layer_norm.weight, layer.layer_norm.bias, wqkv, bqkv)
                up_w, up_b = _fold_ln_into_linear(layer.final_layer_norm.weight, layer.final_layer_norm.bias,
                                                  up_w, up_b)
            else:
                out[f"layers.{i}.ln1.w"] = layer.layer_norm.weight.detach().float().clone()
                out[f"layers.{i}.ln1.b"] = layer.layer_norm.bias.detach().float().clone()
                out[f"layers.{i}.ln2.w"] = layer.final_layer_norm.weight.detach().float().clone()
                out[f"layers.{i}.ln2.b"] = layer.final_layer_norm.bias.detach().float().clone()
            out[f"layers.{i}.qkv.w"], out[f"layers.{i}.qkv.b"] = wqkv.detach().float(), bqkv.detach().float()
            out[f"layers.{i}.out.w"] = att.out_proj.weight.detach().float().clone()
            out[f"layers.{i}.out.b"] = att.out_proj.bias.detach().float().clone()
            out[f"layers.{i}.up.w"], out[f"layers.{i}.up.b"] = up_w.detach().float(), up_b.detach().float()
            out[f"layers.{i}.down.w"] = layer.feed_forward.output_dense.weight.detach().float().clone()
            out[f"layers.{i}.down.b"] = layer.feed_forward.output_dense.bias.detach().float().clone()
        folded.append("q/k/v -> one QKV GEMM per layer, 1/sqrt(head_dim) folded into Q")
        lm_w, lm_b = model.lm_head.weight, model.lm_head.bias
        if stable:
            lm_w, lm_b = _fold_ln_into_linear(enc.layer_norm.weight, enc.layer_norm.bias, lm_w, lm_b)
            folded.append("pre-LN: layer_norm -> QKV, final_layer_norm -> FFN up, encoder.layer_norm -> lm_head")
        else:
            out["enc.ln.w"] = enc.layer_norm.weight.detach().float().clone()
            out["enc.ln.b"] = enc.layer_norm.bias.detach().float().clone()
        out["lm.w"], out["lm.b"] = lm_w.detach().float().contiguous(), lm_b.detach().float().contiguous()
    return {k: v.contiguous() for k, v in out.items()}, folded


# ----------------------------------------------------------------------------------------------------------------
# geometry


def conv_frames(samples: int, kernels: list[int], strides: list[int]) -> list[int]:
    """Valid frames after each feature-encoder conv for ``samples`` input samples (HF's formula)."""
    out, n = [], samples
    for k, s in zip(kernels, strides, strict=True):
        n = (n - k) // s + 1
        out.append(max(n, 0))
    return out


def layer_rows(samples: int, kernels: list[int], strides: list[int], need_all_first: bool) -> list[int]:
    """Rows per utterance in each layer's buffer so every conv is a GEMM over a strided view of the one before.

    Rows of layer ``l-1`` are exactly ``stride_l`` x rows of layer ``l``; the frames the valid outputs read must lie
    inside their own utterance. ``need_all_first``: the first layer holds all its valid frames (group norm stats).
    """
    frames = conv_frames(samples, kernels, strides)
    if frames[-1] < 1:
        raise ValueError(f"{samples} samples is shorter than one frame of this model")
    needed = [0] * len(kernels)
    needed[-1] = frames[-1]
    for layer in range(len(kernels) - 1, 0, -1):
        needed[layer - 1] = strides[layer] * (needed[layer] - 1) + kernels[layer]
    if need_all_first:
        needed[0] = max(needed[0], frames[0])
    last = frames[-1]
    while True:
        rows = [last]
        for layer in range(len(kernels) - 1, 0, -1):
            rows.insert(0, rows[0] * strides[layer])
        if all(r >= n for r, n in zip(rows, needed, strict=True)):
            return rows
        last += 1


# ----------------------------------------------------------------------------------------------------------------
# the runtime model


class FusedModel:
    """The engine's forward. ``dtype`` float32 (CPU reference) or float16 (CUDA); ``fp8`` for e4m3 GEMMs."""

    def __init__(self, arch: dict[str, Any], weights: dict[str, torch.Tensor], device: str | torch.device,
                 dtype: torch.dtype, fp8: dict[str, Any] | None = None, use_triton: bool = True,
                 gelu_epilogue: bool = False, group_norm_stats: str = "valid", sdpa_backend: str | None = None,
                 fp8_min_rows: int = 0, fast_gelu: bool = False, residual_epilogue: bool = True) -> None:
        self.arch = arch
        self.residual_epilogue = residual_epilogue
        self.device = torch.device(device)
        self.dtype = dtype
        self.use_triton = use_triton and K.triton_usable(self.device)
        self.gelu_epilogue = gelu_epilogue and self.device.type == "cuda"
        self.fast_gelu = fast_gelu and self.use_triton  # tanh-form GELU in the Triton kernels (the fallbacks: erf)
        self.group_norm_stats = group_norm_stats
        self.sdpa_backends = _sdpa_backends(sdpa_backend)
        self.fp8_min_rows = fp8_min_rows  # below this many rows (batch x frames) fp8 GEMMs lose to fp16 ones
        self._fp8_on = False
        self.calib: dict[str, float] | None = None
        self.probe: Fp8Probe | None = None  # simulated e4m3 GEMMs on the fp32 reference (fp8-mixed planning)
        self.kernels, self.strides = arch["conv_kernel"], arch["conv_stride"]
        self._geo: dict[int, tuple[list[int], list[int]]] = {}

        def dev(t: torch.Tensor, dt: torch.dtype | None = None) -> torch.Tensor:
            return t.to(device=self.device, dtype=dt or dtype).contiguous()

        self.w: dict[str, Any] = {}
        for i, (k, s) in enumerate(zip(self.kernels, self.strides, strict=True)):
            w = weights[f"fe.{i}.w"]  # [C_out, C_in, k]
            if i == 0:
                self.w["fe.0.w"] = dev(w[:, 0, :])
                self.w["fe.0.wt"] = dev(w[:, 0, :].t())  # [k, C]: the Triton kernel reads it coalesced
            else:
                wr = w.permute(0, 2, 1)  # [C_out, k, C_in]: a window of k rows of C_in channels, flattened
                self.w[f"fe.{i}.blocks"] = [
                    dev(wr[:, m * s: min(k, (m + 1) * s)].reshape(w.shape[0], -1)) for m in range(K.ceil_div(k, s))
                ]
            for name in ("b", "norm_w", "norm_b"):
                if f"fe.{i}.{name}" in weights:
                    self.w[f"fe.{i}.{name}"] = dev(weights[f"fe.{i}.{name}"])
        for name, tensor in weights.items():
            if not name.startswith("fe."):
                self.w[name] = dev(tensor)
        self.w["pos.wt"] = K.pos_conv_weight_t(self.w["pos.w"], arch["pos_conv_groups"]) if self.use_triton else None
        vocab = arch["vocab_size"]
        pad = (-vocab) % 8 if self.device.type == "cuda" else 0  # aligned rows for the fp16 GEMM output
        if pad:
            self.w["lm.w"] = torch.cat([self.w["lm.w"], self.w["lm.w"].new_zeros(pad, self.w["lm.w"].shape[1])])
            self.w["lm.b"] = torch.cat([self.w["lm.b"], self.w["lm.b"].new_zeros(pad)])
        self.fp8 = None
        self.fp16_gemms: set[str] = set()
        if fp8 is not None:
            self._setup_fp8(fp8)

    # -- fp8 ---------------------------------------------------------------------------------------------------
    def _setup_fp8(self, fp8: dict[str, Any]) -> None:
        """Load e4m3 weights + scales and pick the ``torch._scaled_mm`` mode this GPU/PyTorch supports."""
        mode = fp8["mode"]
        self.fp8 = {"mode": mode, "act": fp8["act_scales"], "w": {}, "ws": {}, "sa": {}, "one": None}
        self.fp16_gemms = set(fp8.get("fp16_gemms") or ())  # fp8-mixed: these keep their fp16 weights and GEMMs
        for i in range(self.arch["num_layers"]):
            for g in GEMMS:
                name = f"layers.{i}.{g}"
                if name in self.fp16_gemms:
                    continue
                w8 = fp8["weights"][f"{name}.w8"].to(self.device)
                ws = fp8["weights"][f"{name}.ws"].to(self.device, torch.float32)
                if mode == "tensorwise":  # one scale per GEMM: requantize to the largest channel scale
                    top = ws.max()
                    w8 = (w8.float() * (ws / top)[:, None]).to(torch.float8_e4m3fn)
                    ws = top.reshape(())
                else:
                    ws = ws.reshape(1, -1).contiguous()
                self.fp8["w"][name] = w8.contiguous()
                self.fp8["ws"][name] = ws
                self.fp8["sa"][name] = torch.tensor(self.fp8["act"][name], device=self.device, dtype=torch.float32)
                if not self.fp8_min_rows:
                    self.w.pop(f"{name}.w", None)  # the fp16 copy is only needed for small batches

    def _fp8_mm(self, x8: torch.Tensor, name: str, bias: torch.Tensor | None) -> torch.Tensor:
        fp8 = self.fp8
        assert fp8 is not None
        sa = fp8["sa"][name]
        if fp8["mode"] == "rowwise":
            key = (name, x8.shape[0])
            sa_rows = fp8["sa"].get(key)
            if sa_rows is None:
                sa_rows = sa.reshape(1, 1).expand(x8.shape[0], 1).contiguous()
                fp8["sa"][key] = sa_rows
            sa = sa_rows
        return torch._scaled_mm(x8, fp8["w"][name].t(), scale_a=sa, scale_b=fp8["ws"][name], bias=bias,
                                out_dtype=self.dtype)

    def _q(self, name: str) -> bool:
        """Whether GEMM ``name`` runs in e4m3 in this forward (fp8 on for this shape, and not kept in fp16)."""
        return self._fp8_on and name not in self.fp16_gemms

    # -- pieces ------------------------------------------------------------------------------------------------
    def geometry(self, samples: int) -> tuple[list[int], list[int]]:
        geo = self._geo.get(samples)
        if geo is None:
            frames = conv_frames(samples, self.kernels, self.strides)
            rows = layer_rows(samples, self.kernels, self.strides, self.arch["feat_extract_norm"] == "group")
            geo = self._geo[samples] = (frames, rows)
        return geo

    def _linear(self, x: torch.Tensor, name: str, gelu: bool = False) -> torch.Tensor:
        w, b = self.w[f"{name}.w"], self.w.get(f"{name}.b")
        if self.calib is not None:
            self.calib[name] = max(self.calib.get(name, 0.0), float(x.abs().max()))
        if self.probe is not None:
            x, w = self.probe.apply(name, x, w)
        if gelu and self.gelu_epilogue and b is not None:
            return torch._addmm_activation(b, x, w.t(), use_gelu=True)
        y = F.linear(x, w, b)
        return F.gelu(y) if gelu else y

    def feature_encoder(self, x: torch.Tensor, lens: torch.Tensor | None) -> torch.Tensor:
        """Audio ``[B, S]`` -> features ``[B * frames, C]`` (channels-last, contiguous)."""
        a = self.arch
        x = x.contiguous()
        batch, samples = x.shape
        frames, rows = self.geometry(samples)
        k0, s0 = self.kernels[0], self.strides[0]
        need = s0 * (rows[0] - 1) + k0
        if need > samples:
            x = F.pad(x, (0, need - samples))
        tails = [max(0, self.kernels[i + 1] - self.strides[i + 1]) for i in range(len(rows) - 1)] + [0]
        c0 = a["conv_dim"][0]
        buf = torch.empty(batch * rows[0] + tails[0], c0, device=x.device, dtype=x.dtype)
        if tails[0]:
            buf[batch * rows[0]:].zero_()
        h = buf[: batch * rows[0]]
        eps = a["feat_norm_eps"]
        if a["feat_extract_norm"] == "layer":
            K.conv0_ln_gelu(x, self.w["fe.0.w"], self.w.get("fe.0.b"), self.w["fe.0.norm_w"], self.w["fe.0.norm_b"],
                            eps, k0, s0, rows[0], use_triton=self.use_triton, out=h.view(batch, rows[0], c0),
                            weight_t=self.w["fe.0.wt"], fast_gelu=self.fast_gelu)
        else:
            cols = x.as_strided((batch, rows[0], k0), (x.stride(0), s0, 1))
            h3 = F.linear(cols, self.w["fe.0.w"], self.w.get("fe.0.b")).float()  # stats in fp32
            if self.group_norm_stats == "valid" and lens is not None:
                n0 = torch.clamp((lens - k0) // s0 + 1, min=1)
            else:
                n0 = torch.full((batch,), frames[0], device=x.device, dtype=torch.long)
            keep = (torch.arange(rows[0], device=x.device)[None, :] < n0[:, None]).unsqueeze(-1)
            count = n0.to(torch.float32)[:, None, None]
            mean = torch.where(keep, h3, 0.0).sum(1, keepdim=True) / count
            var = torch.where(keep, (h3 - mean) ** 2, 0.0).sum(1, keepdim=True) / count
            h3 = (h3 - mean) * torch.rsqrt(var + eps) * self.w["fe.0.norm_w"].float() + self.w["fe.0.norm_b"].float()
            h.copy_(F.gelu(h3).reshape(batch * rows[0], c0))
        for i in range(1, len(rows)):
            s = self.strides[i]
            c_in, c_out = a["conv_dim"][i - 1], a["conv_dim"][i]
            m_rows = batch * rows[i]
            nbuf = torch.empty(m_rows + tails[i], c_out, device=x.device, dtype=x.dtype)
            if tails[i]:
                nbuf[m_rows:].zero_()
            out = nbuf[:m_rows]
            src = buf
            for m, wm in enumerate(self.w[f"fe.{i}.blocks"]):
                view = src.as_strided((m_rows, wm.shape[1]), (s * c_in, 1), src.storage_offset() + m * s * c_in)
                if m == 0:
                    if f"fe.{i}.b" in self.w:
                        torch.addmm(self.w[f"fe.{i}.b"], view, wm.t(), out=out)
                    else:
                        torch.mm(view, wm.t(), out=out)
                else:
                    out.addmm_(view, wm.t())
            if a["feat_extract_norm"] == "layer":
                K.add_ln(out, None, None, self.w[f"fe.{i}.norm_w"], self.w[f"fe.{i}.norm_b"], eps, gelu=True,
                         use_triton=self.use_triton, out=out, fast_gelu=self.fast_gelu)
            else:
                torch.ops.aten.gelu_(out)
            buf = nbuf
        last = rows[-1]
        feats = buf.view(batch, last, -1)
        if last != frames[-1]:  # the junk frame(s) of the strided layout
            feats = feats[:, : frames[-1]].contiguous()
        return feats.reshape(batch * frames[-1], -1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Audio ``[B, S]`` (+ int mask, 1 = real sample) -> logits ``[B, frames, vocab]`` in the compute dtype."""
        a = self.arch
        batch, samples = x.shape
        self._fp8_on = self.fp8 is not None and batch * self.geometry(samples)[0][-1] >= self.fp8_min_rows
        lens = mask.sum(1) if mask is not None else None
        feats = self.feature_encoder(x, lens)
        frames = self.geometry(samples)[0][-1]
        flens = None
        if lens is not None:
            flens = lens
            for k, s in zip(self.kernels, self.strides, strict=True):
                flens = torch.div(flens - k, s, rounding_mode="floor") + 1
            flens = flens.clamp(min=0).to(torch.int32)
        _, normed = K.add_ln(feats, None, None, None, None, a["layer_norm_eps"], use_triton=self.use_triton)
        h = self._linear(normed, "fp")  # [B*T, H]
        hidden = a["hidden_size"]
        stable = a["do_stable_layer_norm"]
        h = K.pos_conv(h.view(batch, frames, hidden), self.w["pos.w"], self.w["pos.wt"], self.w["pos.b"], flens,
                       a["pos_conv_groups"], add_residual=True, use_triton=self.use_triton).reshape(-1, hidden)
        eps = a["layer_norm_eps"]
        if not stable:
            _, h = K.add_ln(h, None, None, self.w["enc.ln.w"], self.w["enc.ln.b"], eps, use_triton=self.use_triton)
        attn_mask = None
        if flens is not None:
            attn_mask = (torch.arange(frames, device=x.device)[None, :] < flens[:, None])[:, None, None, :]
        nl = a["num_layers"]
        y = None
        if stable:
            y = self._ln_for(h, None, 0, "qkv")[1]
        for i in range(nl):
            p = f"layers.{i}"
            qkv_in = y if stable else self._maybe_quant(h, f"{p}.qkv")
            qkv = self._gemm(qkv_in, f"{p}.qkv")
            att = self._attention(qkv, batch, frames, attn_mask)
            if stable and self._residual_in_gemm():
                h = self._into_residual(h, att, f"{p}.out")
                h, y = self._ln_for(h, None, i, "up", store_sum=True, bias=self.w.get(f"{p}.out.b"))
                h = self._into_residual(h, self._gemm(y, f"{p}.up", gelu=True), f"{p}.down")
                if i + 1 < nl:
                    h, y = self._ln_for(h, None, i + 1, "qkv", store_sum=True, bias=self.w.get(f"{p}.down.b"))
                else:
                    _, y = K.add_ln(h, None, self.w.get(f"{p}.down.b"), None, None, eps, use_triton=self.use_triton)
                continue
            o = self._gemm(self._maybe_quant(att, f"{p}.out"), f"{p}.out")
            if stable:
                h, y = self._ln_for(o, h, i, "up", store_sum=True)
                u = self._gemm(y, f"{p}.up", gelu=not self._q(f"{p}.up"))
                f = self._gemm(self._maybe_quant(u, f"{p}.down", gelu=self._q(f"{p}.up")), f"{p}.down")
                if i + 1 < nl:
                    h, y = self._ln_for(f, h, i + 1, "qkv", store_sum=True)
                else:
                    _, y = K.add_ln(f, h, None, None, None, eps, use_triton=self.use_triton)
            else:
                _, h = K.add_ln(o, h, None, self.w[f"{p}.ln1.w"], self.w[f"{p}.ln1.b"], eps,
                                use_triton=self.use_triton)
                u = self._gemm(self._maybe_quant(h, f"{p}.up"), f"{p}.up", gelu=not self._q(f"{p}.up"))
                f = self._gemm(self._maybe_quant(u, f"{p}.down", gelu=self._q(f"{p}.up")), f"{p}.down")
                _, h = K.add_ln(f, h, None, self.w[f"{p}.ln2.w"], self.w[f"{p}.ln2.b"], eps,
                                use_triton=self.use_triton)
        final = y if stable else h
        logits = F.linear(final, self.w["lm.w"], self.w["lm.b"]).view(batch, frames, -1)
        return logits[..., : a["vocab_size"]]

    # -- transformer helpers -------------------------------------------------------------------------------------
    def _ln_for(self, x: torch.Tensor, residual: torch.Tensor | None, layer: int, gemm: str,
                store_sum: bool = False, bias: torch.Tensor | None = None) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Pre-LN: residual add (+ bias) + LayerNorm (affine folded away) feeding ``layers.{layer}.{gemm}``; fp8 out
        if fp8."""
        name = f"layers.{layer}.{gemm}"
        inv = None
        if self._q(name):
            inv = 1.0 / self.fp8["act"][name]
        summed, y = K.add_ln(x, residual, bias, None, None, self.arch["layer_norm_eps"], store_sum=store_sum,
                             fp8_inv_scale=inv, use_triton=self.use_triton)
        if residual is None and bias is None:
            summed = x
        return summed, y

    def _residual_in_gemm(self) -> bool:
        """Pre-LN fp16/fp32: the out and FFN-down GEMMs add into the residual stream (beta = 1) and their bias goes
        to the next add+LayerNorm pass, which then reads one tensor instead of two (~1 ms of 54 at 64 x 10 s on the
        H100). Not with fp8 (``_scaled_mm`` has no C input) nor while calibrating (it records GEMM inputs)."""
        return self.residual_epilogue and not self._fp8_on and self.calib is None and self.probe is None

    def _into_residual(self, residual: torch.Tensor, x: torch.Tensor, name: str) -> torch.Tensor:
        """``residual += x @ W^T`` in place: cuBLAS reads the residual as C in its epilogue."""
        return residual.addmm_(x, self.w[f"{name}.w"].t())

    def _maybe_quant(self, x: torch.Tensor, name: str, gelu: bool = False) -> torch.Tensor:
        """``x`` in e4m3 for GEMM ``name`` (GELU applied on the way when ``gelu``), or as it is for an fp16 GEMM."""
        if not self._q(name):
            return F.gelu(x, approximate="tanh" if self.fast_gelu else "none") if gelu else x
        return K.quantize_fp8(x, 1.0 / self.fp8["act"][name], gelu=gelu, use_triton=self.use_triton,
                              fast_gelu=self.fast_gelu)

    def _gemm(self, x: torch.Tensor, name: str, gelu: bool = False) -> torch.Tensor:
        if self._q(name):
            return self._fp8_mm(x, name, self.w.get(f"{name}.b"))
        return self._linear(x, name, gelu=gelu)

    def _attention(self, qkv: torch.Tensor, batch: int, frames: int, attn_mask: torch.Tensor | None) -> torch.Tensor:
        heads, dim = self.arch["num_heads"], self.arch["head_dim"]
        qkv5 = qkv.view(batch, frames, 3, heads, dim)
        q, k, v = (qkv5[:, :, j].transpose(1, 2) for j in range(3))
        if self.sdpa_backends:
            from torch.nn.attention import sdpa_kernel

            with sdpa_kernel(self.sdpa_backends):
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=1.0)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=1.0)  # 1/sqrt(d) is in Q
        return out.transpose(1, 2).reshape(batch * frames, heads * dim)


def _sdpa_backends(name: str | None) -> list[Any]:
    """``F.scaled_dot_product_attention`` backends to allow (None: PyTorch's own choice)."""
    if not name:
        return []
    from torch.nn.attention import SDPBackend

    table = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
             "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}
    # masked batches need a backend that takes a mask: the memory-efficient kernel is always allowed as well
    return [table[name], SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


# ----------------------------------------------------------------------------------------------------------------
# engine folder


def _normalize(wave: np.ndarray) -> np.ndarray:
    wave = np.asarray(wave, dtype=np.float32)
    return (wave - wave.mean()) / np.sqrt(wave.var() + 1e-7)


def fake_fp8(x: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """``x`` rounded to e4m3 at ``scale`` (per tensor, or per row with a column of scales) and back: what an fp8
    GEMM sees of it."""
    return (x / scale).clamp(-K.FP8_MAX, K.FP8_MAX).to(torch.float8_e4m3fn).to(x.dtype) * scale


class Fp8Probe:
    """Simulated e4m3 GEMMs on the fp32 reference forward, for choosing an fp8-mixed plan without an fp8 GPU.

    ``measure``: every GEMM's output is also computed from e4m3-rounded input and weights, and the relative error
    is recorded (the forward itself stays fp32, so each GEMM's error is its own, not inherited). Otherwise the GEMMs
    in ``quantized`` run on rounded inputs and weights, so the forward's output is what that plan would give.
    """

    def __init__(self, act_scales: dict[str, float], quantized: set[str] | None = None, measure: bool = False):
        self.act_scales = act_scales
        self.quantized = quantized or set()
        self.measure = measure
        self.errors: dict[str, list[float]] = {}  # name -> [sum of squared error, sum of squared reference]
        self._weights: dict[str, torch.Tensor] = {}

    def _weight(self, name: str, w: torch.Tensor) -> torch.Tensor:
        if name not in self._weights:
            w8, ws = quantize_weight(w.float())
            self._weights[name] = (w8.float() * ws[:, None]).to(w.dtype)
        return self._weights[name]

    def apply(self, name: str, x: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if name not in self.act_scales:
            return x, w  # not a transformer GEMM (feature projection, head): fp16 in every plan
        if self.measure:
            reference = F.linear(x, w)
            rounded = F.linear(fake_fp8(x, self.act_scales[name]), self._weight(name, w))
            total = self.errors.setdefault(name, [0.0, 0.0])
            total[0] += float((rounded - reference).float().pow(2).sum())
            total[1] += float(reference.float().pow(2).sum())
            return x, w
        if name in self.quantized:
            return fake_fp8(x, self.act_scales[name]), self._weight(name, w)
        return x, w

    def relative_errors(self) -> dict[str, float]:
        return {name: err / max(ref, 1e-30) for name, (err, ref) in self.errors.items()}


def _frame_tokens(model: FusedModel, audio: list[np.ndarray]) -> list[torch.Tensor]:
    """The argmax token of every frame of every utterance (one at a time, as calibration runs them)."""
    with torch.inference_mode():
        return [model.forward(torch.from_numpy(_normalize(w))[None].to(model.device, model.dtype))[0].argmax(-1)
                for w in audio]


def plan_fp16_gemms(model: FusedModel, audio: list[np.ndarray], act_scales: dict[str, float],
                    fp16_fraction: float) -> dict[str, Any]:
    """Choose which transformer GEMMs an fp8-mixed engine keeps in fp16, on calibration audio only.

    One measuring pass ranks the GEMMs by their own e4m3 output error (relative, on the fp32 forward); the
    ``fp16_fraction`` most sensitive stay in fp16. The simulated frame agreement with the fp32 engine, all-fp8 and
    with the plan, is recorded as evidence (e4m3 rounding simulated on the reference forward).
    """
    names = sorted(act_scales)
    reference = _frame_tokens(model, audio)

    def agreement(quantized: set[str]) -> float:
        model.probe = Fp8Probe(act_scales, quantized=quantized)
        tokens = _frame_tokens(model, audio)
        same = sum(int((a == b).sum()) for a, b in zip(tokens, reference, strict=True))
        return round(same / max(1, sum(t.numel() for t in reference)), 6)

    probe = Fp8Probe(act_scales, measure=True)
    model.probe = probe
    try:
        _frame_tokens(model, audio)
        errors = probe.relative_errors()
        ranked = sorted(names, key=lambda n: errors.get(n, 0.0), reverse=True)
        kept = sorted(ranked[: round(fp16_fraction * len(names))])
        simulated = {"all_fp8": agreement(set(names)), "plan": agreement(set(names) - set(kept))}
    finally:
        model.probe = None
    return {
        "fp16_gemms": kept,
        "rule": f"the {fp16_fraction:.0%} of transformer GEMMs with the largest e4m3 output error on the "
                "calibration audio stay in fp16",
        "simulated_frame_agreement": simulated,
        "relative_errors": {n: float(f"{errors.get(n, 0.0):.3e}") for n in ranked},
    }


def calibrate(model: FusedModel, audio: list[np.ndarray], count: int) -> dict[str, float]:
    """Max |input| of every transformer GEMM over ``count`` utterances, one at a time (fp32)."""
    model.calib = {}
    try:
        with torch.inference_mode():
            for wave in audio[:count]:
                x = torch.from_numpy(_normalize(wave))[None].to(model.device, model.dtype)
                model.forward(x)
        return dict(model.calib)
    finally:
        model.calib = None


def quantize_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-output-channel e4m3: ``w ~= w8 * scale[:, None]``."""
    amax = w.abs().amax(dim=1).clamp(min=1e-12)
    scale = (amax / K.FP8_MAX).float()
    return (w / scale[:, None]).clamp(-K.FP8_MAX, K.FP8_MAX).to(torch.float8_e4m3fn), scale


def build_fused_engine(model_dir: Path, out_dir: Path, opts: FusedEngineOptions,
                       calibration_audio: list[np.ndarray] | None = None) -> dict[str, Any]:
    """Fold weights, (fp8: calibrate), write the engine folder into ``out_dir``; return metrics for the manifest."""
    from safetensors.torch import save_file

    from asr_optimize.model.source import load_model, read_config

    started = time.perf_counter()
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    config = read_config(model_dir)
    arch = architecture_from_config(config)
    hf = load_model(model_dir)
    weights, folded = fold_weights(hf)
    del hf
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(out_dir / WEIGHTS_FILE))
    for name in COPIED_FILES:
        if (model_dir / name).is_file():
            shutil.copy(model_dir / name, out_dir / name)
    meta: dict[str, Any] = {
        "format": ENGINE_FORMAT,
        "kind": "asr-optimize fused wav2vec2 CTC engine",
        "architecture": arch,
        "precision": opts.precision,
        "weights_file": WEIGHTS_FILE,
        "weights_dtype": "float32 (cast to the compute dtype at load)",
        "folded": folded,
        "buckets": [list(b) for b in opts.buckets],
        "group_norm_stats": opts.group_norm_stats,
    }
    metrics: dict[str, Any] = {"folded": folded, "parameters": int(sum(t.numel() for t in weights.values()))}
    if opts.precision in ("fp8", "fp8-mixed"):
        if not calibration_audio:
            raise ValueError("an fp8 engine needs calibration audio (the bundled calibration set is the default)")
        ref = FusedModel(arch, weights, opts.calibration_device, torch.float32, use_triton=False,
                         group_norm_stats=opts.group_norm_stats)
        amax = calibrate(ref, calibration_audio, opts.calibration_utterances)
        act_scales, fp8_weights, wsum = {}, {}, {}
        for i in range(arch["num_layers"]):
            for g in GEMMS:
                name = f"layers.{i}.{g}"
                # the down GEMM reads GELU(up): calibrated on its input, which _linear sees after GELU
                act_scales[name] = max(amax.get(name, 1.0), 1e-6) * opts.calibration_margin / K.FP8_MAX
                w8, ws = quantize_weight(weights[f"{name}.w"])
                fp8_weights[f"{name}.w8"], fp8_weights[f"{name}.ws"] = w8, ws
                wsum[name] = {"min": float(ws.min()), "max": float(ws.max()), "mean": float(ws.mean())}
        plan = None
        if opts.precision == "fp8-mixed":
            plan = plan_fp16_gemms(ref, calibration_audio[: opts.calibration_utterances], act_scales,
                                   opts.mixed_fp16_fraction)
        del ref
        save_file(fp8_weights, str(out_dir / FP8_FILE))
        meta["fp8"] = {
            "format": "float8_e4m3fn",
            "weights_file": FP8_FILE,
            "weight_scales": "per output channel, tensors '<gemm>.ws' in fp8 file (w ~= w8 * ws[:, None])",
            "activation_scales": act_scales,
            "activation_scale_rule": f"amax over calibration inputs x {opts.calibration_margin} / 448 (per tensor)",
            "calibration_utterances": min(opts.calibration_utterances, len(calibration_audio)),
            "weight_scale_summary": wsum,
            "gemms": list(GEMMS),
            "fp16_gemms": plan["fp16_gemms"] if plan else [],
        }
        if plan:
            meta["fp8"]["mixed_plan"] = plan
            metrics["fp16_gemms"] = len(plan["fp16_gemms"])
            metrics["simulated_frame_agreement"] = plan["simulated_frame_agreement"]
        metrics["fp8_activation_scale_range"] = [min(act_scales.values()), max(act_scales.values())]
        metrics["calibration_utterances"] = meta["fp8"]["calibration_utterances"]
    (out_dir / ENGINE_JSON).write_text(json.dumps(meta, indent=1, ensure_ascii=False), encoding="utf-8")
    metrics["bytes"] = int(sum(p.stat().st_size for p in out_dir.iterdir() if p.is_file()))
    metrics["build_s"] = round(time.perf_counter() - started, 3)
    return metrics


def load_engine(engine_dir: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    """(engine.json, fp32 weights, fp8 tensors or None) from an engine folder, with clear errors."""
    from safetensors.torch import load_file

    from asr_optimize.errors import ModelResolutionError

    engine_dir = Path(engine_dir)
    path = engine_dir / ENGINE_JSON
    if not path.is_file():
        raise ModelResolutionError(f"{engine_dir} is not a fused engine folder (no {ENGINE_JSON})")
    meta = json.loads(path.read_text(encoding="utf-8"))
    if meta.get("format") != ENGINE_FORMAT:
        raise ModelResolutionError(f"{path}: engine format {meta.get('format')!r}, this code reads {ENGINE_FORMAT}")
    try:
        weights = load_file(str(engine_dir / meta["weights_file"]))
        fp8 = load_file(str(engine_dir / meta["fp8"]["weights_file"])) if "fp8" in meta else None
    except Exception as exc:  # safetensors raises its own error types for truncated files
        raise ModelResolutionError(f"cannot read engine weights in {engine_dir}: {exc}") from exc
    return meta, weights, fp8


def output_frames(arch: dict[str, Any], samples: int) -> int:
    return conv_frames(samples, arch["conv_kernel"], arch["conv_stride"])[-1]


