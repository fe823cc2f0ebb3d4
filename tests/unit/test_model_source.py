"""Model resolution: local folders pinned by content, non-CTC and broken models refused with clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from asr_optimize.errors import ModelResolutionError, TransientError, UnsupportedModelError
from asr_optimize.model.source import load_model, resolve_model
from tests.support.assets import VOCAB_DIR


def test_local_folder_is_pinned_by_content(tiny_model: Path) -> None:
    first = resolve_model(str(tiny_model))
    assert first.kind == "local" and first.revision.startswith("sha256:")
    assert first.architecture == "Wav2Vec2ForCTC"
    assert resolve_model(str(tiny_model)).revision == first.revision
    with pytest.raises(ModelResolutionError, match="content revision"):
        resolve_model(str(tiny_model), revision="sha256:0000")


def test_changed_weights_change_the_revision(tiny_model: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(tiny_model, tmp_path / "copy"))
    (copy / "extra.txt").write_text("x")
    assert resolve_model(str(copy)).revision != resolve_model(str(tiny_model)).revision


def test_non_ctc_model_is_refused(tiny_model: Path, tmp_path: Path) -> None:
    other = Path(shutil.copytree(tiny_model, tmp_path / "bert"))
    config = json.loads((other / "config.json").read_text())
    config["architectures"], config["model_type"] = ["BertForMaskedLM"], "bert"
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedModelError, match="BertForMaskedLM"):
        resolve_model(str(other))


def test_unknown_path_or_id_gives_clear_error() -> None:
    with pytest.raises(ModelResolutionError, match="no such folder"):
        resolve_model("./does/not/exist")


def test_unknown_hub_id_offline_is_not_silently_ignored(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises((TransientError, ModelResolutionError), match=r"not cached|unreachable|not found"):
        resolve_model("nobody/no-such-model", cache_dir=tmp_path)


def test_config_only_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelResolutionError, match="no weights"):
        resolve_model(str(VOCAB_DIR))


def test_corrupt_weights_give_clear_error(tiny_model: Path, tmp_path: Path) -> None:
    broken = Path(shutil.copytree(tiny_model, tmp_path / "broken"))
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelResolutionError, match="corrupt or incomplete"):
        load_model(broken)
