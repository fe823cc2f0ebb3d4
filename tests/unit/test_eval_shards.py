"""Sharding an evaluation: every shard meets exactly the batches of the one-process run, and the merge rebuilds what
one process reports (statuses, transcripts, the largest logit difference against the reference)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from asr_optimize.audio.load import synthetic_audio
from asr_optimize.eval_shards import BackendShard, ShardResult, merge_shards, plan_shards, transcribe_shard
from asr_optimize.runners.registry import baseline_spec, build_runner
from asr_optimize.transcribe import ChunkingOptions, transcribe

CHUNKING = ChunkingOptions(chunk_s=3.0, stride_s=0.5)  # 5 s and 7 s recordings run in windows


def _waves() -> list[np.ndarray]:
    """Short utterances of mixed lengths (two of equal length: ties keep their order), one silent, two long."""
    short = [synthetic_audio(1, s, seed=i)[0] for i, s in enumerate([1.3, 0.6, 2.2, 0.9, 1.3, 2.8, 0.5, 1.7, 1.1])]
    long = [synthetic_audio(1, 5.0, seed=20)[0], synthetic_audio(1, 7.0, seed=21)[0]]
    return [*short[:3], long[0], *short[3:6], np.zeros(16_000, dtype=np.float32), long[1], *short[6:]]


def test_plan_keeps_whole_batches_long_recordings_together_and_every_utterance_once(tiny_model: Path) -> None:
    waves = _waves()
    shards = plan_shards(waves, tiny_model, batch_size=2, chunking=CHUNKING, shard_size=3)  # 3 -> 4: two batches
    assert sorted(i for shard in shards for i in shard) == list(range(len(waves)))
    assert [3, 8] in shards  # the long recordings, together
    short = [s for s in shards if s != [3, 8]]
    assert [len([i for i in s if i != 7]) for s in short] == [4, 4, 1]  # whole batches; the silent one rides along
    assert 7 in short[0]


def test_each_shard_gives_the_one_process_logits_bit_for_bit(tiny_model: Path) -> None:
    waves = _waves()
    runner = build_runner(baseline_spec(tiny_model, "cpu"))
    try:
        whole = transcribe(runner, waves, tiny_model, batch_size=2, chunking=CHUNKING)
        for shard in plan_shards(waves, tiny_model, batch_size=2, chunking=CHUNKING, shard_size=3):
            part = transcribe(runner, [waves[i] for i in shard], tiny_model, batch_size=2, chunking=CHUNKING)
            for j, i in enumerate(shard):
                assert part.texts[j] == whole.texts[i]
                np.testing.assert_array_equal(part.logits[j], whole.logits[i])
    finally:
        runner.close()


def test_a_shard_reports_every_backend_and_the_differences_between_them(tiny_model: Path) -> None:
    waves = synthetic_audio(3, 1.0, seed=5)
    spec = baseline_spec(tiny_model, "cpu")
    cuda = spec.model_copy(update={"precision": "fp16"})  # fp16 PyTorch runs only on CUDA: skipped here
    out = transcribe_shard([spec, cuda, spec], waves, tiny_model, 2, CHUNKING)
    assert [b.status for b in out] == ["ok", "skipped", "ok"] and "CUDA" in out[1].reason
    assert out[0].logit_diffs == {} and out[2].logit_diffs == {spec.label: [0.0, 0.0, 0.0]}  # same model twice
    assert out[2].texts == out[0].texts and len(out[0].texts) == 3


def _shard(indices: list[int], *backends: BackendShard) -> ShardResult:
    return ShardResult(indices=indices, backends=list(backends))


def test_merge_rebuilds_the_one_process_view() -> None:
    a, b, c = "pytorch:eager:fp32@cpu", "onnxruntime:exported:fp32@cpu", "onnxruntime:optimized:fp16@cpu"
    shards = [
        _shard([0, 3], BackendShard(label=a, status="failed", reason="OOM"),
               BackendShard(label=b, status="ok", texts=["x0", "x3"]),
               BackendShard(label=c, status="ok", texts=["y0", "y3"], logit_diffs={b: [0.5, 0.25]})),
        _shard([1, 2], BackendShard(label=a, status="ok", texts=["r1", "r2"]),
               BackendShard(label=b, status="ok", texts=["x1", "x2"], logit_diffs={a: [1.0, 1.0]}),
               BackendShard(label=c, status="ok", texts=["y1", "y2"], logit_diffs={a: [9.0, 9.0], b: [0.125, 2.0]})),
    ]
    runs = merge_shards([a, b, c], 4, shards)
    assert (runs[0].status, runs[0].reason) == ("failed", "OOM")  # failed on one shard: failed, as in one process
    assert (runs[1].status, runs[1].texts, runs[1].max_logit_diff) == ("ok", ["x0", "x1", "x2", "x3"], None)
    assert runs[2].texts == ["y0", "y1", "y2", "y3"] and runs[2].max_logit_diff == 2.0  # against b, the reference
