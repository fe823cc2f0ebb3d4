"""Reload soak against the real bundled tritonserver: swaps under continuous load, zero failed requests."""

from __future__ import annotations

from pathlib import Path

import pytest

from asr_optimize.triton import repository as repo_mod
from tests.support.assets import DEMO_MODEL
from tests.support.triton_server import copy_artifact, demo_canary

pytestmark = pytest.mark.requires("tritonserver")

MODEL, PIPELINE = repo_mod.DEFAULT_MODEL_NAME, repo_mod.DEFAULT_PIPELINE_NAME


def test_short_soak(demo_onnx: Path, tmp_path: Path) -> None:
    """3 swaps A -> B -> A under 2 concurrent gRPC clients: every request answered, answers never change."""
    from asr_optimize.loadtest.soak import CPU_NOTE, SoakOptions, soak
    from asr_optimize.triton.hotswap import SwapOptions, hot_swap
    from asr_optimize.triton.server import TritonServer

    good = copy_artifact(demo_onnx, tmp_path / "a" / "model.onnx")
    other = copy_artifact(good, tmp_path / "b" / "model.onnx")
    canary = demo_canary(DEMO_MODEL, 3)
    with TritonServer(tmp_path / "repo") as server:
        assert hot_swap(server.repository, good, DEMO_MODEL, canary, server.http_url, SwapOptions(grace_s=0)).promoted
        opts = SoakOptions(swaps=3, concurrency=2, steady_s=1.0, pause_s=0.3, swap=SwapOptions(grace_s=0.3),
                           label="demo, CPU")
        seen = []
        result = soak(server.repository, (other, good), DEMO_MODEL, canary, server.http_url, server.grpc_url, opts,
                      out_dir=tmp_path / "out", progress=seen.append)
    assert result.failed == 0, result.errors
    assert [s.action for s in result.swaps] == ["promoted"] * 3 and len(seen) == 3
    assert [s.serving_version for s in result.swaps] == [2, 3, 4]
    assert [s.live_versions for s in result.swaps] == [[1, 2], [2, 3], [3, 4]]
    # one reload per swap: older versions leave with the candidate's load, so no retire phase after promotion
    assert all({"load", "canary", "promote"} <= set(s.timings) and "retire" not in s.timings for s in result.swaps)
    assert all(s.requests_during > 0 and s.failed_during == 0 for s in result.swaps)
    assert result.requests >= 20 and not result.distinct_answers_changed
    assert result.p99_steady_ms and result.p99_swap_ms and result.p50_steady_ms <= result.p99_steady_ms
    assert result.gpu_growth_mb is None and result.gpu_note == CPU_NOTE  # no GPU on this machine
    assert repo_mod.version_dirs(server.repository, MODEL) == [3, 4]  # keep_versions=2
    files = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"soak.csv", "soak.md", "soak.json", "soak.html"} <= files
    assert CPU_NOTE in (tmp_path / "out" / "soak.csv").read_text()
    assert "3 swaps (3 promoted)" in (tmp_path / "out" / "soak.md").read_text()
