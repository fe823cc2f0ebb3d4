"""TensorRT stage and runner, without building engines.

These run everywhere: option validation, profile selection, the mixed-precision rules, ONNX source selection, the
strongly typed fp16/mixed ONNX rewrite (checked with ONNX Runtime), and the skip path. Tests that use a fake engine
builder say so: they cover control flow only and are no evidence that TensorRT works. Real engines are built and run
in ``tests/integration/test_tensorrt.py`` (``requires("tensorrt")``).
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto

from asr_optimize.capabilities import Capabilities
from asr_optimize.runners.base import RunnerUnavailable
from asr_optimize.runners.tensorrt_runner import select_profile
from asr_optimize.store.local import LocalArtifactStore
from tasks import tensorrt_build as tb
from tasks.common import StageResult
from tasks.tensorrt_build import EngineOptions, ProfileBucket
from tests.support.engine_inputs import resolved, write_graph


def caps(trt: str | None = "10.9.0.34", gpu: str = "NVIDIA H100 80GB HBM3", cc: str = "9.0",
         reason: str | None = None) -> Capabilities:
    return Capabilities(cuda=trt is not None, gpu_name=gpu, compute_capability=cc, torch_version="2.11",
                        onnxruntime_version="1.30", ort_providers=["cpu"], tensorrt_version=trt, tensorrt_reason=reason)


def stage(tmp_path: Path, name: str, file: str, foreign: bool = False) -> StageResult:
    write_graph(tmp_path / name / file, foreign)
    return StageResult(stage=name, status="ok", artifact_dir=tmp_path / name, key=f"{name}-key")


# ---------------------------------------------------------------- options, profiles, rules (no TensorRT needed)

def test_default_profiles_cover_half_a_second_to_thirty_seconds_and_batch_1_to_32() -> None:
    shapes = EngineOptions().profile_shapes()
    assert len(shapes) == 3
    assert shapes[0][0] == (1, 8_000) and shapes[-1][2] == (32, 480_000)
    assert [s[1][0] for s in shapes] == [8, 8, 8]
    for (_, _, hi), (lo, _, _) in itertools.pairwise(shapes):
        assert hi[1] == lo[1]  # contiguous buckets, no gap


@pytest.mark.parametrize("bad", [
    {"precisions": []}, {"precisions": ["fp16", "fp16"]}, {"precisions": ["int8"]}, {"buckets": []},
    {"batch_min": 4, "batch_opt": 2}, {"batch_min": 0}, {"workspace_gib": 0}, {"builder_optimization_level": 6},
    {"typing": "loose"},
])
def test_invalid_options_are_rejected(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        EngineOptions(**bad)


def test_invalid_bucket_is_rejected() -> None:
    with pytest.raises(ValueError):
        ProfileBucket(min_seconds=4, opt_seconds=2, max_seconds=8)
    with pytest.raises(ValueError):
        ProfileBucket(min_seconds=0, opt_seconds=1, max_seconds=2)


def test_profile_selection_picks_the_tightest_bucket_containing_the_batch() -> None:
    profiles = EngineOptions().profile_shapes()
    assert select_profile(profiles, (1, 16_000)) == 0
    assert select_profile(profiles, (8, 64_000)) == 0  # 4 s sits on the boundary: the smaller profile wins
    assert select_profile(profiles, (16, 100_000)) == 1
    assert select_profile(profiles, (32, 480_000)) == 2
    with pytest.raises(ValueError, match="outside every optimization profile"):
        select_profile(profiles, (64, 160_000))
    with pytest.raises(ValueError, match="outside"):
        select_profile(profiles, (1, 4_000))  # 0.25 s is below every profile


def test_mixed_precision_rules() -> None:
    assert tb.keep_in_fp32("/encoder/layers.0/layer_norm/LayerNormalization", "NORMALIZATION")
    assert tb.keep_in_fp32("/attention/Softmax", "SOFTMAX")
    assert tb.keep_in_fp32("/x/ReduceMean", "REDUCE")
    assert tb.keep_in_fp32("/encoder/pos_conv_embed/conv/Conv", "CONVOLUTION")
    assert tb.keep_in_fp32("/feature_projection/LayerNorm/Pow", "ELEMENTWISE")
    assert tb.keep_in_fp32("n", "LayerNormalization") and tb.keep_in_fp32("n", "Sqrt")
    assert not tb.keep_in_fp32("/encoder/layers.0/attention/q_proj/MatMul", "MATRIX_MULTIPLY")
    assert not tb.keep_in_fp32("/feature_extractor/conv_layers.0/conv/Conv", "Conv")


def test_store_key_params_include_tensorrt_version_and_gpu() -> None:
    env = tb.engine_environment(caps())
    params = tb.engine_params(EngineOptions(), "fp16", env)
    assert params["tensorrt"] == "10.9.0.34" and params["gpu"] == "NVIDIA H100 80GB HBM3"
    assert params["compute_capability"] == "9.0" and params["precision"] == "fp16"
    other = tb.engine_params(EngineOptions(), "fp16", tb.engine_environment(caps(gpu="NVIDIA A100", cc="8.0")))
    from asr_optimize.hashing import stable_hash

    assert stable_hash(params) != stable_hash(other)


def test_trtexec_command_mirrors_the_build() -> None:
    line = tb.trtexec_command(Path("model.onnx"), "mixed", EngineOptions(), ["input_values", "attention_mask"],
                              ["/ln/LayerNormalization"], strong=False)
    for flag in ("--onnx=model.onnx", "--minShapes=input_values:1x8000,attention_mask:1x8000",
                 "--maxShapes=input_values:32x64000", "--fp16", "--precisionConstraints=obey",
                 "--layerPrecisions=/ln/LayerNormalization:fp32", "--timingCacheFile=", "--builderOptimizationLevel=3",
                 "--memPoolSize=workspace:8192"):
        assert flag in line, flag


def test_parser_errors_name_the_failing_node() -> None:
    """Fake parser objects (control flow only): the message carries node index, name, operator and description."""

    class Err:
        def node(self) -> int:
            return 7

        def node_name(self) -> str:
            return "/encoder/gelu"

        def node_operator(self) -> str:
            return "Gelu"

        def code(self) -> str:
            return "UNSUPPORTED_NODE"

        def desc(self) -> str:
            return "No importer registered for op: Gelu"

    class Parser:
        num_errors = 1

        def get_error(self, i: int) -> Err:
            return Err()

    message = tb.parser_errors(Parser())
    assert "node #7 '/encoder/gelu' (Gelu): UNSUPPORTED_NODE: No importer registered" in message


# ---------------------------------------------------------------- stage control flow

def test_stage_is_skipped_with_the_reason_when_tensorrt_is_missing(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path / "store")
    optimized = stage(tmp_path, "optimize", "model.opt.onnx")
    for capabilities in (caps(trt=None), caps(trt=None, reason="tensorrt not importable (ModuleNotFoundError: x)")):
        result = tb.build_engines(store, resolved(tmp_path), optimized, capabilities, EngineOptions())
        assert result.status == "skipped"
        assert result.reason is not None and "tensorrt not importable" in result.reason
        assert tb.engine_runner_specs(result) == []
    assert not list((tmp_path / "store" / "artifacts").rglob("*.plan"))


def test_onnx_source_falls_back_to_the_export_when_the_optimized_graph_has_ort_ops(tmp_path: Path) -> None:
    optimized = stage(tmp_path, "optimize", "model.opt.onnx", foreign=True)
    export = stage(tmp_path, "export", "model.onnx")
    assert tb.nonstandard_ops(optimized.file("model.opt.onnx")) == ["com.microsoft.Gelu"]
    path, source, key = tb.choose_onnx(optimized, export)
    assert (path.name, source, key) == ("model.onnx", "export", "export-key")
    with pytest.raises(tb.EngineBuildError, match="no ONNX graph TensorRT can import"):
        tb.choose_onnx(optimized, None)
    clean = stage(tmp_path / "b", "optimize", "model.opt.onnx")
    assert tb.choose_onnx(clean, export)[1] == "optimize"


def test_failed_precision_is_recorded_and_keys_follow_the_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake engine builder (control flow only, no TensorRT): per-precision artifacts, failure isolation, retry,
    cache reuse, timing cache round trip through the store, and engine keys that differ per GPU."""
    seen_cache: list[bytes] = []

    def fake_build(onnx_path: Path, out_dir: Path, precision: str, opts: EngineOptions,
                   timing_cache_path: Path | None) -> dict[str, Any]:
        assert timing_cache_path is not None
        seen_cache.append(timing_cache_path.read_bytes() if timing_cache_path.is_file() else b"")
        if precision == "fp16" and len(seen_cache) < 4:
            raise tb.EngineBuildError("TensorRT could not parse model.onnx: node #3 '/x' (Foo): UNSUPPORTED_NODE")
        (out_dir / tb.PLAN_NAME).write_bytes(f"plan-{precision}".encode())
        timing_cache_path.write_bytes(timing_cache_path.read_bytes() + precision.encode()
                                      if timing_cache_path.is_file() else precision.encode())
        return {"precision": precision, "build_seconds": 0.0}

    monkeypatch.setattr(tb, "build_engine", fake_build)
    store = LocalArtifactStore(tmp_path / "store")
    model = resolved(tmp_path)
    optimized = stage(tmp_path, "optimize", "model.opt.onnx")
    opts = EngineOptions(precisions=["fp32", "fp16"])

    first = tb.build_engines(store, model, optimized, caps(), opts)
    assert first.status == "ok" and first.reason and "fp16 failed" in first.reason and "node #3" in first.reason
    assert first.metrics["engines"]["fp16"]["status"] == "failed"
    assert Path(first.metrics["engines"]["fp32"]["plan"]).read_bytes() == b"plan-fp32"
    assert first.metrics["tensorrt"] == "10.9.0.34" and first.metrics["gpu"] == "NVIDIA H100 80GB HBM3"
    assert [s.precision for s in tb.engine_runner_specs(first)] == ["fp32"]

    second = tb.build_engines(store, model, optimized, caps(), opts)
    assert second.metrics["engines"]["fp32"]["status"] == "cached"
    assert second.metrics["engines"]["fp16"]["status"] == "failed"  # retried, not cached as a failure
    assert seen_cache[-1] == b"fp32"  # the timing cache came back from the store

    third = tb.build_engines(store, model, optimized, caps(), opts)
    assert third.status == "ok" and third.reason is None
    spec = tb.engine_runner_specs(third)[1]
    assert (spec.kind, spec.options, spec.path.name) == ("tensorrt", {"precision": "fp16"}, tb.PLAN_NAME)

    elsewhere = tb.build_engines(store, model, optimized, caps(gpu="NVIDIA A100-SXM4-80GB", cc="8.0"), opts)
    assert elsewhere.metrics["engines"]["fp32"]["status"] == "ok"  # not reused across GPUs
    assert elsewhere.metrics["engines"]["fp32"]["key"] != third.metrics["engines"]["fp32"]["key"]


