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
from prefect import task
from pydantic import BaseModel, Field
from rich.progress import Progress

from asr_optimize.audio import make_batch, synthetic_audio
from asr_optimize.capabilities import Capabilities
from asr_optimize.model_source import ResolvedModel
from asr_optimize.runners.base import Runner, RunnerUnavailable
from tasks.common import StageResult, get_logger

BASELINE = "pytorch-cpu-fp32"


class BenchCase(BaseModel):
    batch: int
    seconds: float

    @property
    def label(self) -> str:
        return f"{self.batch}x{self.seconds:g}s"


class BenchmarkOptions(BaseModel):
    cases: list[BenchCase] = Field(default_factory=lambda: [
        BenchCase(batch=1, seconds=1), BenchCase(batch=1, seconds=5), BenchCase(batch=4, seconds=5)])
    warmup: int = 3
    iterations: int = 20
    max_seconds_per_case: float = 30.0


class RunnerSpec(BaseModel):
    """How to build a runner; built lazily inside the benchmark so failures are recorded, not fatal."""

    label: str
    kind: str  # pytorch | onnxruntime | tensorrt | triton
    path: Path
    device: str = "cpu"
    precision: str = "fp32"
    options: dict[str, Any] = Field(default_factory=dict)


def build_runner(spec: RunnerSpec) -> Runner:
    """Instantiate the runner a spec describes (imports only what that backend needs)."""
    if spec.kind == "pytorch":
        from asr_optimize.runners.torch_runner import TorchRunner

        return TorchRunner(spec.path, device=spec.device, precision=spec.precision, **spec.options)
    if spec.kind == "onnxruntime":
        from asr_optimize.runners.ort_runner import OrtRunner

        return OrtRunner(spec.path, provider=spec.device, precision=spec.precision, **spec.options)
    if spec.kind == "tensorrt":
        from asr_optimize.runners.tensorrt_runner import TensorRTRunner

        return TensorRTRunner(spec.path, **spec.options)
    raise RunnerUnavailable(f"unknown runner kind {spec.kind!r}")


def time_runner(runner: Runner, case: BenchCase, opts: BenchmarkOptions) -> dict[str, Any]:
    """Latency distribution of one runner on one batch shape."""
    batch = make_batch(synthetic_audio(case.batch, case.seconds))
    prepared = runner.prepare(batch.input_values, batch.attention_mask if runner.uses_attention_mask else None)
    for _ in range(opts.warmup):
        runner.run_prepared(prepared)
    runner.reset_peak_memory()
    latencies: list[float] = []
    deadline = time.perf_counter() + opts.max_seconds_per_case
    for _ in range(opts.iterations):
        start = time.perf_counter()
        runner.run_prepared(prepared)
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
                    row.update(time_runner(runner, case, opts), status="ok", reason="")
                except Exception as exc:  # one failing shape must not hide the others' numbers
                    log.error("benchmark: %s on %s failed: %s", spec.label, case.label, exc)
                    row.update(status="failed", reason=f"{type(exc).__name__}: {str(exc)[:200]}")
                rows.append(row)
                progress.advance(bar)
                if row["status"] == "ok":
                    log.info("benchmark: %-28s %-8s p50 %8.2f ms  p99 %8.2f ms  %8.1f x real time",
                             spec.label, case.label, row["p50_ms"], row["p99_ms"], row["x_real_time"])
            runner.close()
            if on_runner:
                on_runner(spec.label, "done")
    return add_baseline_ratios(pd.DataFrame(rows), specs[0].label if specs else BASELINE)


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


def pipeline_runner_specs(model: ResolvedModel, export: StageResult, optimized: StageResult, engines: StageResult,
                          caps: Capabilities, device: str) -> list[RunnerSpec]:
    """Every backend this machine can run for the pipeline's artifacts, baseline (PyTorch eager fp32) first."""
    from tasks.optimize import FP16_NAME, FP32_NAME
    from tasks.tensorrt_build import engine_runner_specs

    gpu = device == "cuda"
    specs = [RunnerSpec(label=f"pytorch:eager:fp32@{device}", kind="pytorch", path=model.local_dir, device=device)]
    if gpu:
        specs += [
            RunnerSpec(label="pytorch:eager:fp16@cuda", kind="pytorch", path=model.local_dir, device="cuda",
                       precision="fp16"),
            RunnerSpec(label="pytorch:fast+graphs:fp16@cuda", kind="pytorch", path=model.local_dir, device="cuda",
                       precision="fp16", options={"fast": True}),
        ]
    for provider in [p for p in caps.ort_providers if p != "tensorrt"] if gpu else ["cpu"]:
        if export.artifact_dir:
            specs.append(RunnerSpec(label=f"onnxruntime:exported:fp32@{provider}", kind="onnxruntime",
                                    path=export.file("model.onnx"), device=provider))
        if not optimized.artifact_dir:
            continue
        specs.append(RunnerSpec(label=f"onnxruntime:optimized:fp32@{provider}", kind="onnxruntime",
                                path=optimized.file(FP32_NAME), device=provider))
        if optimized.file(FP16_NAME).is_file():
            specs.append(RunnerSpec(label=f"onnxruntime:optimized:fp16@{provider}", kind="onnxruntime",
                                    path=optimized.file(FP16_NAME), device=provider, precision="fp16"))
            if provider == "cuda":
                specs.append(RunnerSpec(label="onnxruntime:optimized+graphs:fp16@cuda", kind="onnxruntime",
                                        path=optimized.file(FP16_NAME), device="cuda", precision="fp16",
                                        options={"cuda_graph": True}))
    if gpu and engines.status in ("ok", "cached"):
        specs += engine_runner_specs(engines)
    return specs


@task(name="benchmark", tags=["benchmark"])
def benchmark_task(specs: list[RunnerSpec], opts: BenchmarkOptions, out_dir: Path) -> pd.DataFrame:
    """Benchmark every runner spec; writes ``benchmarks.csv`` into the run's report folder."""
    table = run_benchmarks(specs, opts)
    out_dir.mkdir(parents=True, exist_ok=True)
    table.to_csv(out_dir / "benchmarks.csv", index=False)
    return table
