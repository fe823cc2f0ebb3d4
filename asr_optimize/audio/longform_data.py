"""Joining short utterances into long recordings (numpy only: a leaf that ``eval_data`` can import).

Why a module of its own: ``eval_data`` builds the ``longform`` evaluation source from it, while the measurement
command in ``asr_optimize.audio.longform`` imports ``eval_data`` and the runners; keeping the generator here keeps the
import graph acyclic (the ``acyclic_siblings`` import-linter contract).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

GAP_S = 0.25
"""Silence between utterances (digital zeros), as in the long-form measurements of docs/long-form.md."""
SAMPLE_RATE = 16_000


class Clip(Protocol):
    """What is joined: ``eval_data.Utterance`` or anything with these attributes."""

    id: str
    audio: np.ndarray
    text: str


@dataclass(frozen=True)
class LongformRecording:
    """One joined recording, its reference text and the utterances it is made of (in order)."""

    id: str
    audio: np.ndarray
    text: str
    utterance_ids: tuple[str, ...]
    spans: tuple[tuple[int, int], ...] = ()
    """Sample range ``[start, end)`` of each utterance in ``audio`` (same order as ``utterance_ids``): lets an
    evaluation align a recording's transcript back to its utterances."""

    @property
    def duration_s(self) -> float:
        return self.audio.size / SAMPLE_RATE


def build_recording(
    utterances: Sequence[Clip], minutes: float, gap_s: float = GAP_S, seed: int = 0
) -> LongformRecording:
    """Join utterances (gap_s of silence between) until the next would pass ``minutes``; pad to exactly ``minutes``.

    Deterministic: utterances are taken in a seeded permutation, reshuffled on each pass when more are needed.
    """
    if not utterances:
        raise ValueError("no utterances to join")
    target = round(minutes * 60 * SAMPLE_RATE)
    gap = round(gap_s * SAMPLE_RATE)
    if min(u.audio.size for u in utterances) > target:
        raise ValueError(f"{minutes} min is shorter than every utterance")
    audio = np.zeros(target, dtype=np.float32)
    texts: list[str] = []
    ids: list[str] = []
    spans: list[tuple[int, int]] = []
    pos = 0
    round_ = 0
    while True:
        order = np.random.default_rng(seed + round_).permutation(len(utterances))
        for index in order:
            utt = utterances[int(index)]
            start = pos + (gap if ids else 0)
            if start + utt.audio.size > target:
                return LongformRecording(f"longform-{minutes:g}min", audio, " ".join(texts), tuple(ids),
                                         tuple(spans))
            audio[start : start + utt.audio.size] = utt.audio
            pos = start + utt.audio.size
            texts.append(utt.text)
            ids.append(utt.id)
            spans.append((start, pos))
        round_ += 1
