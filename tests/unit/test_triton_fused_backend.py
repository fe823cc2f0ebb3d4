"""Fused engines in the Triton model repository, without a server: artifact kind, version folders, the acoustic
config, servable kinds, deploy-stage routing, the GPU memory check, the backend's warm-up shapes.

Served from the real bundled tritonserver: ``tests/integration/test_triton_fused_backend.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from asr_optimize.triton import repository as repo_mod
from asr_optimize.triton.repository import BatchingOptions, VersionManifest


@pytest.fixture()
def engine(demo_fused_engine: Path) -> Path:
    """The demo model's fused engine (fp16 folder)."""
    return demo_fused_engine


def test_kind_for_artifact_recognizes_an_engine_folder(engine: Path, tmp_path: Path) -> None:
    assert repo_mod.kind_for_artifact(engine) == "python_fused"
    assert repo_mod.kind_for_artifact(engine / "engine.json") == "python_fused"
    assert repo_mod.kind_for_artifact(engine / "weights.safetensors") == "python_fused"
    assert repo_mod.kind_for_artifact(engine, python_fallback=False) == "python_fused"
    assert repo_mod.fused_engine_dir(engine / "weights.safetensors") == engine
    (tmp_path / "empty").mkdir()
    with pytest.raises(repo_mod.RepositoryError, match="fused engine folder"):
        repo_mod.kind_for_artifact(tmp_path / "empty")
    assert repo_mod.kind_for_artifact(tmp_path / "model.onnx") == "python_onnxruntime"


def test_write_fused_version_copies_the_folder(engine: Path, tmp_path: Path) -> None:
    from asr_optimize.hashing import sha256_file

    root = tmp_path / "repo"
    manifest = repo_mod.write_acoustic_version(root, "am", 1, engine, "python_fused", "fused-fp16:k")
    version = root / "am" / "1"
    assert sorted(p.name for p in (version / "engine").iterdir()) == sorted(p.name for p in engine.iterdir())
    assert (version / "model.py").read_text() == repo_mod.FUSED_ACOUSTIC.read_text()
    assert manifest.model_file == "engine/weights.safetensors"
    assert manifest.sha256 == sha256_file(engine / "weights.safetensors")
    assert manifest.inputs == ["input_values", "attention_mask"] and manifest.vocab_size > 30
    assert (manifest.engine_format, manifest.precision) == (1, "fp16")
    assert repo_mod.read_manifest(root, "am", 1) == manifest and not list((root / "am").glob(".staging*"))
    # the promoted spec's precision wins over the engine's; a folder without engine.json is refused
    again = repo_mod.write_acoustic_version(root, "am", 2, engine / "engine.json", "python_fused",
                                            artifact_manifest={"precision": "fp8"})
    assert again.precision == "fp8"
    with pytest.raises(repo_mod.RepositoryError, match="not a fused engine folder"):
        repo_mod.write_acoustic_version(root, "am", 3, tmp_path, "python_fused")


@pytest.mark.requires("tritonclient")  # tritonclient[grpc] provides Triton's ModelConfig protobuf
def test_fused_acoustic_config(tmp_path: Path) -> None:
    from asr_optimize.fileio import atomic_write_text

    text = repo_mod.acoustic_config("am", "python_fused", [2], ["input_values", "attention_mask"], 77,
                                    BatchingOptions())
    atomic_write_text(tmp_path / "am" / "config.pbtxt", text)
    config = repo_mod.read_config(tmp_path, "am")
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert config.backend == "python" and config.instance_group[0].kind == 1  # auto: KIND_GPU
    assert params["precision"] == "auto" and params["warmup"] == "auto"
    assert params["bucket_samples"] == "32000,80000,160000,320000" and params["long_form_chunk_s"] == "20"
    assert params["FORCE_CPU_ONLY_INPUT_TENSORS"] == "no"  # gpu_input_tensors (default)
    # the ONNX Runtime python model writes the same parameters: one config holds versions of both kinds
    ort = repo_mod.acoustic_config("am", "python_onnxruntime", [2], ["input_values", "attention_mask"], 77,
                                   BatchingOptions(instance_kind="KIND_GPU"))
    assert ort == text
    cpu = repo_mod.acoustic_config("am", "python_fused", [2], ["input_values", "attention_mask"], 77,
                                   BatchingOptions(instance_kind="KIND_CPU", fused_precision="fp8",
                                                   fused_warmup=True, buckets_s=[]))
    assert 'key: "precision" value: { string_value: "fp8" }' in cpu and "FORCE_CPU_ONLY" not in cpu
    assert 'key: "warmup" value: { string_value: "true" }' in cpu
    assert 'key: "bucket_samples" value: { string_value: "" }' in cpu


def test_servable_kinds_include_fused_for_the_bundled_server() -> None:
    from tasks.deploy_triton import TritonOptions, servable_kinds

    assert servable_kinds(TritonOptions(url=None)) == {"onnxruntime", "fused"}
    assert servable_kinds(TritonOptions(url="triton:8000")) == {"onnxruntime", "tensorrt"}
    assert servable_kinds(TritonOptions(url="triton:8000", url_serves_fused=True)) == {
        "onnxruntime", "tensorrt", "fused"}
    assert servable_kinds(TritonOptions(enabled=False)) is None


