"""Accuracy metrics: corpus WER/CER, per-utterance error rows, and backend-vs-reference parity.

Why: every backend (PyTorch fp32/fp16, ONNX Runtime, TensorRT, Triton) is scored on the same audio, and
the promotion gate compares each one with the fp32 reference. Scores follow Vistaar: both sides go
through ``asr_optimize.quality.normalize.normalize_hindi`` and jiwer (4.x) counts the edits; corpus rates are
total edits / total reference words (or characters, spaces included as ``jiwer.cer`` does), not a
mean of per-utterance rates.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jiwer
import numpy as np
from pydantic import BaseModel, ConfigDict

from asr_optimize.quality.normalize import TextNormalization, normalize_hindi, resolve_policy


class UtteranceErrors(BaseModel):
    """Edit counts for one utterance; ``wer``/``cer`` are None when the (normalized) reference is empty."""

    model_config = ConfigDict(frozen=True)

    id: str
    reference: str
    hypothesis: str
    ref_words: int
    word_substitutions: int
    word_deletions: int
    word_insertions: int
    ref_chars: int
    char_substitutions: int
    char_deletions: int
    char_insertions: int

    @property
    def word_errors(self) -> int:
        return self.word_substitutions + self.word_deletions + self.word_insertions

    @property
    def char_errors(self) -> int:
        return self.char_substitutions + self.char_deletions + self.char_insertions

    @property
    def wer(self) -> float | None:
        return self.word_errors / self.ref_words if self.ref_words else None

    @property
    def cer(self) -> float | None:
        return self.char_errors / self.ref_chars if self.ref_chars else None

    @property
    def exact_match(self) -> bool:
        return self.reference == self.hypothesis

    def row(self) -> dict[str, object]:
        """Flat dict for a CSV / table artifact."""
        return {**self.model_dump(), "wer": self.wer, "cer": self.cer, "exact_match": self.exact_match}


class ErrorRates(BaseModel):
    """Corpus-level WER/CER plus the per-utterance rows they were summed from."""

    model_config = ConfigDict(frozen=True)

    wer: float
    cer: float
    n_utterances: int
    ref_words: int
    word_substitutions: int
    word_deletions: int
    word_insertions: int
    ref_chars: int
    char_errors: int
    sentence_accuracy: float
    """Share of utterances whose normalized hypothesis equals the normalized reference."""
    normalization: TextNormalization | None
    utterances: list[UtteranceErrors]

    def summary(self) -> dict[str, float | int]:
        """The headline numbers without the per-utterance rows (for tables and artifact metadata)."""
        return self.model_dump(exclude={"utterances", "normalization"})


def _norm_policy(normalize: bool | TextNormalization | str) -> TextNormalization | None:
    if normalize is False:
        return None
    return resolve_policy(None if normalize is True else normalize)


def _check_lengths(references: Sequence[str], hypotheses: Sequence[str], ids: Sequence[str] | None) -> None:
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    if ids is not None and len(ids) != len(references):
        raise ValueError(f"{len(ids)} ids but {len(references)} references")


def utterance_errors(utt_id: str, reference: str, hypothesis: str) -> UtteranceErrors:
    """Count word and character edits for one already-normalized pair with jiwer."""
    words = jiwer.process_words(reference, hypothesis)
    chars = jiwer.process_characters(reference, hypothesis)
    return UtteranceErrors(
        id=utt_id,
        reference=reference,
        hypothesis=hypothesis,
        ref_words=len(words.references[0]),
        word_substitutions=words.substitutions,
        word_deletions=words.deletions,
        word_insertions=words.insertions,
        ref_chars=len(chars.references[0]),
        char_substitutions=chars.substitutions,
        char_deletions=chars.deletions,
        char_insertions=chars.insertions,
    )


def wer_cer(
    references: Sequence[str],
    hypotheses: Sequence[str],
    normalize: bool | TextNormalization | str = True,
    ids: Sequence[str] | None = None,
) -> ErrorRates:
    """Corpus WER and CER of ``hypotheses`` against ``references`` (True = the Vistaar policy).

    Raises ValueError on mismatched lengths or when the references hold no words at all (a rate
    over zero words is undefined; the evaluation loader drops empty references before this point).
    """
    _check_lengths(references, hypotheses, ids)
    policy = _norm_policy(normalize)
    ids = list(ids) if ids is not None else [str(i) for i in range(len(references))]
    if policy is not None:
        references = [normalize_hindi(r, policy) for r in references]
        hypotheses = [normalize_hindi(h, policy) for h in hypotheses]
    else:
        # jiwer strips and splits on whitespace anyway; collapse here so CER does not count doubled spaces.
        references = [" ".join(r.split()) for r in references]
        hypotheses = [" ".join(h.split()) for h in hypotheses]
    rows = [utterance_errors(i, r, h) for i, r, h in zip(ids, references, hypotheses, strict=True)]
    ref_words = sum(u.ref_words for u in rows)
    ref_chars = sum(u.ref_chars for u in rows)
    if ref_words == 0:
        raise ValueError("references contain no words after normalization; WER is undefined")
    return ErrorRates(
        wer=sum(u.word_errors for u in rows) / ref_words,
        cer=sum(u.char_errors for u in rows) / ref_chars,
        n_utterances=len(rows),
        ref_words=ref_words,
        word_substitutions=sum(u.word_substitutions for u in rows),
        word_deletions=sum(u.word_deletions for u in rows),
        word_insertions=sum(u.word_insertions for u in rows),
        ref_chars=ref_chars,
        char_errors=sum(u.char_errors for u in rows),
        sentence_accuracy=sum(u.exact_match for u in rows) / len(rows),
        normalization=policy,
        utterances=rows,
    )


def utterance_table(
    ids: Sequence[str],
    references: Sequence[str],
    hypotheses_by_backend: dict[str, Sequence[str]],
    normalize: bool | TextNormalization | str = True,
) -> list[dict[str, object]]:
    """One row per utterance: id, reference, then ``<backend>``, ``<backend>_wer``, ``<backend>_cer`` columns.

    Why: the per-utterance CSV for error analysis puts every backend's hypothesis next to the reference.
    Texts are shown normalized (what was scored) when ``normalize`` is on.
    """
    policy = _norm_policy(normalize)
    refs = [normalize_hindi(r, policy) if policy else r for r in references]
    rows: list[dict[str, object]] = [{"id": i, "reference": r} for i, r in zip(ids, refs, strict=True)]
    for backend, hyps in hypotheses_by_backend.items():
        _check_lengths(references, hyps, ids)
        for row, ref, hyp in zip(rows, refs, hyps, strict=True):
            u = utterance_errors(str(row["id"]), ref, normalize_hindi(hyp, policy) if policy else hyp)
            row[backend] = u.hypothesis
            row[f"{backend}_wer"] = u.wer
            row[f"{backend}_cer"] = u.cer
    return rows


class ParityStats(BaseModel):
    """How closely a backend reproduces the reference backend's transcripts (and logits, if measured)."""

    model_config = ConfigDict(frozen=True)

    n_utterances: int
    identical: int
    identical_fraction: float
    """Transcript agreement rate after normalization."""
    cer_vs_reference: float
    """CER of the backend's transcripts, taking the reference backend's transcripts as ground truth."""
    wer_vs_reference: float
    differing_ids: list[str]
    max_abs_logit_diff: float | None = None


