"""Reload soak arithmetic without a server: GPU memory growth counts from the steady live set.
(The soak itself, against the real bundled tritonserver: ``tests/integration/test_soak.py``.)"""

from __future__ import annotations


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
