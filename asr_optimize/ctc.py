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
