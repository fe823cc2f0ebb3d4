"""Writing ONNX files one way (weights in ``<name>.data`` beside the graph above the protobuf limit) and reading
their sizes and operator counts; the export and optimize stages both save through ``save_onnx``."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from asr_optimize.model.io_spec import PROTOBUF_LIMIT


def save_onnx(model: Any, path: Path, external: bool | None = None) -> bool:
    """Save ``model`` at ``path``; weights go to ``<name>.data`` beside it when the graph is too big for protobuf
    (or when ``external`` says so). Returns whether they did."""
    import onnx

    external = model.ByteSize() > PROTOBUF_LIMIT if external is None else external
    onnx.save_model(model, str(path), save_as_external_data=external, all_tensors_to_one_file=True,
                    location=path.name + ".data")
    return external


def op_counts(path: Path) -> dict[str, int]:
    """Node count per operator type (weights are not loaded)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return dict(Counter(node.op_type for node in graph.node).most_common())


def size_mb(path: Path) -> float:
    """Size of an ONNX file plus its external data, if any."""
    data = path.with_name(path.name + ".data")
    return round((path.stat().st_size + (data.stat().st_size if data.exists() else 0)) / 2**20, 2)
