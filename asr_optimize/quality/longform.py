"""Long-form evaluation set: the bundled test utterances joined into recordings of minutes, built at test time.

Why: the per-utterance test set says nothing about recordings of minutes to hours, where one-pass wav2vec2 collapses
(demo model: WER 13.7% per utterance, 33.6% on one minute). Joining the same utterances with short silences gives
long recordings whose reference is known and whose per-utterance WER is the yardstick; nothing new is committed.
Deterministic: utterances are taken in a seeded permutation, reshuffled on each pass when more are needed.

``python -m benchmarks.long_form --minutes 1 5 30 --out DIR`` measures WER, speed and memory on these recordings.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from asr_optimize.audio.longform_data import GAP_S, LongformRecording, build_recording
from asr_optimize.model.ctc import CtcVocabulary, greedy_decode
from asr_optimize.paths import DEFAULT_MODEL
from asr_optimize.quality.eval_sets import EvalSet, EvalSource, load_eval_set

__all__ = ["GAP_S", "LongformRecording", "build_recording", "longform_eval_set", "utterance_hypotheses"]

DEMO_MODEL_DIR = DEFAULT_MODEL


def longform_eval_set(minutes: Sequence[float] = (1.0, 5.0, 30.0), path: Path | None = None) -> EvalSet:
    """The ``longform`` evaluation source: one recording per entry of ``minutes`` from the demo test set (or the
    manifest at ``path``); the same as ``load_eval_set(EvalSource(kind="longform", minutes=...))``."""
    return load_eval_set(EvalSource(kind="longform", minutes=list(minutes), path=path))


def utterance_hypotheses(logits: np.ndarray, spans: Sequence[tuple[int, int]], vocab: CtcVocabulary,
                         frame_samples: int = 320) -> list[str]:
    """A recording's transcript split back into its utterances: the stitched logits ``[frames, vocab]`` are cut at
    the middle of each gap between utterances (``LongformRecording.spans``) and each piece is decoded on its own.

    Why: comparing each piece with the utterance transcribed alone says which utterances chunking makes worse
    (docs/long-form.md, "Where the long-form errors came from"); the gaps are silence, so no character straddles a cut.
    """
    cuts = [0] + [((spans[k - 1][1] + spans[k][0]) // 2) // frame_samples for k in range(1, len(spans))]
    cuts.append(logits.shape[0])
    return [greedy_decode(logits[None, a:b], np.array([b - a]), vocab)[0] for a, b in itertools.pairwise(cuts)]
