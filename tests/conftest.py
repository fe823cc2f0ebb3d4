"""Shared fixtures: a tiny random-weight Wav2Vec2ForCTC with the real Hindi vocabulary, made at test time."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

TINY_OVERRIDES = {
    "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128,
    "conv_dim": [32] * 7, "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 4,
}
VOCAB_DIR = Path(__file__).resolve().parents[1] / "asr_optimize" / "assets" / "replica-config"

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session", autouse=True)
def defaults_in_tmp(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Every default folder (store, reports, Triton repository) under pytest's tmp dir, for this process and the
    CLI subprocesses the tests start: a test run never writes into the working tree."""
    from asr_optimize.settings import get_settings

    root = tmp_path_factory.mktemp("defaults")
    for name in ("store", "reports_dir", "triton_repository"):
        os.environ[f"ASR_OPTIMIZE_{name.upper()}"] = str(root / name)
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer random model with the IndicWav2Vec config conventions and vocabulary (never committed)."""
    from asr_optimize.model.source import init_random_model

    out = tmp_path_factory.mktemp("tiny-model")
    return init_random_model(VOCAB_DIR, out, seed=0, overrides=TINY_OVERRIDES)


@pytest.fixture()
def waves() -> list[np.ndarray]:
    from asr_optimize.audio.load import synthetic_audio

    return synthetic_audio(2, 1.0, seed=1) + synthetic_audio(1, 1.7, seed=2)
