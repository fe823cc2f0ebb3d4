"""Audio I/O and batching: every runner sees the same padded, normalized batch.

wav2vec2 expects 16 kHz mono float audio, normalized per utterance (zero mean, unit variance) when the
feature extractor says ``do_normalize``, right-padded with zeros, plus an ``attention_mask`` marking real
samples. Without the mask, padding changes the logits of the shorter utterances.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from asr_optimize.errors import AudioInputError

SAMPLE_RATE = 16_000


@dataclass
class AudioBatch:
    """A padded batch ready for any runner."""

    input_values: np.ndarray  # [batch, samples] float32
    attention_mask: np.ndarray  # [batch, samples] int64, 1 = real sample
    lengths: np.ndarray  # [batch] int64, real samples per utterance

    @property
    def seconds(self) -> float:
        return float(self.lengths.sum()) / SAMPLE_RATE


def check_waveform(wave: np.ndarray, name: str = "audio", sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Validate one utterance: 1-D, finite, non-empty, 16 kHz. Returns it as float32."""
    if sample_rate != SAMPLE_RATE:
        raise AudioInputError(f"{name}: sample rate {sample_rate} Hz, expected {SAMPLE_RATE} Hz (resample first)")
    array = np.asarray(wave)
    if array.ndim != 1:
        raise AudioInputError(f"{name}: expected mono audio of shape [samples], got shape {array.shape}")
    if array.size == 0:
        raise AudioInputError(f"{name}: empty audio (0 samples)")
    if array.size < 400:
        raise AudioInputError(f"{name}: {array.size} samples is shorter than one wav2vec2 frame (400 samples)")
    array = array.astype(np.float32, copy=False)
    if not np.isfinite(array).all():
        raise AudioInputError(f"{name}: contains NaN or infinite samples")
    return array


def load_audio(path: Path | str) -> np.ndarray:
    """Read an audio file as 16 kHz mono float32 (downmix + resample as needed, via ``eval_data.read_audio``)."""
    from asr_optimize.eval_data import AudioDecodeError, read_audio

    try:
        wave = read_audio(path)
    except AudioDecodeError as exc:
        raise AudioInputError(f"cannot read audio {path}: {exc}") from exc
    return check_waveform(wave, name=str(path))


def make_batch(waves: list[np.ndarray], normalize: bool = True, pad_to: int | None = None) -> AudioBatch:
    """Pad utterances to one length (or ``pad_to``) and normalize each over its real samples only."""
    if not waves:
        raise AudioInputError("empty batch: no utterances")
    checked = [check_waveform(w, name=f"utterance {i}") for i, w in enumerate(waves)]
    lengths = np.array([w.size for w in checked], dtype=np.int64)
    width = max(int(lengths.max()), pad_to or 0)
    values = np.zeros((len(checked), width), dtype=np.float32)
    mask = np.zeros((len(checked), width), dtype=np.int64)
    for i, wave in enumerate(checked):
        if normalize:
            wave = (wave - wave.mean()) / np.sqrt(wave.var() + 1e-7)
        values[i, : wave.size] = wave
        mask[i, : wave.size] = 1
    return AudioBatch(input_values=values, attention_mask=mask, lengths=lengths)


def synthetic_audio(batch: int, seconds: float, seed: int = 0) -> list[np.ndarray]:
    """Deterministic speech-like noise for speed measurements (content does not change timing)."""
    rng = np.random.default_rng(seed)
    samples = int(seconds * SAMPLE_RATE)
    t = np.arange(samples, dtype=np.float32) / SAMPLE_RATE
    return [
        (0.1 * np.sin(2 * np.pi * (120 + 40 * i) * t) + 0.05 * rng.standard_normal(samples)).astype(np.float32)
        for i in range(batch)
    ]
