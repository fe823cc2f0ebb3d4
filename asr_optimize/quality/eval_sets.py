"""Evaluation data: the utterances every backend is scored on.

Why one loader for three sources: WER is only comparable across backends and runs if they all see the
same audio, decoded the same way (float32, 16 kHz, mono). Sources:

- ``demo``: the bundled espeak-ng test set, ``asr_optimize/assets/demo-testset/manifest.jsonl``;
- ``manifest``: a local CSV / TSV / JSONL (NeMo-style ``.json`` lines too) with an audio path and a text
  column; relative paths resolve against the manifest's folder; WAV/FLAC/OGG/MP3 through soundfile;
- ``hf``: a Hugging Face ``datasets`` dataset (default Common Voice 11 Hindi test), streamed; audio is
  decoded here with soundfile (``Audio(decode=False)``) so no torchcodec is needed and every source is
  resampled by the same code (``scipy.signal.resample_poly``).

Bad rows (missing/unreadable file, zero-length, too-short or too-long audio, NaN/inf samples, empty reference,
a JSONL line that is not valid UTF-8 or JSON) are skipped and recorded as ``BadRow(id, reason)``;
``EvalDataError`` is raised only when their share of the rows read exceeds ``max_bad_fraction`` (or nothing
usable is left), so one broken file costs one utterance, not the run, while a broken dataset still fails loudly.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import json
import logging
import math
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from asr_optimize.audio.decode import TARGET_SAMPLE_RATE, AudioDecodeError, read_audio, to_mono_16k, too_long
from asr_optimize.errors import AsrOptimizeError
from asr_optimize.paths import DEMO_CALIBRATION, DEMO_TESTSET
from asr_optimize.quality.normalize import normalize_hindi

logger = logging.getLogger(__name__)

DEMO_MANIFEST = DEMO_TESTSET / "manifest.jsonl"
DEFAULT_HF_DATASET = "mozilla-foundation/common_voice_11_0"
AUDIO_COLUMN_CANDIDATES = ("audio", "audio_filepath", "audio_path", "path", "file", "filename", "wav")
TEXT_COLUMN_CANDIDATES = ("text", "sentence", "transcript", "transcription", "normalized_text")
ID_COLUMN_CANDIDATES = ("id", "utt_id", "utterance_id")


class EvalDataError(AsrOptimizeError):
    """The evaluation set cannot be used (unreadable source, or too many bad rows)."""


@dataclass(frozen=True, slots=True)
class Utterance:
    id: str
    audio: np.ndarray
    """float32, mono, ``EvalSet.sample_rate`` (16 kHz), finite, at least ``min_duration_s`` long."""
    text: str
    """The reference transcript as given (normalization happens at scoring time)."""
    duration_s: float


@dataclass(frozen=True, slots=True)
class BadRow:
    id: str
    reason: str


class EvalSource(BaseModel):
    """Where the evaluation utterances come from; all fields have working defaults for ``kind``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["demo", "manifest", "hf", "longform"] = "demo"
    path: Path | None = None
    """Manifest file (``manifest``); overrides the bundled manifest for ``demo`` and ``longform``."""
    minutes: list[float] = Field(default_factory=lambda: [1.0, 5.0, 30.0])
    """``longform``: one recording per entry, joined from the test utterances (``asr_optimize.audio.longform_data``)."""
    dataset_id: str = DEFAULT_HF_DATASET
    config: str | None = "hi"
    split: str = "test"
    revision: str | None = None
    """Dataset revision, e.g. 'refs/convert/parquet' for script-based datasets (datasets>=4 runs none)."""
    streaming: bool = True
    audio_column: str | None = None
    """None: 'audio' for hf, else the first of AUDIO_COLUMN_CANDIDATES present."""
    text_column: str | None = None
    """None: 'sentence' for hf, else the first of TEXT_COLUMN_CANDIDATES present."""
    id_column: str | None = None
    max_samples: int | None = Field(None, ge=1)
    """Read at most this many rows (good + bad), in source order."""
    max_bad_fraction: float = Field(0.1, ge=0, le=1)
    min_duration_s: float = Field(0.025, ge=0)
    """wav2vec2's feature encoder needs 400 samples (25 ms) for a single output frame."""
    max_duration_s: float | None = Field(60.0, gt=0)
    """Rows longer than this are reported bad (checked from the header before decoding: a 600 s row would take GBs);
    long recordings belong to the long-form path. None: no limit."""
    sample_rate: int = Field(TARGET_SAMPLE_RATE, gt=0)
    token: SecretStr | None = None
    """HF token (SecretStr: never in logs, reprs or Prefect parameters); else env ``token_env``."""
    token_env: str = "HF_TOKEN"

    def describe(self) -> str:
        """Short, token-free description for logs and reports."""
        if self.kind == "hf":
            parts = [self.dataset_id, self.config or "-", self.split] + (
                [self.revision] if self.revision else []
            )
            return "hf:" + "/".join(parts)
        if self.kind == "longform":
            return f"longform:{'+'.join(f'{m:g}' for m in self.minutes)}min:{self.path or DEMO_MANIFEST}"
        return f"{self.kind}:{self.path or DEMO_MANIFEST}"


