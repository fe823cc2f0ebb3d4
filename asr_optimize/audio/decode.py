"""Decoding audio files and bytes into 16 kHz mono float32: soundfile, downmix, polyphase resampling.

Why its own module: every path that reads audio (``asr-optimize transcribe``, the evaluation sets, the long-form
sets) decodes the same way and refuses the same inputs with the same messages.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
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


MAX_DECODED_SAMPLES = 2**31
"""Samples (frames x channels) one file may make this reader decode: ~4 h of 48 kHz stereo. A header can claim
hours at 384 kHz in a 4 KB sparse file; decoding that is refused from the header, before any sample is read."""
MAX_OUTPUT_SAMPLES = 2**28
"""Samples at the target rate one file may decode to when no ``max_duration_s`` is given (~4.7 h at 16 kHz, 1 GiB)."""
_BLOCK_SAMPLES = 1 << 20
"""Samples (frames x channels) read per block: memory stays a few MB above the output however long the file is."""


class PolyphaseResampler:
    """``scipy.signal.resample_poly(x, up, down)`` (its default Kaiser window, zero padding) computed block by block:
    the same output, while memory holds one block plus the filter's reach instead of the whole input.

    Output ``y[M]`` of the upsample-filter-downsample chain is ``sum_n x[n] h[M*down - n*up]``, so it needs only the
    inputs within one filter length; each block yields the outputs whose inputs have all arrived, ``flush`` the rest.
    """

    def __init__(self, rate_in: int, rate_out: int, dtype: type = np.float32) -> None:
        from scipy.signal import firwin

        g = math.gcd(int(rate_in), int(rate_out))
        self.up, self.down = int(rate_out) // g, int(rate_in) // g
        max_rate = max(self.up, self.down)
        half_len = 10 * max_rate
        h = (np.asarray(firwin(2 * half_len + 1, 1.0 / max_rate, window=("kaiser", 5.0)), dtype=dtype)
             if max_rate > 1 else np.ones(1, dtype=dtype))  # 1:1 needs no filter (``feed`` passes blocks through)
        h *= self.up
        pre_pad = self.down - half_len % self.down
        self.h = np.concatenate((np.zeros(pre_pad, dtype=dtype), h))
        self.first = (half_len + pre_pad) // self.down  # outputs resample_poly drops at the start (filter delay)
        self.next = self.first  # next output index (in the unpadded chain) to produce
        self.buffer = np.zeros(0, dtype=dtype)
        self.buffer_start = 0  # input index of buffer[0]
        self.n_in = 0
        self.dtype = dtype

    @property
    def identity(self) -> bool:
        return self.up == self.down == 1

    def _outputs(self, stop: int) -> np.ndarray:
        """Outputs ``self.next .. stop-1`` from the buffered inputs (missing inputs past the end are zeros)."""
        from scipy.signal import upfirdn

        if stop <= self.next:
            return np.zeros(0, dtype=self.dtype)
        up, down, taps = self.up, self.down, len(self.h)
        lo = max(0, -(-(self.next * down - taps + 1) // up))
        lo -= lo % down  # a multiple of ``down``: the slice's outputs then line up with the whole signal's
        hi = min(self.n_in, (stop - 1) * down // up + 1)
        xs = self.buffer[lo - self.buffer_start: hi - self.buffer_start]
        z = upfirdn(self.h, xs, up, down) if xs.size else np.zeros(0, dtype=self.dtype)
        offset = lo * up // down
        out = np.zeros(stop - self.next, dtype=self.dtype)
        part = z[self.next - offset: stop - offset]
        out[: part.size] = part
        self.next = stop
        keep = max(0, -(-(self.next * down - taps + 1) // up))
        keep -= keep % down
        if keep > self.buffer_start:  # inputs no later output can reach
            self.buffer = self.buffer[keep - self.buffer_start:]
            self.buffer_start = keep
        return out

    def feed(self, block: np.ndarray) -> np.ndarray:
        """Resampled output available after ``block`` (possibly empty)."""
        if self.identity:
            self.n_in += block.size
            return np.asarray(block, dtype=self.dtype)
        self.buffer = np.concatenate((self.buffer, np.asarray(block, dtype=self.dtype)))
        self.n_in += block.size
        return self._outputs((self.n_in - 1) * self.up // self.down + 1 if self.n_in else 0)

    def flush(self) -> np.ndarray:
        """The remaining outputs once every input was fed (``len(total) == ceil(n_in * up / down)``)."""
        if self.identity:
            return np.zeros(0, dtype=self.dtype)
        return self._outputs(self.first + -(-self.n_in * self.up // self.down))


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h ({seconds:.0f} s)"


def check_decode_size(label: str, frames: int, rate: int, channels: int, target_rate: int = TARGET_SAMPLE_RATE,
                      max_duration_s: float | None = None) -> int:
    """Refuse, from the header alone, audio too long or too large to decode; returns the output-sample limit.

    The duration limit alone is not enough: memory and time grow with ``duration x rate x channels``, so a header
    claiming 3 h at 384 kHz is refused here, naming its duration and rate, before any sample is read.
    """
    if rate <= 0:
        raise AudioDecodeError(f"{label}: invalid sample rate {rate} in the file header")
    seconds = frames / rate
    if max_duration_s is not None and seconds > max_duration_s:
        raise too_long(seconds, max_duration_s)
    if frames * max(channels, 1) > MAX_DECODED_SAMPLES:
        raise AudioDecodeError(
            f"{label}: its header claims {_hours(seconds)} of audio at {rate} Hz x {channels} channel(s), "
            f"{frames * max(channels, 1):,} samples to decode, more than the {MAX_DECODED_SAMPLES:,} one file may "
            f"hold; convert it to {target_rate} Hz mono (e.g. ffmpeg -ac 1 -ar {target_rate}) or split it"
        )
    limit = math.ceil(max_duration_s * target_rate) + 1 if max_duration_s is not None else MAX_OUTPUT_SAMPLES
    if math.ceil(frames * target_rate / rate) > limit:
        raise AudioDecodeError(
            f"{label}: its header claims {_hours(seconds)} of audio at {rate} Hz, more than the "
            f"{limit / target_rate / 3600:.2f} h one file may decode to; split it"
        )
    return limit


def decode_soundfile(
    handle: sf.SoundFile,
    label: str,
    target_rate: int = TARGET_SAMPLE_RATE,
    max_duration_s: float | None = None,
    on_block: Callable[[np.ndarray, int], None] | None = None,
) -> np.ndarray:
    """An open SoundFile -> float32 mono at ``target_rate``, read, downmixed and resampled block by block.

    The header is checked first (``check_decode_size``); the same limits hold while decoding (a header may lie).
    ``on_block(mono, first_frame)`` sees every downmixed block at the file's rate (to check it). Peak memory is the
    output plus one block. Running out of memory anyway is reported as that, not as a corrupt file.
    """
    rate, channels, frames = int(handle.samplerate), int(handle.channels), int(handle.frames)
    limit = check_decode_size(label, frames, rate, channels, target_rate, max_duration_s)
    try:
        resampler = PolyphaseResampler(rate, target_rate)
        out = np.empty(min(limit, math.ceil(frames * target_rate / rate) + 1), dtype=np.float32)
        size = done = 0
        blocksize = max(1, _BLOCK_SAMPLES // max(channels, 1))
        for block in handle.blocks(blocksize=blocksize, dtype="float32", always_2d=True):
            mono = block.mean(axis=1, dtype=np.float32) if block.shape[1] > 1 else block[:, 0]
            if on_block is not None:
                on_block(mono, done)
            done += mono.size
            if done * max(channels, 1) > MAX_DECODED_SAMPLES:
                raise AudioDecodeError(f"{label}: more than {MAX_DECODED_SAMPLES:,} samples (its header claimed "
                                       f"{frames:,} frames at {rate} Hz); convert it to {target_rate} Hz mono or "
                                       "split it")
            out, size = _append(out, size, resampler.feed(mono), limit, label, max_duration_s)
        out, size = _append(out, size, resampler.flush(), limit, label, max_duration_s)
    except MemoryError:
        raise AudioDecodeError(
            f"not enough memory to decode {label} ({_hours(frames / rate)} at {rate} Hz x {channels} channel(s)): "
            "free memory, or split or downsample the file"
        ) from None
    return out[:size].copy() if size < out.size // 2 else out[:size]


def _append(out: np.ndarray, size: int, piece: np.ndarray, limit: int, label: str,
            max_duration_s: float | None) -> tuple[np.ndarray, int]:
    """Copy ``piece`` into ``out`` at ``size`` (growing it when a header under-reported), within ``limit``."""
    if size + piece.size > limit:
        what = f"max_duration_s={max_duration_s:g} s" if max_duration_s is not None else f"{limit:,} samples"
        raise AudioDecodeError(f"{label}: longer than the limit {what} (its header under-reported the length); "
                               "split the file")
    if size + piece.size > out.size:
        grown = np.empty(min(limit, max(size + piece.size, 2 * out.size)), dtype=np.float32)
        grown[:size] = out[:size]
        out = grown
    out[size: size + piece.size] = piece
    return out, size + piece.size


def read_audio(
    source: str | Path | bytes,
    target_rate: int = TARGET_SAMPLE_RATE,
    name: str | None = None,
    max_duration_s: float | None = None,
) -> np.ndarray:
    """Decode a file path or encoded bytes with soundfile to float32 mono at ``target_rate``.

    Raises AudioDecodeError with a reason fit for a per-row report. ``name`` labels bytes in messages.
    ``max_duration_s``: refuse longer audio from its header, before decoding it into memory. Whatever the limit, a
    header whose ``duration x rate x channels`` is too large is refused before decoding (``check_decode_size``), and
    the file is decoded and resampled block by block (``decode_soundfile``).
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
    nonfinite = 0

    def count_nonfinite(mono: np.ndarray, _: int) -> None:
        nonlocal nonfinite
        nonfinite += int((~np.isfinite(mono)).sum())

    try:
        with sf.SoundFile(stream) as handle:
            wave = decode_soundfile(handle, label, target_rate, max_duration_s, count_nonfinite)
    except AudioDecodeError:
        raise
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise AudioDecodeError(f"unreadable audio {label}: {exc}") from exc
    if wave.size == 0:
        raise AudioDecodeError("empty audio (0 samples)")
    if nonfinite:
        raise AudioDecodeError(f"audio has {nonfinite} non-finite samples (NaN/inf)")
    return np.ascontiguousarray(wave, dtype=np.float32)
