"""Stage 2, export: the PyTorch model to ONNX with dynamic batch and samples axes, checked against PyTorch.

The positional convolution's weight norm is folded into a plain weight first: it is constant at inference,
and otherwise it is recomputed on every forward (0.6 ms per call on an H100) and exported as extra nodes.

Attention is exported from the "eager" implementation: its MatMul/Softmax pattern is what ONNX Runtime's
transformer optimizer fuses into one ``Attention`` node (fused kernels on CUDA); the SDPA implementation
exports a decomposition that the optimizer does not recognise. Both compute the same function (parity is checked).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from prefect import task
from pydantic import BaseModel

from asr_optimize.errors import ParityError
from asr_optimize.hashing import hash_waves
from asr_optimize.model_source import ResolvedModel, load_model
from asr_optimize.parity import check_parity
from asr_optimize.runners.ort_runner import OrtRunner
from asr_optimize.runners.torch_runner import TorchRunner
from asr_optimize.store import ArtifactStore
from tasks.common import StageResult, get_logger, retry_on_transient, run_cached_stage

ONNX_NAME = "model.onnx"
EXTERNAL_DATA_NAME = "model.onnx.data"
PROTOBUF_LIMIT = 2_000_000_000


class ExportOptions(BaseModel):
    opset: int = 17  # >= 17 keeps LayerNormalization as one node
    with_attention_mask: bool = True
    fold_weight_norm: bool = True
    attn_implementation: str = "eager"  # exports the attention pattern ORT can fuse (see module docstring)
    parity_atol: float = 1e-3


def fold_weight_norm(model: Any) -> int:
    """Replace weight-normed convolutions by plain weights (value unchanged). Returns how many were folded."""
    import torch
    from torch.nn.utils import parametrize

    folded = 0
    for module in model.modules():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
            folded += 1
        elif hasattr(module, "weight_g") and hasattr(module, "weight_v"):
            torch.nn.utils.remove_weight_norm(module)
            folded += 1
    return folded


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


def export_onnx(model_dir: Path, out_dir: Path, opts: ExportOptions, parity_waves: list[np.ndarray]) -> dict[str, Any]:
    """Export ``model_dir`` to ``out_dir/model.onnx``; validate with onnx.checker and parity vs PyTorch."""
    import torch

    model = load_model(model_dir, attn_implementation=opts.attn_implementation)
    folded = fold_weight_norm(model) if opts.fold_weight_norm else 0
    wrapper = logits_module(model, opts.with_attention_mask)
    samples = 16_000
    dummy = (torch.randn(2, samples), torch.ones(2, samples, dtype=torch.int64))
    names = ["input_values", "attention_mask"] if opts.with_attention_mask else ["input_values"]
    axes = {name: {0: "batch", 1: "samples"} for name in names}
    axes["logits"] = {0: "batch", 1: "frames"}
    onnx_path = out_dir / ONNX_NAME
    with torch.inference_mode():
        torch.onnx.export(
            wrapper, dummy[: len(names)], str(onnx_path), input_names=names, output_names=["logits"],
            dynamic_axes=axes, opset_version=opts.opset, do_constant_folding=True, dynamo=False,
        )
    external = _consolidate_external_data(onnx_path)
    onnx.checker.check_model(str(onnx_path), full_check=False)

    reference = TorchRunner(model_dir)
    candidate = OrtRunner(onnx_path, "cpu")
    parity = check_parity(reference, candidate, parity_waves, model_dir, atol=opts.parity_atol)
    if not parity.passed:
        raise ParityError(
            f"ONNX export disagrees with PyTorch: max |logit diff| {parity.max_abs_logit_diff:.2e} "
            f"(atol {opts.parity_atol:.0e}), identical transcripts {parity.identical_transcripts:.0%}"
        )
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    return {
        "opset": opts.opset,
        "weight_norm_folded": folded,
        "external_data": external,
        "nodes": len(graph.node),
        "size_mb": round(sum(p.stat().st_size for p in out_dir.iterdir()) / 2**20, 2),
        "inputs": names,
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
    onnx.save_model(model, str(onnx_path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=EXTERNAL_DATA_NAME, size_threshold=1024)
    return True


@task(name="export-onnx", retries=1, retry_condition_fn=retry_on_transient)
def export_task(
    store: ArtifactStore, model: ResolvedModel, opts: ExportOptions, parity_waves: list[np.ndarray]
) -> StageResult:
    """Export + parity; cached per model revision and options."""
    result = run_cached_stage(
        store, model, "export", opts.model_dump(), {"model": model.revision, "parity_audio": hash_waves(parity_waves)},
        lambda out: export_onnx(model.local_dir, out, opts, parity_waves),
    )
    parity = result.metrics["parity"]
    get_logger().info("export: parity max |logit diff| %.2e, identical transcripts %.0f%%",
                      parity["max_abs_logit_diff"], 100 * parity["identical_transcripts"])
    return result
