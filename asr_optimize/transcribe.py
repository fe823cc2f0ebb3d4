"""One transcription entry point for every path: short utterances in padded batches, long ones in windows.

Why: wav2vec2 degrades and its attention cost grows quadratically on recordings much longer than its training clips
(demo model, one pass: WER 13.7% on utterances, 33.6% on a 1-minute recording). ``transcribe`` runs utterances that
fit one chunk whole (sorted by length, padded batches, per-utterance normalization) and cuts longer ones at
silences, then into overlapping windows where speech runs on (``asr_optimize.audio.chunking``); the windows of all long
utterances go through the runner in batches of ``ChunkingOptions.batch_size``, so memory is bounded by the batch,
not by the recording. Kept frames are stitched and decoded with the same greedy decoder. ``transcribe_files`` adds
file loading, the duration limit and a JSON-ready result for the ``asr-optimize transcribe`` command.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from asr_optimize.audio.chunking import (  # noqa: F401  (SILENCE_PEAK, is_silence: re-exported)
    SILENCE_PEAK,
    Window,
    is_silence,
    num_frames,
    plan_speech_windows,
    plan_windows,
    run_windows,
)
from asr_optimize.audio.load import (
    SAMPLE_RATE,
    audio_file_info,
    first_nonfinite_offset,
    format_offset,
    load_audio_file,
    make_batch,
)
from asr_optimize.errors import AudioInputError
from asr_optimize.model.ctc import (
    CtcVocabulary,
    WordTimestamp,
    conv_geometry,
    frame_lengths_for,
    greedy_decode,
    word_timestamps,
)
from asr_optimize.model.inputs import exact_length_infer, input_policy
from asr_optimize.options import Options

T = TypeVar("T")
R = TypeVar("R")
Route = Literal["silent", "short", "long"]


class Runner(Protocol):
    """Any ``asr_optimize.runners.base.Runner``, typed structurally (importing runners here would be a cycle)."""

    def infer(self, input_values: np.ndarray, attention_mask: np.ndarray | None = None) -> np.ndarray: ...

# Chosen by measurement on the demo model (docs/long-form.md): with silence splitting, 20/2 ties the best pair on the
# joined test set and keeps every utterance up to 20 s in one pass, exactly as before chunking existed.
DEFAULT_CHUNK_S = 20.0
DEFAULT_STRIDE_S = 2.0
DEFAULT_WINDOW_BATCH = 4
DEFAULT_MAX_DURATION_S = 4 * 3600.0
WIDTH_BUCKET = SAMPLE_RATE  # window batches are padded to whole seconds


class ChunkingOptions(Options):
    """How long recordings are cut: windows of ``chunk_s`` seconds overlapping by ``stride_s`` on each side."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    chunk_s: float = Field(DEFAULT_CHUNK_S, gt=0)
    """Window length; utterances of at most this length run in one pass, exactly as without chunking."""
    stride_s: float = Field(DEFAULT_STRIDE_S, ge=0)
    """Context on each inner side of a window whose frames are computed, then dropped."""
    batch_size: int = Field(DEFAULT_WINDOW_BATCH, ge=1)
    """Windows per runner call: this, not the recording length, bounds the activation memory."""
    max_duration_s: float = Field(DEFAULT_MAX_DURATION_S, gt=0)
    """Longer recordings are refused with an error naming this limit."""
    normalization: Literal["speech", "window", "recording"] = "window"
    """Zero-mean/unit-variance statistics for long-form windows (``chunking.window_stats``): of the recording's
    speech runs together, of each window, or of the whole recording (measured: docs/long-form.md)."""
    enabled: bool = True
    """False: every utterance in one pass whatever its length (the pre-chunking behaviour, for measurements)."""
    split_on_silence: bool = True
    """Cut long recordings at silences of ``min_silence_s`` and skip those (``chunking.speech_regions``); speech
    runs longer than ``chunk_s`` are still windowed. Measured: the demo model's WER on joined utterances drops from
    ~30% (fixed windows) to near its per-utterance WER, because it mis-hears speech that follows silence."""
    min_silence_s: float = Field(0.15, gt=0)
    """Shorter pauses are not cut. Measured: 0.2 s leaves utterances 0.1 s apart in one window (+17.7 WER points on
    the demo tuning recording with 0.1 s pauses, +1.7 at 0.15 s); 0.1 s cuts inside sentences."""
    silence_db: float = Field(-40.0, lt=0)
    """A 20 ms hop this far below the recording's loud level (95th percentile) is silence."""
    pad_before_s: float = Field(0.0, ge=0)
    """Silence kept before a speech run, counted from its onset sample (``chunking.speech_onset``); the demo model
    mis-hears speech after silence: keep none (measured, docs/long-form.md)."""
    pad_after_s: float = Field(0.1, ge=0)
    """Silence kept after a speech run."""
    context_before_s: float = Field(0.0, ge=0)
    """Audio before a speech run (whatever is there) that its window carries; its frames are computed, then dropped
    (``chunking.plan_speech_windows``). 0 for the demo model, which reads speech after silence worse even when the
    silence's frames are dropped (measured: docs/long-form.md); a model trained on untrimmed speech may want some."""
    context_after_s: float = Field(0.0, ge=0)
    """Audio after a speech run that its window carries; its frames are computed, then dropped."""
    noise_margin_db: float | None = Field(10.0, gt=0)
    """A hop is also silence when less than this above the recording's noise floor (``chunking.speech_regions``):
    finds pauses in background noise (measured at 20 dB SNR: 15 windows for 90 utterances and +28.4 WER points
    without, +2.8 with 10 dB). None: only ``silence_db``."""

    @model_validator(mode="after")
    def _stride_fits(self) -> ChunkingOptions:
        if self.chunk_s <= 2 * self.stride_s:
            raise ValueError(f"chunk_s={self.chunk_s} must be longer than 2 * stride_s={self.stride_s}")
        return self


