"""serve-bench and the pipeline's batching options without a server: configs render for every acoustic kind, and a
sweep against a Triton that is not there fails clearly. (Against the real bundled tritonserver:
``tests/integration/test_serve_bench.py``.)"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from asr_optimize.fileio import atomic_write_text
from asr_optimize.triton import repository as repo_mod

pytestmark = pytest.mark.requires("tritonclient")  # the gRPC client, and Triton's ModelConfig protobuf


def test_serve_bench_triton_down() -> None:
    from asr_optimize.loadtest.loadgen import ServeBenchOptions, serve_bench
    from asr_optimize.triton.server import free_port

    with pytest.raises(Exception, match=r"(?i)unavailable|connect|not live"):
        serve_bench(f"127.0.0.1:{free_port()}", [np.zeros(16000, np.float32)], ServeBenchOptions(concurrency=[1]))


def test_repository_options_render(tmp_path: Path) -> None:
    """GPU instances, instance count and batching reach config.pbtxt for every kind; bad buckets are refused."""
    opts = repo_mod.BatchingOptions(max_batch_size=64, preferred_batch_sizes=[16, 32, 64], max_queue_delay_us=500,
                                    instance_count=2, instance_kind="KIND_GPU", gpu_ids=[0, 1], cuda_graphs=True,
                                    gpu_input_tensors=True)
    for kind in ("python_onnxruntime", "onnxruntime_onnx", "tensorrt_plan"):
        text = repo_mod.acoustic_config("am", kind, [1], ["input_values", "attention_mask"], 77, opts)
        atomic_write_text(tmp_path / kind / "config.pbtxt", text)
        config = repo_mod.read_config(tmp_path, kind)
        assert list(config.dynamic_batching.preferred_batch_size) == [16, 32, 64]
        assert config.dynamic_batching.max_queue_delay_microseconds == 500
        group = config.instance_group[0]
        assert group.kind == 1 and group.count == 2 and list(group.gpus) == [0, 1]  # KIND_GPU
        if kind == "python_onnxruntime":
            assert config.parameters["cuda_graphs"].string_value == "true"
            assert config.parameters["FORCE_CPU_ONLY_INPUT_TENSORS"].string_value == "no"
    with pytest.raises(ValueError, match="ascending"):
        repo_mod.BatchingOptions(buckets_s=[5.0, 2.0])
    shutil.rmtree(tmp_path / "python_onnxruntime")
