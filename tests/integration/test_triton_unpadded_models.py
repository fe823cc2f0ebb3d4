"""Models whose output zero padding changes, served by the real bundled tritonserver as they run in process.

A wav2vec2-base-style model (group-norm feature encoder, post-LN, no attention mask) and a Wav2Vec2-Conformer, both
with random weights: their ONNX exports deploy through the hot swap (canary identical, promoted), and the served
transcripts of utterances of different lengths sent concurrently, in one ragged request, and of a long recording
(long-form windows) equal the in-process ones. The input handling comes from the version manifest.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from asr_optimize.triton import repository as repo_mod

pytestmark = pytest.mark.requires("tritonserver")

NAMES = {"group_norm": ("gn_ctc", "gn_asr"), "conformer": ("conformer_ctc", "conformer_asr")}


@pytest.fixture(scope="module")
def utterances() -> tuple[list[str], list[np.ndarray]]:
    """Eight demo test utterances (1.4-3.0 s, all different lengths) and one 25 s recording joined from more."""
    from asr_optimize.quality.eval_sets import EvalSource, load_eval_set

    utts = load_eval_set(EvalSource(max_samples=20)).utterances
    pause = np.zeros(4_800, dtype=np.float32)
    joined: list[np.ndarray] = []
    for u in utts[8:]:
        if sum(p.size for p in joined) > 25 * 16_000:
            break
        joined += [u.audio, pause]
    return [u.id for u in utts[:8]] + ["joined-25s"], [u.audio for u in utts[:8]] + [np.concatenate(joined)]


def _ragged_request(client, pipeline: str, waves: list[np.ndarray]) -> list[str]:
    """One ``asr`` request holding every utterance, right-padded, with ``audio_length``."""
    import tritonclient.http as httpclient

    audio = np.zeros((len(waves), max(w.size for w in waves)), dtype=np.float32)
    for i, wave in enumerate(waves):
        audio[i, : wave.size] = wave
    lengths = np.array([[w.size] for w in waves], dtype=np.int64)
    inputs = [httpclient.InferInput("audio", list(audio.shape), "FP32"),
              httpclient.InferInput("audio_length", list(lengths.shape), "INT64")]
    inputs[0].set_data_from_numpy(audio)
    inputs[1].set_data_from_numpy(lengths)
    result = client.infer(pipeline, inputs)
    return [t.decode("utf-8") for t in result.as_numpy("text").reshape(-1)]


@pytest.mark.parametrize("which", ["group_norm", "conformer"])
def test_unpadded_model_served_as_in_process(which: str, request: pytest.FixtureRequest, triton, utterances) -> None:
    from asr_optimize.runners.ort_runner import OrtRunner
    from asr_optimize.runners.torch_runner import TorchRunner
    from asr_optimize.transcribe import transcribe
    from asr_optimize.triton.endpoint import http_client
    from asr_optimize.triton.hotswap import CanarySet, SwapOptions, hot_swap, pipeline_transcribe
    from tasks.deploy_triton import health_check

    model_dir: Path = request.getfixturevalue(f"{which}_model")
    onnx_path: Path = request.getfixturevalue(f"{which}_onnx")
    model_name, pipeline = NAMES[which]
    ids, waves = utterances
    short = waves[:8]

    # the canary as the deploy stage builds it: PyTorch fp32 transcripts in process
    reference = transcribe(TorchRunner(model_dir), short, model_dir).texts
    canary = CanarySet(ids[:8], short, reference)
    decision = hot_swap(triton.repository, onnx_path, model_dir, canary, triton.http_url,
                        SwapOptions(model_name=model_name, pipeline_name=pipeline, grace_s=0))
    assert decision.promoted, decision.summary()
    assert decision.gate is not None and decision.gate.passed
    assert all(row.reference == row.triton for row in decision.canary) and len(decision.canary) == 8
    assert decision.input_policy is not None and not decision.input_policy.pad_batches
    assert "exact lengths, never padded" in decision.markdown()
    manifest = repo_mod.read_manifest(triton.repository, model_name, 1)
    assert manifest is not None and manifest.input_policy == decision.input_policy and not manifest.pads_batches
    assert repo_mod.pipeline_pads(triton.repository, pipeline) is False

    # in process: mixed lengths in one batch = one at a time (the ONNX graph Triton serves)
    runner = OrtRunner(onnx_path)
    expected = transcribe(runner, waves, model_dir, batch_size=8)
    assert expected.windows[-1] > 1  # the 25 s recording runs as long-form windows
    assert expected.texts == [transcribe(runner, [w], model_dir, batch_size=1).texts[0] for w in waves]
    assert expected.texts[:8] == reference

    # served: every utterance twice, 8 requests in flight (the schedulers see different lengths at once)
    def served(wave: np.ndarray) -> str:
        return pipeline_transcribe(http_client(triton.http_url), pipeline, [wave])[0]

    with ThreadPoolExecutor(max_workers=8) as pool:
        texts = list(pool.map(served, waves * 2))
    assert texts == expected.texts * 2
    assert _ragged_request(http_client(triton.http_url), pipeline, short) == expected.texts[:8]

    health, report = health_check(triton.http_url, triton.repository, short[:2], model_name=model_name,
                                  pipeline_name=pipeline, n_requests=4)
    assert health.status == "ok", report.problems