def transcript_parity(
    reference_transcripts: Sequence[str],
    candidate_transcripts: Sequence[str],
    ids: Sequence[str] | None = None,
    normalize: bool | TextNormalization | str = True,
    max_abs_logit_diff: float | None = None,
) -> ParityStats:
    """Compare a backend's transcripts with the reference backend's on the same utterances.

    Empty reference transcripts are legal here (the model may output nothing): an empty pair counts
    as identical, and the CER denominator is clamped to 1 so it stays defined.
    """
    _check_lengths(reference_transcripts, candidate_transcripts, ids)
    if not reference_transcripts:
        raise ValueError("no transcripts to compare")
    policy = _norm_policy(normalize)
    ids = list(ids) if ids is not None else [str(i) for i in range(len(reference_transcripts))]

    def prep(t: str) -> str:
        return normalize_hindi(t, policy) if policy else " ".join(t.split())

    rows = [
        utterance_errors(i, prep(r), prep(c))
        for i, r, c in zip(ids, reference_transcripts, candidate_transcripts, strict=True)
    ]
    differing = [u.id for u in rows if not u.exact_match]
    n = len(rows)
    return ParityStats(
        n_utterances=n,
        identical=n - len(differing),
        identical_fraction=(n - len(differing)) / n,
        cer_vs_reference=sum(u.char_errors for u in rows) / max(1, sum(u.ref_chars for u in rows)),
        wer_vs_reference=sum(u.word_errors for u in rows) / max(1, sum(u.ref_words for u in rows)),
        differing_ids=differing,
        max_abs_logit_diff=max_abs_logit_diff,
    )


def max_abs_logit_diff(
    reference: np.ndarray, candidate: np.ndarray, valid_lengths: Sequence[int] | np.ndarray | None = None
) -> float:
    """Largest |reference - candidate| over valid frames of (batch, frames, vocab) or (frames, vocab) logits.

    Why: padded frames past an utterance's valid length hold arbitrary values that differ between
    backends without affecting transcripts, so they are masked out via ``valid_lengths`` (frames per
    batch item). Any non-finite value in the valid region returns ``inf``: a NaN-producing fp16 engine
    must never look close. Compared in float64 so fp16 inputs do not round the difference.
    """
    ref = np.asarray(reference)
    cand = np.asarray(candidate)
    if ref.shape != cand.shape:
        raise ValueError(f"logit shapes differ: reference {ref.shape} vs candidate {cand.shape}")
    if ref.ndim == 2:
        ref, cand = ref[None], cand[None]
        if valid_lengths is not None:
            valid_lengths = np.atleast_1d(np.asarray(valid_lengths))
    if ref.ndim != 3:
        raise ValueError(
            f"expected (batch, frames, vocab) or (frames, vocab) logits, got shape {reference.shape}"
        )
    batch, frames = ref.shape[:2]
    if valid_lengths is None:
        mask = np.ones((batch, frames), dtype=bool)
    else:
        lengths = np.asarray(valid_lengths, dtype=np.int64).reshape(-1)
        if lengths.shape[0] != batch:
            raise ValueError(f"{lengths.shape[0]} valid lengths for a batch of {batch}")
        if (lengths < 0).any() or (lengths > frames).any():
            raise ValueError(f"valid lengths {lengths.tolist()} outside 0..{frames} frames")
        mask = np.arange(frames)[None, :] < lengths[:, None]
    if not mask.any():
        return 0.0
    diff = np.abs(ref[mask].astype(np.float64) - cand[mask].astype(np.float64))
    if not np.isfinite(diff).all():
        return math.inf
    return float(diff.max())


class LogitDiffTracker:
    """Running max |logit diff| across batches, so runners need not keep every batch's logits."""

    def __init__(self) -> None:
        self.value: float = 0.0
        self.batches: int = 0

    def update(
        self,
        reference: np.ndarray,
        candidate: np.ndarray,
        valid_lengths: Sequence[int] | np.ndarray | None = None,
    ) -> float:
        self.value = max(self.value, max_abs_logit_diff(reference, candidate, valid_lengths))
        self.batches += 1
        return self.value
