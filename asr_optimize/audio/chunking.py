"""Overlapping-window planning and logit stitching for long recordings (numpy + stdlib only).

Why: wav2vec2 was trained on clips of a few seconds and its attention grows with the square of the length, so a
long recording is cut into windows of ``chunk_s`` seconds that overlap by ``stride_s`` seconds on each side; each
window runs through the acoustic model on its own (many windows form one batch), the ``stride_s`` frames at each
inner edge (the ones that saw too little context) are dropped, and the rest is concatenated back into one logit
matrix that is decoded like a one-pass output. This is the Hugging Face pipeline's ``chunk_length_s`` /
``stride_length_s`` scheme, done on frame boundaries so no frame is duplicated or lost.

This file must stay free of imports other than numpy and the standard library: it is copied as-is into the Triton
python-backend model folder of the ``asr`` pipeline.

Frame arithmetic (wav2vec2's conv feature encoder has no padding): output frame ``j`` of a clip is computed from
samples ``[j * S, j * S + R)`` where ``S = frame_samples`` (the product of the conv strides, 320) and
``R = receptive_samples`` (the receptive field, 400), so a clip of ``n >= R`` samples has ``(n - R) // S + 1``
frames, exactly what ``asr_optimize.model.ctc.frame_lengths_for`` computes for the standard kernels/strides. Windows
start at multiples of ``S``, hence window frame ``i`` is recording frame ``start // S + i`` and sees the very same
samples. Off-by-one handling: a window of ``C`` frames spans ``(C - 1) * S + R`` samples (not ``C * S``), so every
window but a single whole-recording one has exactly ``C`` frames and equal length (no padding inside a batch); the
last window is shifted left to end on the recording's last frame (it re-reads context instead of being short),
and the up to ``S - 1`` trailing samples after the last full frame feed no frame (as in a one-pass run).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

__all__ = [
    "NORMALIZATIONS", "SILENCE_PEAK", "Window", "gap_starts", "is_silence", "normalized", "num_frames",
    "plan_speech_windows", "plan_windows", "ranges_stats", "recording_stats", "run_windows", "silence_rows",
    "speech_onset", "speech_regions", "stitch", "window_stats",
]

DEFAULT_RECEPTIVE_SAMPLES = 400  # wav2vec2 / HuBERT / XLS-R feature encoder: kernels 10,3,3,3,3,2,2
SILENCE_PEAK = 1e-4
"""Audio whose absolute peak is below this (-80 dBFS) is silence: empty text, the model is not run. Normalization
would otherwise blow dither up to unit variance and the model reads words into it (demo model: noise at 1e-3 peak
gives a string of consonants)."""
NOISE_PERCENTILE = 10
"""``speech_regions``: the percentile of hop RMS taken as the recording's noise floor."""
NOISE_MIN_S = 10.0
"""``speech_regions``: shorter recordings get no noise-floor threshold."""


@dataclass(frozen=True)
class Window:
    """Samples ``[start, end)`` of the recording; output frames ``[keep_from, keep_to)`` of this window are kept."""

    start: int
    end: int
    keep_from: int
    keep_to: int

    @property
    def num_samples(self) -> int:
        return self.end - self.start

    @property
    def num_kept(self) -> int:
        return self.keep_to - self.keep_from


def num_frames(num_samples: int, frame_samples: int = 320, receptive_samples: int = DEFAULT_RECEPTIVE_SAMPLES) -> int:
    """Output frames of the conv feature encoder for a clip of ``num_samples`` (0 if shorter than one frame)."""
    if num_samples < receptive_samples:
        return 0
    return (num_samples - receptive_samples) // frame_samples + 1


