"""Stage 5, benchmark: every backend on the same audio; p50/p90/p99, x real time, ratio to eager fp32.

The PyTorch eager fp32 runner is always measured first in the same run: every ratio is against it, never
against a number from another day or machine. Timings exclude the one-off copy of the audio to the device
(``Runner.prepare``) and include the wait for the result.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field
from rich.progress import Progress

from asr_optimize import defaults
from asr_optimize.audio.load import make_batch, synthetic_audio
from asr_optimize.options import Options
from asr_optimize.runners.base import Runner, RunnerUnavailable
from asr_optimize.runners.registry import RunnerSpec, baseline_label, build_runner
from asr_optimize.transcribe import ChunkingOptions, transcribe
from tasks.common import StageResult, get_logger, stage_task


class BenchCase(BaseModel):
    """One batch shape: ``batch`` utterances of ``seconds`` of audio each."""

    batch: int = Field(ge=1)
    seconds: float = Field(gt=0, le=3600)

    @property
    def label(self) -> str:
        return f"{self.batch}x{self.seconds:g}s"

    @classmethod
    def parse_list(cls, text: str) -> list[BenchCase]:
        """``'1x1,16x10'`` -> two cases; raises ``ValueError`` naming the bad item."""
        cases = []
        for item in filter(None, (part.strip() for part in text.split(","))):
            batch, sep, seconds = item.lower().rstrip("s").partition("x")
            try:
                if not sep:
                    raise ValueError("missing 'x'")
                cases.append(cls(batch=int(batch), seconds=float(seconds)))
            except ValueError as exc:
                raise ValueError(f"benchmark case {item!r}: expected BATCHxSECONDS with batch >= 1 and "
                                 f"seconds > 0, such as 16x10 ({exc})") from None
        if not cases:
            raise ValueError(f"no benchmark case in {text!r}: expected a list such as 1x1,16x10")
        return cases


class BenchmarkOptions(Options):
    cases: list[BenchCase] = Field(default_factory=lambda: BenchCase.parse_list(defaults.BENCH_CASES), min_length=1)
    warmup: int = Field(defaults.BENCH_WARMUP, ge=0)
    iterations: int = Field(defaults.BENCH_ITERATIONS, ge=1)
    max_seconds_per_case: float = Field(defaults.BENCH_MAX_SECONDS_PER_CASE, gt=0)
    chunking: ChunkingOptions = Field(default_factory=ChunkingOptions)
    """Cases longer than ``chunking.chunk_s`` are long-form: timed end to end through chunked transcription."""


class BenchmarkTable(BaseModel):
    """The benchmark's rows (one per runner and case), kept as records so the result serializes for Prefect."""

    rows: list[dict[str, Any]] = Field(default_factory=list)

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)


def time_runner(runner: Runner, case: BenchCase, opts: BenchmarkOptions, model_dir: Path | None = None
                ) -> dict[str, Any]:
    """Latency distribution of one runner on one batch shape.

    A case up to one chunk long times the model alone on inputs already staged on the device. A longer case is
    long-form: the whole recording goes through ``asr_optimize.transcribe`` (windows batched through the runner,
    stitched, decoded), host copies included, as a user's long recording would.
    """
    waves = synthetic_audio(case.batch, case.seconds)
    if case.seconds > opts.chunking.chunk_s:
        if model_dir is None:
            raise ValueError("long-form cases need the model folder (vocabulary and frame arithmetic)")

        def once() -> None:
            transcribe(runner, waves, model_dir, batch_size=case.batch, chunking=opts.chunking)
    else:
        batch = make_batch(waves)
        prepared = runner.prepare(batch.input_values, batch.attention_mask if runner.uses_attention_mask else None)

        def once() -> None:
            runner.run_prepared(prepared)

    for _ in range(opts.warmup):
        once()
    runner.reset_peak_memory()
    latencies: list[float] = []
    deadline = time.perf_counter() + opts.max_seconds_per_case
    for _ in range(opts.iterations):
        start = time.perf_counter()
        once()
        latencies.append((time.perf_counter() - start) * 1000)
        if time.perf_counter() > deadline and len(latencies) >= 3:
            break
    ms = np.array(latencies)
    p50 = float(np.percentile(ms, 50))
    return {
        "p50_ms": p50, "p90_ms": float(np.percentile(ms, 90)), "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()), "iterations": len(ms),
        "x_real_time": case.batch * case.seconds / (p50 / 1000), "peak_memory_mb": runner.peak_memory_mb(),
    }


