"""GPU-bound artifacts are keyed by GPU type and software versions; production pointers of engines are per GPU type.

Engines are built for real (the tiny model's fused engine, folded on the CPU as a CUDA run's stage would fold it) in a
real local store; two ``GpuIdentity`` values stand for two GPU types.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from asr_optimize.audio.load import synthetic_audio
from asr_optimize.capabilities import Capabilities, GpuIdentity
from asr_optimize.fileio import check_pointer_name
from asr_optimize.hashing import stable_hash
from asr_optimize.model.source import resolve_model
from asr_optimize.quality.gate import BackendScore, evaluate_gate
from asr_optimize.runners.registry import RunnerSpec, baseline_spec
from asr_optimize.store.local import MANIFEST_NAME, LocalArtifactStore, production_pointer, slugify_model
from tasks import tensorrt_build as tb
from tasks.benchmark import BenchmarkTable
from tasks.common import StageResult
from tasks.evaluate import BackendEvaluation, EvaluationResult
from tasks.export import ONNX_NAME, ExportOptions, export_stage
from tasks.fused_build import FusedBuildOptions, build_fused_engines, fused_runner_specs
from tasks.promote import move_production_pointer, promote_stage

H100 = GpuIdentity(gpu_name="NVIDIA H100 80GB HBM3", compute_capability="9.0", cuda_version="13.0",
                   torch_version="2.11.0+cu130")
A100 = GpuIdentity(gpu_name="NVIDIA A100-SXM4-80GB", compute_capability="8.0", cuda_version="13.0",
                   torch_version="2.11.0+cu130")
FP16 = FusedBuildOptions(precisions=["fp16"])


def test_gpu_type_names_the_hardware_only_as_one_pointer_segment() -> None:
    assert H100.gpu_type == "nvidia-h100-80gb-hbm3-sm90" and A100.gpu_type == "nvidia-a100-sxm4-80gb-sm80"
    newer_cuda = H100.model_copy(update={"cuda_version": "13.1", "torch_version": "2.12.0+cu131"})
    assert newer_cuda.gpu_type == H100.gpu_type and newer_cuda.key() != H100.key()  # versions: key, not pointer
    assert "." not in H100.gpu_type


def test_capabilities_give_the_identity_on_a_gpu_and_none_on_the_cpu() -> None:
    gpu = Capabilities(cuda=True, gpu_name=H100.gpu_name, compute_capability="9.0", cuda_version="13.0",
                       torch_version="2.11.0+cu130", onnxruntime_version="1.30", ort_providers=["cpu", "cuda"])
    assert gpu.gpu_identity() == H100
    cpu = gpu.model_copy(update={"cuda": False, "gpu_name": None, "compute_capability": None})
    assert cpu.gpu_identity() is None


def test_tensorrt_key_and_manifest_fields_follow_the_gpu_identity() -> None:
    def caps(gpu: GpuIdentity) -> Capabilities:
        return Capabilities(cuda=True, gpu_name=gpu.gpu_name, compute_capability=gpu.compute_capability,
                            cuda_version=gpu.cuda_version, torch_version=gpu.torch_version, onnxruntime_version="1.30",
                            ort_providers=["cpu"], tensorrt_version="10.9.0.34")

    env = tb.engine_environment(caps(H100))
    assert env == {"tensorrt": "10.9.0.34", "gpu": H100.gpu_name, "compute_capability": "9.0", "cuda": "13.0",
                   "torch": "2.11.0+cu130"}
    key = stable_hash(tb.engine_params(tb.EngineOptions(), "fp16", env))
    assert stable_hash(tb.engine_params(tb.EngineOptions(), "fp16", tb.engine_environment(caps(H100)))) == key
    for other in (A100, H100.model_copy(update={"cuda_version": "12.8"})):
        assert stable_hash(tb.engine_params(tb.EngineOptions(), "fp16", tb.engine_environment(caps(other)))) != key


def test_fused_engine_key_differs_between_gpu_types_and_is_reused_for_the_same(tiny_model: Path,
                                                                               tmp_path: Path) -> None:
    store, model = LocalArtifactStore(tmp_path / "store"), resolve_model(str(tiny_model))
    first = build_fused_engines(store, model, FP16, "cuda", [], H100)
    assert first.status == "ok", first.reason
    again = build_fused_engines(store, model, FP16, "cuda", [], H100)
    other = build_fused_engines(store, model, FP16, "cuda", [], A100)
    assert again.status == "cached" and other.status == "ok"
    keys = [r.output.engines["fp16"].key for r in (first, again, other)]
    assert keys[0] == keys[1] != keys[2]
    manifest = json.loads((Path(first.output.engines["fp16"].dir) / MANIFEST_NAME).read_text())
    assert {k: manifest["params"][k] for k in H100.key()} == H100.key()  # the manifest names what it is bound to
    assert first.metrics["gpu"] == H100.gpu_name


def _promote(store: LocalArtifactStore, model: str, specs: list[RunnerSpec], fastest: RunnerSpec,
             gpu: GpuIdentity | None) -> StageResult:
    """The real promote stage on an evaluation where every backend passed the gate and ``fastest`` is fastest."""
    reference = BackendScore(name=specs[0].label, wer=0.1, cer=0.03, n_utterances=10)
    backends = [BackendEvaluation(label=specs[0].label, status="ok", score=reference)]
    for spec in specs[1:]:
        score = reference.model_copy(update={"name": spec.label, "identical_fraction": 1.0})
        backends.append(BackendEvaluation(label=spec.label, status="ok", score=score,
                                          decision=evaluate_gate(reference, score)))
    rows = [{"runner": s.label, "case": "4x5s", "batch": 4, "seconds": 5.0, "status": "ok",
             "p50_ms": 10.0 if s is fastest else 100.0} for s in specs]
    evaluation = StageResult(stage="evaluate", status="ok",
                             output=EvaluationResult(reference=specs[0].label, eval_set={}, backends=backends))
    bench = StageResult(stage="benchmark", status="ok",
                        output=BenchmarkTable(rows=pd.DataFrame(rows).to_dict("records")))
    result = promote_stage(specs, evaluation, bench, store, "cuda", model, gpu=gpu)
    assert result.output is not None and result.output.promoted, result.reason
    move_production_pointer(store, result.output, "cuda", model, resolve_model(model).revision)
    return result


def test_engines_are_promoted_per_gpu_type_and_found_for_this_gpu(tiny_model: Path, tmp_path: Path) -> None:
    from flows.cli import production_spec

    store = LocalArtifactStore(tmp_path / "store")
    model = resolve_model(str(tiny_model))
    slug = slugify_model(model.source)
    export = export_stage(store, model, ExportOptions(), synthetic_audio(1, 1.0))
    onnx = RunnerSpec(kind="onnxruntime", variant="exported", device="cuda", path=export.file(ONNX_NAME),
                      artifact=f"export:{export.key}/{ONNX_NAME}")
    fused = fused_runner_specs(build_fused_engines(store, model, FP16, "cuda", [], H100))[0]
    specs = [baseline_spec(tiny_model, "cuda"), onnx, fused]

    # an ONNX graph runs on any GPU: the plain pointer, under its old name
    assert _promote(store, model.source, specs, onnx, H100).output.pointer == production_pointer(slug)
    # an engine: this GPU type's pointer; the plain one keeps the ONNX graph
    engine = _promote(store, model.source, specs, fused, H100).output
    assert engine.pointer == f"{slug}.production.nvidia-h100-80gb-hbm3-sm90" == production_pointer(slug, H100.gpu_type)
    assert check_pointer_name(engine.pointer) and engine.gpu == H100
    assert store.read_pointer(engine.pointer)["gpu"]["gpu_name"] == H100.gpu_name
    assert store.read_pointer(production_pointer(slug))["candidate"] == onnx.label

    # `transcribe --production`: this GPU type's engine, else (another GPU type, the CPU) the plain pointer
    on_h100 = production_spec(str(tmp_path / "store"), model.source, "cuda", gpu=H100)
    assert (on_h100.kind, on_h100.path) == ("fused", Path(fused.path))
    assert production_spec(str(tmp_path / "store"), model.source, "cuda", gpu=A100).kind == "onnxruntime"
    on_cpu = production_spec(str(tmp_path / "store"), model.source, "cpu")
    assert (on_cpu.kind, on_cpu.device) == ("onnxruntime", "cpu")


@pytest.mark.parametrize("gpu", [None, H100])
def test_without_a_gpu_identity_an_engine_keeps_the_plain_pointer(tiny_model: Path, tmp_path: Path,
                                                                  gpu: GpuIdentity | None) -> None:
    """No identity (a run that records none): nothing changes; with one, only GPU-bound kinds move pointers."""
    store, model = LocalArtifactStore(tmp_path / "store"), resolve_model(str(tiny_model))
    fused = fused_runner_specs(build_fused_engines(store, model, FP16, "cuda", [], H100))[0]
    decision = _promote(store, model.source, [baseline_spec(tiny_model, "cuda"), fused], fused, gpu).output
    expected = production_pointer(slugify_model(model.source), gpu.gpu_type if gpu else None)
    assert decision.pointer == expected and store.read_pointer(expected)["candidate"] == fused.label