def plan_windows(
    num_samples: int,
    chunk_s: float,
    stride_s: float,
    sample_rate: int = 16000,
    frame_samples: int = 320,
    receptive_samples: int = DEFAULT_RECEPTIVE_SAMPLES,
) -> list[Window]:
    """Cut a recording into overlapping windows on frame boundaries; the kept frames tile the recording exactly.

    ``chunk_s`` and ``stride_s`` are rounded to whole frames (C and L frames). A recording of at most C frames is
    one window covering all its samples, keeping all frames: identical to one pass. Longer recordings get windows of
    exactly C frames starting every ``C - 2L`` frames; window k keeps its frames from L (0 for the first) to
    ``C - L`` (its end for the last). The last window is moved left to end on the last frame, so it may overlap
    its neighbour by more than 2L; its ``keep_from`` continues where the previous window's kept frames ended.
    Empty or sub-frame audio (fewer than ``receptive_samples`` samples) has no frames: ``[]``.
    """
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}")
    if chunk_s <= 0 or stride_s < 0:
        raise ValueError(f"need chunk_s > 0 and stride_s >= 0, got chunk_s={chunk_s}, stride_s={stride_s}")
    if frame_samples <= 0 or receptive_samples < frame_samples or sample_rate <= 0:
        raise ValueError(
            f"invalid frame geometry: frame_samples={frame_samples}, receptive_samples={receptive_samples}, "
            f"sample_rate={sample_rate}"
        )
    chunk = round(chunk_s * sample_rate / frame_samples)
    stride = round(stride_s * sample_rate / frame_samples)
    step = chunk - 2 * stride
    if step < 1:
        raise ValueError(
            f"chunk_s={chunk_s} must be longer than 2 * stride_s={stride_s} by at least one frame "
            f"({frame_samples / sample_rate * 1000:g} ms)"
        )
    total = num_frames(num_samples, frame_samples, receptive_samples)
    if total == 0:
        return []
    if total <= chunk:
        return [Window(0, num_samples, 0, total)]
    span = (chunk - 1) * frame_samples + receptive_samples  # samples of a window of exactly `chunk` frames
    windows: list[Window] = []
    first = 0  # first recording frame of the current window
    kept_until = 0  # recording frames [0, kept_until) are covered by earlier windows
    while True:
        if first + chunk >= total:  # last window: end on the last frame, keep everything not yet kept
            first = total - chunk
            start = first * frame_samples
            windows.append(Window(start, start + span, kept_until - first, chunk))
            return windows
        keep_to = chunk - stride
        start = first * frame_samples
        windows.append(Window(start, start + span, kept_until - first, keep_to))
        kept_until = first + keep_to
        first += step


def is_silence(wave: np.ndarray, peak: float = SILENCE_PEAK) -> bool:
    """True when no sample is louder than ``peak`` (digital silence, dither); checked in blocks, no big temporary."""
    x = np.asarray(wave).reshape(-1)
    block = 1 << 20
    return all(float(np.abs(x[i : i + block]).max(initial=0.0)) < peak for i in range(0, x.size, block))


