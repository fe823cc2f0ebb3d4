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
frames, exactly what ``asr_optimize.ctc.frame_lengths_for`` computes for the standard kernels/strides. Windows
start at multiples of ``S``, hence window frame ``i`` is recording frame ``start // S + i`` and sees the very same
samples. Off-by-one handling: a window of ``C`` frames spans ``(C - 1) * S + R`` samples (not ``C * S``), so every
window but a single whole-recording one has exactly ``C`` frames and equal length (no padding inside a batch); the
last window is shifted left to end on the recording's last frame (it re-reads context instead of being short),
and the up to ``S - 1`` trailing samples after the last full frame feed no frame (as in a one-pass run).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Window", "num_frames", "plan_windows", "stitch"]

DEFAULT_RECEPTIVE_SAMPLES = 400  # wav2vec2 / HuBERT / XLS-R feature encoder: kernels 10,3,3,3,3,2,2


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


def stitch(window_logits: list[np.ndarray], windows: list[Window]) -> np.ndarray:
    """Concatenate the kept frames of each window's logits ``[frames, vocab]`` into ``[total_frames, vocab]``.

    Each window's logits may carry extra padding frames after its real ones (batched runs); they are never kept.
    """
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
