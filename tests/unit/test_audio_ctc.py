"""Audio batching and CTC decoding agree with Hugging Face's own feature extractor and tokenizer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asr_optimize.audio.load import load_audio, make_batch
from asr_optimize.errors import AudioInputError
from asr_optimize.model.ctc import CtcVocabulary, frame_lengths_for, greedy_decode
from asr_optimize.model.source import load_model, load_processor


def test_batch_matches_hf_feature_extractor(tiny_model: Path, waves: list[np.ndarray]) -> None:
    processor = load_processor(tiny_model)
    ours = make_batch(waves)
    theirs = processor.feature_extractor(waves, sampling_rate=16000, padding=True, return_attention_mask=True,
                                         return_tensors="np")
    np.testing.assert_allclose(ours.input_values, theirs["input_values"], atol=1e-4)
    np.testing.assert_array_equal(ours.attention_mask, theirs["attention_mask"])


def test_frame_lengths_match_model(tiny_model: Path) -> None:
    import torch

    model = load_model(tiny_model)
    lengths = np.array([400, 16000, 23456])
    expected = model._get_feat_extract_output_lengths(torch.tensor(lengths)).numpy()
    np.testing.assert_array_equal(frame_lengths_for(tiny_model, lengths), expected)


def test_greedy_decode_matches_hf_tokenizer(tiny_model: Path) -> None:
    processor = load_processor(tiny_model)
    vocab = CtcVocabulary.from_model_dir(tiny_model)
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((3, 40, len(vocab.tokens))).astype(np.float32)
    # <s>, </s>, <unk>: HF keeps them in the text unless skip_special_tokens, which then also drops the
    # blank before merging repeats (wrong for CTC). Trained models do not emit them.
    logits[..., [0, 2, 3]] = -np.inf
    ids = logits.argmax(-1)
    expected = [" ".join(t.split()) for t in processor.batch_decode(ids)]
    assert greedy_decode(logits, np.array([40, 40, 40]), vocab) == expected


def test_bad_audio_is_refused_with_a_reason(tmp_path: Path) -> None:
    with pytest.raises(AudioInputError, match="NaN"):
        make_batch([np.full(16000, np.nan, dtype=np.float32)])
    with pytest.raises(AudioInputError, match="empty"):
        make_batch([np.zeros(0, dtype=np.float32)])
    with pytest.raises(AudioInputError, match="mono"):
        make_batch([np.zeros((2, 16000), dtype=np.float32)])
    with pytest.raises(AudioInputError, match="empty batch"):
        make_batch([])
    with pytest.raises(AudioInputError, match="cannot read"):
        load_audio(tmp_path / "missing.wav")


def test_load_audio_resamples_and_downmixes(tmp_path: Path) -> None:
    stereo = np.stack([np.sin(np.linspace(0, 200, 22050)), np.zeros(22050)], axis=1).astype(np.float32)
    sf.write(tmp_path / "a.wav", stereo, 22050)
    wave = load_audio(tmp_path / "a.wav")
    assert wave.ndim == 1 and abs(wave.size - 16000) <= 1
