"""The bundled demo model and test set: well formed, disjoint from training, and the model transcribes."""

from __future__ import annotations

import gzip
import json

import pytest

from tools.demo_model.evaluate import DEMO_MODEL_DIR, DEMO_TESTSET_MANIFEST, evaluate, load_audio, read_manifest
from tools.demo_model.vocab import ALLOWED_CHARS, HINDI_VOCAB

TESTSET_DIR = DEMO_TESTSET_MANIFEST.parent


def test_testset_manifest_is_well_formed() -> None:
    rows = read_manifest(DEMO_TESTSET_MANIFEST)
    assert len(rows) >= 100
    assert len({r["audio"] for r in rows}) == len(rows)
    for r in rows:
        assert r["text"] and r["text"] == " ".join(r["text"].split())
        assert set(r["text"]) <= ALLOWED_CHARS, r["text"]
        assert r["audio"].endswith(".flac") and not r["audio"].startswith("/")
    audio = load_audio(rows[0]["audio_path"])
    assert audio.ndim == 1 and 0.3 < len(audio) / 16_000 < 15
    total = sum(p.stat().st_size for p in TESTSET_DIR.rglob("*") if p.is_file())
    assert total <= 5_000_000


def test_test_texts_never_in_training() -> None:
    train_dev = gzip.decompress((TESTSET_DIR / "train_dev_texts.txt.gz").read_bytes()).decode("utf-8")
    seen = set(train_dev.splitlines())
    assert len(seen) > 5000
    test = {r["text"] for r in read_manifest(DEMO_TESTSET_MANIFEST)}
    assert not test & seen


@pytest.mark.requires("wordfreq")
def test_texts_are_reproducible() -> None:
    from tools.demo_model.texts import generate_texts

    rows = read_manifest(DEMO_TESTSET_MANIFEST)
    regenerated = generate_texts(10_000, 200, len(rows), seed=0)
    assert [t for _, t in regenerated["test"]] == [r["text"] for r in rows]


def test_model_folder_is_huggingface_format() -> None:
    names = {p.name for p in DEMO_MODEL_DIR.iterdir()}
    assert {"config.json", "model.safetensors", "vocab.json", "tokenizer_config.json"} <= names
    assert "preprocessor_config.json" in names or "processor_config.json" in names
    assert (DEMO_MODEL_DIR / "model.safetensors").stat().st_size <= 20_000_000
    config = json.loads((DEMO_MODEL_DIR / "config.json").read_text())
    assert config["model_type"] == "wav2vec2" and config["architectures"] == ["Wav2Vec2ForCTC"]
    assert config["vocab_size"] == len(HINDI_VOCAB) and config["pad_token_id"] == HINDI_VOCAB["<pad>"]
    assert json.loads((DEMO_MODEL_DIR / "vocab.json").read_text(encoding="utf-8")) == HINDI_VOCAB


def test_model_transcribes_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = evaluate(DEMO_MODEL_DIR, DEMO_TESTSET_MANIFEST, limit=12)
    assert result["overall"]["n"] == 12
    # the full set measures CER 3.3% / WER 13.7%; a dozen clips get a generous bound
    assert result["overall"]["cer"] < 0.12, result["samples"]
    assert result["overall"]["wer"] < 0.45, result["samples"]


@pytest.mark.requires("espeak-ng")
def test_espeak_synthesis_is_16k_mono() -> None:
    from tools.demo_model.make_data import speak

    audio = speak("espeak-ng", "नमस्ते दुनिया", "m1", 160, 50)
    assert audio.dtype.name == "float32" and audio.ndim == 1 and 0.5 < len(audio) / 16_000 < 3
