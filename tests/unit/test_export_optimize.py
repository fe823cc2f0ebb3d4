"""Export and optimize a real (tiny) model; ONNX Runtime sessions agree with PyTorch, padding does not matter."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from asr_optimize.quality.parity import check_parity
from asr_optimize.runners.ort_runner import OrtRunner
from asr_optimize.runners.torch_runner import TorchRunner
from asr_optimize.transcribe import transcribe
from tasks.optimize import FP16_NAME, FP32_NAME, OptimizeOptions, optimize_onnx


def test_export_has_dynamic_axes_and_mask(tiny_onnx: Path) -> None:
    model = onnx.load(str(tiny_onnx))
    inputs = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    assert inputs == {"input_values": ["batch", "samples"], "attention_mask": ["batch", "samples"]}
    assert model.opset_import[0].version >= 17
    assert any(n.op_type == "LayerNormalization" for n in model.graph.node)


def test_ort_matches_torch_on_unseen_shapes(tiny_model: Path, tiny_onnx: Path, waves: list[np.ndarray]) -> None:
    report = check_parity(TorchRunner(tiny_model), OrtRunner(tiny_onnx), waves, tiny_model, atol=1e-3)
    assert report.passed, report


def test_batching_does_not_change_transcripts(tiny_model: Path, tiny_onnx: Path, waves: list[np.ndarray]) -> None:
    runner = OrtRunner(tiny_onnx)
    batched, batched_logits = transcribe(runner, waves, tiny_model, batch_size=3)
    single, single_logits = transcribe(runner, waves, tiny_model, batch_size=1)
    assert batched == single
    for a, b in zip(batched_logits, single_logits, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_optimize_writes_fp32_and_fp16_with_parity(tiny_model: Path, tiny_onnx: Path, tmp_path: Path,
                                                  waves: list[np.ndarray]) -> None:
    metrics = optimize_onnx(tiny_onnx, tiny_model, tmp_path, OptimizeOptions(), waves)
    assert (tmp_path / FP32_NAME).is_file() and (tmp_path / FP16_NAME).is_file()
    assert metrics["fp32"]["parity"]["passed"], metrics["fp32"]["parity"]
    assert metrics["fp32"]["nodes"] < metrics["before"]["nodes"]
    assert metrics["fused_operators"].get("LayerNormalization", 0) + metrics["fused_operators"].get(
        "SkipLayerNormalization", 0) > 0
    assert metrics["fused_operators"].get("Attention", 0) == 2  # one fused attention per transformer layer
    assert metrics["bool_tiles_cast"] >= 1  # the padding-mask Tile, which ORT's CUDA provider lacks for bool
    assert metrics["fp16"]["size_mb"] < metrics["fp32"]["size_mb"]
    assert metrics["fp16"]["parity"]["max_abs_logit_diff"] < 0.5
    graph = onnx.load(str(tmp_path / FP16_NAME)).graph
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # fp32 I/O kept
