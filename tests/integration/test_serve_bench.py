"""serve-bench, length buckets and long-form chunking in the ``asr`` pipeline, against the real bundled tritonserver."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from asr_optimize.triton import repository as repo_mod
from tests.support.assets import DEMO_MODEL
from tests.support.triton_server import demo_canary

pytestmark = pytest.mark.requires("tritonserver")

MODEL, PIPELINE = repo_mod.DEFAULT_MODEL_NAME, repo_mod.DEFAULT_PIPELINE_NAME


@pytest.fixture(scope="module")
def deployed(demo_onnx: Path, tmp_path_factory: pytest.TempPathFactory):
    """The demo model promoted as v1 (buckets 2/5/10/20 s) in a running bundled server."""
    from asr_optimize.triton.hotswap import SwapOptions, hot_swap
    from asr_optimize.triton.server import TritonServer

    onnx = demo_onnx
    canary = demo_canary(DEMO_MODEL)
    with TritonServer(tmp_path_factory.mktemp("repo")) as server:
        decision = hot_swap(server.repository, onnx, DEMO_MODEL, canary, server.http_url, SwapOptions(grace_s=0))
        assert decision.promoted, decision.summary()
        yield server, onnx, canary


def _transcripts(server, waves: list[np.ndarray], pipeline: str = PIPELINE) -> list[str]:
    from asr_optimize.triton.endpoint import http_client
    from asr_optimize.triton.hotswap import pipeline_transcribe

    return pipeline_transcribe(http_client(server.http_url), pipeline, waves)


def _add_pipeline(server, name: str, batching: repo_mod.BatchingOptions, chunking: bool = True) -> None:
    """A second pipeline over the same acoustic v1 with other bucket / chunking settings."""
    from asr_optimize.triton.endpoint import http_client

    repo_mod.write_pipeline(server.repository, name, DEMO_MODEL, MODEL, 1, True, 8, batching)
    if not chunking:
        (server.repository / name / "1" / "chunking.py").unlink()
    http_client(server.http_url).load_model(name)


def test_serve_bench_sweep(deployed, tmp_path: Path) -> None:
    """Concurrency 1 and 4 through the pipeline and the acoustic model alone: 0 failures, real numbers."""
    from asr_optimize.loadtest.loadgen import ServeBenchOptions, serve_bench

    server, _, canary = deployed
    opts = ServeBenchOptions(concurrency=[1, 4], window_s=0.4, max_windows=4, stable_windows=2,
                             min_window_requests=3, stability=0.5, label="demo model, CPU")
    seen = []
    result = serve_bench(server.grpc_url, canary.waves[:4], opts, out_dir=tmp_path, device="cpu", progress=seen.append)
    assert result.failed == 0, [r.errors for r in result.rows]
    assert [(r.target, r.concurrency) for r in result.rows] == [("pipeline", 1), ("pipeline", 4), ("acoustic", 1),
                                                                ("acoustic", 4)]
    assert len(seen) == 4
    for row in result.rows:
        assert row.requests > 0 and row.throughput_rps > 0 and row.x_real_time > 0
        assert 0 < row.p50_ms <= row.p90_ms <= row.p99_ms
        assert row.server_queue_ms is not None and row.server_queue_ms >= 0
        assert row.server_compute_ms is not None and row.server_compute_ms > 0
        assert row.acoustic_batch is not None and row.acoustic_batch >= 1
        # the server's time per request cannot exceed what the client waited on average (plus rounding)
        assert row.server_queue_ms + row.server_compute_ms <= row.mean_ms * 1.05 + 1
    pipeline = [r for r in result.rows if r.target == "pipeline"]
    assert pipeline[0].acoustic_compute_ms is not None and pipeline[0].acoustic_compute_ms > 0
    files = {p.name for p in tmp_path.iterdir()}
    assert {"serve_bench.csv", "serve_bench.md", "serve_bench.html", "serve_bench.json"} <= files
    csv_text = (tmp_path / "serve_bench.csv").read_text()
    assert csv_text.count("\n") == 5 and "p99_ms" in csv_text and "server_queue_ms" in csv_text
    assert "| pipeline |" in (tmp_path / "serve_bench.md").read_text()


def test_serve_bench_in_two_processes(deployed) -> None:
    """Two load-generator processes share a level: their records join one timeline, nothing fails, and the acoustic
    compute split (Triton's input / infer / output) adds up to the compute time."""
    from asr_optimize.loadtest.loadgen import ServeBenchOptions, serve_bench

    server, _, canary = deployed
    opts = ServeBenchOptions(concurrency=[4], targets=["acoustic"], window_s=0.4, max_windows=4, stable_windows=2,
                             min_window_requests=3, stability=0.5, processes=2)
    (row,) = serve_bench(server.grpc_url, canary.waves[:4], opts).rows
    assert row.failed == 0 and row.errors == [], row.errors
    assert row.requests > 0 and row.throughput_rps > 0 and 0 < row.p50_ms <= row.p99_ms
    assert row.acoustic_batch is not None and row.acoustic_batch >= 1
    parts = row.acoustic_input_ms + row.acoustic_infer_ms + row.acoustic_output_ms
    assert row.acoustic_infer_ms > 0 and abs(parts - row.acoustic_compute_ms) < 0.01


def test_bucket_padding_gives_the_same_text(deployed) -> None:
    """Utterances padded to 2/5 s buckets (masked) decode to the same text as sent at their own length."""
    server, _, canary = deployed
    _add_pipeline(server, "asr_exact", repo_mod.BatchingOptions(buckets_s=[]))
    config = repo_mod.read_config(server.repository, PIPELINE)
    assert config.parameters["bucket_samples"].string_value == "32000,80000,160000,320000"
    assert config.input[0].allow_ragged_batch
    waves = canary.waves
    assert len({w.size for w in waves}) > 1 and all(w.size < 5 * 16000 for w in waves)
    padded, exact = _transcripts(server, waves), _transcripts(server, waves, "asr_exact")
    assert padded == exact == canary.reference_transcripts
    assert any(padded)


def test_request_longer_than_largest_bucket(deployed) -> None:
    """Beyond the largest bucket: windows through chunking.py, same text as in-process chunked transcription;
    a pipeline without chunking.py refuses with a clear error."""
    from asr_optimize.runners.ort_runner import OrtRunner
    from asr_optimize.transcribe import ChunkingOptions, transcribe

    server, onnx, canary = deployed
    long_wave = np.concatenate([np.concatenate([w, np.zeros(4000, np.float32)]) for w in canary.waves])
    assert long_wave.size > 3 * 16000
    for name, long_form in [("asr_small", ChunkingOptions(chunk_s=2.0, stride_s=0.4)),  # silence splitting
                            ("asr_fixed", ChunkingOptions(chunk_s=2.0, stride_s=0.4, split_on_silence=False,
                                                          normalization="recording"))]:
        _add_pipeline(server, name, repo_mod.BatchingOptions(buckets_s=[1.0, 2.0], long_form=long_form))
        text = _transcripts(server, [long_wave], name)
        expected = transcribe(OrtRunner(onnx), [long_wave], DEMO_MODEL, chunking=long_form)
        assert text[0] == expected.texts[0] and len(text[0].split()) >= 4, name
        assert expected.windows[0] > 1
    text = _transcripts(server, [long_wave, canary.waves[0]], "asr_small")
    assert text[1] == canary.reference_transcripts[0]

    _add_pipeline(server, "asr_nochunk", repo_mod.BatchingOptions(buckets_s=[1.0, 2.0]), chunking=False)
    with pytest.raises(Exception, match=r"longer than the largest bucket \(2\.0 s\).*chunking"):
        _transcripts(server, [long_wave], "asr_nochunk")
    short = min(range(len(canary.waves)), key=lambda i: canary.waves[i].size)
    assert canary.waves[short].size <= 2 * 16000
    assert _transcripts(server, [canary.waves[short]], "asr_nochunk") == [canary.reference_transcripts[short]]


def test_ten_minute_request_through_the_served_pipeline_matches_local(deployed) -> None:
    """The long-form serving goal: a 10-minute recording sent as one request to the default ``asr`` pipeline returns
    the text the local path (``asr_optimize.transcribe`` with default chunking) gives, and a sensible WER against its
    script."""
    from asr_optimize.audio.longform_data import build_recording
    from asr_optimize.quality.eval_sets import load_eval_set
    from asr_optimize.quality.metrics import wer_cer
    from asr_optimize.runners.ort_runner import OrtRunner
    from asr_optimize.transcribe import transcribe

    server, onnx, _ = deployed
    recording = build_recording(load_eval_set().utterances, minutes=10)
    assert recording.audio.size == 10 * 60 * 16000
    (served,) = _transcripts(server, [recording.audio])
    local = transcribe(OrtRunner(onnx), [recording.audio], DEMO_MODEL)
    assert local.windows[0] > 100  # cut at silences, not one pass
    assert served == local.texts[0]
    assert wer_cer([recording.text], [served]).wer < 0.25
