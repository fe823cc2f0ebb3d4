"""Audio I/O and batching: every runner sees the same padded, normalized batch.

wav2vec2 expects 16 kHz mono float audio, normalized per utterance (zero mean, unit variance) when the
feature extractor says ``do_normalize``, right-padded with zeros, plus an ``attention_mask`` marking real
samples. Without the mask, padding changes the logits of the shorter utterances.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from asr_optimize.audio.decode import AudioDecodeError, decode_soundfile, read_audio
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
    """Read an audio file as 16 kHz mono float32 (downmix + resample as needed, via ``decode.read_audio``)."""
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


AUDIO_FILE_TYPES = (".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus")


def first_nonfinite_offset(wave: np.ndarray, block: int = 1 << 20) -> int | None:
    """Index of the first NaN/inf sample, or None (checked in blocks: no full-size temporary for long audio)."""
    for start in range(0, wave.size, block):
        bad = ~np.isfinite(wave[start : start + block])
        if bad.any():
            return start + int(bad.argmax())
    return None


def format_offset(seconds: float) -> str:
    """``83.250 s (00:01:23.250)``: a time offset a person can find in an audio editor."""
    ms = round(seconds * 1000)
    clock = f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}.{ms % 1000:03d}"
    return f"{seconds:.3f} s ({clock})"


def audio_file_info(path: Path | str) -> tuple[float, int, int]:
    """(duration_s, sample_rate, channels) from the file header; AudioInputError naming the file if unreadable."""
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise AudioInputError(f"{path}: no such audio file")
    try:
        info = sf.info(str(path))
    except Exception as exc:  # libsndfile raises several types for corrupt or unknown formats
        raise AudioInputError(f"{path}: unreadable or corrupt audio file ({exc})") from exc
    if info.samplerate <= 0:
        raise AudioInputError(f"{path}: invalid sample rate {info.samplerate} in the file header")
    return info.frames / info.samplerate, int(info.samplerate), int(info.channels)


def load_audio_file(path: Path | str, max_duration_s: float | None = None) -> np.ndarray:
    """Any WAV/FLAC/MP3/OGG file -> 16 kHz mono float32 (channels averaged, polyphase resampling).

    Why a second loader next to ``load_audio``: long recordings. The header is checked against ``max_duration_s``
    before any sample is read, and so is ``duration x rate x channels`` (a 4 KB sparse WAV claiming hours at 384 kHz
    is refused, naming its duration and rate); the file is downmixed and resampled block by block (a 30-minute
    44.1 kHz stereo file never exists as one float array), and a NaN/inf sample is reported with its time offset.
    Every failure is an ``AudioInputError`` naming the file.
    """
    import soundfile as sf

    path = Path(path)
    duration, rate, _ = audio_file_info(path)
    if max_duration_s is not None and duration > max_duration_s:
        raise AudioInputError(
            f"{path}: {format_offset(duration)} of audio is longer than the limit max_duration_s={max_duration_s:g} s "
            f"({max_duration_s / 3600:g} h); split the file or raise max_duration_s"
        )

    def check_block(mono: np.ndarray, first: int) -> None:
        bad = first_nonfinite_offset(mono)
        if bad is not None:
            raise AudioInputError(
                f"{path}: NaN or infinite sample at {format_offset((first + bad) / rate)} "
                f"(sample {first + bad} at {rate} Hz); the file is damaged"
            )

    try:  # header limits (duration x rate x channels), then decode + resample block by block: bounded memory
        with sf.SoundFile(str(path)) as fh:
            wave = decode_soundfile(fh, str(path), SAMPLE_RATE, max_duration_s, check_block)
    except AudioInputError:
        raise
    except AudioDecodeError as exc:
        raise AudioInputError(str(exc) if str(path) in str(exc) else f"{path}: {exc}") from None
    except Exception as exc:
        raise AudioInputError(f"{path}: unreadable or corrupt audio file ({exc})") from exc
    if wave.size == 0:
        raise AudioInputError(f"{path}: empty audio (0 samples)")
    if wave.size < 400:
        raise AudioInputError(f"{path}: {wave.size} samples at 16 kHz is shorter than one wav2vec2 frame (25 ms)")
    return np.ascontiguousarray(wave, dtype=np.float32)
