"""The one transcription entry point: one-pass equivalence, stitched windows, timestamps, files and bad input."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asr_optimize.audio.chunking import num_frames, speech_regions
from asr_optimize.audio.load import load_audio_file, make_batch
from asr_optimize.errors import AudioInputError
from asr_optimize.model.ctc import CtcVocabulary, frame_lengths_for, greedy_decode, word_timestamps
from asr_optimize.runners.base import Runner
from asr_optimize.transcribe import (
    ChunkingOptions,
    TranscribeOutput,
    transcribe,
    transcribe_files,
    transcribe_files_output,
)
from tests.support.assets import DEMO_MODEL

FIXED = ChunkingOptions(chunk_s=4, stride_s=1, split_on_silence=False)


class FrameLocalRunner(Runner):
    """Logits of frame j depend only on samples [320 j, 320 j + 400): chunking must then equal one pass exactly."""

    backend = "fake"

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size
        self.calls: list[tuple[int, ...]] = []

    def prepare(self, input_values: np.ndarray, attention_mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        return input_values, attention_mask

    def run_prepared(self, prepared: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        values, _ = prepared
        self.calls.append(values.shape)
        frames = num_frames(values.shape[1])
        starts = np.arange(frames) * 320
        cums = np.concatenate([np.zeros((values.shape[0], 1)), np.cumsum(values.astype(np.float64), axis=1)], axis=1)
        means = (cums[:, starts + 400] - cums[:, starts]) / 400  # [batch, frames]
        k = np.arange(self.vocab_size)
        return np.sin(means[..., None] * 37.0 * (k + 1) + k).astype(np.float32)

    def to_numpy(self, output: np.ndarray) -> np.ndarray:
        return output


@pytest.fixture(scope="module")
def demo_runner() -> Runner:
    from asr_optimize.runners.torch_runner import TorchRunner

    return TorchRunner(DEMO_MODEL)


@pytest.fixture(scope="module")
def demo_waves() -> tuple[list[np.ndarray], list[str]]:
    from asr_optimize.quality.eval_sets import load_eval_set

    utts = load_eval_set().utterances[:6]
    return [u.audio for u in utts], [u.text for u in utts]


def test_short_utterances_match_the_old_padded_batches(tiny_model: Path, waves: list[np.ndarray]) -> None:
    from asr_optimize.runners.torch_runner import TorchRunner

    runner = TorchRunner(tiny_model)
    batch = make_batch(waves)
    logits = runner.infer(batch.input_values, batch.attention_mask)
    frames = frame_lengths_for(tiny_model, batch.lengths)
    expected = greedy_decode(logits, frames, CtcVocabulary.from_model_dir(tiny_model))
    result = transcribe(runner, waves, tiny_model, batch_size=8)
    assert result.texts == expected and result.windows == [1, 1, 1]
    for i, row in enumerate(result.logits):
        np.testing.assert_array_equal(row, logits[i, : frames[i]])
    texts, old_logits = result  # unpacks as (texts, logits), as the old runners.base.transcribe returned
    assert texts == expected and len(old_logits) == 3


def test_audio_that_fits_one_chunk_equals_one_pass(tiny_model: Path) -> None:
    from asr_optimize.audio.load import synthetic_audio
    from asr_optimize.runners.torch_runner import TorchRunner

    runner = TorchRunner(tiny_model)
    wave = synthetic_audio(1, 3.9, seed=5)[0]
    one = transcribe(runner, [wave], tiny_model, chunking=ChunkingOptions(enabled=False))
    chunked = transcribe(runner, [wave], tiny_model, chunking=ChunkingOptions(chunk_s=4, stride_s=1))
    assert chunked.texts == one.texts and chunked.windows == [1]
    np.testing.assert_array_equal(chunked.logits[0], one.logits[0])


@pytest.mark.parametrize("seconds", [4.3, 9.0, 17.77])
def test_stitched_windows_equal_one_pass_for_a_frame_local_model(tiny_model: Path, seconds: float) -> None:
    vocab = CtcVocabulary.from_model_dir(tiny_model)
    rng = np.random.default_rng(3)
    wave = (0.1 * rng.standard_normal(int(seconds * 16000))).astype(np.float32)
    runner = FrameLocalRunner(len(vocab.tokens))
    one = transcribe(runner, [wave], tiny_model, normalize=False, chunking=ChunkingOptions(enabled=False))
    runner.calls.clear()
    chunked = transcribe(runner, [wave], tiny_model, normalize=False, chunking=FIXED)
    assert chunked.windows[0] > 1
    assert all(shape[0] <= FIXED.batch_size for shape in runner.calls)  # memory bounded by the batch
    assert {shape[1] for shape in runner.calls} == {199 * 320 + 400}  # equal windows: no padding, never over a chunk
    np.testing.assert_allclose(chunked.logits[0], one.logits[0], atol=1e-5)
    assert chunked.texts == one.texts


def test_mixed_short_and_long_keep_their_order(tiny_model: Path) -> None:
    vocab = CtcVocabulary.from_model_dir(tiny_model)
    rng = np.random.default_rng(4)
    waves = [(0.1 * rng.standard_normal(int(s * 16000))).astype(np.float32) for s in (9.5, 1.0, 6.1, 2.0)]
    runner = FrameLocalRunner(len(vocab.tokens))
    together = transcribe(runner, waves, tiny_model, normalize=False, chunking=FIXED)
    alone = [transcribe(runner, [w], tiny_model, normalize=False, chunking=FIXED) for w in waves]
    assert together.texts == [a.texts[0] for a in alone]
    assert [lg.shape[0] for lg in together.logits] == [num_frames(w.size) for w in waves]


def test_speech_regions_cut_silences_on_frame_boundaries() -> None:
    rng = np.random.default_rng(0)
    speech = [(0.2 * rng.standard_normal(n)).astype(np.float32) for n in (16000, 24000, 8000)]
    gap = np.zeros(8000, dtype=np.float32)  # 0.5 s
    wave = np.concatenate([gap, speech[0], gap, speech[1], np.zeros(1600, np.float32), speech[2], gap])
    regions = speech_regions(wave, min_silence_s=0.3)
    assert len(regions) == 2  # the 0.1 s pause is not a cut
    assert all(start % 320 == 0 for start, _ in regions)
    speech_end = 8000 + 16000 + 8000 + 24000 + 1600 + 8000
    assert regions[0] == (8000, 24000 + 80)  # 80 = receptive field - hop: the last speech hop gets its frame
    assert regions[1] == (32000, speech_end + 80)
    assert speech_regions(np.zeros(32000, np.float32)) == []


def test_word_timestamps_are_ordered_and_inside_the_audio(demo_runner: Runner, demo_waves: tuple) -> None:
    audio, refs = demo_waves
    gap = np.zeros(4000, dtype=np.float32)
    wave = np.concatenate([x for a in audio for x in (a, gap)])  # ~15 s: over a 6 s chunk
    opts = ChunkingOptions(chunk_s=6, stride_s=1)
    result = transcribe(demo_runner, [wave], DEMO_MODEL, chunking=opts, timestamps=True)
    words = result.words[0]
    assert [w.word for w in words] == result.texts[0].split() and len(words) >= len(" ".join(refs).split()) - 3
    duration = wave.size / 16000
    for w, nxt in itertools.pairwise(words):
        assert 0 <= w.start_s < w.end_s <= nxt.start_s <= duration
    assert words[-1].end_s <= duration and words[0].start_s < 0.5
    vocab = CtcVocabulary.from_model_dir(DEMO_MODEL)
    assert [w.word for w in word_timestamps(result.logits[0], vocab)] == result.texts[0].split()


def test_silence_gives_empty_text(tiny_model: Path) -> None:
    silent = [np.zeros(16000 * 30, np.float32), (1e-5 * np.random.default_rng(0).standard_normal(8000)).astype("f4")]
    result = transcribe(FrameLocalRunner(10), silent, tiny_model, timestamps=True)
    assert result.texts == ["", ""] and result.words == [[], []] and result.windows == [0, 0]


def test_nan_is_reported_with_its_time_offset(tiny_model: Path) -> None:
    wave = np.zeros(16000 * 100, np.float32)
    wave[16000 * 83 + 4000] = np.nan
    with pytest.raises(AudioInputError, match=r"83\.250 s \(00:01:23\.250\)"):
        transcribe(FrameLocalRunner(10), [wave], tiny_model)


def test_over_max_duration_names_the_limit(tiny_model: Path, tmp_path: Path) -> None:
    opts = ChunkingOptions(max_duration_s=5)
    with pytest.raises(AudioInputError, match="max_duration_s=5"):
        transcribe(FrameLocalRunner(10), [np.zeros(16000 * 6, np.float32)], tiny_model, chunking=opts)
    path = tmp_path / "long.flac"
    sf.write(path, np.zeros(8000 * 6, np.float32), 8000)
    with pytest.raises(AudioInputError, match=r"long\.flac.*max_duration_s=5"):
        transcribe_files([path], tiny_model, FrameLocalRunner(10), chunking=opts)


def test_corrupt_missing_and_nan_files_name_the_file(tiny_model: Path, tmp_path: Path) -> None:
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk")
    with pytest.raises(AudioInputError, match=r"broken\.wav"):
        transcribe_files([bad], tiny_model, FrameLocalRunner(10))
    with pytest.raises(AudioInputError, match=r"missing\.flac"):
        load_audio_file(tmp_path / "missing.flac")
    nan_file = tmp_path / "nan.wav"
    data = np.zeros((22050 * 3, 2), np.float32)
    data[int(22050 * 2.5), 1] = np.nan
    sf.write(nan_file, data, 22050, subtype="FLOAT")
    with pytest.raises(AudioInputError, match=r"nan\.wav: NaN or infinite sample at 2\.500 s"):
        load_audio_file(nan_file)


@pytest.mark.parametrize(("rate", "fmt"), [(8000, "wav"), (22050, "flac"), (44100, "wav"), (44100, "ogg"),
                                           pytest.param(22050, "mp3", marks=pytest.mark.requires("mp3"))])
def test_files_of_any_rate_and_channels_load_as_16k_mono(tmp_path: Path, rate: int, fmt: str) -> None:
    t = np.arange(int(rate * 1.5)) / rate
    tone = 0.3 * np.sin(2 * np.pi * 440 * t)
    path = tmp_path / f"tone-{rate}.{fmt}"
    sf.write(path, np.stack([tone, tone], axis=1).astype(np.float32), rate)
    wave = load_audio_file(path)
    assert wave.ndim == 1 and wave.dtype == np.float32
    assert abs(wave.size - 24000) <= (1200 if fmt == "mp3" else 2)  # mp3 adds encoder delay/padding
    spectrum = np.abs(np.fft.rfft(wave[2000:18000]))
    assert abs(np.argmax(spectrum) * 16000 / 16000 - 440) <= 2  # still a 440 Hz tone


def test_transcribe_files_and_json_output(tiny_model: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    paths = []
    for i, (rate, seconds) in enumerate([(8000, 2.0), (44100, 9.0)]):
        path = tmp_path / f"f{i}.wav"
        sf.write(path, (0.1 * rng.standard_normal((int(rate * seconds), 2))).astype(np.float32), rate)
        paths.append(path)
    vocab = CtcVocabulary.from_model_dir(tiny_model)
    runner = FrameLocalRunner(len(vocab.tokens))
    opts = ChunkingOptions(chunk_s=4, stride_s=1)
    files = transcribe_files(paths, tiny_model, runner, chunking=opts, timestamps=True)
    assert [f.sample_rate for f in files] == [8000, 44100] and [f.channels for f in files] == [2, 2]
    assert files[0].windows == 1 and files[1].windows > 1 and files[1].duration_s == pytest.approx(9.0, abs=0.01)
    assert all(w.end_s <= f.duration_s for f in files for w in f.words)
    doc = transcribe_files_output(paths, tiny_model, runner, chunking=opts)
    again = TranscribeOutput.model_validate(json.loads(doc.model_dump_json()))
    assert again.files[1].text == files[1].text and again.chunking.chunk_s == 4


# ---------------------------------------------------------------- window boundaries on audio unlike the demo set


def _speechlike(layout: list[tuple[float, float]], total_s: float, seed: int = 0) -> np.ndarray:
    """Amplitude-modulated chirps and noise at ``(onset_s, seconds)``, digital silence between (not espeak audio)."""
    rng = np.random.default_rng(seed)
    wave = np.zeros(round(total_s * 16000), np.float32)
    for at_s, seconds in layout:
        t = np.arange(round(seconds * 16000)) / 16000
        burst = (np.sin(2 * np.pi * 2.7 * t) ** 2 + 0.2) * (0.3 * np.sin(2 * np.pi * 150 * t * (1 + 0.3 * t))
                                                            + 0.1 * rng.standard_normal(t.size))
        wave[round(at_s * 16000) : round(at_s * 16000) + t.size] = burst
    return wave


@pytest.mark.parametrize("normalization", ["window", "speech", "recording"])
def test_context_changes_no_kept_frame_of_a_frame_local_model(tiny_model: Path, normalization: str) -> None:
    """Lead-in and context after are computed and dropped: for a model whose frames see only their own samples the
    stitched logits with context equal those without, under every normalization whose statistics do not depend on
    the window's extent; the runner does see the wider windows."""
    class SeesLengths(FrameLocalRunner):
        lengths: list[int]

        def run_prepared(self, prepared: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
            values, mask = prepared
            self.lengths += [values.shape[1]] * values.shape[0] if mask is None else mask.sum(axis=1).tolist()
            return super().run_prepared(prepared)

    vocab = CtcVocabulary.from_model_dir(tiny_model)
    wave = _speechlike([(5.0137, 2.1), (7.4, 1.3), (9.1, 26.0), (36.0, 0.8)], 43.0)  # 5 s / 7 s of silence around
    runner = SeesLengths(len(vocab.tokens))
    runner.lengths = []
    base = ChunkingOptions(normalization=normalization)
    plain = transcribe(runner, [wave], tiny_model, chunking=base)
    seen, runner.lengths = sum(runner.lengths), []
    ctx = base.model_copy(update={"context_before_s": 0.4, "context_after_s": 0.4})
    wide = transcribe(runner, [wave], tiny_model, chunking=ctx)
    assert wide.windows == plain.windows and plain.windows[0] >= 5  # the 26 s run: 2 windows
    assert sum(runner.lengths) == seen + 3 * 2 * 6400  # 0.4 s on both sides of the 3 short runs; 20 s windows stay
    if normalization == "window":  # per-window statistics move with the context: not comparable
        return
    np.testing.assert_array_equal(wide.logits[0], plain.logits[0])
    assert wide.texts == plain.texts


def test_speech_statistics_are_the_same_wherever_the_recording_is_cut(tiny_model: Path) -> None:
    """``normalization="speech"``: the same runs with other pauses and leading/trailing silence give the same
    logits per run (frame-local model), unlike statistics of the whole recording."""
    vocab = CtcVocabulary.from_model_dir(tiny_model)
    runs = [(1.2, 0), (0.9, 1), (2.4, 2)]
    results = {}
    for mode in ("speech", "recording"):
        for lead, pause, trail in [(0.6, 0.5, 0.4), (6.0, 1.0, 9.0)]:
            layout, at = [], lead
            for seconds, _ in runs:
                layout.append((at, seconds))
                at += seconds + pause
            wave = _speechlike(layout, at - pause + trail)
            out = transcribe(FrameLocalRunner(len(vocab.tokens)), [wave], tiny_model, chunking=ChunkingOptions(
                chunk_s=4, stride_s=1, normalization=mode)).logits[0]
            first = [round(a * 16000) // 320 for a, _ in layout]
            results[mode, lead] = [out[f + 1 : f + 50] for f in first]
    for a, b in zip(results["speech", 0.6], results["speech", 6.0], strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)
    assert not np.allclose(results["recording", 0.6][0], results["recording", 6.0][0], atol=1e-3)
