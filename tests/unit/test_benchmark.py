"""The benchmark: every runner on the same audio, ratios against the eager fp32 baseline of the same run."""

from __future__ import annotations

from pathlib import Path

import pytest

from asr_optimize.runners.base import RunnerUnavailable
from asr_optimize.runners.registry import RunnerSpec, build_runner
from tasks.benchmark import BenchCase, BenchmarkOptions, benchmark_stage, run_benchmarks
from tasks.export import ExportOptions, export_onnx


def test_benchmark_rows_and_baseline_ratios(tiny_model: Path, tmp_path: Path) -> None:
    from asr_optimize.audio.load import synthetic_audio

    export_onnx(tiny_model, tmp_path, ExportOptions(), synthetic_audio(2, 1.0))
    specs = [
        RunnerSpec(kind="pytorch", path=tiny_model),
        RunnerSpec(kind="onnxruntime", variant="exported", path=tmp_path / "model.onnx"),
        RunnerSpec(kind="onnxruntime", variant="exported", path=tmp_path / "model.onnx", device="cuda"),
    ]
    opts = BenchmarkOptions(cases=[BenchCase(batch=1, seconds=1), BenchCase(batch=2, seconds=2)], warmup=1,
                            iterations=3)
    result = benchmark_stage(specs, opts, tmp_path / "report")
    assert result.stage == "benchmark" and result.status == "ok" and (tmp_path / "report" / "benchmarks.csv").is_file()
    table = result.output.frame()
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
        build_runner(RunnerSpec(kind="nope", path=tiny_model))


def test_the_baseline_is_required(tiny_model: Path) -> None:
    with pytest.raises(ValueError, match="eager fp32 baseline"):
        run_benchmarks([RunnerSpec(kind="onnxruntime", variant="exported", path=tiny_model)],
                       BenchmarkOptions(iterations=1))


@pytest.mark.parametrize("text", ["0x1", "1x0", "2x-1", "abc", "", "4", "1x1,,0x2"])
def test_bad_bench_cases_are_refused_with_the_item_named(text: str) -> None:
    with pytest.raises(ValueError, match=r"benchmark case|no benchmark case"):
        BenchCase.parse_list(text)


def test_bench_cases_parse() -> None:
    assert [c.label for c in BenchCase.parse_list("1x1, 16x10s")] == ["1x1s", "16x10s"]


def test_long_cases_are_timed_through_chunked_transcription(tiny_model: Path) -> None:
    from asr_optimize.transcribe import ChunkingOptions

    opts = BenchmarkOptions(cases=[BenchCase(batch=2, seconds=12)], warmup=0, iterations=1,
                            chunking=ChunkingOptions(chunk_s=4, stride_s=0.5))
    table = run_benchmarks([RunnerSpec(kind="pytorch", path=tiny_model)], opts)
    row = table.iloc[0]
    assert row["status"] == "ok", row.get("reason")
    assert row["x_real_time"] == pytest.approx(24 / (row["p50_ms"] / 1000))
