"""Parity between a candidate runner and the PyTorch fp32 reference on the same audio."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import BaseModel

from asr_optimize.metrics import max_abs_logit_diff
from asr_optimize.runners.base import Runner, transcribe


def parity_audio(count: int) -> list[np.ndarray]:
    """The first ``count`` real utterances of the bundled demo test set (synthetic speech-like audio without it).

    Export and optimize check parity on this audio, and its hash is part of their cache keys.
    """
    from asr_optimize.audio import synthetic_audio
    from asr_optimize.paths import DEMO_TESTSET

    if (DEMO_TESTSET / "manifest.jsonl").is_file():
        from asr_optimize.eval_data import load_eval_set

        return [u.audio for u in load_eval_set().utterances[:count]]
    return synthetic_audio(count, 1.5, seed=7)[: count - 1] + synthetic_audio(1, 2.3, seed=8)


class ParityReport(BaseModel):
    """How far a backend's logits and transcripts are from the reference."""

    utterances: int
    max_abs_logit_diff: float
    mean_abs_logit_diff: float
    identical_transcripts: float  # fraction of utterances with exactly the reference transcript
    passed: bool
    atol: float


def compare_logits(reference: list[np.ndarray], candidate: list[np.ndarray]) -> tuple[float, float]:
    """Max (``inf`` if any value is not finite) and mean |difference| over each utterance's valid frames."""
    pairs = list(zip(reference, candidate, strict=True))
    if not pairs:
        return 0.0, 0.0
    largest = max(max_abs_logit_diff(r, c) for r, c in pairs)
    mean = float(np.concatenate([np.abs(r.astype(np.float32) - c.astype(np.float32)).ravel() for r, c in pairs]).mean())
    return largest, mean


def check_parity(
    reference: Runner, candidate: Runner, waves: list[np.ndarray], model_dir: Path, atol: float, batch_size: int = 4
) -> ParityReport:
    """Run the same (padded, batched) audio through both runners and compare."""
    ref_text, ref_logits = transcribe(reference, waves, model_dir, batch_size=batch_size)
    cand_text, cand_logits = transcribe(candidate, waves, model_dir, batch_size=batch_size)
    max_diff, mean_diff = compare_logits(ref_logits, cand_logits)
    identical = sum(a == b for a, b in zip(ref_text, cand_text, strict=True)) / max(len(waves), 1)
    return ParityReport(
        utterances=len(waves), max_abs_logit_diff=max_diff, mean_abs_logit_diff=mean_diff,
        identical_transcripts=identical, passed=max_diff <= atol and identical == 1.0, atol=atol,
    )