def run_benchmarks(specs: list[RunnerSpec], opts: BenchmarkOptions,
                   on_runner: Callable[[str, str], None] | None = None) -> pd.DataFrame:
    """Benchmark each spec on each case; a runner that cannot run here gets a 'skipped' row saying why."""
    log = get_logger()
    baseline = find_baseline(specs)
    model_dir = next(s.path for s in specs if s.label == baseline)
    rows: list[dict[str, Any]] = []
    with Progress(transient=True) as progress:
        bar = progress.add_task("benchmark", total=len(specs) * len(opts.cases))
        for spec in specs:
            base = {"runner": spec.label, "backend": spec.kind, "device": spec.device, "precision": spec.precision}
            try:
                runner = build_runner(spec)
            except RunnerUnavailable as exc:
                log.warning("benchmark: %s skipped: %s", spec.label, exc)
                rows += [{**base, "case": c.label, "batch": c.batch, "seconds": c.seconds, "status": "skipped",
                          "reason": str(exc)} for c in opts.cases]
                progress.advance(bar, len(opts.cases))
                continue
            for case in opts.cases:
                row = {**base, "case": case.label, "batch": case.batch, "seconds": case.seconds}
                try:
                    row.update(time_runner(runner, case, opts, model_dir), status="ok", reason="")
                except Exception as exc:  # one failing shape must not hide the others' numbers
                    log.error("benchmark: %s on %s failed: %s", spec.label, case.label, exc)
                    row.update(status="failed", reason=f"{type(exc).__name__}: {str(exc)[:200]}")
                rows.append(row)
                progress.advance(bar)
                if row["status"] == "ok":
                    log.info("benchmark: %-38s %-8s p50 %8.2f ms  p99 %8.2f ms  %8.1f x real time",
                             spec.label, case.label, row["p50_ms"], row["p99_ms"], row["x_real_time"])
            runner.close()
            if on_runner:
                on_runner(spec.label, "done")
    return add_baseline_ratios(pd.DataFrame(rows), baseline)


def find_baseline(specs: list[RunnerSpec]) -> str:
    """The Hugging Face eager fp32 runner among ``specs`` (every ratio is against it), by name."""
    for spec in specs:
        if spec.label == baseline_label(spec.device):
            return spec.label
    raise ValueError("the benchmark needs the PyTorch eager fp32 baseline among its runners "
                     f"(got {[s.label for s in specs]})")


def add_baseline_ratios(table: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """speedup = baseline p50 / runner p50, per case, from the same run."""
    if table.empty or "p50_ms" not in table:
        return table
    base = table[(table["runner"] == baseline) & (table["status"] == "ok")].set_index("case")["p50_ms"]
    table["baseline"] = baseline
    table["speedup_vs_baseline"] = table.apply(
        lambda r: base.get(r["case"], np.nan) / r["p50_ms"] if r.get("status") == "ok" else np.nan, axis=1
    )
    return table


def benchmark_stage(specs: list[RunnerSpec], opts: BenchmarkOptions, out_dir: Path) -> StageResult[BenchmarkTable]:
    """Benchmark every runner spec (baseline included); writes ``benchmarks.csv`` into the run's report folder."""
    start = time.perf_counter()
    table = run_benchmarks(specs, opts)
    out_dir.mkdir(parents=True, exist_ok=True)
    table.to_csv(out_dir / "benchmarks.csv", index=False)
    statuses = table["status"].value_counts().to_dict() if not table.empty else {}
    measured = int(statuses.get("ok", 0))
    return StageResult(
        stage="benchmark", status="ok" if measured else "failed",
        reason=None if measured else "no runner could be timed", artifact_dir=out_dir,
        location=str(out_dir / "benchmarks.csv"), seconds=round(time.perf_counter() - start, 3),
        metrics={"runners": len(specs), "cases": len(opts.cases), **{f"rows_{k}": int(v) for k, v in statuses.items()}},
        output=BenchmarkTable(rows=table.to_dict(orient="records")),
    )


benchmark_task = stage_task(benchmark_stage, name="benchmark", tags=["benchmark"])
