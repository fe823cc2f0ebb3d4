"""Decoding audio files and bytes into 16 kHz mono float32: soundfile, downmix, polyphase resampling.

Why its own module: every path that reads audio (``asr-optimize transcribe``, the evaluation sets, the long-form
sets) decodes the same way and refuses the same inputs with the same messages.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import soundfile as sf

TARGET_SAMPLE_RATE = 16_000


class AudioDecodeError(ValueError):
    """One audio item could not be turned into usable 16 kHz mono samples; the message is the row's reason."""


def _mp3_supported() -> bool:
    return "MP3" in sf.available_formats()


def to_mono_16k(samples: np.ndarray, sample_rate: int, target_rate: int = TARGET_SAMPLE_RATE) -> np.ndarray:
    """Downmix (mean of channels) and resample with a polyphase filter; (frames,) or (frames, channels) in."""
    from scipy.signal import resample_poly

    x = np.asarray(samples)
    if x.ndim == 2:
        x = x.mean(axis=1)
    elif x.ndim != 1:
        raise AudioDecodeError(f"audio has shape {x.shape}; expected (frames,) or (frames, channels)")
    x = x.astype(np.float32, copy=False)
    if x.size == 0:
        raise AudioDecodeError("empty audio (0 samples)")
    if not np.isfinite(x).all():
        raise AudioDecodeError(f"audio has {int((~np.isfinite(x)).sum())} non-finite samples (NaN/inf)")
    if sample_rate <= 0:
        raise AudioDecodeError(f"invalid sample rate {sample_rate}")
    if sample_rate != target_rate:
        g = math.gcd(int(sample_rate), int(target_rate))
        x = resample_poly(x, target_rate // g, int(sample_rate) // g).astype(np.float32)
    return np.ascontiguousarray(x, dtype=np.float32)


def _looks_like_mp3(name: str, head: bytes) -> bool:
    return (
        name.lower().endswith(".mp3")
        or head.startswith(b"ID3")
        or (len(head) > 1 and head[0] == 0xFF and head[1] >= 0xE0)
    )


def _no_mp3_error(name: str) -> AudioDecodeError:
    return AudioDecodeError(
        f"cannot decode MP3 {name}: this libsndfile ({sf.__libsndfile_version__}) has no MP3 support "
        "(needs >= 1.1.0: pip install -U soundfile); or convert the audio to FLAC/WAV"
    )


def too_long(seconds: float, max_duration_s: float) -> AudioDecodeError:
    return AudioDecodeError(
        f"audio too long: {seconds:.1f} s > max_duration_s {max_duration_s:g} s "
        "(long recordings belong to the long-form path)"
    )


def read_audio(
    source: str | Path | bytes,
    target_rate: int = TARGET_SAMPLE_RATE,
    name: str | None = None,
    max_duration_s: float | None = None,
) -> np.ndarray:
    """Decode a file path or encoded bytes with soundfile to float32 mono at ``target_rate``.

    Raises AudioDecodeError with a reason fit for a per-row report. ``name`` labels bytes in messages.
    ``max_duration_s``: refuse longer audio from its header, before decoding it into memory.
    """
    if isinstance(source, bytes):
        label, head, stream = name or "audio bytes", source[:4], io.BytesIO(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise AudioDecodeError(f"audio file not found: {path}")
        with path.open("rb") as fh:
            head = fh.read(4)
        label, stream = str(path), path
    if _looks_like_mp3(label, head) and not _mp3_supported():
        raise _no_mp3_error(label)
    if max_duration_s is not None:
        try:
            info = sf.info(stream)
        except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
            raise AudioDecodeError(f"unreadable audio {label}: {exc}") from exc
        if isinstance(stream, io.BytesIO):
            stream.seek(0)
        if info.samplerate > 0 and info.frames / info.samplerate > max_duration_s:
            raise too_long(info.frames / info.samplerate, max_duration_s)
    try:
        data, sr = sf.read(stream, dtype="float32")
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise AudioDecodeError(f"unreadable audio {label}: {exc}") from exc
    return to_mono_16k(data, sr, target_rate)