def speech_regions(
    wave: np.ndarray,
    sample_rate: int = 16000,
    frame_samples: int = 320,
    receptive_samples: int = DEFAULT_RECEPTIVE_SAMPLES,
    min_silence_s: float = 0.3,
    silence_db: float = -40.0,
    pad_before_s: float = 0.0,
    pad_after_s: float = 0.0,
    floor: float = 1e-4,
    noise_margin_db: float | None = None,
) -> list[tuple[int, int]]:
    """Sample ranges ``[start, end)`` of the recording between silences of at least ``min_silence_s``.

    Why: a CTC model trained on trimmed clips reads words into long silences and mis-hears speech that follows one
    (demo model: 0.25 s of leading silence per utterance, WER 13.7% -> 19.0%), and fixed windows cannot avoid
    them. A 20 ms hop is silent when its RMS is below ``silence_db`` under the recording's loud level (95th
    percentile of hop RMS) or below ``floor``. Ranges start at the speech onset to the sample (``speech_onset``), less
    ``pad_before_s``; they end ``pad_after_s`` after their last speech hop plus ``receptive_samples - frame_samples``
    samples, so that hop gets its frame. Where the pads of two runs overlap, both stop in the middle of the silence
    between them (two ranges, never one). No speech: ``[]``.

    With ``noise_margin_db`` a hop is also silent when its RMS is less than that far above the recording's noise
    floor (the ``NOISE_PERCENTILE``th percentile of hop RMS, silent hops included): in background noise 40 dB under
    the loud level is still noise, and without it no pause is found. On digital silence the floor is 0: no change.
    Only recordings of at least ``NOISE_MIN_S`` have a floor (1 s in their bottom tenth): in a clip of a few seconds
    the 10th percentile is quiet speech. The onset search uses the raised threshold too (a level threshold starts
    runs in the noise before the speech: measured +4.7 WER points at 20 dB SNR).
    """
    x = np.asarray(wave, dtype=np.float32).reshape(-1)
    hops = x.size // frame_samples
    if hops == 0:
        return []
    rms = np.empty(hops, dtype=np.float64)
    block = 1 << 11  # hops per block: ~2 MB of float64 at a time
    for first in range(0, hops, block):
        part = x[first * frame_samples : min(hops, first + block) * frame_samples].astype(np.float64)
        rms[first : first + block] = np.sqrt((part.reshape(-1, frame_samples) ** 2).mean(axis=1))
    loud = rms[rms >= floor]
    if loud.size == 0:
        return []
    threshold = max(floor, float(np.percentile(loud, 95)) * 10 ** (silence_db / 20))
    if noise_margin_db is not None and hops * frame_samples >= NOISE_MIN_S * sample_rate:
        threshold = max(threshold, float(np.percentile(rms, NOISE_PERCENTILE)) * 10 ** (noise_margin_db / 20))
    speech = rms >= threshold
    min_run = max(1, int(np.ceil(min_silence_s * sample_rate / frame_samples)))
    before = round(pad_before_s * sample_rate)  # samples: starts are sample-exact
    after = round(pad_after_s * sample_rate / frame_samples)
    # runs of silence: edges of the boolean array
    padded = np.concatenate(([False], speech, [False]))
    starts = np.flatnonzero(padded[1:-1] & ~padded[:-2])  # speech begins after silence
    ends = np.flatnonzero(padded[1:-1] & ~padded[2:]) + 1  # speech ends before silence
    regions: list[list[int]] = []
    for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
        if regions and a - regions[-1][1] < min_run:  # the silence in between is too short to cut at
            regions[-1][1] = b
        else:
            regions.append([a, b])
    extra = receptive_samples - frame_samples
    spans: list[list[int]] = []
    speech_end = 0  # the sample after the previous run's last speech hop
    for a, b in regions:
        onset = speech_onset(x, a, threshold, speech_end, frame_samples)
        start = max(0, onset - before)
        end = min(x.size, min(hops, b + after) * frame_samples + extra)
        if spans and start < spans[-1][1]:  # the pads overlap: both end in the middle of the silence
            middle = (speech_end + onset) // 2
            spans[-1][1] = min(spans[-1][1], middle + extra)  # its last frame ends before ``middle``'s frame
            start = max(start, middle)
        spans.append([start, end])
        speech_end = b * frame_samples
    return [(start, end) for start, end in spans if end - start >= receptive_samples]


def speech_onset(
    x: np.ndarray, first_hop: int, threshold: float, not_before: int = 0, frame_samples: int = 320, block: int = 16
) -> int:
    """The sample where speech starts, for a speech run whose first hop above ``threshold`` is ``first_hop``.

    Searched from one hop earlier (a quiet onset can leave its hop under the threshold) but not before
    ``not_before``: the first sample as loud as ``threshold`` in the first ``block``-sample (1 ms) piece whose RMS
    reaches it. Why: speech starts anywhere inside a 20 ms hop; a run that starts on the hop grid carries 0-19 ms of
    the silence before it, and the demo model, trained on clips trimmed to the onset, reads that silence as a
    consonant or drops the first one (measured: WER 15.00% -> 13.22% on the 30-minute recording).
    """
    lo = max(not_before, (first_hop - 1) * frame_samples)
    hi = min(x.size, (first_hop + 1) * frame_samples)
    piece = x[lo:hi].astype(np.float64)
    n = piece.size // block
    if n == 0:
        return first_hop * frame_samples
    loud = np.flatnonzero(np.sqrt((piece[: n * block].reshape(n, block) ** 2).mean(axis=1)) >= threshold)
    if loud.size == 0:
        return first_hop * frame_samples
    at = int(loud[0]) * block
    return lo + at + int(np.argmax(np.abs(piece[at : at + block]) >= threshold))


