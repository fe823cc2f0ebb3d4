"""Shard an evaluation over worker processes without changing a single logit.

``transcribe`` sorts the short utterances by length and runs them ``batch_size`` at a time, and pools the windows of
all long recordings; a batch's size and padding move logits in their last bits. So a shard here is a run of whole
one-process batches of the length-sorted short utterances, the long recordings stay together in one shard, and silent
ones (never run) join any shard: every utterance meets exactly the batch it meets in one process, and the merged
result equals the one-process result bit for bit.

PyTorch's CPU kernels also round differently with another number of intra-op threads, so a worker runs with the
calling process's count (measured on the demo model: 1 vs 2 threads moves logits by 1e-5; ONNX Runtime's do not
move). Runners are built inside the worker (they hold GPU and ONNX Runtime sessions, which do not pickle). A shard
sends back transcripts and, per utterance, the largest logit difference between backends, never the logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from asr_optimize.model.ctc import conv_geometry
from asr_optimize.quality.metrics import max_abs_logit_diff
from asr_optimize.runners.base import RunnerUnavailable
from asr_optimize.runners.registry import RunnerSpec, build_runner
from asr_optimize.transcribe import ChunkingOptions, check_recording, transcribe, utterance_route

Status = Literal["ok", "skipped", "failed"]


class BackendShard(BaseModel):
    """One backend on one shard."""

    label: str
    status: Status
    reason: str = ""
    texts: list[str] = Field(default_factory=list)
    logit_diffs: dict[str, list[float]] = Field(default_factory=dict)
    """Per utterance, max |logit difference| against each backend that ran before it on this shard: which backend is
    the reference (the first that ran on every shard) is only known once all shards are back."""


class ShardResult(BaseModel):
    """What a worker sends back for one shard: its utterances (positions in the evaluation set) and every backend."""

    indices: list[int]
    backends: list[BackendShard]


class BackendRun(BaseModel):
    """One backend over the whole evaluation set, as the gate scores it."""

    label: str
    status: Status
    reason: str = ""
    texts: list[str] = Field(default_factory=list)
    max_logit_diff: float | None = None
    """Against the reference (the first backend that ran); None for the reference itself."""


def plan_shards(waves: Sequence[np.ndarray], model_dir: Path, batch_size: int, chunking: ChunkingOptions,
                shard_size: int) -> list[list[int]]:
    """Utterance positions per shard, each shard made of whole one-process batches (``shard_size`` rounded up to a
    multiple of ``batch_size``); raises ``AudioInputError`` for an utterance ``transcribe`` would refuse."""
    hop, field_ = conv_geometry(Path(model_dir))
    checked = [check_recording(w, f"utterance {i}", chunking.max_duration_s) for i, w in enumerate(waves)]
    routes = [utterance_route(w, chunking, hop, field_) for w in checked]
    short = sorted((i for i, r in enumerate(routes) if r == "short"), key=lambda i: checked[i].size)  # as transcribe
    per_shard = -(-shard_size // batch_size) * batch_size
    shards = [sorted(short[s : s + per_shard]) for s in range(0, len(short), per_shard)]
    if long := [i for i, r in enumerate(routes) if r == "long"]:
        shards.append(long)  # windows are pooled across all long recordings: they stay together
    if silent := [i for i, r in enumerate(routes) if r == "silent"]:
        shards = [sorted([*shards[0], *silent]), *shards[1:]] if shards else [silent]
    return shards


def transcribe_shard(specs: list[RunnerSpec], waves: Sequence[np.ndarray], model_dir: Path, batch_size: int,
                     chunking: ChunkingOptions, torch_threads: int | None = None) -> list[BackendShard]:
    """Every backend on one shard's utterances, in ``specs`` order, exactly as ``evaluate_backends`` runs them;
    ``torch_threads``: PyTorch's intra-op threads here (None: leave them)."""
    if torch_threads:
        import torch

        torch.set_num_threads(torch_threads)
    logits_of: dict[str, list[np.ndarray]] = {}
    out: list[BackendShard] = []
    for spec in specs:
        try:
            runner = build_runner(spec)
        except RunnerUnavailable as exc:
            out.append(BackendShard(label=spec.label, status="skipped", reason=str(exc)))
            continue
        try:
            texts, logits = transcribe(runner, waves, model_dir, batch_size=batch_size, chunking=chunking)
        except Exception as exc:  # a broken backend is reported and gated out, not fatal for the others
            out.append(BackendShard(label=spec.label, status="failed", reason=f"{type(exc).__name__}: {exc}"))
            continue
        finally:
            runner.close()
        diffs = {label: [max_abs_logit_diff(r, c) for r, c in zip(earlier, logits, strict=True)]
                 for label, earlier in logits_of.items()}
        logits_of[spec.label] = logits
        out.append(BackendShard(label=spec.label, status="ok", texts=texts, logit_diffs=diffs))
    return out


def merge_shards(labels: list[str], n_utterances: int, shards: list[ShardResult]) -> list[BackendRun]:
    """One ``BackendRun`` per label, as one process would have produced it: skipped (or failed) if it was on any
    shard, with the first shard's reason; transcripts in evaluation-set order; the largest logit difference against
    the reference over every utterance."""
    runs: list[BackendRun] = []
    reference: str | None = None
    for k, label in enumerate(labels):
        parts = [shard.backends[k] for shard in shards]
        if any(p.label != label for p in parts):
            raise ValueError(f"shard results do not follow the backends' order at {label}")
        bad = next((p for status in ("skipped", "failed") for p in parts if p.status == status), None)
        if bad is not None:
            runs.append(BackendRun(label=label, status=bad.status, reason=bad.reason))
            continue
        texts = [""] * n_utterances
        diffs = [0.0] * n_utterances
        for shard, part in zip(shards, parts, strict=True):
            for j, index in enumerate(shard.indices):
                texts[index] = part.texts[j]
                if reference is not None:
                    diffs[index] = part.logit_diffs[reference][j]
        runs.append(BackendRun(label=label, status="ok", texts=texts,
                               max_logit_diff=None if reference is None else max(diffs)))
        reference = reference or label
    return runs
