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


def join_clips(
    clips: Sequence[Clip],
    pauses_s: Sequence[float],
    lead_s: float,
    trail_s: float,
    recording_id: str,
    peak_dbfs: float | None = None,
    snr_db: float | None = None,
    noise_floor_dbfs: float | None = None,
    seed: int = 0,
) -> LongformRecording:
    """Join clips with the given pauses (one fewer than clips), ``lead_s`` / ``trail_s`` of silence around them.

    Optional, in this order: scale so the loudest sample is ``peak_dbfs``; add pink (1/f) noise whose power is
    ``snr_db`` under the mean power of the clips' samples (as placed, before the noise), over the whole recording,
    silences included; add white noise of RMS ``noise_floor_dbfs`` (a recorder's hiss). Deterministic in ``seed``.
    ``spans`` locate each clip's samples, so each can be transcribed alone from the very same recording.
    """
    if not clips or len(pauses_s) != len(clips) - 1:
        raise ValueError(f"need clips and one pause fewer than clips, got {len(clips)} clips, {len(pauses_s)} pauses")
    if min(pauses_s, default=0.0) < 0 or lead_s < 0 or trail_s < 0:
        raise ValueError("pauses and silences must be >= 0")
    gaps = [round(lead_s * SAMPLE_RATE)] + [round(p * SAMPLE_RATE) for p in pauses_s]
    total = sum(gaps) + sum(c.audio.size for c in clips) + round(trail_s * SAMPLE_RATE)
    audio = np.zeros(total, dtype=np.float64)
    spans: list[tuple[int, int]] = []
    pos = 0
    for gap, clip in zip(gaps, clips, strict=True):
        pos += gap
        audio[pos : pos + clip.audio.size] = clip.audio
        spans.append((pos, pos + clip.audio.size))
        pos += clip.audio.size
    if peak_dbfs is not None:
        audio *= 10 ** (peak_dbfs / 20) / max(float(np.abs(audio).max()), 1e-12)
    rng = np.random.default_rng(seed)
    if snr_db is not None:
        speech_power = float(np.mean(np.concatenate([audio[a:b] for a, b in spans]) ** 2))
        noise = pink_noise(total, rng)
        audio += noise * np.sqrt(speech_power / 10 ** (snr_db / 10) / float(np.mean(noise**2)))
    if noise_floor_dbfs is not None:
        audio += rng.standard_normal(total) * 10 ** (noise_floor_dbfs / 20)
    return LongformRecording(recording_id, audio.astype(np.float32), " ".join(c.text for c in clips),
                             tuple(c.id for c in clips), tuple(spans))


def pink_noise(num_samples: int, rng: np.random.Generator, low_hz: float = 20.0) -> np.ndarray:
    """Noise whose power falls 3 dB per octave (1/f: the spectrum of room, street and crowd noise) from ``low_hz``
    up, nothing below (a microphone's high-pass), float64."""
    spectrum = np.fft.rfft(rng.standard_normal(num_samples))
    freqs = np.fft.rfftfreq(num_samples, 1 / SAMPLE_RATE)
    gain = np.zeros_like(freqs)
    gain[freqs >= low_hz] = 1 / np.sqrt(freqs[freqs >= low_hz])
    return np.fft.irfft(spectrum * gain, num_samples)