@dataclass
class TranscribeResult:
    """Greedy transcripts, the valid (stitched) logits ``[frames, vocab]`` per utterance, optional word times."""

    texts: list[str]
    logits: list[np.ndarray]
    words: list[list[WordTimestamp]] | None = None
    windows: list[int] = field(default_factory=list)
    """Runner windows per utterance (1 = one pass, 0 = silence, not run)."""

    def __iter__(self) -> Iterator[list]:  # ``texts, logits = transcribe(...)`` keeps working
        return iter((self.texts, self.logits))


def check_recording(wave: np.ndarray, name: str, max_duration_s: float | None) -> np.ndarray:
    """1-D, at least one frame, within the duration limit, finite (else an error naming the time offset)."""
    array = np.asarray(wave)
    if array.ndim != 1:
        raise AudioInputError(f"{name}: expected mono audio of shape [samples], got shape {array.shape}")
    if array.size == 0:
        raise AudioInputError(f"{name}: empty audio (0 samples)")
    if max_duration_s is not None and array.size > max_duration_s * SAMPLE_RATE:
        raise AudioInputError(
            f"{name}: {format_offset(array.size / SAMPLE_RATE)} of audio is longer than the limit "
            f"max_duration_s={max_duration_s:g} s ({max_duration_s / 3600:g} h); split it or raise max_duration_s"
        )
    if array.size < 400:
        raise AudioInputError(f"{name}: {array.size} samples is shorter than one wav2vec2 frame (400 samples)")
    array = array.astype(np.float32, copy=False)
    bad = first_nonfinite_offset(array)
    if bad is not None:
        raise AudioInputError(
            f"{name}: NaN or infinite sample at {format_offset(bad / SAMPLE_RATE)} (sample {bad} at 16 kHz)"
        )
    return array


