"""Broken models, caused for real: a config.json that is a JSON list, a CTC config whose weights lack the head, a
huge non-model folder. (Hostile S3 keys: ``tests/integration/test_reliability_model_source.py``.)"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from asr_optimize.errors import ModelResolutionError
from asr_optimize.model.source import load_model, read_config, resolve_model


def test_config_that_is_not_an_object_is_a_clear_error(tiny_model: Path, tmp_path: Path) -> None:
    broken = Path(shutil.copytree(tiny_model, tmp_path / "list-config"))
    for payload, kind in (([{"architectures": ["Wav2Vec2ForCTC"]}], "list"), ("Wav2Vec2ForCTC", "str"), (3, "int")):
        (broken / "config.json").write_text(json.dumps(payload))
        with pytest.raises(ModelResolutionError, match=rf"holds a JSON {kind}, not an object"):
            resolve_model(str(broken))
        with pytest.raises(ModelResolutionError, match="not an object"):
            read_config(broken)


def test_ctc_config_without_head_weights_is_refused(tiny_model: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    headless = Path(shutil.copytree(tiny_model, tmp_path / "headless"))
    weights = load_file(headless / "model.safetensors")
    kept = {k: v for k, v in weights.items() if not k.startswith("lm_head")}
    assert len(kept) < len(weights)
    save_file(kept, headless / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelResolutionError, match=r"lack its CTC head \(lm_head\.bias, lm_head\.weight\)"):
        load_model(headless)
    assert load_model(tiny_model) is not None  # the complete model still loads


def test_huge_non_model_folder_fails_before_hashing() -> None:
    start = time.monotonic()
    with pytest.raises(ModelResolutionError, match=r"has no config\.json"):
        resolve_model("/usr")  # tens of thousands of files: hashing them first took 33 s
    assert time.monotonic() - start < 5
