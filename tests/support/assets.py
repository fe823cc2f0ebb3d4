"""Paths of the checkout and its bundled assets, and the tiny test model's config, for every test module."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
ASSETS = REPO_ROOT / "asr_optimize" / "assets"
DEMO_MODEL = ASSETS / "demo-model"
VOCAB_DIR = ASSETS / "replica-config"
TEST_DATA = REPO_ROOT / "tests" / "data"
"""Small files captured from real tools for parser tests (e.g. ``perf_analyzer/``: its CSV and console output)."""

# a 2-layer random Wav2Vec2ForCTC with the real Hindi vocabulary (made at test time, see conftest.tiny_model)
TINY_OVERRIDES = {
    "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128,
    "conv_dim": [32] * 7, "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 4,
}
