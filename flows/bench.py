"""The GPU benchmark suite behind ``asr-optimize bench`` / ``make bench-gpu``.

One command, one machine, one run: it builds (or reuses) the pipeline's artifacts for the full-size model
(the IndicWav2Vec Hindi architecture with random weights when the real weights are not at hand), times the
Hugging Face PyTorch eager fp32 baseline and every artifact at the same batch shapes, and checks accuracy of
the same backends on the bundled demo model (WER/CER and the promotion gate), so a speed-up is never reported
for a variant that changes transcripts.
"""

from __future__ import annotations

import json
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel, Field

from asr_optimize.capabilities import detect
from asr_optimize.eval_data import load_eval_set
from asr_optimize.model_source import ResolvedModel, init_random_model, resolve_model
from asr_optimize.paths import DEFAULT_MODEL, REPLICA_CONFIG
from asr_optimize.store_factory import open_store
from tasks.benchmark import BenchCase, BenchmarkOptions, RunnerSpec, pipeline_runner_specs, run_benchmarks
from tasks.common import StageResult, get_logger
from tasks.evaluate import EvaluateOptions, evaluate_backends
from tasks.export import ExportOptions, export_task
from tasks.optimize import OptimizeOptions, optimize_task
from tasks.report import benchmark_charts
from tasks.tensorrt_build import EngineOptions, tensorrt_task


def _default_cases() -> list[BenchCase]:
    return [BenchCase(batch=1, seconds=1), BenchCase(batch=1, seconds=10), BenchCase(batch=16, seconds=10),
            BenchCase(batch=64, seconds=10)]


class BenchSuiteOptions(BaseModel):
    model: str | None = None  # None: the replica architecture with random weights (speed only)
    accuracy_model: str = str(DEFAULT_MODEL)
    device: str = "cuda"
    cases: list[BenchCase] = Field(default_factory=_default_cases)
    warmup: int = 5
    iterations: int = 30
    max_seconds_per_case: float = 20.0
    store: str = "model_store"
    out_dir: Path | None = None
    only: list[str] = Field(default_factory=list)  # keep runners whose label contains one of these
    skip_accuracy: bool = False
    prepare_only: bool = False
    compile: bool = False  # add torch.compile + CUDA graphs (minutes of compilation per batch shape)


def replica_model(cache: Path) -> Path:
    """The IndicWav2Vec Hindi architecture with seeded random weights, written once and reused."""
    folder = cache / "indicwav2vec-hindi-replica-seed0"
    if not (folder / "model.safetensors").is_file():
        init_random_model(REPLICA_CONFIG, folder, seed=0)
    return folder


def build_artifacts(store: Any, model: ResolvedModel, caps: Any) -> tuple[StageResult, StageResult, StageResult]:
    """Export, optimize and (where TensorRT exists) build engines; every stage reuses the store's cache."""
    from flows.asr_optimize import parity_audio

    waves = parity_audio(4)
    export = export_task.fn(store, model, ExportOptions(), waves)
    optimized = optimize_task.fn(store, model, export, OptimizeOptions(), waves)
    engines = tensorrt_task.fn(store, model, optimized, caps, EngineOptions(), export=export)
    return export, optimized, engines


def compiled_spec(model: ResolvedModel) -> RunnerSpec:
    return RunnerSpec(label="pytorch:compiled+graphs:fp16@cuda", kind="pytorch", path=model.local_dir,
                      device="cuda", precision="fp16", options={"fast": True, "compile": True})


def _select(specs: list, only: list[str]) -> list:
    """Keep the baseline plus the runners matching ``only`` (all when empty)."""
    return specs if not only else [specs[0]] + [s for s in specs[1:] if any(o in s.label for o in only)]


