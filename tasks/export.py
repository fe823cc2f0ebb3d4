"""Stage 2, export: the PyTorch model to ONNX with dynamic batch and samples axes, checked against PyTorch.

The positional convolution's weight norm is folded into a plain weight first: it is constant at inference,
and otherwise it is recomputed on every forward (0.6 ms per call on an H100) and exported as extra nodes.

Attention is exported from the "eager" implementation: its MatMul/Softmax pattern is what ONNX Runtime's
transformer optimizer fuses into one ``Attention`` node (fused kernels on CUDA); the SDPA implementation
exports a decomposition that the optimizer does not recognise. Both compute the same function (parity is checked).

The graph takes ``attention_mask`` only when the model's input policy says so (``asr_optimize.model.inputs``): a
group-norm model (wav2vec2-base style) gets none, as Hugging Face documents; the policy is recorded in the metrics.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx

from asr_optimize.errors import ParityError
from asr_optimize.hashing import hash_waves
from asr_optimize.model.inputs import input_policy
from asr_optimize.model.io_spec import ONNX_NAME, PROTOBUF_LIMIT, WAV2VEC2_CTC, ModelIOSpec
from asr_optimize.model.onnx_files import save_onnx
from asr_optimize.model.source import ResolvedModel, load_model
from asr_optimize.options import Options
from asr_optimize.quality.parity import check_parity
from asr_optimize.runners.ort_runner import OrtRunner
from asr_optimize.runners.torch_fast import fold_weight_norm
from asr_optimize.runners.torch_runner import TorchRunner
from asr_optimize.store.local import ArtifactStore
from tasks.common import StageResult, get_logger, run_cached_stage, stage_task

__all__ = ["ONNX_NAME", "ExportOptions", "export_onnx", "export_stage", "export_task"]


class ExportOptions(Options):
    opset: int = WAV2VEC2_CTC.opset
    with_attention_mask: bool | None = None
    """None: as the model's input policy says (``asr_optimize.model.inputs``): a group-norm model, whose processor
    returns no mask, gets none."""
    fold_weight_norm: bool = True
    attn_implementation: str = "eager"  # exports the attention pattern ORT can fuse (see module docstring)
    parity_atol: float = WAV2VEC2_CTC.fp32_atol


def logits_module(model: Any, with_mask: bool) -> Any:
    """Wrap the HF model so the graph has plain tensor inputs and a single ``logits`` output."""
    import torch

    class WithMask(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_values: Any, attention_mask: Any) -> Any:
            return self.model(input_values, attention_mask=attention_mask).logits

    class WithoutMask(WithMask):
        def forward(self, input_values: Any) -> Any:  # type: ignore[override]
            return self.model(input_values).logits

    return (WithMask() if with_mask else WithoutMask()).eval()


def export_onnx(model_dir: Path, out_dir: Path, opts: ExportOptions, parity_waves: list[np.ndarray],
                spec: ModelIOSpec = WAV2VEC2_CTC) -> dict[str, Any]:
    """Export ``model_dir`` to ``out_dir/model.onnx``; validate with onnx.checker and parity vs PyTorch."""
    import torch

    policy = input_policy(model_dir)
    with_mask = policy.attention_mask if opts.with_attention_mask is None else opts.with_attention_mask
    model = load_model(model_dir, attn_implementation=opts.attn_implementation)
    folded = fold_weight_norm(model) if opts.fold_weight_norm else 0
    wrapper = logits_module(model, with_mask)
    samples = spec.sample_rate  # one second; both axes are dynamic
    dummy = (torch.randn(2, samples), torch.ones(2, samples, dtype=torch.int64))
    names = spec.input_names(with_mask)
    onnx_path = out_dir / ONNX_NAME
    with torch.inference_mode():
        torch.onnx.export(
            wrapper, dummy[: len(names)], str(onnx_path), input_names=names, output_names=[spec.output],
            dynamic_axes=spec.dynamic_axes(with_mask), opset_version=opts.opset,
            do_constant_folding=True, dynamo=False,
        )
    external = _consolidate_external_data(onnx_path)
    onnx.checker.check_model(str(onnx_path), full_check=False)

    reference = TorchRunner(model_dir)
    candidate = OrtRunner(onnx_path, "cpu")
    parity = check_parity(reference, candidate, parity_waves, model_dir, atol=opts.parity_atol)
    if not parity.passed:
        raise ParityError(
            f"ONNX export disagrees with PyTorch: max |logit diff| {parity.max_abs_logit_diff:.2e} "
            f"(atol {opts.parity_atol:.0e}), identical transcripts {parity.identical_fraction:.0%}"
        )
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    return {
        "opset": opts.opset,
        "weight_norm_folded": folded,
        "external_data": external,
        "nodes": len(graph.node),
        "size_mb": round(sum(p.stat().st_size for p in out_dir.iterdir()) / 2**20, 2),
        "inputs": names,
        "input_policy": policy.model_dump(),
        "parity": parity.model_dump(),
    }


def _consolidate_external_data(onnx_path: Path) -> bool:
    """Models over 2 GB cannot be one protobuf: keep their weights in one ``model.onnx.data`` file."""
    stray = [p for p in onnx_path.parent.iterdir() if p.name != onnx_path.name]
    if not stray and onnx_path.stat().st_size < PROTOBUF_LIMIT:
        return False
    model = onnx.load(str(onnx_path), load_external_data=True)
    for path in stray:
        path.unlink()
    return save_onnx(model, onnx_path, external=True)


def export_stage(store: ArtifactStore, model: ResolvedModel, opts: ExportOptions,
                 parity_waves: list[np.ndarray]) -> StageResult:
    """Export + parity; cached per model revision, options and parity audio."""
    result = run_cached_stage(
        store, model, "export", opts.model_dump(), {"model": model.revision, "parity_audio": hash_waves(parity_waves)},
        lambda out: export_onnx(model.local_dir, out, opts, parity_waves),
    )
    parity = result.metrics["parity"]
    get_logger().info("export: parity max |logit diff| %.2e, identical transcripts %.0f%%",
                      parity["max_abs_logit_diff"], 100 * parity["identical_fraction"])
    return result


export_task = stage_task(export_stage, name="export-onnx", retries=1)