@dataclass
class EvalSet:
    utterances: list[Utterance]
    bad_rows: list[BadRow]
    n_rows: int
    source: EvalSource
    sample_rate: int = TARGET_SAMPLE_RATE
    _hash: str | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.utterances)

    def __iter__(self) -> Iterator[Utterance]:
        return iter(self.utterances)

    @property
    def ids(self) -> list[str]:
        return [u.id for u in self.utterances]

    @property
    def texts(self) -> list[str]:
        return [u.text for u in self.utterances]

    @property
    def bad_fraction(self) -> float:
        return len(self.bad_rows) / self.n_rows if self.n_rows else 0.0

    @property
    def total_duration_s(self) -> float:
        return sum(u.duration_s for u in self.utterances)

    def content_sha256(self) -> str:
        """Hash of ids, texts and samples: an input hash for artifact manifests and cache keys."""
        if self._hash is None:
            h = hashlib.sha256(f"sr={self.sample_rate}".encode())
            for u in self.utterances:
                h.update(u.id.encode() + b"\0" + u.text.encode() + b"\0")
                h.update(np.ascontiguousarray(u.audio, dtype="<f4").tobytes())
            self._hash = h.hexdigest()
        return self._hash

    def summary(self) -> dict[str, object]:
        return {
            "source": self.source.describe(),
            "utterances": len(self.utterances),
            "rows_read": self.n_rows,
            "bad_rows": len(self.bad_rows),
            "bad_fraction": round(self.bad_fraction, 4),
            "total_duration_s": round(self.total_duration_s, 2),
            "sha256": self.content_sha256(),
        }


def _decode_hf_audio(value: Any, target_rate: int, max_duration_s: float | None = None) -> np.ndarray:
    """Decode a datasets audio cell: {'bytes','path'}, {'array','sampling_rate'} or a path."""
    if isinstance(value, dict):
        if value.get("array") is not None:
            return to_mono_16k(np.asarray(value["array"]), int(value["sampling_rate"]), target_rate)
        if value.get("bytes"):
            return read_audio(bytes(value["bytes"]), target_rate, name=value.get("path"), max_duration_s=max_duration_s)
        if value.get("path"):
            return read_audio(value["path"], target_rate, max_duration_s=max_duration_s)
        raise AudioDecodeError("audio cell has neither bytes, path nor array")
    if isinstance(value, str | Path):
        return read_audio(value, target_rate, max_duration_s=max_duration_s)
    if value is None:
        raise AudioDecodeError("audio cell is empty")
    raise AudioDecodeError(f"unsupported audio cell type {type(value).__name__}")


# ---------------------------------------------------------------- rows -> EvalSet


