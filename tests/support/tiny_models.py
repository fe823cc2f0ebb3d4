"""Tiny random-weight models whose output zero padding changes (``asr_optimize.model.inputs``), made at test time.

- ``group_norm_model``: wav2vec2-base style (group-norm feature encoder, post-LN, no conv bias) with the real Hindi
  vocabulary; its processor returns no attention mask, as wav2vec2-base's does;
- ``conformer_model``: a ``Wav2Vec2ConformerForCTC`` (rotary positions, layer-norm feature encoder).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.support.assets import TINY_OVERRIDES, VOCAB_DIR

GROUP_NORM_OVERRIDES = {**TINY_OVERRIDES, "feat_extract_norm": "group", "do_stable_layer_norm": False,
                        "conv_bias": False}
CONFORMER_OVERRIDES = {**TINY_OVERRIDES, "conv_depthwise_kernel_size": 7, "position_embeddings_type": "rotary"}


def group_norm_model(out: Path, seed: int = 5) -> Path:
    """A wav2vec2-base-style CTC model; ``preprocessor_config.json`` says ``return_attention_mask: false``."""
    from asr_optimize.model.source import init_random_model

    init_random_model(VOCAB_DIR, out, seed=seed, overrides=GROUP_NORM_OVERRIDES)
    pre = json.loads((out / "preprocessor_config.json").read_text(encoding="utf-8"))
    (out / "preprocessor_config.json").write_text(json.dumps({**pre, "return_attention_mask": False}, indent=1),
                                                  encoding="utf-8")
    return out


def conformer_model(out: Path, seed: int = 6) -> Path:
    """A Wav2Vec2-Conformer CTC model with the replica's feature-extractor conventions and vocabulary."""
    import torch
    from transformers import Wav2Vec2ConformerConfig, Wav2Vec2ConformerForCTC

    from asr_optimize.model.source import SPEED_ONLY_KEY, read_config

    config = {k: v for k, v in read_config(VOCAB_DIR).items() if k not in ("model_type", "architectures")}
    torch.manual_seed(seed)
    model = Wav2Vec2ConformerForCTC(Wav2Vec2ConformerConfig(**{**config, **CONFORMER_OVERRIDES})).eval()
    setattr(model.config, SPEED_ONLY_KEY, True)  # random weights
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    for name in ("vocab.json", "preprocessor_config.json"):
        shutil.copy(VOCAB_DIR / name, out / name)
    return out