def transcribe(
    runner: Runner,
    waves: Sequence[np.ndarray],
    model_dir: Path,
    batch_size: int = 8,
    normalize: bool = True,
    chunking: ChunkingOptions | None = None,
    timestamps: bool = False,
) -> TranscribeResult:
    """Transcribe 16 kHz mono waveforms with any runner (``Runner.infer``); long ones in stitched windows.

    ``batch_size`` is the utterances per call for short ones, ``chunking.batch_size`` the windows per call for
    long ones (defaults: ``ChunkingOptions()``). Short utterances give exactly what ``runners.base.transcribe``
    always gave. Silent utterances (peak below ``SILENCE_PEAK``) give "" without running the model.
    """
    opts = chunking or ChunkingOptions()
    model_dir = Path(model_dir)
    vocab = CtcVocabulary.from_model_dir(model_dir)
    hop, field_ = conv_geometry(model_dir)
    frame_s = hop / SAMPLE_RATE
    infer = runner.infer
    if not input_policy(model_dir).pad_batches:  # padding changes this model's output: each length alone
        infer = exact_length_infer(runner.infer, model_dir)
    checked = _map_threads(lambda iw: check_recording(iw[1], f"utterance {iw[0]}", opts.max_duration_s),
                           list(enumerate(waves)))
    n = len(checked)
    texts: list[str] = [""] * n
    logits_out: list[np.ndarray] = [np.empty(0)] * n
    counts = [0] * n
    short: list[int] = []
    long: list[int] = []
    for i, wave in enumerate(checked):
        route = utterance_route(wave, opts, hop, field_)
        if route == "silent":
            logits_out[i] = np.zeros((0, len(vocab.tokens)), dtype=np.float32)
        elif route == "short":
            short.append(i)
        else:
            long.append(i)

    order = sorted(short, key=lambda i: checked[i].size)
    for start in range(0, len(order), batch_size):
        group = order[start : start + batch_size]
        batch = make_batch([checked[i] for i in group], normalize=normalize)
        logits = infer(batch.input_values, batch.attention_mask)
        frames = frame_lengths_for(model_dir, batch.lengths)
        for j, index in enumerate(group):
            logits_out[index] = logits[j, : int(frames[j])]
            counts[index] = 1

    if long:
        plans = _map_threads(lambda i: _plan(checked[i], opts, hop, field_), long)
        stitched = run_windows(
            [checked[i] for i in long], plans, infer, len(vocab.tokens), vocab.blank_id,
            vocab.tokens.index(vocab.word_delimiter), opts.batch_size, opts.normalization if normalize else None,
            hop, field_, WIDTH_BUCKET,
        )
        for i, plan, logits in zip(long, plans, stitched, strict=True):
            logits_out[i] = logits
            counts[i] = len(plan)

    for i in short + long:
        texts[i] = greedy_decode(logits_out[i][None], np.array([logits_out[i].shape[0]]), vocab)[0]
    words = [word_timestamps(lg, vocab, frame_s) if lg.size else [] for lg in logits_out] if timestamps else None
    return TranscribeResult(texts=texts, logits=logits_out, words=words, windows=counts)


def utterance_route(wave: np.ndarray, opts: ChunkingOptions, hop: int, field_: int) -> Route:
    """How ``transcribe`` runs a checked recording: not at all (silent), in one pass batched with the other short
    ones (sorted by length, ``batch_size`` at a time), or in windows pooled across every long one. One rule, so a
    sharded evaluation (``asr_optimize.eval_shards``) can rebuild exactly the batches of a one-process run."""
    if is_silence(wave):
        return "silent"
    if not opts.enabled or num_frames(wave.size, hop, field_) <= round(opts.chunk_s * SAMPLE_RATE / hop):
        return "short"
    return "long"


def _map_threads(fn: Callable[[T], R], items: list[T]) -> list[R]:
    """``map`` over threads for per-recording host passes (finite check, silence search: numpy, which releases the
    GIL). Why: for 16 ten-minute recordings these took ~0.5 s of a 3.4 s GPU run, one recording after another."""
    if len(items) < 2:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(len(items), os.cpu_count() or 1, 8)) as pool:
        return list(pool.map(fn, items))