def test_deploy_stage_routes_fused_engines(engine: Path, tmp_path: Path) -> None:
    """deploy_stage no longer refuses a fused engine for the bundled server; a Triton URL needs url_serves_fused."""
    from asr_optimize.capabilities import Capabilities
    from tasks.common import StageResult
    from tasks.deploy_triton import TritonOptions, deploy_stage
    from tasks.promote import PromotionDecision

    caps = Capabilities(cuda=False, torch_version="x", onnxruntime_version="x", ort_providers=[], tritonserver="x")

    def stage(artifact: Path, **opts: object) -> StageResult:
        decision = PromotionDecision(promoted=True, artifact=str(artifact), reason="test")
        promotion = StageResult(stage="promote", status="ok", output=decision)
        return deploy_stage(promotion, None, None, caps, TritonOptions(repository=tmp_path / "repo", **opts))

    ngc = stage(engine, url="triton:8000")
    assert ngc.status == "skipped" and "url_serves_fused" in (ngc.reason or "")
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"plan")
    bundled = stage(plan, url=None)
    assert bundled.status == "skipped" and "serves only ONNX and fused engines" in (bundled.reason or "")


def test_gpu_memory_check_sizes_the_whole_folder(engine: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The driver's numbers are faked (no GPU here); the sizing and the refusal text are the real ones."""
    from asr_optimize.triton import gpu_memory
    from asr_optimize.triton.hotswap import SwapOptions, check_gpu_memory

    size = gpu_memory.artifact_bytes(engine)
    assert size == sum(p.stat().st_size for p in engine.iterdir()) > (engine / "weights.safetensors").stat().st_size
    monkeypatch.setattr(gpu_memory, "gpu_memory", lambda: [
        gpu_memory.GpuMemory(index=0, name="fake", total_mb=81559, used_mb=81000, free_mb=559)])
    reason = check_gpu_memory(engine, "python_fused", SwapOptions(gpu_memory_factor=40.0))
    assert reason is not None and f"({size / 2**20:.0f} MiB model x 40" in reason
    assert check_gpu_memory(engine, "python_fused", SwapOptions(gpu_memory_margin_mb=0)) is None
    cpu = SwapOptions(gpu_memory_factor=40.0, batching=BatchingOptions(instance_kind="KIND_CPU"))
    assert check_gpu_memory(engine, "python_fused", cpu) is None
    # what the serving version took when it loaded (a fused engine's graphs and activations) outweighs its size
    serving = VersionManifest(model_name="m", version=4, kind="python_fused", model_file="engine/weights.safetensors",
                              sha256="0" * 64, inputs=["input_values"], vocab_size=8, source="x", gpu_load_mb=17800.0)
    reason = check_gpu_memory(engine, "python_fused", SwapOptions(gpu_memory_margin_mb=0), serving)
    assert reason is not None and "measured when v4 loaded: 17800 MiB" in reason
    onnx = serving.model_copy(update={"kind": "python_onnxruntime"})  # another kind: its footprint says nothing
    assert check_gpu_memory(engine, "python_fused", SwapOptions(gpu_memory_margin_mb=0), onnx) is None
    # Triton reloads the live versions beside the candidate: each of them needs that footprint again
    monkeypatch.setattr(gpu_memory, "gpu_memory", lambda: [
        gpu_memory.GpuMemory(index=0, name="fake", total_mb=81559, used_mb=51559, free_mb=30000)])
    bls = SwapOptions(gpu_memory_margin_mb=0, batching=BatchingOptions(one_hop=False))
    assert check_gpu_memory(engine, "python_fused", bls, serving) is None
    reason = check_gpu_memory(engine, "python_fused", bls, serving, reloaded=1)
    assert reason is not None and "x 2: Triton reloads the 1 live version(s)" in reason and "35600 MiB" in reason
    # one hop: the asr model holds its own copy, and loads N+1 beside it on promotion
    reason = check_gpu_memory(engine, "python_fused", SwapOptions(gpu_memory_margin_mb=0), serving)
    assert reason is not None and "x 2: the one-hop asr model's 1 instance(s)" in reason and "35600 MiB" in reason


def test_warmup_shapes_cover_the_pipelines_windows() -> None:
    """The served engine's bucket list holds every long-form window width ``chunking`` plans, and batch sizes up to
    the power of two above max_batch_size."""
    from asr_optimize.audio import chunking
    from asr_optimize.runners import fused_serving as module

    kernels, strides = [10, 3, 3, 3, 3, 2, 2], [5, 2, 2, 2, 2, 2, 2]
    window = module.window_samples(20.0, kernels, strides)
    widest = max(w.num_samples for n in range(320_000, 700_000, 997)
                 for w in chunking.plan_windows(n, 20.0, 2.0))
    assert widest <= window < widest + 320
    buckets = module.shape_buckets([32000, 80000], window, 6)
    assert buckets[:3] == [(1, 32000), (1, 80000), (1, window)] and buckets[-1] == (8, window)
    assert module.shape_buckets([32000], 20000, 1) == [(1, 32000)]  # a window inside the buckets adds none
    # a per-call budget of 64 x 10 s: 10 s rows up to 64 per call, 20 s rows up to 32 (bigger batches are split)
    budgeted = module.shape_buckets([160000, 320000], 0, 64, 640 * 16000)
    assert max(b for b, s in budgeted if s == 160000) == 64 and max(b for b, s in budgeted if s == 320000) == 32
    assert module.rows_per_call(320000, 64, 640 * 16000) == 32 and module.rows_per_call(16000, 6, 10**9) == 8
