"""Store fault helpers shared by the local and the S3 reliability tests: a 3 MiB two-file artifact, its manifest, a
race that releases concurrent writers together, and a check that a published folder matches its manifest."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from asr_optimize.hashing import sha256_file
from asr_optimize.store.local import ArtifactRef, Manifest, StoredArtifact

REF = ArtifactRef(model_slug="demo", revision="sha256:abc123def456", stage="export", key="k1")
SIZE = 3 * 1024 * 1024


def manifest(ref: ArtifactRef = REF) -> Manifest:
    return Manifest(ref=ref, source_model="demo", source_revision=ref.revision)


def fill(folder: Path, byte: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").write_bytes(byte * SIZE)
    (folder / "sub").mkdir(exist_ok=True)
    (folder / "sub" / "vocab.json").write_text(json.dumps({"writer": byte.decode()}))
    return folder


def race(monkeypatch: pytest.MonkeyPatch, module: Any, writers: list[Any]) -> list[StoredArtifact]:
    """Run the writers in threads, all released together right after each has decided the artifact is absent."""
    barrier = threading.Barrier(len(writers), timeout=60)
    real = module.describe_files

    def describe_then_wait(folder: Path) -> Any:
        entries = real(folder)
        barrier.wait()  # every writer has passed its "already published?" check: the race is on
        return entries

    monkeypatch.setattr(module, "describe_files", describe_then_wait)
    results: list[Any] = [None] * len(writers)

    def run(i: int) -> None:
        try:
            results[i] = writers[i]()
        except BaseException as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(writers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results


def assert_whole(folder: Path, stored: Manifest) -> None:
    on_disk = Manifest.model_validate_json((folder / "manifest.json").read_text())
    assert on_disk == stored
    for rel, entry in on_disk.files.items():
        assert sha256_file(folder / rel) == entry.sha256
