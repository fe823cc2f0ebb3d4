"""How a model's inputs must be built, decided once from its config: attention mask or not, padding or not.

Why: wav2vec2-style models differ in what zero padding does to them. A layer-norm model with an attention mask
(the demo model, IndicWav2Vec, large HuBERT) gives the same logits for an utterance padded in a batch as alone, so
batches and Triton's length buckets may pad. Three kinds do not (measured with random weights: logit differences of
0.1-0.3 on padded rows):

- a group-norm feature encoder (``feat_extract_norm: "group"``, wav2vec2-base style) normalizes each channel over
  the whole input, padding included; Hugging Face documents that such models take no attention mask (their
  processors set ``return_attention_mask: false``) and that padding changes their output;
- Wav2Vec2-Conformer: the depthwise convolution of each conformer block reads across the padding;
- Data2VecAudio: its stacked positional convolutions read across the padding.

A model without an attention mask cannot have padding masked either. Such models run every utterance at its exact
length: in process ``exact_length_infer`` splits a padded batch into calls of equal lengths, and the Triton
pipeline sends each length as its own acoustic request (the dynamic batcher still merges requests of one shape).
Export, transcription, the Triton configs, the canary and the health check all read ``input_policy``; the
deployed version's manifest records it so the served side never guesses.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

from asr_optimize.model.ctc import conv_output_length

Infer = Callable[[np.ndarray, "np.ndarray | None"], np.ndarray]

UNPADDABLE_MODEL_TYPES = {
    "wav2vec2-conformer": "the depthwise convolution of its conformer blocks reads across zero padding",
    "data2vec-audio": "its stacked positional convolutions read across zero padding",
}
"""Model types whose output changes with zero padding even when it is masked (measured, see the module docstring)."""
LAYER_NORM_ONLY_TYPES = {"data2vec-audio"}
"""Model types whose feature encoder always uses layer norm (their config has no ``feat_extract_norm``)."""
HF_DEFAULT_FEAT_EXTRACT_NORM = "group"
"""What ``Wav2Vec2Config`` (and HuBERT's, WavLM's, the conformer's) assume when ``feat_extract_norm`` is missing."""


class InputPolicy(BaseModel, frozen=True):
    """Whether the model takes an attention mask and whether its batches may be zero-padded."""

    attention_mask: bool
    """The exported graph takes ``attention_mask`` (the model's processor returns one)."""
    pad_batches: bool
    """Utterances of different lengths may share a batch, zero-padded and masked (Triton: length buckets). False:
    padding changes the output, so every utterance runs at its exact length and only equal lengths share a batch."""
    reason: str
    """Why, in words (logs, manifests, error messages)."""


PADDED = InputPolicy(attention_mask=True, pad_batches=True,
                     reason="layer-norm feature encoder with an attention mask: masked padding leaves the output as is")
"""The policy of versions deployed before manifests recorded one (they were all served with buckets)."""


def decide_input_policy(config: dict[str, Any], preprocessor: dict[str, Any] | None) -> InputPolicy:
    """The policy of a model from its ``config.json`` and ``preprocessor_config.json`` (None: no such file)."""
    model_type = str(config.get("model_type") or "")
    default_norm = "layer" if model_type in LAYER_NORM_ONLY_TYPES else HF_DEFAULT_FEAT_EXTRACT_NORM
    norm = str(config.get("feat_extract_norm") or default_norm)
    # no preprocessor config: ``source.load_processor`` builds one that returns a mask
    returns_mask = True if preprocessor is None else bool(preprocessor.get("return_attention_mask", False))
    if norm == "group":
        return InputPolicy(attention_mask=False, pad_batches=False, reason=(
            "feat_extract_norm 'group': the feature encoder normalizes over the whole input, so zero padding changes "
            "the output and the model takes no attention mask"))
    if not returns_mask:
        return InputPolicy(attention_mask=False, pad_batches=False, reason=(
            "the processor returns no attention mask (return_attention_mask false), so padding cannot be masked"))
    if model_type in UNPADDABLE_MODEL_TYPES:
        return InputPolicy(attention_mask=True, pad_batches=False,
                           reason=f"model_type {model_type!r}: {UNPADDABLE_MODEL_TYPES[model_type]}")
    return PADDED


def input_policy(model_dir: Path) -> InputPolicy:
    """``decide_input_policy`` of a model folder (a Hugging Face model, or a fused engine folder: it keeps both
    files)."""
    model_dir = Path(model_dir)
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    pre = model_dir / "preprocessor_config.json"
    preprocessor = json.loads(pre.read_text(encoding="utf-8")) if pre.is_file() else None
    if not isinstance(config, dict) or not isinstance(preprocessor, dict | None):
        raise ValueError(f"{model_dir}: config.json / preprocessor_config.json are not JSON objects")
    return decide_input_policy(config, preprocessor)


def exact_length_infer(infer: Infer, model_dir: Path) -> Infer:
    """``infer`` for a model that must not be padded: each row of a right-padded batch (mask: 1 = real sample) runs
    at its own length, rows of one length in one call, unmasked. Logits come back in the batch's layout
    ``[batch, frames of the width, vocab]``, zero past each row's own frames (callers keep only valid frames)."""
    config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    kernels, strides = config["conv_kernel"], config["conv_stride"]

    def run(values: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        width = values.shape[1]
        lengths = np.full(values.shape[0], width) if mask is None else np.asarray(mask).sum(axis=1)
        if (lengths == width).all():
            return infer(values, None)
        out: np.ndarray | None = None
        for n in np.unique(lengths):
            rows = np.flatnonzero(lengths == n)
            logits = np.asarray(infer(np.ascontiguousarray(values[rows, : int(n)]), None))
            if out is None:
                frames = int(conv_output_length(np.array([width]), kernels, strides)[0])
                out = np.zeros((values.shape[0], frames, logits.shape[-1]), dtype=logits.dtype)
            out[rows, : logits.shape[1]] = logits
        assert out is not None
        return out

    return run