def _pick_column(columns: Iterable[str], explicit: str | None, candidates: tuple[str, ...], what: str) -> str:
    cols = list(columns)
    if explicit is not None:
        if explicit not in cols:
            raise EvalDataError(f"{what} column {explicit!r} not found; columns are {cols}")
        return explicit
    for name in candidates:
        if name in cols:
            return name
    raise EvalDataError(
        f"no {what} column found (tried {list(candidates)}); columns are {cols}; set it explicitly"
    )


def _unique(utt_id: str, seen: dict[str, int]) -> str:
    n = seen.get(utt_id, 0)
    seen[utt_id] = n + 1
    return utt_id if n == 0 else f"{utt_id}#{n}"


_LOG_BAD_ROWS = 20  # individual warnings; EvalSet.bad_rows keeps them all
_Row = tuple[str, Any, Any] | BadRow
"""(id, reference text, audio reference) or a row already known to be bad."""


def _collect(
    rows: Iterable[_Row],
    decode: Callable[[Any], np.ndarray],
    source: EvalSource,
    progress: bool,
) -> EvalSet:
    """Turn (id, text, audio-ref) rows into an EvalSet, recording each bad row and enforcing the bad share."""
    from tqdm.auto import tqdm

    utterances: list[Utterance] = []
    bad: list[BadRow] = []
    n_rows = 0
    min_samples = math.ceil(source.min_duration_s * source.sample_rate)
    for item in tqdm(rows, desc=f"loading {source.describe()}", disable=not progress, unit="utt"):
        n_rows += 1
        if isinstance(item, BadRow):
            bad.append(item)
            continue
        utt_id, text, audio_ref = item
        text = "" if text is None else str(text).strip()
        if not text:
            bad.append(BadRow(utt_id, "empty reference text"))
            continue
        if not normalize_hindi(text):
            bad.append(BadRow(utt_id, f"reference text {text!r} has no words after normalization"))
            continue
        try:
            audio = decode(audio_ref)
        except AudioDecodeError as exc:
            bad.append(BadRow(utt_id, str(exc)))
            continue
        if audio.size < min_samples:
            bad.append(
                BadRow(
                    utt_id,
                    f"audio too short: {audio.size} samples < {min_samples} ({source.min_duration_s} s)",
                )
            )
            continue
        if source.max_duration_s is not None and audio.size > source.max_duration_s * source.sample_rate:
            bad.append(BadRow(utt_id, str(too_long(audio.size / source.sample_rate, source.max_duration_s))))
            continue
        utterances.append(Utterance(utt_id, audio, text, audio.size / source.sample_rate))

    for b in bad[:_LOG_BAD_ROWS]:
        logger.warning("skipping eval row %s: %s", b.id, b.reason)
    result = EvalSet(utterances, bad, n_rows, source, source.sample_rate)
    if n_rows == 0:
        raise EvalDataError(f"{source.describe()}: no rows to evaluate")
    detail = "; ".join(f"{b.id}: {b.reason}" for b in bad[:5]) + (" ..." if len(bad) > 5 else "")
    if result.bad_fraction > source.max_bad_fraction or not utterances:
        raise EvalDataError(
            f"{source.describe()}: {len(bad)} of {n_rows} rows unusable ({result.bad_fraction:.1%} > "
            f"max_bad_fraction {source.max_bad_fraction:.1%}); first: {detail}"
        )
    if bad:
        logger.warning(
            "%s: skipped %d of %d rows (%.1f%%)",
            source.describe(),
            len(bad),
            n_rows,
            100 * result.bad_fraction,
        )
    return result


# ---------------------------------------------------------------- manifests


