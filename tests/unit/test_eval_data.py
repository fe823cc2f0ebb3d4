"""Evaluation sources on real files: manifests (CSV/TSV/JSONL), resampling, downmix, bad rows, HF datasets."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asr_optimize.quality.eval_sets import (
    DEMO_MANIFEST,
    EvalDataError,
    EvalSource,
    load_eval_set,
    read_audio,
)

SR_IN = 22_050


def tone(seconds: float = 0.5, freq: float = 440.0, sr: int = SR_IN, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write_jsonl(path: Path, rows: list[dict | str]) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def audio_dir(tmp_path: Path) -> Path:
    d = tmp_path / "audio"
    d.mkdir()
    sf.write(d / "a.flac", tone(), SR_IN)  # 22.05 kHz mono FLAC (espeak-ng's rate)
    stereo = np.stack([np.full(8000, 0.2, np.float32), np.full(8000, 0.4, np.float32)], axis=1)
    sf.write(d / "b.wav", stereo, 16_000, subtype="FLOAT")  # 16 kHz stereo WAV
    sf.write(d / "c.ogg", tone(0.4, 300, 16_000), 16_000)  # OGG Vorbis
    return d


def test_jsonl_manifest_relative_paths_resample_and_downmix(tmp_path: Path, audio_dir: Path) -> None:
    manifest = write_jsonl(
        tmp_path / "manifest.jsonl",
        [
            {"audio": "audio/a.flac", "text": "नमस्ते दुनिया।"},
            {"audio": str(audio_dir / "b.wav"), "text": "राम घर जा रहा है"},  # absolute path
            {"audio": "audio/c.ogg", "text": "तीन"},
        ],
    )
    es = load_eval_set(EvalSource(kind="manifest", path=manifest))
    assert len(es) == 3 and es.bad_rows == [] and es.n_rows == 3
    a, b, c = es.utterances
    assert a.id == "audio/a.flac" and a.text == "नमस्ते दुनिया।"
    for u in es:
        assert u.audio.dtype == np.float32 and u.audio.ndim == 1 and np.isfinite(u.audio).all()
    # 11,025 samples at 22.05 kHz -> exactly 8,000 at 16 kHz; the 440 Hz tone stays at 440 Hz.
    assert a.audio.shape == (8000,) and a.duration_s == pytest.approx(0.5)
    spectrum = np.abs(np.fft.rfft(a.audio))
    assert np.fft.rfftfreq(a.audio.size, 1 / 16_000)[spectrum.argmax()] == pytest.approx(440, abs=2)
    assert b.audio == pytest.approx(np.full(8000, 0.3, np.float32), abs=1e-6)  # (0.2 + 0.4) / 2
    assert c.duration_s == pytest.approx(0.4, abs=0.01)
    summary = es.summary()
    assert summary["utterances"] == 3 and len(summary["sha256"]) == 64
    assert es.content_sha256() == load_eval_set(EvalSource(kind="manifest", path=manifest)).content_sha256()


def test_csv_and_tsv_with_custom_columns(tmp_path: Path, audio_dir: Path) -> None:
    (tmp_path / "m.csv").write_text(
        'utt,wav,transcript\nx1,audio/a.flac,"नमस्ते, दुनिया"\nx2,audio/c.ogg,तीन\n', encoding="utf-8"
    )
    src = EvalSource(
        kind="manifest",
        path=tmp_path / "m.csv",
        audio_column="wav",
        text_column="transcript",
        id_column="utt",
    )
    es = load_eval_set(src)
    assert es.ids == ["x1", "x2"] and es.texts == ["नमस्ते, दुनिया", "तीन"]
    # Common Voice style TSV: unquoted, default column names detected ("path", "sentence").
    (tmp_path / "m.tsv").write_text(
        'client_id\tpath\tsentence\n1\taudio/b.wav\t"उद्धरण" वाला वाक्य\n', encoding="utf-8"
    )
    es = load_eval_set(EvalSource(kind="manifest", path=tmp_path / "m.tsv"))
    assert es.texts == ['"उद्धरण" वाला वाक्य'] and es.utterances[0].audio.shape == (8000,)


def test_missing_columns_and_manifest_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(EvalDataError, match="manifest not found"):
        load_eval_set(EvalSource(kind="manifest", path=tmp_path / "nope.jsonl"))
    m = write_jsonl(tmp_path / "m.jsonl", [{"file_name": "a.wav", "text": "क"}])
    with pytest.raises(EvalDataError, match="no audio column found"):
        load_eval_set(EvalSource(kind="manifest", path=m))
    with pytest.raises(EvalDataError, match="text column 'words' not found"):
        load_eval_set(EvalSource(kind="manifest", path=m, audio_column="file_name", text_column="words"))
    with pytest.raises(EvalDataError, match="needs 'path'"):
        load_eval_set(EvalSource(kind="manifest"))


@pytest.fixture
def dirty_manifest(tmp_path: Path, audio_dir: Path) -> Path:
    sf.write(audio_dir / "empty.wav", np.zeros(0, np.float32), 16_000)
    nan = tone(0.5, sr=16_000)
    nan[100] = np.nan
    sf.write(audio_dir / "nan.wav", nan, 16_000, subtype="FLOAT")
    sf.write(audio_dir / "tiny.wav", np.zeros(100, np.float32), 16_000)
    (audio_dir / "garbage.wav").write_bytes(b"this is not audio at all")
    good = [{"audio": "audio/a.flac", "text": f"अच्छा वाक्य {i}"} for i in range(4)]
    return write_jsonl(
        tmp_path / "dirty.jsonl",
        [
            *good,
            {"id": "missing", "audio": "audio/missing.flac", "text": "गायब"},
            {"id": "garbage", "audio": "audio/garbage.wav", "text": "कचरा"},
            {"id": "empty", "audio": "audio/empty.wav", "text": "खाली"},
            {"id": "nan", "audio": "audio/nan.wav", "text": "नैन"},
            {"id": "tiny", "audio": "audio/tiny.wav", "text": "छोटा"},
            {"id": "notext", "audio": "audio/a.flac", "text": "   "},
            {"id": "punct", "audio": "audio/a.flac", "text": "।।"},
            {"id": "nullaudio", "audio": None, "text": "कुछ"},
            "{not json",
        ],
    )


def test_bad_rows_are_counted_reported_and_skipped(
    dirty_manifest: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="asr_optimize.quality.eval_sets"):
        es = load_eval_set(EvalSource(kind="manifest", path=dirty_manifest, max_bad_fraction=0.75))
    assert len(es) == 4 and es.n_rows == 13 and len(es.bad_rows) == 9
    assert es.bad_fraction == pytest.approx(9 / 13)
    reasons = {b.id: b.reason for b in es.bad_rows}
    assert "audio file not found" in reasons["missing"]
    assert "unreadable audio" in reasons["garbage"]
    assert "empty audio (0 samples)" in reasons["empty"]
    assert "non-finite samples" in reasons["nan"]
    assert "too short: 100 samples < 400" in reasons["tiny"]
    assert reasons["notext"] == "empty reference text"
    assert "no words after normalization" in reasons["punct"]
    assert reasons["nullaudio"] == "no audio path in row"
    assert "invalid JSON line" in reasons["dirty.jsonl:13"]
    assert "skipped 9 of 13 rows" in caplog.text and "missing" in caplog.text


def test_too_many_bad_rows_fail_clearly(dirty_manifest: Path) -> None:
    with pytest.raises(EvalDataError, match=r"9 of 13 rows unusable \(69\.2% > max_bad_fraction 10\.0%\)"):
        load_eval_set(EvalSource(kind="manifest", path=dirty_manifest))


def test_max_samples_limits_rows_read(dirty_manifest: Path) -> None:
    es = load_eval_set(EvalSource(kind="manifest", path=dirty_manifest, max_samples=5, max_bad_fraction=0.5))
    # The unparsable line is always counted; then the first 4 rows (all good).
    assert es.n_rows == 5 and len(es) == 4


def test_duplicate_ids_are_made_unique(tmp_path: Path, audio_dir: Path) -> None:
    m = write_jsonl(tmp_path / "m.jsonl", [{"audio": "audio/c.ogg", "text": "एक"}] * 2)
    assert load_eval_set(EvalSource(kind="manifest", path=m)).ids == ["audio/c.ogg", "audio/c.ogg#1"]


def test_demo_source(tmp_path: Path, audio_dir: Path) -> None:
    m = write_jsonl(tmp_path / "manifest.jsonl", [{"audio": "audio/a.flac", "text": "डेमो"}])
    assert load_eval_set(EvalSource(kind="demo", path=m)).texts == ["डेमो"]
    with pytest.raises(EvalDataError, match="demo test set not found"):
        load_eval_set(EvalSource(kind="demo", path=tmp_path / "absent.jsonl"))


def test_bundled_demo_test_set_loads() -> None:
    assert DEMO_MANIFEST.is_file()  # the demo test set is bundled with the package
    es = load_eval_set(EvalSource(kind="demo", max_samples=3))
    assert len(es) == 3 and es.bad_rows == []


@pytest.mark.requires("mp3")
def test_mp3_through_soundfile(tmp_path: Path, audio_dir: Path) -> None:
    sf.write(audio_dir / "d.mp3", tone(1.0), SR_IN, format="MP3")
    m = write_jsonl(tmp_path / "m.jsonl", [{"audio": "audio/d.mp3", "text": "एमपी तीन"}])
    (u,) = load_eval_set(EvalSource(kind="manifest", path=m)).utterances
    assert u.duration_s == pytest.approx(1.0, abs=0.1)  # MP3 adds encoder delay/padding
    assert read_audio((audio_dir / "d.mp3").read_bytes(), name="d.mp3").size == pytest.approx(16_000, rel=0.1)


def test_mp3_without_libsndfile_support_is_a_clear_row_error(
    tmp_path: Path, audio_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Simulates an old libsndfile (< 1.1.0) to check the message; real decoding is covered above.
    (audio_dir / "e.mp3").write_bytes(b"ID3\x04" + bytes(64))
    monkeypatch.setattr(sf, "available_formats", lambda: {"WAV": "WAV", "FLAC": "FLAC"})
    with pytest.raises(ValueError, match=r"cannot decode MP3 .*no MP3 support"):
        read_audio(audio_dir / "e.mp3")
    with pytest.raises(ValueError, match=r"cannot decode MP3 clip\.mp3"):
        read_audio(b"ID3\x04" + bytes(64), name="clip.mp3")


def test_read_audio_bytes_and_errors(audio_dir: Path) -> None:
    data = (audio_dir / "a.flac").read_bytes()
    assert read_audio(data).shape == (8000,)
    with pytest.raises(ValueError, match="unreadable audio"):
        read_audio(b"nope")


# ------------------------------------------------------------------ Hugging Face datasets (local, offline)


@pytest.fixture
def hf_dataset_dir(tmp_path: Path, audio_dir: Path) -> Path:
    import datasets

    rows = {
        "path": ["a.flac", "b.wav", "c.ogg"],
        "audio": [{"bytes": (audio_dir / n).read_bytes(), "path": n} for n in ("a.flac", "b.wav", "c.ogg")],
        "sentence": ["पहला वाक्य", "दूसरा वाक्य", ""],
    }
    ds = datasets.Dataset.from_dict(rows).cast_column("audio", datasets.Audio())
    out = tmp_path / "hf_repo" / "data"
    out.mkdir(parents=True)
    ds.to_parquet(str(out / "test-00000-of-00001.parquet"))
    return out.parent


@pytest.mark.requires("datasets")
def test_hf_source_streams_resamples_and_skips_bad_rows(
    hf_dataset_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "hf_TESTSECRETdoNotLog123"
    monkeypatch.setenv("HF_TOKEN", secret)
    src = EvalSource(
        kind="hf", dataset_id=str(hf_dataset_dir), config=None, split="test", max_bad_fraction=0.5
    )
    with caplog.at_level(logging.DEBUG):
        es = load_eval_set(src)
    assert es.ids == ["a.flac", "b.wav"] and es.texts == ["पहला वाक्य", "दूसरा वाक्य"]
    assert [u.audio.shape for u in es] == [(8000,), (8000,)]
    assert es.bad_rows[0].id == "c.ogg" and es.bad_rows[0].reason == "empty reference text"
    assert secret not in caplog.text
    limited = load_eval_set(src.model_copy(update={"max_samples": 1}))
    assert limited.n_rows == 1 and limited.ids == ["a.flac"]


@pytest.mark.requires("datasets")
def test_hf_token_is_never_shown_and_open_errors_are_clear(tmp_path: Path) -> None:
    secret = "hf_ANOTHERsecretVALUE999"
    src = EvalSource(kind="hf", dataset_id=str(tmp_path / "no_such_dataset"), config=None, token=secret)
    assert secret not in repr(src) and secret not in src.model_dump_json() and secret not in src.describe()
    with pytest.raises(EvalDataError, match="cannot open hf:") as exc:
        load_eval_set(src)
    assert secret not in str(exc.value)
