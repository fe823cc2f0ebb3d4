"""Parity between a candidate runner and the PyTorch fp32 reference on the same audio."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from asr_optimize.quality.metrics import ParityStats, max_abs_logit_diff, transcript_parity
from asr_optimize.transcribe import transcribe

if TYPE_CHECKING:  # types only: runners build on the quality checks, not the other way round
    from asr_optimize.runners.base import Runner


def parity_audio(count: int) -> list[np.ndarray]:
    """The first ``count`` real utterances of the bundled demo test set (synthetic speech-like audio without it).

    Export and optimize check parity on this audio, and its hash is part of their cache keys.
    """
    from asr_optimize.audio.load import synthetic_audio
    from asr_optimize.paths import DEMO_TESTSET

    if (DEMO_TESTSET / "manifest.jsonl").is_file():
        from asr_optimize.quality.eval_sets import load_eval_set

        return [u.audio for u in load_eval_set().utterances[:count]]
    return synthetic_audio(count, 1.5, seed=7)[: count - 1] + synthetic_audio(1, 2.3, seed=8)


class ParityReport(ParityStats):
    """Transcript agreement (``ParityStats``, exact text) plus the logit differences and the pass verdict."""

    mean_abs_logit_diff: float
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
    stats = transcript_parity(ref_text, cand_text, normalize=False, max_abs_logit_diff=max_diff)
    return ParityReport(**stats.model_dump(), mean_abs_logit_diff=mean_diff, atol=atol,
                        passed=max_diff <= atol and stats.identical_fraction == 1.0)