def read_manifest_rows(path: Path) -> tuple[list[dict[str, Any]], list[BadRow]]:
    """Parse a CSV/TSV/JSONL manifest into row dicts; unparsable JSON lines come back as bad rows."""
    if not path.is_file():
        raise EvalDataError(f"manifest not found: {path}")
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv", ".tab"):
        import pandas as pd

        sep = "," if suffix == ".csv" else "\t"
        # Text stays text: no NaN for empty cells, no number parsing; TSV unquoted like Common Voice's.
        quoting = csv.QUOTE_MINIMAL if sep == "," else csv.QUOTE_NONE
        try:
            df = pd.read_csv(
                path, sep=sep, dtype=str, keep_default_na=False, na_filter=False, quoting=quoting,
                encoding="utf-8-sig",  # a BOM (Excel, Notepad) is not part of the first column's name
            )
        except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
            raise EvalDataError(f"cannot parse manifest {path}: {exc}") from exc
        return df.to_dict("records"), []
    if suffix in (".jsonl", ".json", ".ndjson"):
        data = path.read_bytes()
        if data.startswith(codecs.BOM_UTF8):
            data = data[len(codecs.BOM_UTF8):]
        if suffix == ".json" and data.lstrip().startswith(b"["):
            try:
                return list(json.loads(data.decode("utf-8"))), []
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise EvalDataError(f"cannot parse manifest {path}: {exc}") from exc
        rows, bad = [], []
        # split on b"\n" only: str.splitlines() would also split inside a transcript at U+2028/U+2029/U+0085,
        # and decoding line by line costs one row, not the file, for a bad UTF-8 byte
        for lineno, raw in enumerate(data.split(b"\n"), start=1):
            raw = raw.rstrip(b"\r")
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                bad.append(BadRow(f"{path.name}:{lineno}", f"line is not valid UTF-8 (byte 0x{raw[exc.start]:02x} "
                                                            f"at column {exc.start + 1})"))
                continue
            try:
                obj = json.loads(line)
                if not isinstance(obj, dict):
                    raise ValueError(f"expected an object, got {type(obj).__name__}")
                rows.append(obj)
            except ValueError as exc:
                bad.append(BadRow(f"{path.name}:{lineno}", f"invalid JSON line: {exc}"))
        return rows, bad
    raise EvalDataError(f"unsupported manifest type {suffix!r} for {path} (use .csv, .tsv or .jsonl)")


def _load_manifest(path: Path, source: EvalSource, progress: bool) -> EvalSet:
    rows, parse_bad = read_manifest_rows(path)
    if source.max_samples is not None:
        rows = rows[: max(0, source.max_samples - len(parse_bad))]
    columns = list(dict.fromkeys(k for r in rows for k in r))
    if rows:
        audio_col = _pick_column(columns, source.audio_column, AUDIO_COLUMN_CANDIDATES, "audio")
        text_col = _pick_column(columns, source.text_column, TEXT_COLUMN_CANDIDATES, "text")
        if source.id_column is not None:
            _pick_column(columns, source.id_column, (), "id")
    id_col = source.id_column or next((c for c in ID_COLUMN_CANDIDATES if c in columns), None)
    base = path.resolve().parent
    seen: dict[str, int] = {}

    def items() -> Iterator[_Row]:
        yield from parse_bad
        for i, row in enumerate(rows):
            ref = row.get(audio_col)
            raw_id = row.get(id_col) if id_col else None
            utt_id = str(raw_id) if raw_id not in (None, "") else (str(ref) if ref else f"row {i + 1}")
            yield _unique(utt_id, seen), row.get(text_col), ref

    def decode(ref: Any) -> np.ndarray:
        if not ref or not isinstance(ref, str):
            raise AudioDecodeError("no audio path in row")
        p = Path(ref).expanduser()
        return read_audio(p if p.is_absolute() else base / p, source.sample_rate, max_duration_s=source.max_duration_s)

    return _collect(items(), decode, source, progress)


# ---------------------------------------------------------------- Hugging Face datasets


def _hf_token(source: EvalSource) -> str | None:
    if source.token is not None:
        return source.token.get_secret_value() or None
    return os.environ.get(source.token_env) or None