def test_all_precisions_failing_fails_the_stage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake engine builder that always fails (control flow only)."""

    def boom(*args: Any) -> dict[str, Any]:
        raise tb.EngineBuildError("TensorRT failed to build")

    monkeypatch.setattr(tb, "build_engine", boom)
    result = tb.build_engines(LocalArtifactStore(tmp_path / "s"), resolved(tmp_path),
                              stage(tmp_path, "optimize", "model.opt.onnx"), caps(), EngineOptions())
    assert result.status == "failed" and result.reason
    assert all(f"{p} failed" in result.reason for p in ("fp32", "fp16", "mixed"))


@pytest.mark.requires("no-tensorrt")  # where engines can run, the runner does not refuse
def test_runner_reports_why_it_cannot_run(tmp_path: Path) -> None:
    from asr_optimize.runners.registry import RunnerSpec, build_runner

    with pytest.raises(RunnerUnavailable, match=r"tensorrt not importable|no CUDA"):
        build_runner(RunnerSpec(kind="tensorrt", variant="engine", path=tmp_path / "engine.plan", device="cuda",
                                precision="fp16", options={"precision": "fp16"}))


# ---------------------------------------------------------------- real ONNX work (ONNX Runtime, no TensorRT)

def test_strongly_typed_fp16_and_mixed_graphs_keep_sensitive_nodes_in_fp32(tiny_onnx: Path, tmp_path: Path,
                                                                            waves: list[np.ndarray]) -> None:
    from asr_optimize.audio.load import make_batch
    from asr_optimize.runners.ort_runner import OrtRunner

    kept = tb.write_reduced_precision_onnx(tiny_onnx, tmp_path / "mixed.onnx", mixed=True)
    assert any("pos_conv" in n for n in kept) and any("layer_norm" in n.lower() for n in kept)
    assert tb.write_reduced_precision_onnx(tiny_onnx, tmp_path / "fp16.onnx", mixed=False) == []
    graph = onnx.load(str(tmp_path / "mixed.onnx")).graph
    assert {i.name: i.type.tensor_type.elem_type for i in graph.input}["input_values"] == TensorProto.FLOAT
    batch = make_batch(waves)
    reference = OrtRunner(tiny_onnx).infer(batch.input_values, batch.attention_mask)
    for name in ("fp16.onnx", "mixed.onnx"):
        logits = OrtRunner(tmp_path / name).infer(batch.input_values, batch.attention_mask)
        assert logits.shape == reference.shape
        assert np.abs(logits - reference).max() < 0.5, name
