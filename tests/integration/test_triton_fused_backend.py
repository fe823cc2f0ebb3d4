"""The fused engine served from the real bundled tritonserver (python backends ``fused_acoustic.py`` and the one-hop
``ctc_pipeline.py``, CPU fp32 here).

What this proves: an engine folder goes through the real hot-swap (``tasks.deploy_triton.deploy``) into a repository,
the ``asr`` model runs the serving engine itself (one hop: the acoustic model answers only the canary), pads
utterances to length buckets and batches to powers of two (warm-up runs every bucket shape at load), takes float32
and 16-bit PCM audio, and its transcripts equal in-process ``transcribe`` with the same engine; an ONNX
version and a fused version live under one config and swap both ways under load. What it does not: CUDA (fp16/fp8,
graph capture, DLPack inputs), which needs a CUDA GPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from asr_optimize.triton import repository as repo_mod
from asr_optimize.triton.repository import BatchingOptions
from tests.support.assets import DEMO_MODEL
from tests.support.triton_server import ClientLoop

pytestmark = pytest.mark.requires("tritonserver")

BUCKETS_S = [1.5, 2.0, 3.5]  # the demo test set is 1.35-3.04 s: several buckets get used
LONG_FORM = {"chunk_s": 3.5, "stride_s": 0.5}  # a joined 6 s recording takes the long-form window path


@pytest.fixture()
def engine(demo_fused_engine: Path) -> Path:
    """The demo model's fused engine (fp16 folder; served in fp32 on the CPU)."""
    return demo_fused_engine


def _batching(**extra: object) -> BatchingOptions:
    from asr_optimize.transcribe import ChunkingOptions

    options = {"instance_kind": "KIND_CPU", "max_batch_size": 4, "preferred_batch_sizes": [4],
               "buckets_s": BUCKETS_S, "long_form": ChunkingOptions(**LONG_FORM), **extra}
    return BatchingOptions(**options)


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
    """Ragged requests of ``rows`` utterances (audio + audio_length): the pipeline batches them per bucket. int16
    waves go as ``audio_pcm16``."""
    import tritonclient.http as httpclient

    from asr_optimize.triton.endpoint import http_client

    client = http_client(url)
    texts = []
    pcm16 = waves[0].dtype == np.int16
    for start in range(0, len(waves), rows):
        part = waves[start : start + rows]
        audio = np.zeros((len(part), max(len(w) for w in part)), dtype=waves[0].dtype)
        for i, w in enumerate(part):
            audio[i, : len(w)] = w
        lengths = np.array([[len(w)] for w in part], dtype=np.int64)
        inputs = [httpclient.InferInput("audio_pcm16" if pcm16 else "audio", list(audio.shape),
                                        "INT16" if pcm16 else "FP32"),
                  httpclient.InferInput("audio_length", list(lengths.shape), "INT64")]
        inputs[0].set_data_from_numpy(audio)
        inputs[1].set_data_from_numpy(lengths)
        result = client.infer(pipeline, inputs)
        texts += [t.decode("utf-8") for t in result.as_numpy("text").reshape(-1)]
    return texts


def test_pipeline_on_the_fused_engine_matches_in_process(triton, engine: Path) -> None:
    from asr_optimize.triton.hotswap import CanarySet, SwapOptions
    from tasks.deploy_triton import deploy

    ids, waves = _waves()
    expected = _in_process(engine, waves)
    assert all(expected) and len(set(expected)) == len(expected)
    canary = CanarySet(ids, waves, expected)
    opts = SwapOptions(grace_s=0.2, batching=_batching(fused_warmup=True, fused_profile_every=4))
    result, decision = deploy(engine, DEMO_MODEL, triton.repository, triton.http_url, canary, opts,
                              source="fused-fp16:test")
    assert result.status == "ok" and decision.promoted, decision.summary()
    assert [row.triton for row in decision.canary] == expected  # one request per utterance (canary)
    assert _batched(triton.http_url, repo_mod.DEFAULT_PIPELINE_NAME, waves) == expected  # padded batches
    manifest = repo_mod.read_manifest(triton.repository, repo_mod.DEFAULT_MODEL_NAME, decision.serving_version)
    assert manifest is not None and manifest.kind == "python_fused" and manifest.engine_format == 1
    # warm-up ran every padded (batch 1/2/4) x (bucket 1.5/2/3.5 s + the 3.5 s window) shape, in the acoustic model
    # and in the one-hop asr model
    log = triton.log_tail(400_000)
    assert log.count("warm-up of 12 shapes (fp32 on cpu)") >= 2
    assert "execute phases over 4 executes" in log  # fused_profile_every
    _acoustic_matches_in_process(triton.http_url, engine, waves[:2])


