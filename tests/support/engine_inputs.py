"""Inputs for the TensorRT stage tests: a stand-in ONNX graph and a resolved model record (no real model needed)."""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper

from asr_optimize.model.source import ResolvedModel


def resolved(tmp_path: Path) -> ResolvedModel:
    return ResolvedModel(source="local/tiny", kind="local", revision="sha256:abc", local_dir=tmp_path,
                         architecture="Wav2Vec2ForCTC")


def write_graph(path: Path, foreign: bool = False) -> Path:
    """A two-input stand-in graph; ``foreign`` adds an ONNX Runtime-only (com.microsoft) node."""
    nodes = [helper.make_node("Identity", ["input_values"], ["logits"], name="/encoder/layer_norm/Identity")]
    if foreign:
        nodes = [helper.make_node("Gelu", ["input_values"], ["logits"], name="gelu", domain="com.microsoft")]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("input_values", TensorProto.FLOAT, ["batch", "samples"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "samples"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "samples"])],
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(helper.make_model(graph), str(path))
    return path
