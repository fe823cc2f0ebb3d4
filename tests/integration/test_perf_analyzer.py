"""Triton's perf_analyzer 2.51 (``make perf-analyzer``) against the real bundled tritonserver serving the demo model
through the ``asr`` pipeline: real numbers, checked against Triton's own statistics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from asr_optimize.triton import repository as repo_mod
from tests.support.assets import DEMO_MODEL, REPO_ROOT
from tests.support.triton_server import demo_canary

pytestmark = pytest.mark.requires("tritonserver", "perf-analyzer")

PIPELINE = repo_mod.DEFAULT_PIPELINE_NAME


@pytest.fixture(scope="module")
def served(demo_onnx: Path, tmp_path_factory: pytest.TempPathFactory):
    """The demo model promoted as v1 behind the ``asr`` pipeline in a running bundled server."""
    from asr_optimize.triton.hotswap import SwapOptions, hot_swap
    from asr_optimize.triton.server import TritonServer

    canary = demo_canary(DEMO_MODEL, n=4)
    with TritonServer(tmp_path_factory.mktemp("repo")) as server:
        decision = hot_swap(server.repository, demo_onnx, DEMO_MODEL, canary, server.http_url, SwapOptions(grace_s=0))
        assert decision.promoted, decision.summary()
        yield server, canary


def _successes(server, model: str) -> int:
    """Successful requests Triton counted for ``model`` (all versions)."""
    from asr_optimize.triton.endpoint import http_client

    stats = http_client(server.http_url).get_inference_statistics(model)
    return sum(int(s["inference_stats"]["success"]["count"]) for s in stats["model_stats"])


def test_sweep_against_the_served_pipeline(served, tmp_path: Path) -> None:
    """Concurrency 1 and 2 with 1 s requests of demo speech: stable levels with real numbers, and Triton counted at
    least as many successful ``asr`` requests as perf_analyzer reports having measured."""
    from asr_optimize.loadtest.perf_analyzer import PerfAnalyzerOptions, run_perf_analyzer

    server, canary = served
    opts = PerfAnalyzerOptions(concurrency=[1, 2], durations_s=[1.0], measurement_interval_ms=1000,
                               stability_percentage=60, max_trials=8, label="demo model, CPU")
    before = _successes(server, PIPELINE)
    seen = []
    result = run_perf_analyzer(server.grpc_url, opts, canary.waves, out_dir=tmp_path, device="cpu",
                               progress=seen.append)
    after = _successes(server, PIPELINE)

    assert result.version == "2.51.0"
    assert [(r.duration_s, r.concurrency) for r in result.rows] == [(1.0, 1), (1.0, 2)] and seen == result.rows
    for row in result.rows:
        assert row.stable and row.reason == "", row.reason
        assert row.requests is not None and row.requests > 0
        assert row.inferences_per_s > 0 and row.x_real_time == pytest.approx(row.inferences_per_s, abs=0.01)
        assert 0 < row.p50_ms <= row.p90_ms <= row.p95_ms <= row.p99_ms
        assert row.server_queue_ms is not None and row.server_queue_ms >= 0
        assert row.server_compute_infer_ms is not None and row.server_compute_infer_ms > 0
        # Triton's time per request cannot exceed what the client waited on average (plus rounding)
        assert row.server_queue_ms + row.server_compute_ms <= row.avg_ms * 1.05 + 1
    assert after - before >= sum(r.requests for r in result.rows)

    files = {p.name for p in tmp_path.iterdir()}
    assert {"perf_analyzer.csv", "perf_analyzer.md", "perf_analyzer.json", "raw"} <= files
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["1s-c1.csv", "1s-c1.log", "1s-c2.csv",
                                                                     "1s-c2.log"]
    assert (tmp_path / "perf_analyzer.csv").read_text().count("\n") == 3
    assert json.loads((tmp_path / "perf_analyzer.json").read_text())["rows"][0]["stable"] is True


def test_an_unstable_level_is_recorded_and_the_sweep_goes_on(served) -> None:
    """Two trials can never give perf_analyzer its 3 agreeing windows: each level is recorded as unstable with
    perf_analyzer's reason instead of failing the sweep."""
    from asr_optimize.loadtest.perf_analyzer import PerfAnalyzerOptions, run_perf_analyzer

    server, canary = served
    opts = PerfAnalyzerOptions(concurrency=[1, 2], durations_s=[1.0], measurement_interval_ms=1500,
                               stability_percentage=1, max_trials=2)
    result = run_perf_analyzer(server.grpc_url, opts, canary.waves[:2])
    assert [r.concurrency for r in result.rows] == [1, 2]
    for row in result.rows:
        assert not row.stable and row.inferences_per_s is None
        # perf_analyzer's own words: no 3 agreeing windows in 2 (or, on a host too busy to answer within a window,
        # no valid request in one)
        assert "Failed to obtain stable measurement within 2 measurement windows" in row.reason \
            or "No valid requests recorded" in row.reason, row.reason
    assert len(result.unstable) == 2 and "Unstable levels: 2" in result.markdown()


def test_cli(served, tmp_path: Path) -> None:
    """``asr-optimize perf-analyzer`` as a user runs it: a table, the results folder, exit 0; a model that is not
    served is one line and exit 2."""
    server, _ = served

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", "from flows.cli import main; main()", "perf-analyzer",
                               "--url", server.grpc_url, "--concurrency", "1", "--durations", "1", "--utterances", "2",
                               "--measurement-interval", "500", "--stability-percentage", "80", *args],
                              cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                              env={**os.environ, "COLUMNS": "400"})

    done = cli("--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "perf_analyzer 2.51.0" in done.stdout and "| 1 | 1 |" in done.stdout
    assert (tmp_path / "out" / "perf_analyzer.md").is_file()

    done = cli("--model", "not_served")
    output = (done.stdout + done.stderr).strip()
    assert done.returncode == 2 and "Traceback" not in output, output[-3000:]
    assert "unknown model: 'not_served'" in output


def test_int16_requests(served, tmp_path: Path) -> None:
    """16-bit PCM through ``audio_pcm16``: perf_analyzer's requests all succeed on the ``asr`` model."""
    from asr_optimize.loadtest.perf_analyzer import PerfAnalyzerOptions, run_perf_analyzer

    server, canary = served
    opts = PerfAnalyzerOptions(concurrency=[1], durations_s=[1.0], measurement_interval_ms=1000,
                               stability_percentage=60, max_trials=8, input_dtype="int16")
    before = _successes(server, PIPELINE)
    result = run_perf_analyzer(server.grpc_url, opts, canary.waves[:2], out_dir=tmp_path)
    [row] = result.rows
    assert row.stable and row.requests and row.inferences_per_s > 0, row.reason
    assert _successes(server, PIPELINE) - before >= row.requests
