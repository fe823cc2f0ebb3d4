"""Reload soak: N hot-swaps between two artifacts under continuous load, with GPU memory after every swap.

Why: a nightly swap must not disturb traffic, and Triton users report GPU memory growing across
model reloads (triton-inference-server issues #4528, #4966, #7727). ``soak`` keeps ``concurrency`` ``asr`` requests in
flight (gRPC) the whole time and swaps A -> B -> A ... through the real ``hot_swap`` (canary, promote, retire), then
reports failed requests, p99 of requests that overlapped a swap vs steady state, whether any answer changed, and the
GPU memory in use after every swap (pynvml / nvidia-smi; "n/a on CPU" without a GPU).

``asr-optimize soak --repository R --url H --model-dir M --artifacts A B --out D``
"""

from __future__ import annotations

import csv
import time
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from asr_optimize import defaults
from asr_optimize.loadtest.charts import markdown_table, save_chart
from asr_optimize.loadtest.loadgen import BackgroundLoad, RequestRecord, fit_duration
from asr_optimize.options import Options
from asr_optimize.triton.gpu_memory import gpu_memory
from asr_optimize.triton.hotswap import CanarySet, SwapOptions, hot_swap

CPU_NOTE = "n/a on CPU"


class SoakOptions(Options):
    swaps: int = Field(defaults.SOAK_SWAPS, ge=1)
    concurrency: int = Field(defaults.SOAK_CONCURRENCY, ge=1)
    steady_s: float = Field(5.0, ge=0)
    """Load before the first swap and after the last one (the steady-state sample)."""
    pause_s: float = Field(1.0, ge=0)
    """Load between swaps."""
    request_s: float | None = None
    """Request length in seconds (canary utterances tiled/cropped); None: the canary utterances as they are."""
    request_timeout_s: float = Field(60.0, gt=0)
    swap: SwapOptions = Field(default_factory=lambda: SwapOptions(grace_s=1.0))
    label: str = ""


class SwapRecord(BaseModel):
    index: int
    artifact: str
    action: str
    serving_version: int | None
    seconds: float
    requests_during: int
    failed_during: int
    p99_during_ms: float | None
    gpu_used_mb: list[float] | None = None
    """Memory in use on each GPU right after the swap (None without a GPU)."""
    live_versions: list[int] = Field(default_factory=list)
    reasons: list[str] = Field(default_factory=list)
    timings: dict[str, float] = Field(default_factory=dict)
    """Seconds per swap phase (write, load, canary, promote, retire or rollback), from the swap decision."""


