"""The artifact store: content-addressed artifacts, each with a manifest written last.

An artifact is a folder of files addressed by ``<model>/<revision>/<stage>/<key>``, where ``key`` hashes
everything that determines its contents (inputs, parameters, stage code). A folder counts as an artifact
only once its ``manifest.json`` exists, and the manifest lists the sha256 of every file, so a crash never
leaves a half artifact that looks whole.

``LocalArtifactStore`` is the embedded default (a folder). The S3 store lives in ``asr_optimize.s3_store``
and follows the same interface; stages only ever see local folders.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shutil
import tempfile
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from asr_optimize import __version__
from asr_optimize.errors import StoreError
from asr_optimize.hashing import sha256_file

MANIFEST_NAME = "manifest.json"


class FileEntry(BaseModel):
    sha256: str
    size: int


class ArtifactRef(BaseModel):
    """Where an artifact lives: which model and revision, which stage, which parameter hash."""

    model_slug: str
    revision: str
    stage: str
    key: str

    @property
    def path(self) -> str:
        return f"{self.model_slug}/{self.revision[:12]}/{self.stage}/{self.key}"


class Manifest(BaseModel):
    """Everything needed to trust, reproduce and find an artifact."""

    schema_version: int = 1
    ref: ArtifactRef
    source_model: str
    source_revision: str
    code_version: str = __version__
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    params: dict[str, Any] = Field(default_factory=dict)
    inputs: dict[str, str] = Field(default_factory=dict)
    files: dict[str, FileEntry] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    timings: dict[str, float] = Field(default_factory=dict)
    environment: dict[str, str] = Field(default_factory=dict)


class StoredArtifact(BaseModel):
    """A complete artifact, available as a local folder."""

    manifest: Manifest
    local_dir: Path
    location: str

    def file(self, name: str) -> Path:
        return self.local_dir / name


def slugify_model(model: str) -> str:
    """A filesystem- and S3-safe name for a model id or path."""
    return re.sub(r"[^A-Za-z0-9._-]+", "--", model.strip("/")).strip("-")[-80:] or "model"


def production_pointer(model_slug: str) -> str:
    """The name of a model's ``production`` pointer (one per model, so a store can serve several)."""
    return f"{model_slug}.production"


def describe_files(folder: Path) -> dict[str, FileEntry]:
    """sha256 and size of every file below ``folder`` (the manifest excluded)."""
    entries = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel != MANIFEST_NAME:
            entries[rel] = FileEntry(sha256=sha256_file(path), size=path.stat().st_size)
    return entries


def runtime_environment() -> dict[str, str]:
    """Versions that decide whether an artifact is valid elsewhere."""
    import onnxruntime
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "host": platform.node(),
    }


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temp file beside ``path`` and rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2, ensure_ascii=False, default=str)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


class ArtifactStore(ABC):
    """Interface every store implements. Implementations must publish the manifest last."""

    @abstractmethod
    def get(self, ref: ArtifactRef) -> StoredArtifact | None:
        """The complete artifact at ``ref`` as a local folder, or None if there is none."""

    @abstractmethod
    def put(self, staging_dir: Path, manifest: Manifest) -> StoredArtifact:
        """Publish the files in ``staging_dir`` with ``manifest`` (written last). Never overwrites."""

    @abstractmethod
    def read_pointer(self, name: str) -> dict[str, Any] | None:
        """A named pointer (e.g. ``production``), or None."""

    @abstractmethod
    def write_pointer(self, name: str, value: dict[str, Any]) -> None:
        """Move a named pointer atomically and append the move to its history."""

    @abstractmethod
    def describe(self) -> str:
        """Where the store is, for logs (never credentials)."""

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """A scratch folder for a stage to write into; removed afterwards whatever happens."""
        scratch = Path(tempfile.mkdtemp(prefix="asr-optimize-stage-"))
        try:
            yield scratch
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


class LocalArtifactStore(ArtifactStore):
    """A folder: ``artifacts/<ref.path>/`` per artifact, ``pointers/<name>.json`` per pointer."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).expanduser().resolve()
        try:
            (self.root / "artifacts").mkdir(parents=True, exist_ok=True)
            (self.root / "pointers").mkdir(parents=True, exist_ok=True)
            probe = self.root / f".write-probe-{uuid.uuid4().hex}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise StoreError(f"model store {self.root} is not writable: {exc.strerror or exc}") from exc

    def describe(self) -> str:
        return f"local folder {self.root}"

    def _dir(self, ref: ArtifactRef) -> Path:
        return self.root / "artifacts" / ref.path

    def get(self, ref: ArtifactRef) -> StoredArtifact | None:
        folder = self._dir(ref)
        manifest_path = folder / MANIFEST_NAME
        if not manifest_path.is_file():
            return None
        manifest = Manifest.model_validate_json(manifest_path.read_text(encoding="utf-8"))
        for rel, entry in manifest.files.items():
            path = folder / rel
            if not path.is_file() or path.stat().st_size != entry.size:
                return None  # damaged after publication: treat as absent and rebuild
        return StoredArtifact(manifest=manifest, local_dir=folder, location=str(folder))

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """Stage inside the store so publishing is a same-filesystem rename."""
        tmp_root = self.root / ".staging"
        tmp_root.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix="stage-", dir=tmp_root))
        try:
            yield scratch
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def put(self, staging_dir: Path, manifest: Manifest) -> StoredArtifact:
        final = self._dir(manifest.ref)
        existing = self.get(manifest.ref)
        if existing is not None:
            return existing  # content-addressed: same key, same content; never overwrite
        manifest.files = describe_files(staging_dir)
        write_json_atomic(staging_dir / MANIFEST_NAME, manifest.model_dump(mode="json"))
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():  # an incomplete leftover from a crash: move it aside, never merge into it
            shutil.rmtree(final)
        try:
            # rename a copy so the caller's staging folder stays valid until it is cleaned up
            tmp = final.parent / f".{final.name}.{uuid.uuid4().hex[:8]}"
            shutil.copytree(staging_dir, tmp)
            os.replace(tmp, final)
        except OSError as exc:
            raise StoreError(f"cannot publish artifact {manifest.ref.path} in {self.root}: {exc}") from exc
        return StoredArtifact(manifest=manifest, local_dir=final, location=str(final))

    def _pointer_path(self, name: str) -> Path:
        if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
            raise StoreError(f"invalid pointer name {name!r}")
        return self.root / "pointers" / f"{name}.json"

    def read_pointer(self, name: str) -> dict[str, Any] | None:
        path = self._pointer_path(name)
        if not path.is_file():
            return None
        return json.loads(path.read_text(encoding="utf-8"))

    def write_pointer(self, name: str, value: dict[str, Any]) -> None:
        path = self._pointer_path(name)
        record = {**value, "updated_at": datetime.now(UTC).isoformat(timespec="seconds")}
        history = path.with_suffix(".history.jsonl")
        with open(history, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
        write_json_atomic(path, record)


def elapsed(start: float) -> float:
    """Seconds since ``start`` (time.perf_counter), rounded for manifests."""
    return round(time.perf_counter() - start, 3)
