"""Stage 1, profile: where does the PyTorch reference spend its time? (torch.profiler operator table)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from asr_optimize.audio.load import make_batch, synthetic_audio
from asr_optimize.model.source import ResolvedModel, load_model
from asr_optimize.options import Options
from asr_optimize.store.local import ArtifactStore
from tasks.common import StageResult, get_logger, run_cached_stage, stage_task


class ProfileOptions(Options):
    device: str = "cpu"
    batch: int = 1
    seconds: float = 4.0
    warmup: int = 2
    iterations: int = 5
    top_n: int = 25


def _time_attr(event: Any, *names: str) -> float:
    """torch renamed ``*_cuda_time_total`` to ``*_device_time_total``; read whichever exists (us)."""
    for name in names:
        if hasattr(event, name):
            return float(getattr(event, name))
    return 0.0


def profile_model(model_dir: Path, out_dir: Path, opts: ProfileOptions) -> dict[str, Any]:
    """Run the reference model under torch.profiler and write ``operators.csv`` (top operators by self time)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    device = opts.device if (opts.device == "cpu" or torch.cuda.is_available()) else "cpu"
    model = load_model(model_dir).to(device)
    batch = make_batch(synthetic_audio(opts.batch, opts.seconds))
    values = torch.from_numpy(batch.input_values).to(device)
    mask = torch.from_numpy(batch.attention_mask).to(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with torch.inference_mode():
        for _ in range(opts.warmup):
            model(values, attention_mask=mask)
        with profile(activities=activities) as prof:
            for _ in range(opts.iterations):
                model(values, attention_mask=mask)
            if device == "cuda":
                torch.cuda.synchronize()
    rows = []
    per_call = 1000 * opts.iterations  # profiler totals are in microseconds over all iterations
    for event in prof.key_averages():
        rows.append({
            "operator": event.key,
            "calls": event.count // opts.iterations,
            "self_cpu_ms": _time_attr(event, "self_cpu_time_total") / per_call,
            "cpu_total_ms": _time_attr(event, "cpu_time_total") / per_call,
            "self_device_ms": _time_attr(event, "self_device_time_total", "self_cuda_time_total") / per_call,
        })
    sort_by = "self_device_ms" if device == "cuda" else "self_cpu_ms"
    table = pd.DataFrame(rows).sort_values(sort_by, ascending=False)
    total = table[sort_by].sum()
    table["share"] = table[sort_by] / total if total else 0.0
    table.head(opts.top_n).to_csv(out_dir / "operators.csv", index=False)
    top = table.iloc[0]
    return {"device": device, "sort_by": sort_by, "total_ms_per_forward": round(float(total), 3),
            "top_operator": str(top["operator"]), "top_share": round(float(top["share"]), 4)}


def profile_stage(store: ArtifactStore, model: ResolvedModel, opts: ProfileOptions) -> StageResult:
    """Profile the PyTorch reference; cached per model revision and options."""
    result = run_cached_stage(
        store, model, "profile", opts.model_dump(), {"model": model.revision},
        lambda out: profile_model(model.local_dir, out, opts),
    )
    get_logger().info("profile: top operator %s (%.0f%% of self time)", result.metrics.get("top_operator"),
                      100 * result.metrics.get("top_share", 0))
    return result


profile_task = stage_task(profile_stage, name="profile", retries=1)
