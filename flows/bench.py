"""The GPU benchmark suite behind ``asr-optimize bench`` / ``make bench-gpu``: the flow's stages, without Prefect.

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

import numpy as np
import pandas as pd
from pydantic import Field

from asr_optimize import defaults
from asr_optimize.capabilities import Capabilities, detect
from asr_optimize.model.source import ResolvedModel, init_random_model, resolve_model
from asr_optimize.options import Options
from asr_optimize.paths import DEFAULT_MODEL, REPLICA_CONFIG
from asr_optimize.quality.eval_sets import calibration_audio, load_eval_set
from asr_optimize.runners.registry import RunnerSpec, baseline_label
from asr_optimize.settings import get_settings
from asr_optimize.store.local import ArtifactStore
from blocks.model_store import open_store
from flows.artifacts import ArtifactOptions, BuiltArtifacts, build_artifacts
from tasks.benchmark import BenchCase, BenchmarkOptions, run_benchmarks
from tasks.common import get_logger
from tasks.evaluate import EvaluateOptions, evaluate_backends
from tasks.report import benchmark_charts


class BenchSuiteOptions(Options):
    model: str | None = None  # None: the replica architecture with random weights (speed only)
    accuracy_model: str = str(DEFAULT_MODEL)
    device: str = "cuda"
    cases: list[BenchCase] = Field(default_factory=lambda: BenchCase.parse_list(defaults.SUITE_CASES), min_length=1)
    warmup: int = Field(defaults.SUITE_WARMUP, ge=0)
    iterations: int = Field(defaults.SUITE_ITERATIONS, ge=1)
    max_seconds_per_case: float = defaults.SUITE_MAX_SECONDS_PER_CASE
    store: str = Field(default_factory=lambda: get_settings().store)
    out_dir: Path | None = None
    only: list[str] = Field(default_factory=list)  # keep runners whose label contains one of these
    include_cpu: bool = False  # on CUDA, also time ONNX Runtime's CPU provider (minutes at 64 x 10 s)
    skip_accuracy: bool = False
    prepare_only: bool = False
    compile: bool = False  # add torch.compile + CUDA graphs (minutes of compilation per batch shape)


def replica_model(cache: Path) -> Path:
    """The IndicWav2Vec Hindi architecture with seeded random weights, written once and reused."""
    folder = cache / "indicwav2vec-hindi-replica-seed0"
    if not (folder / "model.safetensors").is_file():
        init_random_model(REPLICA_CONFIG, folder, seed=0)
    return folder


def suite_artifacts(store: ArtifactStore, model: ResolvedModel, caps: Capabilities, device: str,
                    demo_audio: list[np.ndarray]) -> BuiltArtifacts:
    """The flow's artifacts with default options: parity on the first 4 demo utterances (as ``parity.parity_audio``
    gives the flow), fp8 calibration on the bundled calibration set (as the flow's default)."""
    return build_artifacts(store, model, caps, device, ArtifactOptions(), demo_audio[:4], calibration_audio())


def suite_specs(model: ResolvedModel, built: BuiltArtifacts, caps: Capabilities, opts: BenchSuiteOptions
                ) -> list[RunnerSpec]:
    specs = built.runner_specs(model, caps, opts.device, include_cpu=opts.include_cpu)
    specs = _select(specs, opts.only)
    if opts.compile and opts.device == "cuda":
        specs.append(compiled_spec(model))
    return specs


def compiled_spec(model: ResolvedModel) -> RunnerSpec:
    return RunnerSpec(kind="pytorch", variant="compiled+graphs", precision="fp16", device="cuda",
                      path=model.local_dir, options={"fast": True, "compile": True})


def _select(specs: list[RunnerSpec], only: list[str]) -> list[RunnerSpec]:
    """Keep the baseline plus the runners matching ``only`` (all when empty)."""
    if not only:
        return specs
    return [s for s in specs if s.label == baseline_label(s.device) or any(o in s.label for o in only)]


def run_suite(opts: BenchSuiteOptions) -> dict[str, Any]:
    """Run the whole suite; writes CSVs, charts and ``bench.md`` into the output folder and returns a summary."""
    log = get_logger()
    caps = detect()
    store = open_store(opts.store)
    out = opts.out_dir or get_settings().reports_dir / datetime.now(UTC).strftime("bench-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    model = resolve_model(opts.model) if opts.model else resolve_model(str(replica_model(get_settings().cache_root)))
    log.info("bench: model %s (%s), device %s (%s)", model.source, model.revision, opts.device, caps.gpu_name)
    demo_set = load_eval_set()  # read once: the parity audio and the accuracy check both use it
    demo_audio = [u.audio for u in demo_set.utterances]
    built = suite_artifacts(store, model, caps, opts.device, demo_audio)
    summary: dict[str, Any] = {
        "machine": caps.gpu_name or platform.processor() or platform.machine(), "host": platform.node(),
        "torch": caps.torch_version, "onnxruntime": caps.onnxruntime_version, "ort_providers": caps.ort_providers,
        "tensorrt": caps.tensorrt_version or caps.why_no_tensorrt(), "model": model.source,
        "revision": model.revision, "out_dir": str(out),
        "stages": {s.stage: s.status for s in built.stages()},
        "fused_operators": built.optimized.metrics.get("fused_operators"),
    }
    if opts.prepare_only:
        return summary
    specs = suite_specs(model, built, caps, opts)
    bench = run_benchmarks(specs, BenchmarkOptions(cases=opts.cases, warmup=opts.warmup, iterations=opts.iterations,
                                                   max_seconds_per_case=opts.max_seconds_per_case))
    bench.insert(0, "machine", summary["machine"])
    bench.to_csv(out / "benchmarks.csv", index=False)
    benchmark_charts(bench, out)
    accuracy = pd.DataFrame()
    if not opts.skip_accuracy:
        demo = resolve_model(opts.accuracy_model)
        demo_specs = suite_specs(demo, suite_artifacts(store, demo, caps, opts.device, demo_audio), caps, opts)
        evaluation = evaluate_backends(demo_specs, demo_set, demo.local_dir, EvaluateOptions(), out)
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
