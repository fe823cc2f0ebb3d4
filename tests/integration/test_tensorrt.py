"""Real TensorRT engines of the tiny model: fp32/fp16/mixed builds, logits against ONNX Runtime, parser errors, and
the stage's store and timing cache. Skipped (with the reason) unless ``tensorrt`` imports and a CUDA GPU is visible;
the control flow around the builder is covered without TensorRT in ``tests/unit/test_tensorrt.py``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from asr_optimize.store.local import LocalArtifactStore
from tasks import tensorrt_build as tb
from tasks.common import StageResult
from tasks.tensorrt_build import EngineOptions, ProfileBucket
from tests.support.engine_inputs import resolved, write_graph

pytestmark = pytest.mark.requires("tensorrt")

SMALL = EngineOptions(buckets=[ProfileBucket(min_seconds=0.5, opt_seconds=1, max_seconds=2)], batch_min=1,
                      batch_opt=2, batch_max=4, workspace_gib=1, builder_optimization_level=0)


@pytest.fixture(scope="module")
def engines(tiny_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("engines")
    out = {}
    for precision in ("fp32", "fp16", "mixed"):
        (root / precision).mkdir()
        metrics = tb.build_engine(tiny_onnx, root / precision, precision, SMALL, root / "timing.cache")
        assert metrics["precision"] == precision and metrics["size_mb"] > 0
        assert metrics["profiles"][0]["max"] == [4, 32_000]
        if precision == "mixed" and metrics["typing"] == "weak":
            assert metrics["fp32_layers"] > 0
        out[precision] = root / precision / tb.PLAN_NAME
    assert (root / "timing.cache").stat().st_size > 0
    return out


@pytest.mark.parametrize(("precision", "atol"), [("fp32", 1e-2), ("fp16", 0.5), ("mixed", 0.5)])
def test_engine_logits_match_onnx_runtime(engines: dict[str, Path], tiny_onnx: Path, waves: list[np.ndarray],
                                          precision: str, atol: float) -> None:
    from asr_optimize.audio.load import make_batch
    from asr_optimize.runners.ort_runner import OrtRunner
    from asr_optimize.runners.tensorrt_runner import TensorRTRunner

    runner = TensorRTRunner(engines[precision], precision=precision)
    assert runner.uses_attention_mask
    batch = make_batch(waves)
    logits = runner.infer(batch.input_values, batch.attention_mask)
    reference = OrtRunner(tiny_onnx).infer(batch.input_values, batch.attention_mask)
    assert logits.shape == reference.shape and logits.dtype == np.float32
    assert np.abs(logits - reference).max() < atol
    single = runner.infer(batch.input_values[:1, : waves[0].size], batch.attention_mask[:1, : waves[0].size])
    np.testing.assert_allclose(single[0], logits[0, : single.shape[1]], atol=atol)
    runner.close()


def test_parse_failure_names_the_node(tmp_path: Path) -> None:
    bad = write_graph(tmp_path / "bad.onnx", foreign=True)
    with pytest.raises(tb.EngineBuildError, match="gelu"):
        tb.build_engine(bad, tmp_path, "fp32", SMALL, None)


def test_stage_builds_caches_and_stores_the_timing_cache(tiny_onnx: Path, tmp_path: Path) -> None:
    from asr_optimize.capabilities import detect

    store = LocalArtifactStore(tmp_path / "store")
    export = StageResult(stage="export", status="ok", artifact_dir=tiny_onnx.parent, key="export-key")
    optimized = StageResult(stage="optimize", status="skipped")
    here = detect()
    first = tb.build_engines(store, resolved(tmp_path), optimized, here, SMALL, export=export)
    assert first.status == "ok", first.reason
    assert {e["status"] for e in first.metrics["engines"].values()} == {"ok"}
    assert store.read_pointer(tb.timing_cache_pointer(tb.engine_environment(here)))
    second = tb.build_engines(store, resolved(tmp_path), optimized, here, SMALL, export=export)
    assert second.status == "cached"
