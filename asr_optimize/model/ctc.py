"""CTC greedy decoding and frame-length arithmetic, independent of any framework.

Runners return logits only; decoding lives here so PyTorch, ONNX Runtime, TensorRT and Triton outputs are
turned into text by exactly the same code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SPECIAL_TOKENS = {"<s>", "</s>", "<unk>", "<pad>"}


@dataclass(frozen=True)
class CtcVocabulary:
    """id -> token table plus the blank id (``<pad>`` in wav2vec2 vocabularies)."""

    tokens: tuple[str, ...]
    blank_id: int
    word_delimiter: str = "|"

    @classmethod
    def from_model_dir(cls, model_dir: Path) -> CtcVocabulary:
        vocab: dict[str, int] = json.loads((model_dir / "vocab.json").read_text(encoding="utf-8"))
        if vocab and isinstance(next(iter(vocab.values())), dict):  # multilingual layout: {lang: {tok: id}}
            vocab = next(iter(vocab.values()))
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
        size = max(config.get("vocab_size", 0), max(vocab.values()) + 1)
        tokens = [""] * size
        for token, index in vocab.items():
            tokens[index] = token
        blank = config.get("pad_token_id", vocab.get("<pad>", 0))
        return cls(tokens=tuple(tokens), blank_id=int(blank))


def conv_output_length(lengths: np.ndarray, kernels: list[int], strides: list[int]) -> np.ndarray:
    """Frames the conv feature encoder produces for each input length (no padding in its convs)."""
    out = np.asarray(lengths, dtype=np.int64)
    for kernel, stride in zip(kernels, strides, strict=True):
        out = (out - kernel) // stride + 1
    return np.maximum(out, 0)


def frame_lengths_for(model_dir: Path, sample_lengths: np.ndarray) -> np.ndarray:
    """Valid logit frames per utterance, from the model's conv kernels and strides."""
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    return conv_output_length(sample_lengths, config["conv_kernel"], config["conv_stride"])


def greedy_decode(logits: np.ndarray, frame_lengths: np.ndarray, vocab: CtcVocabulary) -> list[str]:
    """Best path: argmax per frame, merge repeats, drop blanks and special tokens, '|' -> space."""
    ids = np.asarray(logits).argmax(axis=-1)
    texts = []
    for row, length in zip(ids, frame_lengths, strict=True):
        path = row[: int(length)]
        if path.size:
            keep = np.concatenate(([True], path[1:] != path[:-1]))
            path = path[keep]
        pieces = [vocab.tokens[i] for i in path if i != vocab.blank_id]
        text = "".join(" " if t == vocab.word_delimiter else t for t in pieces if t not in SPECIAL_TOKENS)
        texts.append(" ".join(text.split()))
    return texts


def conv_geometry(model_dir: Path) -> tuple[int, int]:
    """(frame_samples, receptive_samples) of the conv feature encoder: the stride product and the receptive field.

    Frame ``j`` of a clip sees samples ``[j * frame_samples, j * frame_samples + receptive_samples)``; for wav2vec2
    (kernels 10,3,3,3,3,2,2, strides 5,2,2,2,2,2,2) that is (320, 400): 20 ms frames at 16 kHz.
    """
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    return conv_geometry_from(config["conv_kernel"], config["conv_stride"])


def conv_geometry_from(kernels: list[int], strides: list[int]) -> tuple[int, int]:
    """Stride product and receptive field of a stack of unpadded 1-D convs."""
    hop, field = 1, 1
    for kernel, stride in zip(kernels, strides, strict=True):
        field += (kernel - 1) * hop
        hop *= stride
    return hop, field


@dataclass(frozen=True)
class WordTimestamp:
    """One decoded word and where it is in the audio: ``[start_s, end_s)`` from its first and last CTC frames."""

    word: str
    start_s: float
    end_s: float


def word_timestamps(
    logits: np.ndarray, vocab: CtcVocabulary, frame_seconds: float = 0.02, num_frames: int | None = None
) -> list[WordTimestamp]:
    """Words of the greedy path of one utterance's logits ``[frames, vocab]`` with start/end times.

    A word starts at the first frame of its first character and ends after the last frame of its last character
    (blanks between characters stay inside the word; ``|`` ends it). The words are exactly
    ``greedy_decode(...)[0].split()``. Times are ``frame * frame_seconds`` (the Hugging Face pipeline's convention:
    frame ``j`` starts at ``j * stride``), so every time lies within ``[0, num_frames * frame_seconds]``, which is
    within the audio.
    """
    ids = np.asarray(logits).argmax(axis=-1)
    if num_frames is not None:
        ids = ids[: int(num_frames)]
    words: list[WordTimestamp] = []
    chars: list[str] = []
    start = end = 0
    previous = -1
    for frame, token_id in enumerate(ids.tolist()):
        if token_id == previous:  # repeat of the same token: extends the current character
            if chars and token_id != vocab.blank_id and vocab.tokens[token_id] not in SPECIAL_TOKENS:
                end = frame + 1
            continue
        previous = token_id
        if token_id == vocab.blank_id:
            continue
        token = vocab.tokens[token_id]
        if not token or token in SPECIAL_TOKENS:  # dropped by greedy_decode without splitting words
            continue
        if token == vocab.word_delimiter or not token.strip():  # word boundary
            if chars:
                words.append(WordTimestamp("".join(chars), start * frame_seconds, end * frame_seconds))
                chars = []
            continue
        if not chars:
            start = frame
        chars.append(token)
        end = frame + 1
    if chars:
        words.append(WordTimestamp("".join(chars), start * frame_seconds, end * frame_seconds))
    return words
