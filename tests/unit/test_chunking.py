"""Window planning and stitching: the kept frames tile the recording exactly, on the model's frame grid."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import numpy as np
import pytest

from asr_optimize.audio import chunking
from asr_optimize.audio.chunking import Window, num_frames, plan_windows, stitch
from asr_optimize.model.ctc import conv_geometry_from, conv_output_length

KERNELS = [10, 3, 3, 3, 3, 2, 2]
STRIDES = [5, 2, 2, 2, 2, 2, 2]


def check_tiling(n: int, chunk_s: float, stride_s: float) -> list[Window]:
    """Windows start on frames, stay inside the audio, and their kept frames cover [0, F) once, in order."""
    windows = plan_windows(n, chunk_s, stride_s)
    total = num_frames(n)
    chunk = round(chunk_s * 16000 / 320)
    position = 0
    for w in windows:
        assert w.start % 320 == 0 and 0 <= w.start < w.end <= n
        frames = num_frames(w.num_samples)
        if len(windows) > 1:
            assert frames == chunk  # equal shapes: a batch of windows needs no padding
        assert 0 <= w.keep_from < w.keep_to <= frames
        assert w.start // 320 + w.keep_from == position
        position = w.start // 320 + w.keep_to
    assert position == total
    return windows


def test_num_frames_matches_the_conv_arithmetic() -> None:
    lengths = np.arange(0, 50_000)
    expected = conv_output_length(lengths, KERNELS, STRIDES)
    assert [num_frames(int(n)) for n in lengths[::37]] == expected[::37].tolist()
    assert conv_geometry_from(KERNELS, STRIDES) == (320, 400)


def test_empty_and_sub_frame_audio_have_no_windows() -> None:
    assert plan_windows(0, 10, 1) == []
    assert plan_windows(399, 10, 1) == []
    assert plan_windows(400, 10, 1) == [Window(0, 400, 0, 1)]
    assert stitch([], []).shape == (0, 0)


def test_audio_that_fits_one_chunk_is_one_whole_window() -> None:
    for n in (16_000, 10 * 16_000, (500 - 1) * 320 + 400, (500 - 1) * 320 + 400 + 319):  # up to exactly 500 frames
        assert plan_windows(n, 10, 2) == [Window(0, n, 0, num_frames(n))]


def test_one_frame_over_a_chunk_gives_two_windows_and_a_tiny_tail() -> None:
    n = 500 * 320 + 400  # 501 frames, chunk 500
    windows = check_tiling(n, 10, 2)
    assert windows == [Window(0, 160_080, 0, 400), Window(320, 160_400, 399, 500)]


@pytest.mark.parametrize("extra", [0, 1, 319, 320, 321])
def test_exact_multiples_of_the_step(extra: int) -> None:
    step = 500 - 2 * 100
    n = (500 + 3 * step - 1) * 320 + 400 + extra  # the 4th window ends exactly on the last frame (extra=0)
    windows = check_tiling(n, 10, 2)
    assert len(windows) == (4 if extra < 320 else 5)


@pytest.mark.parametrize("seed", range(5))
def test_random_lengths_tile(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for n in rng.integers(400, 16000 * 120, size=40):
        check_tiling(int(n), float(rng.choice([5, 8, 10, 20])), float(rng.choice([0, 0.5, 1, 2])))


def test_invalid_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="longer than 2"):
        plan_windows(16000 * 60, 4, 2)
    with pytest.raises(ValueError):
        plan_windows(16000, 0, 0)
    with pytest.raises(ValueError):
        plan_windows(-1, 10, 1)


def test_stitch_puts_every_frame_back_in_place() -> None:
    """Each window's logits hold the recording frame index they stand for: the stitch must give 0..F-1."""
    n = 16000 * 47 + 123
    windows = plan_windows(n, 8, 1.5)
    logits = []
    for w in windows:
        frames = num_frames(w.num_samples)
        index = w.start // 320 + np.arange(frames + 3, dtype=np.float32)  # + 3 padding frames (batched run)
        logits.append(np.stack([index, -index], axis=1))
    out = stitch(logits, windows)
    np.testing.assert_array_equal(out[:, 0], np.arange(num_frames(n)))


