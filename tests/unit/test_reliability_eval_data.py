"""Evaluation manifests as real tools write them: a UTF-8 BOM, one bad UTF-8 byte, U+2028 inside a transcript,
CRLF line ends, and a recording far longer than an utterance."""

from __future__ import annotations

import codecs
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asr_optimize.quality.eval_sets import EvalSource, load_eval_set, read_audio


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    t = np.arange(8000) / 16_000
    sf.write(tmp_path / "a.flac", (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16_000)
    return tmp_path / "a.flac"


def line(obj: dict) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode("utf-8")


def test_bom_bad_byte_and_u2028_in_jsonl(tmp_path: Path, clip: Path) -> None:
    rows = [
        codecs.BOM_UTF8 + line({"id": "first", "audio": clip.name, "text": "पहला वाक्य"}),
        line({"id": "sep", "audio": clip.name, "text": "एक\u2028दो\u2029तीन\x85चार"}),
        line({"id": "broken", "audio": clip.name, "text": "टूटा"})[:-8] + b"\xff" + b'"}',
        line({"id": "crlf", "audio": clip.name, "text": "आखिरी"}) + b"\r",
    ]
    manifest = tmp_path / "m.jsonl"
    manifest.write_bytes(b"\n".join(rows) + b"\n")
    es = load_eval_set(EvalSource(kind="manifest", path=manifest, max_bad_fraction=0.5))
    assert es.ids == ["first", "sep", "crlf"]  # the BOM did not hide the first row's keys
    assert es.texts[1] == "एक\u2028दो\u2029तीन\x85चार"  # the separators stayed inside the transcript
    assert es.n_rows == 4 and len(es.bad_rows) == 1
    bad = es.bad_rows[0]
    assert bad.id == "m.jsonl:3" and "not valid UTF-8 (byte 0xff" in bad.reason


def test_csv_with_bom(tmp_path: Path, clip: Path) -> None:
    (tmp_path / "m.csv").write_bytes(codecs.BOM_UTF8 + f"audio,text\n{clip.name},नमस्ते\n".encode())
    assert load_eval_set(EvalSource(kind="manifest", path=tmp_path / "m.csv")).texts == ["नमस्ते"]


def test_rows_longer_than_max_duration_are_reported_not_decoded(tmp_path: Path, clip: Path) -> None:
    sf.write(tmp_path / "long.flac", np.zeros(61 * 16_000, np.float32), 16_000)  # 61 s of silence
    manifest = tmp_path / "m.jsonl"
    manifest.write_bytes(b"\n".join([line({"id": "ok", "audio": clip.name, "text": "ठीक"}),
                                     line({"id": "long", "audio": "long.flac", "text": "लंबा"})]))
    es = load_eval_set(EvalSource(kind="manifest", path=manifest, max_bad_fraction=0.5))
    assert es.ids == ["ok"]
    (bad,) = es.bad_rows
    assert bad.id == "long" and "audio too long: 61.0 s > max_duration_s 60 s" in bad.reason
    assert "long-form" in bad.reason
    unlimited = load_eval_set(EvalSource(kind="manifest", path=manifest, max_duration_s=None))
    assert unlimited.ids == ["ok", "long"] and unlimited.utterances[1].duration_s == pytest.approx(61)
    with pytest.raises(ValueError, match="too long"):  # the header check also covers encoded bytes
        read_audio((tmp_path / "long.flac").read_bytes(), max_duration_s=10)