def plan_speech_windows(
    wave: np.ndarray,
    chunk_s: float,
    stride_s: float,
    sample_rate: int = 16000,
    frame_samples: int = 320,
    receptive_samples: int = DEFAULT_RECEPTIVE_SAMPLES,
    min_silence_s: float = 0.3,
    silence_db: float = -40.0,
    pad_before_s: float = 0.0,
    pad_after_s: float = 0.0,
    context_before_s: float = 0.0,
    context_after_s: float = 0.0,
    noise_margin_db: float | None = None,
) -> list[Window]:
    """``plan_windows`` over each ``speech_regions`` range: silences are cut out, long speech runs are windowed.

    The windows' kept frames no longer tile the recording: pass ``total_frames`` and ``fill`` to ``stitch``, which
    puts each kept frame at recording frame ``start // frame_samples + i`` and fills the silences with ``fill``. A
    range starts at its onset sample, not on the recording's frame grid: its frames keep their own grid (windows of
    a long range start ``frame_samples`` multiples apart) and land in the recording frame their start falls in, so
    frame times are early by less than one frame (20 ms).

    Context: the windows of a range also carry up to ``context_before_s`` of the recording before it (a whole number
    of frames, so the range keeps its grid) and ``context_after_s`` after it, whatever is there (silence, the end of
    the previous run); their frames are computed and dropped, like the stride at inner window edges, so the model
    sees a run's onset inside real audio and not at the edge of its input. No window is longer than ``chunk_s``.
    """
    x = np.asarray(wave).reshape(-1)
    lead_frames = max(0, round(context_before_s * sample_rate / frame_samples))
    span = (round(chunk_s * sample_rate / frame_samples) - 1) * frame_samples + receptive_samples  # a full window
    tail = max(0, round(context_after_s * sample_rate))
    windows: list[Window] = []
    for start, end in speech_regions(
        x, sample_rate, frame_samples, receptive_samples, min_silence_s, silence_db, pad_before_s, pad_after_s,
        noise_margin_db=noise_margin_db,
    ):
        first = min(lead_frames, start // frame_samples)  # kept frames [first, last) of the extended range
        after = min(x.size, end + tail) - end
        room = span + frame_samples - 1 - (end - start)  # a run that fits one window stays one: context shrinks
        if 0 <= room < first * frame_samples + after:
            first = min(first, (room // 2) // frame_samples)
            after = min(after, room - first * frame_samples)
            first = min(start // frame_samples, lead_frames, (room - after) // frame_samples)
        last = first + num_frames(end - start, frame_samples, receptive_samples)
        lo, hi = start - first * frame_samples, end + after
        for w in plan_windows(hi - lo, chunk_s, stride_s, sample_rate, frame_samples, receptive_samples):
            offset = w.start // frame_samples
            keep_from, keep_to = max(w.keep_from, first - offset), min(w.keep_to, last - offset)
            if keep_to > keep_from:  # a window that only saw context keeps nothing: not run
                windows.append(Window(lo + w.start, lo + w.end, keep_from, keep_to))
    return windows


def gap_starts(windows: list[Window], frame_samples: int = 320) -> list[int]:
    """Recording frames where a skipped silence begins after kept frames (a word boundary belongs there)."""
    spans = sorted((w.start // frame_samples + w.keep_from, w.start // frame_samples + w.keep_to) for w in windows)
    return [end for (_, end), (nxt, _) in itertools.pairwise(spans) if nxt > end]


def silence_rows(vocab_size: int, blank_id: int, delimiter_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Logit rows for skipped silence: ``fill`` (a certain blank) and ``boundary`` (a certain word delimiter)."""
    fill = np.full(vocab_size, -30.0, dtype=np.float32)
    fill[blank_id] = 0.0
    boundary = np.full(vocab_size, -30.0, dtype=np.float32)
    boundary[delimiter_id] = 0.0
    return fill, boundary


def stitch(
    window_logits: list[np.ndarray],
    windows: list[Window],
    total_frames: int | None = None,
    fill: np.ndarray | None = None,
    boundary: np.ndarray | None = None,
    frame_samples: int = 320,
) -> np.ndarray:
    """Concatenate the kept frames of each window's logits ``[frames, vocab]`` into ``[total_frames, vocab]``.

    Each window's logits may carry extra padding frames after its real ones (batched runs); they are never kept.
    With ``total_frames`` (windows from ``plan_speech_windows``), kept frames are placed at their recording frame,
    frames no window keeps get the ``fill`` row (a certain blank: frame times stay true), and the first frame of
    each skipped silence gets the ``boundary`` row (a word delimiter), else the words around a cut would merge
    (``silence_rows`` makes both).
    """
    if total_frames is not None:
        if fill is None:
            raise ValueError("stitch with total_frames needs a fill row for the frames no window covers")
        fill = np.asarray(fill, dtype=np.float32).reshape(-1)
        out = np.empty((total_frames, fill.size), dtype=np.float32)
        out[:] = fill
        for logits, window in zip(window_logits, windows, strict=True):
            first = window.start // frame_samples + window.keep_from
            out[first : first + window.num_kept] = np.asarray(logits)[window.keep_from : window.keep_to]
        if boundary is not None:
            for frame in gap_starts(windows, frame_samples):
                out[frame] = boundary
        return out
    if len(window_logits) != len(windows):
        raise ValueError(f"{len(window_logits)} logit arrays for {len(windows)} windows")
    if not windows:
        return np.zeros((0, 0), dtype=np.float32)
    parts = []
    for i, (logits, window) in enumerate(zip(window_logits, windows, strict=True)):
        array = np.asarray(logits)
        if array.ndim != 2:
            raise ValueError(f"window {i}: logits must be [frames, vocab], got shape {array.shape}")
        if array.shape[0] < window.keep_to:
            raise ValueError(f"window {i}: {array.shape[0]} logit frames, but frames up to {window.keep_to} are kept")
        parts.append(array[window.keep_from : window.keep_to])
    return np.concatenate(parts, axis=0)


def recording_stats(wave: np.ndarray, block: int = 1 << 20) -> tuple[float, float]:
    """Mean and 1/std of a long recording in float64, block by block (no full-size temporaries)."""
    return ranges_stats(wave, [(0, wave.size)], block)


def ranges_stats(wave: np.ndarray, ranges: list[tuple[int, int]], block: int = 1 << 20) -> tuple[float, float]:
    """Mean and 1/std (variance + 1e-7, as the wav2vec2 feature extractor) of the samples in ``ranges`` together,
    in float64, block by block."""
    total = total_sq = 0.0
    count = 0
    for lo, hi in ranges:
        for start in range(lo, hi, block):
            part = wave[start : min(hi, start + block)].astype(np.float64)
            total += float(part.sum())
            total_sq += float(np.dot(part, part))
            count += part.size
    mean = total / max(count, 1)
    var = max(total_sq / max(count, 1) - mean * mean, 0.0)
    return mean, 1.0 / float(np.sqrt(var + 1e-7))


NORMALIZATIONS = ("speech", "window", "recording")
"""``window_stats`` modes (and ``None``: raw samples)."""


def window_stats(
    wave: np.ndarray, windows: list[Window], normalization: str | None, frame_samples: int = 320
) -> list[tuple[float, float] | None]:
    """Zero-mean / unit-variance statistics ``(mean, 1/std)`` for each window of a recording, or ``None`` each.

    ``"speech"``: of all the recording's kept frames together (each frame's hop of samples, that is the speech runs
    without the skipped silences), the same for every window; ``"window"``: of each window's own samples, context
    included; ``"recording"``: of the whole recording, silences included. Used by ``run_windows`` and by the Triton
    pipeline, so both scale windows identically.
    """
    if normalization is None:
        return [None] * len(windows)
    if normalization == "window":
        return [ranges_stats(wave, [(w.start, w.end)]) for w in windows]
    if normalization == "recording":
        return [recording_stats(wave)] * len(windows)
    if normalization == "speech":
        kept = sorted((w.start + w.keep_from * frame_samples, min(wave.size, w.start + w.keep_to * frame_samples))
                      for w in windows)
        return [ranges_stats(wave, kept)] * len(windows)
    raise ValueError(f"unknown normalization {normalization!r}; choose one of {NORMALIZATIONS} or None")


def normalized(piece: np.ndarray, stats: tuple[float, float] | None) -> np.ndarray:
    """``piece`` scaled with ``window_stats``' statistics, float32."""
    piece = np.asarray(piece, dtype=np.float32)
    if stats is None:
        return piece
    mean, inv_std = stats
    return (piece - np.float32(mean)) * np.float32(inv_std)


def run_windows(
    waves: list[np.ndarray],
    plans: list[list[Window]],
    infer: Callable[[np.ndarray, np.ndarray | None], np.ndarray],
    vocab_size: int,
    blank_id: int,
    delimiter_id: int,
    batch_size: int = 4,
    normalization: str | None = "window",
    frame_samples: int = 320,
    receptive_samples: int = DEFAULT_RECEPTIVE_SAMPLES,
    bucket: int = 16000,
    prefetch: bool = True,
) -> list[np.ndarray]:
    """Run planned windows through ``infer(values [b, samples] f32, mask [b, samples] i64 | None) -> logits [b, frames,
    V]`` (mask None: no padding)
    and return each recording's ``[frames, vocab]`` logits (skipped silences: blank, first frame a delimiter).

    The one implementation behind ``asr_optimize.transcribe`` and the Triton ``asr`` pipeline, so both give the same
    text. Windows of all recordings are sorted by length and sent ``batch_size`` at a time (memory is bounded by the
    batch, not the recording). Windows are normalized with ``window_stats(wave, plan, normalization)``: the
    statistics of the recording's speech (``"speech"``), of each window (``"window"``), of the whole recording
    (``"recording"``), or not at all (``None``). Batch widths are rounded up to ``bucket`` samples, but never past the
    longest window planned: few distinct shapes keep the allocator from fragmenting (measured: peak RSS of a 30-minute
    recording 1773 MB with exact widths, 982 MB bucketed), full-chunk windows run unpadded, and an engine whose max
    shape is one chunk keeps working; padding is masked. With ``prefetch`` one helper thread builds the next batch
    (slicing, normalization, padding: numpy, which releases the GIL) while ``infer`` runs the current one, so a
    fast GPU runner does not wait for the host between batches; at most two batches are in memory.
    """
    fill, boundary = silence_rows(vocab_size, blank_id, delimiter_id)
    per_window = normalization == "window"  # computed in ``build`` (the prefetch thread), window by window
    stats = [None if per_window else window_stats(wave, plan, normalization, frame_samples)
             for wave, plan in zip(waves, plans, strict=True)]
    longest = max((w.num_samples for plan in plans for w in plan), default=0)
    queue = sorted(((k, j) for k, plan in enumerate(plans) for j in range(len(plan))),
                   key=lambda kj: plans[kj[0]][kj[1]].num_samples)
    outputs = [stitch([], [], num_frames(w.size, frame_samples, receptive_samples), fill, frame_samples=frame_samples)
               for w in waves]
    groups = [queue[start : start + batch_size] for start in range(0, len(queue), batch_size)]

    def build(group: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray | None]:
        """The padded batch of a group of windows; no mask when every window fills the width (the common case of
        long speech: full-chunk windows), which spares runners an all-ones mask of 8 bytes per sample."""
        width = max(plans[k][j].num_samples for k, j in group)
        width = max(width, min(-(-width // bucket) * bucket, longest))
        values = np.zeros((len(group), width), dtype=np.float32)
        full = all(plans[k][j].num_samples == width for k, j in group)
        mask = None if full else np.zeros((len(group), width), dtype=np.int64)
        for row, (k, j) in enumerate(group):
            window = plans[k][j]
            scale = ranges_stats(waves[k], [(window.start, window.end)]) if per_window else stats[k][j]
            piece = normalized(waves[k][window.start : window.end], scale)
            values[row, : piece.size] = piece
            if mask is not None:
                mask[row, : piece.size] = 1
        return values, mask

    def scatter(group: list[tuple[int, int]], logits: np.ndarray) -> None:
        for row, (k, j) in enumerate(group):
            window = plans[k][j]
            first = window.start // frame_samples + window.keep_from
            outputs[k][first : first + window.num_kept] = logits[row, window.keep_from : window.keep_to]

    if prefetch and len(groups) > 1:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="window-prefetch") as pool:
            pending = pool.submit(build, groups[0])
            for index, group in enumerate(groups):
                values, mask = pending.result()
                if index + 1 < len(groups):
                    pending = pool.submit(build, groups[index + 1])
                scatter(group, np.asarray(infer(values, mask)))
    else:
        for group in groups:
            scatter(group, np.asarray(infer(*build(group))))
    for out, plan in zip(outputs, plans, strict=True):
        for frame in gap_starts(plan, frame_samples):
            out[frame] = boundary
    return outputs