def _load_hf(source: EvalSource, progress: bool) -> EvalSet:
    try:
        import datasets
    except ImportError as exc:
        raise EvalDataError(
            "the 'hf' evaluation source needs the 'datasets' package (pip install datasets)"
        ) from exc

    token = _hf_token(source)
    logger.info("opening %s (token: %s)", source.describe(), "set" if token else "none")
    try:
        ds = datasets.load_dataset(
            source.dataset_id,
            source.config,
            split=source.split,
            streaming=source.streaming,
            token=token,
            revision=source.revision,
        )
    except Exception as exc:  # any failure to open the dataset -> one clear error
        msg = f"{type(exc).__name__}: {exc}"
        if token:
            msg = msg.replace(token, "***")
        raise EvalDataError(
            f"cannot open {source.describe()}: {msg}. Gated datasets (Common Voice) need an accepted licence "
            f"and a token (env {source.token_env} or EvalSource.token); script-based datasets need "
            "revision='refs/convert/parquet' with datasets>=4"
        ) from exc

    features = getattr(ds, "features", None) or {}
    columns = list(features) or list(getattr(ds, "column_names", None) or [])
    audio_col = source.audio_column or "audio"
    text_col = source.text_column or "sentence"
    if columns:
        _pick_column(columns, audio_col, (), "audio")
        _pick_column(columns, text_col, (), "text")
    if isinstance(features.get(audio_col), datasets.Audio):
        # decode with soundfile and resample ourselves (no torchcodec; same path as local files)
        ds = ds.cast_column(audio_col, datasets.Audio(decode=False))
    if source.max_samples is not None:
        ds = (
            ds.take(source.max_samples)
            if source.streaming
            else ds.select(range(min(source.max_samples, len(ds))))
        )
    id_col = source.id_column or ("path" if "path" in columns and audio_col != "path" else None)
    seen: dict[str, int] = {}

    def items() -> Iterator[_Row]:
        for i, row in enumerate(ds):
            raw_id = row.get(id_col) if id_col else None
            utt_id = str(raw_id) if raw_id else f"{source.split}-{i}"
            yield _unique(utt_id, seen), row.get(text_col), row.get(audio_col)

    try:
        return _collect(items(), lambda v: _decode_hf_audio(v, source.sample_rate, source.max_duration_s), source,
                        progress)
    except EvalDataError:
        raise
    except Exception as exc:  # streaming errors surface mid-iteration
        msg = f"{type(exc).__name__}: {exc}"
        if token:
            msg = msg.replace(token, "***")
        raise EvalDataError(f"reading {source.describe()} failed: {msg}") from exc


# ---------------------------------------------------------------- entry point


def calibration_audio(manifest: Path | None = None) -> list[np.ndarray]:
    """Speech for fp8 calibration: a manifest's utterances, by default the bundled calibration set (the demo
    model's dev texts, none of them in the test set), so the audio that judges an engine never tuned it."""
    path = Path(manifest) if manifest else DEMO_CALIBRATION / "manifest.jsonl"
    if not path.is_file():
        raise EvalDataError(f"calibration manifest not found at {path}")
    return [u.audio for u in _load_manifest(path, EvalSource(kind="manifest", path=path), progress=False).utterances]


def load_eval_set(source: EvalSource | None = None, progress: bool = False) -> EvalSet:
    """Load the evaluation utterances described by ``source`` (default: the bundled demo test set)."""
    source = source or EvalSource()
    if source.kind == "hf":
        return _load_hf(source, progress)
    if source.kind == "longform":  # the demo (or ``path``) utterances joined into recordings of ``minutes``
        from asr_optimize.audio.longform_data import build_recording

        base = load_eval_set(source.model_copy(update={"kind": "manifest" if source.path else "demo"}), progress)
        joined = [build_recording(base.utterances, m) for m in source.minutes]
        long = [Utterance(r.id, r.audio, r.text, r.duration_s) for r in joined]
        return EvalSet(long, list(base.bad_rows), base.n_rows, source, base.sample_rate)
    if source.kind == "manifest":
        if source.path is None:
            raise EvalDataError("manifest evaluation source needs 'path'")
        return _load_manifest(Path(source.path), source, progress)
    path = Path(source.path) if source.path else DEMO_MANIFEST
    if not path.is_file():
        raise EvalDataError(
            f"bundled demo test set not found at {path} (is the package installed with its assets?)"
        )
    return _load_manifest(path, source, progress)
