"""The fused engine served from the real bundled tritonserver (python backend ``fused_acoustic.py``, CPU fp32 here).

What this proves: an engine folder goes through the real hot-swap (``tasks.deploy_triton.deploy``) into a repository,
the ``asr`` pipeline pads utterances to length buckets and the backend pads batches to powers of two (warm-up runs
every bucket shape at load), and the transcripts equal in-process ``transcribe`` with the same engine; an ONNX
version and a fused version live under one config and swap both ways under load. What it does not: CUDA (fp16/fp8,
graph capture, DLPack inputs); the lead runs that on an H100.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from asr_optimize.triton import repository as repo_mod
from asr_optimize.triton.repository import BatchingOptions, VersionManifest
from tests.triton_server import DEMO_MODEL, ClientLoop, export, requires_triton

pytestmark = [pytest.mark.slow]

BUCKETS_S = [1.5, 2.0, 3.5]  # the demo test set is 1.35-3.04 s: several buckets get used
LONG_FORM = {"chunk_s": 3.5, "stride_s": 0.5}  # a joined 6 s recording takes the long-form window path


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from asr_optimize.runners.fused_engine import FusedEngineOptions, build_fused_engine

    out = tmp_path_factory.mktemp("fused-serve") / "engine"
    build_fused_engine(DEMO_MODEL, out, FusedEngineOptions(precision="fp16"))
    return out


def _batching(**extra: object) -> BatchingOptions:
    from asr_optimize.transcribe import ChunkingOptions

    options = {"instance_kind": "KIND_CPU", "max_batch_size": 4, "preferred_batch_sizes": [4],
               "buckets_s": BUCKETS_S, "long_form": ChunkingOptions(**LONG_FORM), **extra}
    return BatchingOptions(**options)


# ---------------------------------------------------------------------------------------------- no server needed


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


def test_fused_acoustic_config(tmp_path: Path) -> None:
    pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] provides Triton's ModelConfig protobuf")
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
    assert check_gpu_memory(engine, "python_fused", SwapOptions(gpu_memory_margin_mb=0), serving) is None
    reason = check_gpu_memory(engine, "python_fused", SwapOptions(gpu_memory_margin_mb=0), serving, reloaded=1)
    assert reason is not None and "x 2: Triton reloads the 1 live version(s)" in reason and "35600 MiB" in reason


def test_warmup_shapes_cover_the_pipelines_windows() -> None:
    """The backend's bucket list (loaded with a bare stand-in for Triton's utils, only to import it) holds every
    long-form window width ``chunking`` plans, and batch sizes up to the power of two above max_batch_size."""
    from asr_optimize.audio import chunking

    sys.modules["triton_python_backend_utils"] = types.ModuleType("triton_python_backend_utils")
    try:
        spec = importlib.util.spec_from_file_location("fused_acoustic_under_test", repo_mod.FUSED_ACOUSTIC)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop("triton_python_backend_utils", None)
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


# ---------------------------------------------------------------------------------------------- real tritonserver


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    from asr_optimize.triton.server import TritonServer

    with TritonServer(tmp_path_factory.mktemp("fused-triton-repo")) as running:
        yield running


def _waves() -> tuple[list[str], list[np.ndarray]]:
    """Eight demo utterances of different lengths, and one 6 s recording joined from two (long-form windows)."""
    from asr_optimize.quality.eval_sets import EvalSource, load_eval_set

    utts = sorted(load_eval_set(EvalSource(max_samples=40)).utterances, key=lambda u: len(u.audio))
    picked = utts[::5][:8]
    joined = np.concatenate([utts[-1].audio, utts[-2].audio])
    return [u.id for u in picked] + ["joined"], [u.audio for u in picked] + [joined]


def _in_process(engine: Path, waves: list[np.ndarray]) -> list[str]:
    from asr_optimize.runners.fused_engine import FusedRunner
    from asr_optimize.transcribe import ChunkingOptions, transcribe

    runner = FusedRunner(engine, device="cpu", precision="fp32")
    try:
        return transcribe(runner, waves, engine, chunking=ChunkingOptions(**LONG_FORM)).texts
    finally:
        runner.close()


def _batched(url: str, pipeline: str, waves: list[np.ndarray], rows: int = 4) -> list[str]:
    """Ragged requests of ``rows`` utterances (audio + audio_length): the pipeline batches them per bucket."""
    import tritonclient.http as httpclient

    from asr_optimize.triton.hotswap import http_client

    client = http_client(url)
    texts = []
    for start in range(0, len(waves), rows):
        part = waves[start : start + rows]
        audio = np.zeros((len(part), max(len(w) for w in part)), dtype=np.float32)
        for i, w in enumerate(part):
            audio[i, : len(w)] = w
        lengths = np.array([[len(w)] for w in part], dtype=np.int64)
        inputs = [httpclient.InferInput("audio", list(audio.shape), "FP32"),
                  httpclient.InferInput("audio_length", list(lengths.shape), "INT64")]
        inputs[0].set_data_from_numpy(audio)
        inputs[1].set_data_from_numpy(lengths)
        result = client.infer(pipeline, inputs)
        texts += [t.decode("utf-8") for t in result.as_numpy("text").reshape(-1)]
    return texts


@requires_triton
@pytest.mark.triton
def test_pipeline_on_the_fused_engine_matches_in_process(server, engine: Path) -> None:
    from asr_optimize.triton.hotswap import CanarySet, SwapOptions
    from tasks.deploy_triton import deploy

    ids, waves = _waves()
    expected = _in_process(engine, waves)
    assert all(expected) and len(set(expected)) == len(expected)
    canary = CanarySet(ids, waves, expected)
    opts = SwapOptions(grace_s=0.2, batching=_batching(fused_warmup=True, fused_profile_every=4))
    result, decision = deploy(engine, DEMO_MODEL, server.repository, server.http_url, canary, opts,
                              source="fused-fp16:test")
    assert result.status == "ok" and decision.promoted, decision.summary()
    assert [row.triton for row in decision.canary] == expected  # one request per utterance (canary)
    assert _batched(server.http_url, repo_mod.DEFAULT_PIPELINE_NAME, waves) == expected  # padded batches
    manifest = repo_mod.read_manifest(server.repository, repo_mod.DEFAULT_MODEL_NAME, decision.serving_version)
    assert manifest is not None and manifest.kind == "python_fused" and manifest.engine_format == 1
    # warm-up ran every padded (batch 1/2/4) x (bucket 1.5/2/3.5 s + the 3.5 s window) shape
    assert "warm-up of 12 shapes (fp32 on cpu)" in server.log_tail(200_000)
    assert "execute phases over 4 executes" in server.log_tail(200_000)  # fused_profile_every
    _acoustic_matches_in_process(server.http_url, engine, waves[:2])


def _acoustic_matches_in_process(url: str, engine: Path, waves: list[np.ndarray]) -> None:
    """The acoustic model alone: a padded batch and an unpadded request give the runner's logits."""
    import tritonclient.http as httpclient

    from asr_optimize.audio.load import make_batch
    from asr_optimize.runners.fused_engine import FusedRunner
    from asr_optimize.triton.hotswap import http_client

    batch = make_batch(waves)
    runner = FusedRunner(engine, device="cpu", precision="fp32")
    try:
        alone = batch.input_values[:1, : len(waves[0])]
        expected = [runner.infer(batch.input_values, batch.attention_mask), runner.infer(alone, None)]
    finally:
        runner.close()
    client = http_client(url)
    for values, mask, want in ((batch.input_values, batch.attention_mask, expected[0]),
                               (alone, np.ones(alone.shape, dtype=np.int64), expected[1])):
        inputs = [httpclient.InferInput("input_values", list(values.shape), "FP32"),
                  httpclient.InferInput("attention_mask", list(mask.shape), "INT64")]
        inputs[0].set_data_from_numpy(np.ascontiguousarray(values))
        inputs[1].set_data_from_numpy(mask.astype(np.int64))
        got = client.infer(repo_mod.DEFAULT_MODEL_NAME, inputs).as_numpy("logits")
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=1e-4)


