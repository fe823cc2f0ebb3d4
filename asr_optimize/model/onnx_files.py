"""Reading and writing ONNX files the same way everywhere (external data above the protobuf limit)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from asr_optimize.model.io_spec import PROTOBUF_LIMIT


def save_onnx(model: Any, path: Path) -> None:
    """Save ``model`` at ``path``; weights go to ``<name>.data`` beside it when the graph is too big for protobuf."""
    import onnx

    large = model.ByteSize() > PROTOBUF_LIMIT
    onnx.save_model(model, str(path), save_as_external_data=large, all_tensors_to_one_file=True,
                    location=path.name + ".data")


def op_counts(path: Path) -> dict[str, int]:
    """Node count per operator type (weights are not loaded)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return dict(Counter(node.op_type for node in graph.node).most_common())


def size_mb(path: Path) -> float:
    """Size of an ONNX file plus its external data, if any."""
    data = path.with_name(path.name + ".data")
    return round((path.stat().st_size + (data.stat().st_size if data.exists() else 0)) / 2**20, 2)