class SoakResult(BaseModel):
    label: str = ""
    swaps: list[SwapRecord] = Field(default_factory=list)
    requests: int = 0
    failed: int = 0
    errors: list[str] = Field(default_factory=list)
    distinct_answers_changed: bool = False
    """True if some utterance got different texts during the soak (both artifacts should transcribe alike)."""
    p50_steady_ms: float | None = None
    p99_steady_ms: float | None = None
    p99_swap_ms: float | None = None
    gpu_before_mb: list[float] | None = None
    gpu_growth_mb: float | None = None
    """Largest growth of used memory on any GPU across the swaps (None on CPU): from after the first swap that left
    as many versions live as the last one did, to after the last. Why not from before the first swap: a repository
    serving one version holds two after its first swap (keep_versions), which is not growth."""
    gpu_note: str = ""

    @property
    def promoted(self) -> int:
        return sum(1 for s in self.swaps if s.action == "promoted")

    def to_csv(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["label", "swap", "artifact", "action", "serving_version", "seconds", "requests_during",
                             "failed_during", "p99_during_ms", "gpu_used_mb", "reasons"])
            for s in self.swaps:
                gpu = ";".join(f"{m:.0f}" for m in s.gpu_used_mb) if s.gpu_used_mb else CPU_NOTE
                writer.writerow([self.label, s.index, s.artifact, s.action, s.serving_version, s.seconds,
                                 s.requests_during, s.failed_during, s.p99_during_ms, gpu, "; ".join(s.reasons)])
        return path

    def markdown(self) -> str:
        growth = f"{self.gpu_growth_mb:+.0f} MiB" if self.gpu_growth_mb is not None else self.gpu_note or CPU_NOTE
        head = [f"## Reload soak{': ' + self.label if self.label else ''}", "",
                f"**{len(self.swaps)} swaps ({self.promoted} promoted), {self.requests} requests, "
                f"{self.failed} failed; answers changed: {'yes' if self.distinct_answers_changed else 'no'}; "
                f"p99 steady {self.p99_steady_ms} ms vs during swaps {self.p99_swap_ms} ms; "
                f"GPU memory growth {growth}.**"]
        rows = [{**s.model_dump(), "gpu": (", ".join(f"{m:.0f}" for m in s.gpu_used_mb) if s.gpu_used_mb
                                           else self.gpu_note or CPU_NOTE)} for s in self.swaps]
        columns = [("index", "swap"), ("action", "action"), ("serving_version", "serving"), ("seconds", "s"),
                   ("requests_during", "requests during"), ("failed_during", "failed"),
                   ("p99_during_ms", "p99 during ms"), ("gpu", "GPU used MiB")]
        extra = [f"- {e}" for e in self.errors]
        return "\n".join([*head, "", markdown_table(rows, columns), *(["", *extra] if extra else [])])

    def chart(self, out_dir: Path, name: str = "soak") -> list[str]:
        import altair as alt
        import pandas as pd

        rows = [{"swap": s.index, "p99 during swap (ms)": s.p99_during_ms,
                 "GPU used (MiB)": (max(s.gpu_used_mb) if s.gpu_used_mb else None)} for s in self.swaps]
        frame = pd.DataFrame(rows)
        p99 = alt.Chart(frame).mark_line(point=True).encode(x="swap:O", y=alt.Y("p99 during swap (ms):Q")).properties(
            width=320, height=200, title=f"p99 during each swap (steady state {self.p99_steady_ms} ms)")
        charts: Any = p99
        if frame["GPU used (MiB)"].notna().any():
            memory = alt.Chart(frame).mark_line(point=True).encode(x="swap:O", y="GPU used (MiB):Q").properties(
                width=320, height=200, title="GPU memory after each swap")
            charts = alt.hconcat(p99, memory)
        return save_chart(charts.properties(title="Reload soak" + (f": {self.label}" if self.label else "")),
                          out_dir, name)

    def write(self, out_dir: Path, name: str = "soak") -> list[str]:
        out_dir.mkdir(parents=True, exist_ok=True)
        self.to_csv(out_dir / f"{name}.csv")
        (out_dir / f"{name}.md").write_text(self.markdown() + "\n", encoding="utf-8")
        (out_dir / f"{name}.json").write_text(self.model_dump_json(indent=1), encoding="utf-8")
        files = [f"{name}.csv", f"{name}.md", f"{name}.json"]
        try:
            files += self.chart(out_dir, name)
        except Exception as exc:  # a chart must not lose the CSV
            files.append(f"(chart failed: {exc})")
        return files


def _used(gpus: Any) -> list[float] | None:
    return [round(g.used_mb, 1) for g in gpus] if gpus else None