def run_suite(opts: BenchSuiteOptions) -> dict[str, Any]:
    """Run the whole suite; writes CSVs, charts and ``bench.md`` into the output folder and returns a summary."""
    log = get_logger()
    caps = detect()
    store = open_store(opts.store)
    out = opts.out_dir or Path("reports") / datetime.now(UTC).strftime("bench-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    cache = Path.home() / ".cache" / "asr-optimize"
    model = resolve_model(opts.model) if opts.model else resolve_model(str(replica_model(cache)))
    log.info("bench: model %s (%s), device %s (%s)", model.source, model.revision, opts.device, caps.gpu_name)
    export, optimized, engines = build_artifacts(store, model, caps)
    summary: dict[str, Any] = {
        "machine": caps.gpu_name or platform.processor() or platform.machine(), "host": platform.node(),
        "torch": caps.torch_version, "onnxruntime": caps.onnxruntime_version, "ort_providers": caps.ort_providers,
        "tensorrt": caps.tensorrt_version or caps.why_no_tensorrt(), "model": model.source,
        "revision": model.revision, "out_dir": str(out),
        "stages": {s.stage: s.status for s in (export, optimized, engines)},
        "fused_operators": optimized.metrics.get("fused_operators"),
    }
    if opts.prepare_only:
        return summary
    specs = _select(pipeline_runner_specs(model, export, optimized, engines, caps, opts.device), opts.only)
    if opts.compile and opts.device == "cuda":
        specs.append(compiled_spec(model))
    bench = run_benchmarks(specs, BenchmarkOptions(cases=opts.cases, warmup=opts.warmup, iterations=opts.iterations,
                                                   max_seconds_per_case=opts.max_seconds_per_case))
    bench.insert(0, "machine", summary["machine"])
    bench.to_csv(out / "benchmarks.csv", index=False)
    benchmark_charts(bench, out)
    accuracy = pd.DataFrame()
    if not opts.skip_accuracy:
        demo = resolve_model(opts.accuracy_model)
        d_export, d_optimized, d_engines = build_artifacts(store, demo, caps)
        demo_specs = _select(pipeline_runner_specs(demo, d_export, d_optimized, d_engines, caps, opts.device),
                             opts.only)
        if opts.compile and opts.device == "cuda":
            demo_specs.append(compiled_spec(demo))
        evaluation = evaluate_backends(demo_specs, load_eval_set(), demo.local_dir, EvaluateOptions(), out)
        accuracy = evaluation.table()
        accuracy.to_csv(out / "accuracy.csv", index=False)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    (out / "bench.md").write_text(bench_markdown(summary, bench, accuracy), encoding="utf-8")
    return summary


def bench_markdown(summary: dict[str, Any], bench: pd.DataFrame, accuracy: pd.DataFrame) -> str:
    """The results table as it goes into the README: p50 per case, x real time, speed-up vs eager fp32."""
    ok = bench[bench["status"] == "ok"]
    lines = [f"Machine: {summary['machine']} ({summary['host']}), torch {summary['torch']}, onnxruntime "
             f"{summary['onnxruntime']}, TensorRT: {summary['tensorrt']}. Model: {summary['model']}.", ""]
    cases = list(dict.fromkeys(ok["case"]))
    lines.append("| backend | " + " | ".join(f"{c} p50 ms (x RT, speed-up)" for c in cases) + " |")
    lines.append("|---|" + "---|" * len(cases))
    for runner, rows in ok.groupby("runner", sort=False):
        cells = []
        for case in cases:
            row = rows[rows["case"] == case]
            cells.append("-" if row.empty else "{:.2f} ({:,.0f}x, {:.2f}x)".format(
                row["p50_ms"].iloc[0], row["x_real_time"].iloc[0], row["speedup_vs_baseline"].iloc[0]))
        lines.append(f"| {runner} | " + " | ".join(cells) + " |")
    if not accuracy.empty:
        lines += ["", "Accuracy on the demo model and test set (same backends):", "",
                  "| backend | WER | CER | identical transcripts | gate |", "|---|---|---|---|---|"]
        for _, r in accuracy.iterrows():
            if r["status"] != "ok":
                lines.append(f"| {r['backend']} | - | - | - | {r['status']}: {r['reasons'][:80]} |")
                continue
            same = "-" if r["gate"] == "reference" else f"{r['identical_transcripts']:.1%}"
            lines.append(f"| {r['backend']} | {r['wer']:.2%} | {r['cer']:.2%} | {same} | {r['gate']} |")
    return "\n".join(lines) + "\n"
