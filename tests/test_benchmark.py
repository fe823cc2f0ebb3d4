"""The benchmark: every runner on the same audio, ratios against the eager fp32 baseline of the same run."""

from __future__ import annotations

from pathlib import Path

import pytest

from asr_optimize.runners.base import RunnerUnavailable
from tasks.benchmark import BenchCase, BenchmarkOptions, RunnerSpec, build_runner, run_benchmarks
from tasks.export import ExportOptions, export_onnx


def test_benchmark_rows_and_baseline_ratios(tiny_model: Path, tmp_path: Path) -> None:
    from asr_optimize.audio import synthetic_audio

    export_onnx(tiny_model, tmp_path, ExportOptions(), synthetic_audio(2, 1.0))
    specs = [
        RunnerSpec(label="pytorch:eager:fp32@cpu", kind="pytorch", path=tiny_model),
        RunnerSpec(label="onnxruntime:exported:fp32@cpu", kind="onnxruntime", path=tmp_path / "model.onnx"),
        RunnerSpec(label="onnxruntime:exported:fp32@cuda", kind="onnxruntime", path=tmp_path / "model.onnx",
                   device="cuda"),
    ]
    opts = BenchmarkOptions(cases=[BenchCase(batch=1, seconds=1), BenchCase(batch=2, seconds=2)], warmup=1,
                            iterations=3)
    table = run_benchmarks(specs, opts)
    ok = table[table["status"] == "ok"]
    assert len(ok) == 4
    assert (ok[ok["runner"] == "pytorch:eager:fp32@cpu"]["speedup_vs_baseline"] == 1.0).all()
    assert (ok["p50_ms"] > 0).all() and (ok["p99_ms"] >= ok["p50_ms"]).all()
    row = ok[(ok["runner"] == "onnxruntime:exported:fp32@cpu") & (ok["case"] == "2x2s")].iloc[0]
    assert row["x_real_time"] == pytest.approx(4 / (row["p50_ms"] / 1000))
    skipped = table[table["runner"] == "onnxruntime:exported:fp32@cuda"]
    assert set(skipped["status"]) == {"skipped"} and "CUDAExecutionProvider" in skipped["reason"].iloc[0]


def test_unknown_backend_is_unavailable(tiny_model: Path) -> None:
    with pytest.raises(RunnerUnavailable):
        build_runner(RunnerSpec(label="x", kind="nope", path=tiny_model))
