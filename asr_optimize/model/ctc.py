"""CTC greedy decoding and frame-length arithmetic, independent of any framework.

Runners return logits only; decoding lives here so PyTorch, ONNX Runtime, TensorRT and Triton outputs are
turned into text by exactly the same code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from asr_optimize.errors import ModelResolutionError

SPECIAL_TOKENS = {"<s>", "</s>", "<unk>", "<pad>"}


@dataclass(frozen=True)
class CtcVocabulary:
    """id -> token table plus the blank id (``<pad>`` in wav2vec2 vocabularies)."""

    tokens: tuple[str, ...]
    blank_id: int
    word_delimiter: str = "|"

    @classmethod
    def from_model_dir(cls, model_dir: Path) -> CtcVocabulary:
        """The vocabulary of a model folder, refused (``ModelResolutionError``) unless it matches the CTC head.

        The head has ``config.vocab_size`` outputs and output ``i`` means token id ``i``: the ids must be exactly
        ``0..vocab_size-1``. A shorter or sparse vocabulary is never padded (that decodes to the wrong letters).
        """
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
        if not isinstance(config, dict):
            raise ModelResolutionError(f"{model_dir}/config.json is not a JSON object: not a model config")
        vocab = read_vocabulary(model_dir, config)
        tokens = [""] * len(vocab)
        for token, index in vocab.items():
            tokens[index] = token
        return cls(tokens=tuple(tokens), blank_id=blank_id(vocab, config, model_dir))


MAX_VOCAB_SIZE = 100_000
"""Far above any CTC alphabet (characters or subwords); a larger table is a broken or hostile vocabulary."""


def _vocab_error(model_dir: Path, message: str) -> ModelResolutionError:
    return ModelResolutionError(f"{model_dir}: {message}; a CTC model's vocab.json must map every output of its head "
                                "to one token (ids 0..vocab_size-1): fix vocab.json or config.json")


def read_vocabulary(model_dir: Path, config: dict[str, Any]) -> dict[str, int]:
    """vocab.json (plus added_tokens.json) as token -> id, checked against the head: ``len == config.vocab_size``,
    ids exactly ``0..N-1`` (dense, each once), at most ``MAX_VOCAB_SIZE`` entries."""
    path = model_dir / "vocab.json"
    try:
        vocab = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelResolutionError(f"{model_dir} has no vocab.json: a CTC model needs its vocabulary") from None
    except (OSError, ValueError) as exc:
        raise ModelResolutionError(f"{path} is unreadable or not JSON: {exc}") from None
    if isinstance(vocab, dict) and vocab and all(isinstance(v, dict) for v in vocab.values()):
        vocab = next(iter(vocab.values()))  # multilingual layout: {lang: {token: id}}
    if not isinstance(vocab, dict) or not vocab:
        raise _vocab_error(model_dir, "vocab.json is not a non-empty JSON object of token -> id")
    added = model_dir / "added_tokens.json"
    if added.is_file():
        try:
            extra = json.loads(added.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelResolutionError(f"{added} is unreadable or not JSON: {exc}") from None
        if not isinstance(extra, dict):
            raise _vocab_error(model_dir, "added_tokens.json is not a JSON object of token -> id")
        vocab = {**extra, **vocab}
    if len(vocab) > MAX_VOCAB_SIZE:
        raise _vocab_error(model_dir, f"vocab.json has {len(vocab):,} entries, more than the {MAX_VOCAB_SIZE:,} "
                                      "this tool accepts")
    bad = [t for t, i in vocab.items() if isinstance(i, bool) or not isinstance(i, int)]
    if bad:
        raise _vocab_error(model_dir, f"token {bad[0]!r} has id {vocab[bad[0]]!r}, not a whole number")
    n = len(vocab)
    ids = set(vocab.values())
    if len(ids) != n:
        seen: dict[int, str] = {}
        twice = next((t, seen[i]) for t, i in vocab.items() if seen.setdefault(i, t) != t)
        raise _vocab_error(model_dir, f"tokens {twice[1]!r} and {twice[0]!r} share id {vocab[twice[0]]}")
    if min(ids) != 0 or max(ids) != n - 1:
        gap = next((i for i in range(n) if i not in ids), n)
        raise _vocab_error(model_dir, f"the {n} token ids are not dense: they run from {min(ids)} to {max(ids)} "
                                      f"(id {gap} is missing)")
    size = config.get("vocab_size")
    if isinstance(size, bool) or not isinstance(size, int):
        raise _vocab_error(model_dir, f"config.json vocab_size is {size!r}, not a whole number")
    if size != n:
        raise _vocab_error(model_dir, f"vocab.json has {n} tokens but config.json vocab_size (the CTC head's "
                                      f"outputs) is {size}")
    return vocab


def blank_id(vocab: dict[str, int], config: dict[str, Any], model_dir: Path) -> int:
    """The CTC blank: ``config.pad_token_id``, else the ``<pad>`` token; refused when neither names a token."""
    blank = config.get("pad_token_id")
    if blank is None:
        blank = vocab.get("<pad>")
    if isinstance(blank, bool) or not isinstance(blank, int) or not 0 <= blank < len(vocab):
        raise _vocab_error(model_dir, f"no CTC blank token: config.json pad_token_id is "
                                      f"{config.get('pad_token_id')!r} and vocab.json has no '<pad>' inside "
                                      f"0..{len(vocab) - 1}")
    return blank


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