@requires_triton
@pytest.mark.triton
def test_swap_between_onnx_and_fused_keeps_serving(server, engine: Path, tmp_path: Path) -> None:
    from asr_optimize.triton.hotswap import CanarySet, SwapOptions, hot_swap, http_client, pipeline_transcribe

    model, pipeline = "am_mixed", "asr_mixed"
    ids, waves = _waves()
    ids, waves = ids[:4], waves[:4]
    expected = _in_process(engine, waves)
    canary = CanarySet(ids, waves, expected)
    onnx = export(DEMO_MODEL, tmp_path / "onnx")

    def swap(artifact: Path, **batching: object):
        opts = SwapOptions(model_name=model, pipeline_name=pipeline, grace_s=0.2, batching=_batching(**batching))
        return hot_swap(server.repository, artifact, DEMO_MODEL, canary, server.http_url, opts)

    first = swap(onnx)
    assert first.promoted and first.serving_version == 1, first.summary()
    # auto instance kinds differ (ONNX Runtime: CPU, fused: GPU): refused before anything loads, v1 serves
    refused = swap(engine, instance_kind="auto")
    assert refused.action == "refused" and "instance_kind" in " ".join(refused.reasons)
    assert repo_mod.version_dirs(server.repository, model) == [1]

    with ClientLoop(server.http_url, pipeline, waves[0]) as loop:
        to_fused = swap(engine)
        assert to_fused.promoted and to_fused.previous_version == 1, to_fused.summary()
        client = http_client(server.http_url)
        assert pipeline_transcribe(client, pipeline, waves, acoustic_version=1) == expected  # ONNX beside fused
        back = swap(onnx)
    fused_version = to_fused.serving_version
    assert back.promoted and back.previous_version == fused_version and back.retired_versions == [1], back.summary()
    assert loop.errors == [] and len(loop.texts) >= 5 and set(loop.outcomes) == {expected[0]}
    kinds = {v: repo_mod.read_manifest(server.repository, model, v).kind for v in back.live_versions}
    assert kinds == {fused_version: "python_fused", back.serving_version: "python_onnxruntime"}
    assert pipeline_transcribe(http_client(server.http_url), pipeline, waves) == expected


@requires_triton
@pytest.mark.triton
def test_unknown_engine_format_fails_to_load_and_rolls_back(server, engine: Path, tmp_path: Path) -> None:
    import json
    import shutil

    from asr_optimize.triton.hotswap import CanarySet, SwapOptions, hot_swap

    future = tmp_path / "future-engine"
    shutil.copytree(engine, future)
    meta = json.loads((future / "engine.json").read_text())
    (future / "engine.json").write_text(json.dumps({**meta, "format": 99}))
    ids, waves = _waves()
    opts = SwapOptions(model_name="am_future", pipeline_name="asr_future", grace_s=0, load_timeout_s=60,
                       batching=_batching())
    decision = hot_swap(server.repository, future, DEMO_MODEL, CanarySet(ids[:1], waves[:1], ["x"]),
                        server.http_url, opts)
    assert decision.action == "rolled_back" and decision.serving_version is None
    assert "engine format 99 is unknown to the asr_optimize installed" in " ".join(decision.reasons)
    assert repo_mod.version_dirs(server.repository, "am_future") == []