def _successes(url: str, model: str) -> int:
    """Requests Triton has answered for ``model`` (every loaded version)."""
    from asr_optimize.triton.endpoint import http_client

    stats = http_client(url).get_inference_statistics(model)
    return sum(int(m["inference_stats"]["success"]["count"]) for m in stats["model_stats"])


def test_one_hop_text_equals_in_process_for_float32_and_int16(triton, engine: Path) -> None:
    """The asr model runs the serving fused engine itself: short and long-form requests, float32 and 16-bit PCM,
    give in-process ``transcribe``'s text, and the acoustic model answers none of them (no BLS hop)."""
    from asr_optimize.triton.hotswap import CanarySet, SwapOptions, hot_swap

    model, pipeline = "am_one_hop", "asr_one_hop"
    ids, waves = _waves()
    expected = _in_process(engine, waves)
    opts = SwapOptions(model_name=model, pipeline_name=pipeline, grace_s=0.2, batching=_batching())
    decision = hot_swap(triton.repository, engine, DEMO_MODEL, CanarySet(ids, waves, expected), triton.http_url, opts)
    assert decision.promoted, decision.summary()
    config = repo_mod.read_config(triton.repository, pipeline)
    assert config.parameters["one_hop"].string_value == "true"
    assert config.parameters["one_hop_device"].string_value == "cpu"
    acoustic_before = _successes(triton.http_url, model)
    assert _batched(triton.http_url, pipeline, waves) == expected  # 8 utterances + a long-form recording
    pcm = [np.clip(np.round(w * 32767.0), -32768, 32767).astype(np.int16) for w in waves]
    assert _batched(triton.http_url, pipeline, pcm) == _in_process(engine, [p / np.float32(32768.0) for p in pcm])
    assert _successes(triton.http_url, model) == acoustic_before
    assert _successes(triton.http_url, pipeline) >= 2 * len(waves) // 4


def _acoustic_matches_in_process(url: str, engine: Path, waves: list[np.ndarray]) -> None:
    """The acoustic model alone: a padded batch and an unpadded request give the runner's logits."""
    import tritonclient.http as httpclient

    from asr_optimize.audio.load import make_batch
    from asr_optimize.runners.fused_engine import FusedRunner
    from asr_optimize.triton.endpoint import http_client

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


def test_swap_between_onnx_and_fused_keeps_serving(triton, engine: Path, demo_onnx: Path) -> None:
    from asr_optimize.triton.endpoint import http_client
    from asr_optimize.triton.hotswap import CanarySet, SwapOptions, hot_swap, pipeline_transcribe

    model, pipeline = "am_mixed", "asr_mixed"
    ids, waves = _waves()
    ids, waves = ids[:4], waves[:4]
    expected = _in_process(engine, waves)
    canary = CanarySet(ids, waves, expected)
    onnx = demo_onnx

    def swap(artifact: Path, **batching: object):
        opts = SwapOptions(model_name=model, pipeline_name=pipeline, grace_s=0.2, batching=_batching(**batching))
        return hot_swap(triton.repository, artifact, DEMO_MODEL, canary, triton.http_url, opts)

    first = swap(onnx)
    assert first.promoted and first.serving_version == 1, first.summary()
    # auto instance kinds differ (ONNX Runtime: CPU, fused: GPU): refused before anything loads, v1 serves
    refused = swap(engine, instance_kind="auto")
    assert refused.action == "refused" and "instance_kind" in " ".join(refused.reasons)
    assert repo_mod.version_dirs(triton.repository, model) == [1]

    with ClientLoop(triton.http_url, pipeline, waves[0]) as loop:
        to_fused = swap(engine)
        assert to_fused.promoted and to_fused.previous_version == 1, to_fused.summary()
        client = http_client(triton.http_url)
        assert pipeline_transcribe(client, pipeline, waves, acoustic_version=1) == expected  # ONNX beside fused
        back = swap(onnx)
    fused_version = to_fused.serving_version
    assert back.promoted and back.previous_version == fused_version and back.retired_versions == [1], back.summary()
    assert loop.errors == [] and len(loop.texts) >= 5 and set(loop.outcomes) == {expected[0]}
    kinds = {v: repo_mod.read_manifest(triton.repository, model, v).kind for v in back.live_versions}
    assert kinds == {fused_version: "python_fused", back.serving_version: "python_onnxruntime"}
    assert pipeline_transcribe(http_client(triton.http_url), pipeline, waves) == expected


def test_unknown_engine_format_fails_to_load_and_rolls_back(triton, engine: Path, tmp_path: Path) -> None:
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
    decision = hot_swap(triton.repository, future, DEMO_MODEL, CanarySet(ids[:1], waves[:1], ["x"]),
                        triton.http_url, opts)
    assert decision.action == "rolled_back" and decision.serving_version is None
    assert "engine format 99 is unknown to the asr_optimize installed" in " ".join(decision.reasons)
    assert repo_mod.version_dirs(triton.repository, "am_future") == []
