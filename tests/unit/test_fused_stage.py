"""The fused-engine stage: engine folders stored with manifests, reused from the store, skipped on a CPU run."""

from __future__ import annotations

from pathlib import Path

from asr_optimize.audio.load import synthetic_audio
from asr_optimize.model.source import resolve_model
from asr_optimize.runners.registry import build_runner
from asr_optimize.store.local import LocalArtifactStore
from asr_optimize.transcribe import transcribe
from tasks.fused_build import FusedBuildOptions, build_fused_engines, fused_runner_specs


def test_cpu_run_skips_with_the_reason(tiny_model: Path, tmp_path: Path) -> None:
    result = build_fused_engines(LocalArtifactStore(tmp_path), resolve_model(str(tiny_model)), FusedBuildOptions(),
                                 "cpu", [])
    assert result.status == "skipped" and "CUDA" in (result.reason or "")
    assert fused_runner_specs(result) == []


def test_engines_are_built_once_then_reused(tiny_model: Path, tmp_path: Path) -> None:
    """Built here on the CPU (folding and fp8 calibration need no GPU), as a CUDA run's stage would build them."""
    store, model = LocalArtifactStore(tmp_path), resolve_model(str(tiny_model))
    waves = synthetic_audio(3, 1.0, seed=3)
    first = build_fused_engines(store, model, FusedBuildOptions(calibration_utterances=2), "cuda", waves)
    assert first.status == "ok", first.reason
    assert set(first.metrics["engines"]) == {"fp16", "fp8", "fp8-mixed"}
    assert len(list(tmp_path.glob("artifacts/**/fused-fp8/*/manifest.json"))) == 1
    assert len(list(tmp_path.glob("artifacts/**/fused-fp8-mixed/*/manifest.json"))) == 1
    specs = fused_runner_specs(first)
    assert [s.label for s in specs] == ["fused:engine+graphs:fp16@cuda", "fused:engine+graphs:fp8@cuda",
                                        "fused:engine+graphs:fp8-mixed@cuda"]
    assert all(s.artifact and s.artifact.startswith("fused-") for s in specs)
    again = build_fused_engines(store, model, FusedBuildOptions(calibration_utterances=2), "cuda", waves)
    assert again.status == "cached"
    # the stored folder runs (fp32 on the CPU) and transcribes like the reference
    runner = build_runner(specs[0].model_copy(update={"device": "cpu", "precision": "fp32"}))
    ref = build_runner(specs[0].model_copy(update={"kind": "pytorch", "variant": "eager", "path": tiny_model,
                                                     "device": "cpu", "precision": "fp32"}))
    assert transcribe(runner, waves, tiny_model).texts == transcribe(ref, waves, tiny_model).texts
