"""Reload soak against the real bundled tritonserver: swaps under continuous load, zero failed requests."""

from __future__ import annotations

from pathlib import Path

import pytest

from asr_optimize.triton import repository as repo_mod
from tests.triton_server import DEMO_MODEL, copy_artifact, demo_canary, export, requires_triton

pytestmark = [pytest.mark.triton, pytest.mark.slow, requires_triton]

MODEL, PIPELINE = repo_mod.DEFAULT_MODEL_NAME, repo_mod.DEFAULT_PIPELINE_NAME


def test_short_soak(tmp_path: Path) -> None:
    """3 swaps A -> B -> A under 2 concurrent gRPC clients: every request answered, answers never change."""
    from asr_optimize.loadtest.soak import CPU_NOTE, SoakOptions, soak
    from asr_optimize.triton.hotswap import SwapOptions, hot_swap
    from asr_optimize.triton.server import TritonServer

    good = export(DEMO_MODEL, tmp_path / "a")
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


def test_memory_growth_counts_from_the_steady_live_set() -> None:
    """One version serves before the first swap, two after it (keep_versions=2): that step is not growth."""
    from asr_optimize.loadtest.soak import SwapRecord, memory_growth

    def swap(index: int, live: list[int], used: list[float] | None) -> SwapRecord:
        return SwapRecord(index=index, artifact="a", action="promoted", serving_version=live[-1], seconds=1.0,
                          requests_during=1, failed_during=0, p99_during_ms=1.0, gpu_used_mb=used, live_versions=live)

    swaps = [swap(1, [1, 2], [16020.0, 480.0]), swap(2, [2, 3], [16022.0, 480.0]), swap(3, [3, 4], [16021.0, 480.0])]
    assert memory_growth(swaps, [16030.0, 480.0]) == 10.0
    assert memory_growth([swap(1, [1], [8000.0]), swap(2, [1, 2], [16000.0]), swap(3, [2, 3], [16100.0])],
                         [16100.0]) == 100.0  # the first swap had fewer live versions: the second is the base
    assert memory_growth([swap(1, [1, 2], None)], None) is None  # no GPU
