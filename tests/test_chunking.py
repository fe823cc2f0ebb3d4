"""Window planning and stitching: the kept frames tile the recording exactly, on the model's frame grid."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import numpy as np
import pytest

from asr_optimize import chunking
from asr_optimize.chunking import Window, num_frames, plan_windows, stitch
from asr_optimize.ctc import conv_geometry_from, conv_output_length

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