def _plan(wave: np.ndarray, opts: ChunkingOptions, hop: int, field_: int) -> list[Window]:
    if opts.split_on_silence:
        return plan_speech_windows(wave, opts.chunk_s, opts.stride_s, SAMPLE_RATE, hop, field_, opts.min_silence_s,
                                   opts.silence_db, opts.pad_before_s, opts.pad_after_s, opts.context_before_s,
                                   opts.context_after_s, opts.noise_margin_db)
    return plan_windows(wave.size, opts.chunk_s, opts.stride_s, SAMPLE_RATE, hop, field_)


# ---------------------------------------------------------------- files


class WordTiming(BaseModel):
    """One word with its start/end in seconds from the start of the file."""

    word: str
    start_s: float
    end_s: float


class FileTranscript(BaseModel):
    """The transcript of one audio file (the ``transcribe`` command's per-file JSON)."""

    path: str
    duration_s: float
    """Of the audio as decoded (16 kHz mono)."""
    sample_rate: int
    """Of the file, before resampling to 16 kHz."""
    channels: int
    text: str
    windows: int
    """Acoustic-model windows it took (1 = one pass, 0 = silence)."""
    words: list[WordTiming] | None = None


class TranscribeOutput(BaseModel):
    """What ``asr-optimize transcribe --json`` prints: the model, the runner, the chunking, and every file."""

    model: str
    runner: str
    chunking: ChunkingOptions
    files: list[FileTranscript]
    elapsed_s: float
    real_time_factor: float | None = None
    """Seconds of audio per second of wall time."""


def transcribe_files(
    paths: Sequence[Path | str],
    model_dir: Path,
    runner: Runner,
    batch_size: int = 8,
    chunking: ChunkingOptions | None = None,
    timestamps: bool = False,
    normalize: bool = True,
) -> list[FileTranscript]:
    """Transcribe audio files of any rate/channel count (WAV, FLAC, MP3, OGG), one file in memory at a time.

    Every header is checked first (exists, readable, within ``max_duration_s``), so a bad file fails the command
    before any model time is spent; the ``AudioInputError`` names the file.
    """
    opts = chunking or ChunkingOptions()
    infos = [audio_file_info(p) for p in paths]
    for path, (duration, _, _) in zip(paths, infos, strict=True):
        if duration > opts.max_duration_s:
            raise AudioInputError(
                f"{path}: {format_offset(duration)} of audio is longer than the limit "
                f"max_duration_s={opts.max_duration_s:g} s ({opts.max_duration_s / 3600:g} h); split the file or raise "
                "max_duration_s"
            )
    out = []
    for path, (_, rate, channels) in zip(paths, infos, strict=True):
        wave = load_audio_file(path, opts.max_duration_s)
        try:
            result = transcribe(runner, [wave], model_dir, batch_size, normalize, opts, timestamps)
        except AudioInputError as exc:
            raise AudioInputError(f"{path}: {exc}") from exc
        words = None
        if result.words is not None:
            words = [WordTiming(word=w.word, start_s=round(w.start_s, 3), end_s=round(w.end_s, 3))
                     for w in result.words[0]]
        out.append(FileTranscript(path=str(path), duration_s=round(wave.size / SAMPLE_RATE, 3), sample_rate=rate,
                                  channels=channels, text=result.texts[0], windows=result.windows[0], words=words))
    return out


def transcribe_files_output(
    paths: Sequence[Path | str], model_dir: Path, runner: Runner, model_label: str | None = None, **kwargs: object
) -> TranscribeOutput:
    """``transcribe_files`` wrapped with timing and provenance: the whole JSON document the CLI prints."""
    opts = kwargs.pop("chunking", None) or ChunkingOptions()
    began = time.perf_counter()
    files = transcribe_files(paths, model_dir, runner, chunking=opts, **kwargs)  # type: ignore[arg-type]
    elapsed = time.perf_counter() - began
    audio = sum(f.duration_s for f in files)
    return TranscribeOutput(
        model=model_label or str(model_dir), runner=getattr(runner, "label", "") or type(runner).__name__,
        chunking=opts, files=files, elapsed_s=round(elapsed, 3),
        real_time_factor=round(audio / elapsed, 1) if elapsed > 0 else None,
    )