def test_stitch_refuses_mismatches() -> None:
    windows = plan_windows(16000 * 30, 10, 2)
    with pytest.raises(ValueError, match="logit arrays"):
        stitch([np.zeros((500, 3))], windows)
    with pytest.raises(ValueError, match="frames up to"):
        stitch([np.zeros((10, 3))] * len(windows), windows)


def test_chunking_imports_only_numpy_and_stdlib() -> None:
    """It is copied as-is into a Triton python-backend model folder."""
    tree = ast.parse(Path(chunking.__file__).read_text(encoding="utf-8"))
    modules = {a.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
    modules |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert modules - {"numpy"} <= set(sys.stdlib_module_names), modules


def test_run_windows_prefetch_gives_the_same_logits_and_no_mask_for_full_windows() -> None:
    """The prefetch thread only moves host work; full-width batches reach the runner without a mask."""
    rng = np.random.default_rng(3)
    waves = [rng.standard_normal(n).astype(np.float32) for n in (16000 * 70, 16000 * 45 + 123, 16000 * 50)]
    plans = [plan_windows(w.size, 20.0, 2.0, 16000, 320, 400) for w in waves]
    masks: list[bool] = []

    def infer(values: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
        masks.append(mask is not None)
        frames = num_frames(values.shape[1], 320, 400)
        # logits that depend on the window's samples, so any mix-up of rows or batches shows
        return np.repeat(values[:, : frames * 320 : 320, None], 5, axis=2) * np.arange(1, 6, dtype=np.float32)

    runs = [chunking.run_windows(waves, plans, infer, 5, 0, 1, batch_size=2, prefetch=p) for p in (False, True)]
    for sequential, prefetched in zip(*runs, strict=True):
        np.testing.assert_array_equal(sequential, prefetched)
    assert len(masks) % 2 == 0 and not all(masks[: len(masks) // 2]), "full-chunk batches carry no mask"


def _speech(seconds: float, seed: int = 1) -> np.ndarray:
    speech = (0.2 * np.random.default_rng(seed).standard_normal(round(seconds * 16000))).astype(np.float32)
    speech[0] = 0.3  # the first sample is loud: the onset is exact
    return speech


def test_speech_regions_start_on_the_onset_sample_not_the_hop_grid() -> None:
    """The hop grid put 0-19 ms of silence in front of each speech run, which the demo model reads as a consonant
    (30-minute recording: WER 15.00% -> 13.22% with sample-exact onsets, docs/long-form.md)."""
    wave = np.zeros(16000 * 4, np.float32)
    onsets = [8000 + 137, 8000 + 137 + 16000 + 8000 + 250]  # inside hops
    for at in onsets:
        wave[at : at + 16000] = _speech(1)
    regions = chunking.speech_regions(wave, min_silence_s=0.2)
    assert [start for start, _ in regions] == onsets
    assert [end for _, end in regions] == [(-(-(at + 16000) // 320)) * 320 + 80 for at in onsets]  # hop grid + 80
    padded = chunking.speech_regions(wave, min_silence_s=0.2, pad_before_s=0.01)
    assert [start for start, _ in padded] == [at - 160 for at in onsets]  # pad_before_s is sample-exact too


def test_a_quiet_onset_in_the_hop_before_is_kept() -> None:
    """Ten quiet samples at the end of a hop leave that hop under the threshold; the onset search looks one hop back."""
    wave = np.zeros(16000 * 2, np.float32)
    wave[9600 : 9600 + 8000] = _speech(0.5)
    wave[9590:9600] = 0.005  # RMS over its hop 0.0009 < threshold 0.002; over its 1 ms block 0.004
    (region,) = chunking.speech_regions(wave, min_silence_s=0.2)
    assert region[0] == 9590


def test_runs_off_the_hop_grid_land_in_their_frames() -> None:
    """Windows of runs that start between hops keep their own frame grid; stitched, each run's frames start in the
    recording frame its onset falls in, silences are blank with a delimiter at each cut, nothing overruns."""
    onsets = [3 * 16000 + 101, 3 * 16000 + 101 + 40 * 16000 + 16000 + 77]  # the first run is windowed (40 s > 20 s)
    lengths = [40 * 16000, 5 * 16000]
    wave = np.zeros(onsets[1] + lengths[1] + 16000, np.float32)
    for at, n in zip(onsets, lengths, strict=True):
        wave[at : at + n] = _speech(n / 16000)
    plan = chunking.plan_speech_windows(wave, 20.0, 2.0, min_silence_s=0.2, pad_after_s=0.1)
    assert len(plan) == 4 and plan[0].start == onsets[0] and plan[3].start == onsets[1]
    assert all((w.start - onsets[0]) % 320 == 0 for w in plan[:3])  # one run, one frame grid

    def infer(values: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
        out = np.zeros((values.shape[0], num_frames(values.shape[1]), 3), np.float32)
        out[:, :, 2] = 1.0  # every window frame says "speech"
        return out

    (logits,) = chunking.run_windows([wave], [plan], infer, 3, 0, 1, batch_size=2)
    labels = logits.argmax(axis=1)
    assert labels.size == num_frames(wave.size)
    speech = np.flatnonzero(labels == 2)
    first = [at // 320 for at in onsets]
    assert speech[0] == first[0] and first[1] in speech and first[1] - 1 not in speech
    assert np.flatnonzero(labels == 1).tolist() == [int(speech[np.flatnonzero(np.diff(speech) > 1)[0]]) + 1]


# ---------------------------------------------------------------- context around speech runs


def _bursts(layout: list[tuple[float, float]], total_s: float, seed: int = 5, noise_db: float | None = None
            ) -> tuple[np.ndarray, list[int]]:
    """Speech-like bursts unlike the demo set's espeak clips (amplitude-modulated tones and noise) at ``(onset_s,
    seconds)``, digital silence or pink noise ``noise_db`` under the bursts' power elsewhere; their onset samples."""
    from asr_optimize.audio.longform_data import pink_noise

    rng = np.random.default_rng(seed)
    wave = np.zeros(round(total_s * 16000))
    onsets = []
    for at_s, seconds in layout:
        n, at = round(seconds * 16000), round(at_s * 16000)
        t = np.arange(n) / 16000
        burst = (np.sin(2 * np.pi * 3.3 * t) ** 2 + 0.2) * (0.3 * np.sin(2 * np.pi * 180 * t * (1 + 0.2 * t))
                                                            + 0.1 * rng.standard_normal(n))
        burst[0] = 0.4  # the first sample is loud: the onset is exact
        wave[at : at + n] = burst
        onsets.append(at)
    if noise_db is not None:
        power = np.mean(np.concatenate([wave[a : a + round(s * 16000)] for (_, s), a in zip(layout, onsets,
                                                                                          strict=True)]) ** 2)
        noise = pink_noise(wave.size, rng)
        wave += noise * np.sqrt(power / 10 ** (noise_db / 10) / np.mean(noise**2))
    return wave.astype(np.float32), onsets


def _frame_local(values: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Logits of frame j from samples [320 j, 320 j + 400) only: context must not change a kept frame."""
    frames = num_frames(values.shape[1])
    starts = np.arange(frames) * 320
    cums = np.concatenate([np.zeros((values.shape[0], 1)), np.cumsum(values.astype(np.float64), axis=1)], axis=1)
    means = (cums[:, starts + 400] - cums[:, starts]) / 400
    k = np.arange(6)
    return np.sin(means[..., None] * 37.0 * (k + 1) + k).astype(np.float32)


def test_context_windows_carry_real_audio_on_both_sides_and_keep_only_the_run() -> None:
    """Lead-in before the onset (whole frames, so the run keeps its grid) and context after; kept frames, their
    recording frames and the stitched logits are those of the plan without context."""
    wave, onsets = _bursts([(3.0103, 1.3), (4.6111, 2.0), (6.9, 0.7)], 12.0)  # 0.3 s and 0.29 s pauses
    plain = chunking.plan_speech_windows(wave, 20, 2, min_silence_s=0.2, pad_after_s=0.1)
    ctx = chunking.plan_speech_windows(wave, 20, 2, min_silence_s=0.2, pad_after_s=0.1, context_before_s=0.5,
                                       context_after_s=0.5)
    assert [w.start for w in plain] == onsets and len(ctx) == len(plain) == 3
    for p, c in zip(plain, ctx, strict=True):
        assert p.start - c.start == 25 * 320 and c.keep_from == 25  # 0.5 s of lead-in, then the onset
        assert c.end == p.end + 8000 and c.num_kept == p.num_kept
        assert c.start // 320 + c.keep_from == p.start // 320 + p.keep_from  # the same recording frames
        assert np.abs(wave[c.start : p.start]).max() > 0 or c is ctx[0]  # context reaches into the gap before
    fill, _ = chunking.silence_rows(6, 0, 1)
    total = num_frames(wave.size)
    outs = [chunking.run_windows([wave], [plan], _frame_local, 6, 0, 1, normalization=None)[0]
            for plan in (plain, ctx)]
    np.testing.assert_array_equal(outs[0], outs[1])
    assert outs[0].shape == (total, 6) and (outs[0][: onsets[0] // 320] == fill).all()


def test_context_is_clipped_at_the_recording_edges() -> None:
    wave, onsets = _bursts([(0.1007, 1.0), (3.0, 1.9)], 4.95)  # 0.1 s before the first run, 0.05 s after the last
    (first, last) = chunking.plan_speech_windows(wave, 20, 2, min_silence_s=0.2, pad_after_s=0.1,
                                                 context_before_s=1.0, context_after_s=1.0)
    assert first.start == onsets[0] % 320 and first.keep_from == onsets[0] // 320  # whole frames of lead-in only
    assert last.end == wave.size and last.start == onsets[1] - 50 * 320


def test_a_run_that_fits_one_window_stays_one_window_and_long_runs_tile_within_chunks() -> None:
    """Context never makes a window longer than ``chunk_s``: it shrinks for a run that fills a window; a longer run
    is windowed with the stride inside and context at its ends, and stitching equals one pass over the run."""
    wave, onsets = _bursts([(2.0, 19.9), (24.0, 47.3)], 75.0)
    plan = chunking.plan_speech_windows(wave, 20, 2, min_silence_s=0.2, pad_after_s=0.1, context_before_s=1.0,
                                        context_after_s=1.0)
    assert all(num_frames(w.num_samples) <= 1000 for w in plan)  # at most chunk_s (1000 frames) each
    one = [w for w in plan if w.start < onsets[1] - 16000]
    assert len(one) == 1 and one[0].start <= onsets[0] and one[0].num_kept == num_frames(
        chunking.speech_regions(wave, min_silence_s=0.2, pad_after_s=0.1)[0][1] - onsets[0])
    long = [w for w in plan if w not in one]
    assert len(long) >= 3 and long[0].start == onsets[1] - 50 * 320
    run_end = chunking.speech_regions(wave, min_silence_s=0.2, pad_after_s=0.1)[1][1]
    (stitched,) = chunking.run_windows([wave], [long], _frame_local, 6, 0, 1, normalization=None)
    alone = _frame_local(wave[None, onsets[1] : run_end], None)[0]
    first = onsets[1] // 320
    np.testing.assert_array_equal(stitched[first : first + alone.shape[0]], alone)


def test_pads_that_overlap_split_the_silence_in_the_middle() -> None:
    """Two runs 0.3 s apart with 0.2 s pads on both sides stay two ranges, meeting in the middle of the pause."""
    wave, onsets = _bursts([(1.0, 1.0), (2.3, 1.0)], 4.0)
    (a, b) = chunking.speech_regions(wave, min_silence_s=0.2, pad_before_s=0.2, pad_after_s=0.2)
    middle = (-(-(onsets[0] + 16000) // 320) * 320 + onsets[1]) // 2
    assert a == (onsets[0] - 3200, middle + 80) and b == (middle, round(-(-(onsets[1] + 16000) // 320) * 320
                                                                         + 3200 + 80))
    plan = chunking.plan_speech_windows(wave, 20, 2, min_silence_s=0.2, pad_before_s=0.2, pad_after_s=0.2)
    spans = [(w.start // 320 + w.keep_from, w.start // 320 + w.keep_to) for w in plan]
    assert spans[0][1] <= spans[1][0]  # no recording frame kept twice


def test_noise_margin_finds_the_pauses_in_background_noise() -> None:
    """Pink noise 20 dB under the speech is far above 40 dB under the loud level: without the noise margin the
    whole recording is one run (fixed windows); with it, each burst is a run of its own."""
    layout = [(2.0 + 1.9 * k, 1.3) for k in range(6)]  # 0.6 s pauses, 2 s of noise before, 3.3 s after
    wave, onsets = _bursts(layout, 16.0, noise_db=20.0)
    assert len(chunking.speech_regions(wave, min_silence_s=0.2)) == 1
    regions = chunking.speech_regions(wave, min_silence_s=0.2, noise_margin_db=10.0)
    assert len(regions) == len(onsets)
    for (start, end), at in zip(regions, onsets, strict=True):
        assert at - 320 <= start <= at + 320 and at + 1.3 * 16000 - 640 <= end <= at + 1.3 * 16000 + 2 * 1600
    clean, _ = _bursts(layout, 16.0)
    assert chunking.speech_regions(clean, min_silence_s=0.2, noise_margin_db=10.0) == chunking.speech_regions(
        clean, min_silence_s=0.2)  # digital silence: the noise floor is 0, nothing changes
    steady = np.random.default_rng(1).standard_normal(12 * 16000).astype(np.float32) * 0.1
    assert len(chunking.speech_regions(steady, min_silence_s=0.2)) == 1
    assert chunking.speech_regions(steady, min_silence_s=0.2, noise_margin_db=10.0) == []  # steady noise: no speech
    short = wave[32000 : 32000 + 9 * 16000]  # under NOISE_MIN_S: its 10th percentile would be speech, no floor
    assert chunking.speech_regions(short, min_silence_s=0.2, noise_margin_db=10.0) == chunking.speech_regions(
        short, min_silence_s=0.2)


def test_speech_statistics_do_not_depend_on_where_cuts_fall() -> None:
    """``window_stats(..., "speech")`` is the same for every window and for any pauses or leading/trailing silence
    around the same runs; per-window and whole-recording statistics are not."""
    stats = {}
    for lead, pause, trail in [(0.5, 0.4, 0.5), (6.0, 1.0, 8.0)]:
        layout = [(lead, 1.2), (lead + 1.2 + pause, 0.9), (lead + 2.1 + 2 * pause, 1.5)]
        wave, _ = _bursts(layout, lead + 3.6 + 2 * pause + trail, seed=9)
        plan = chunking.plan_speech_windows(wave, 20, 2, min_silence_s=0.2, pad_after_s=0.1, context_before_s=0.3,
                                            context_after_s=0.3)
        stats[lead] = {mode: chunking.window_stats(wave, plan, mode) for mode in ("speech", "window", "recording")}
        assert len(set(stats[lead]["speech"])) == 1
        assert len(set(stats[lead]["window"])) == 3
    np.testing.assert_allclose(stats[0.5]["speech"][0], stats[6.0]["speech"][0], rtol=1e-9)
    assert abs(stats[0.5]["recording"][0][1] / stats[6.0]["recording"][0][1] - 1) > 0.2
    with pytest.raises(ValueError, match="unknown normalization"):
        chunking.window_stats(np.zeros(1000, np.float32), [], "utterance")