def _p(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if values else None


def memory_growth(swaps: list[SwapRecord], after: list[float] | None) -> float | None:
    """Largest per-GPU growth from the first swap that left as many versions live as the last one did to ``after``
    (see ``SoakResult.gpu_growth_mb``); None without GPU readings."""
    steady = len(swaps[-1].live_versions) if swaps else 0
    base = next((s.gpu_used_mb for s in swaps if len(s.live_versions) == steady and s.gpu_used_mb), None)
    if not base or not after:
        return None
    return round(max(a - b for a, b in zip(after, base, strict=False)), 1)


def _overlaps(record: RequestRecord, spans: list[tuple[float, float]]) -> bool:
    return any(record.start < end and record.end > start for start, end in spans)


def soak(
    root: Path,
    artifacts: tuple[Path, Path],
    model_dir: Path,
    canary: CanarySet,
    http_url: str,
    grpc_url: str,
    opts: SoakOptions | None = None,
    out_dir: Path | None = None,
    progress: Any | None = None,
) -> SoakResult:
    """Swap ``artifacts[0]``, ``artifacts[1]``, ... ``opts.swaps`` times under load; the repository must already serve.

    Both artifacts must transcribe the canary alike (e.g. the same model's fp16 graph and a copy, or two exports),
    otherwise the canary gate refuses them. ``progress`` is called with each ``SwapRecord``.
    """
    opts = opts or SoakOptions()
    waves = [fit_duration(w, opts.request_s) for w in canary.waves] if opts.request_s else list(canary.waves)
    result = SoakResult(label=opts.label)
    before = gpu_memory()
    result.gpu_before_mb = _used(before)
    result.gpu_note = "" if before else CPU_NOTE
    spans: list[tuple[float, float]] = []
    with BackgroundLoad(grpc_url, waves, opts.concurrency, opts.swap.pipeline_name, opts.request_timeout_s) as load:
        time.sleep(opts.steady_s)
        for index in range(opts.swaps):
            artifact = artifacts[index % 2]
            start = time.perf_counter()
            decision = hot_swap(root, artifact, model_dir, canary, http_url, opts.swap, source=f"soak:{artifact}")
            end = time.perf_counter()
            spans.append((start, end))
            during = [r for r in list(load.records) if r.start < end and r.end > start]
            record = SwapRecord(
                index=index + 1, artifact=artifact.name if artifact.name != "model.onnx" else str(artifact),
                action=decision.action, serving_version=decision.serving_version, seconds=round(end - start, 3),
                requests_during=len(during), failed_during=sum(1 for r in during if not r.ok),
                p99_during_ms=_p([(r.end - r.start) * 1000 for r in during if r.ok], 99),
                gpu_used_mb=_used(gpu_memory()), reasons=decision.reasons, timings=decision.timings,
                live_versions=decision.live_versions,
            )
            result.swaps.append(record)
            if progress is not None:
                progress(record)
            time.sleep(opts.pause_s)
        time.sleep(opts.steady_s)
    records = load.records
    result.requests = len(records)
    result.failed = sum(1 for r in records if not r.ok)
    result.errors = [f"{n} x {e}" for e, n in Counter(r.error for r in records if not r.ok).most_common(5)]
    answers: dict[int, set[str]] = {}
    for r in records:
        if r.ok:
            answers.setdefault(r.wave, set()).add(r.text)
    result.distinct_answers_changed = any(len(texts) > 1 for texts in answers.values())
    steady = [(r.end - r.start) * 1000 for r in records if r.ok and not _overlaps(r, spans)]
    swapping = [(r.end - r.start) * 1000 for r in records if r.ok and _overlaps(r, spans)]
    result.p50_steady_ms, result.p99_steady_ms, result.p99_swap_ms = _p(steady, 50), _p(steady, 99), _p(swapping, 99)
    result.gpu_growth_mb = memory_growth(result.swaps, _used(gpu_memory()))
    if out_dir is not None:
        result.write(Path(out_dir))
    return result


def soak_canary(http_url: str, model_dir: Path, reference: Literal["self", "torch"] = "self",
                pipeline_name: str = defaults.TRITON_PIPELINE_NAME, utterances: int = 8) -> CanarySet:
    """Canary utterances from the demo test set with reference transcripts: what Triton answers now (``self``: for
    random-weight speed runs, where only "unchanged" matters) or the PyTorch fp32 model (``torch``)."""
    from asr_optimize.quality.eval_sets import EvalSource, load_eval_set

    utts = load_eval_set(EvalSource(max_samples=utterances)).utterances
    waves = [u.audio for u in utts]
    if reference == "torch":
        from asr_optimize.runners.torch_runner import TorchRunner
        from asr_optimize.transcribe import transcribe

        texts, _ = transcribe(TorchRunner(model_dir), waves, model_dir)
    else:
        from asr_optimize.triton.endpoint import http_client
        from asr_optimize.triton.hotswap import pipeline_transcribe

        texts = pipeline_transcribe(http_client(http_url), pipeline_name, waves)
    return CanarySet([u.id for u in utts], waves, list(texts), None)
