"""The local artifact store: manifests last, content addressing, no half artifacts, pointers with history."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from asr_optimize.errors import StoreError
from asr_optimize.hashing import sha256_file
from asr_optimize.store.local import ArtifactRef, LocalArtifactStore, Manifest

REF = ArtifactRef(model_slug="demo", revision="sha256:abc123", stage="export", key="k1")


def _manifest(ref: ArtifactRef = REF) -> Manifest:
    return Manifest(ref=ref, source_model="demo", source_revision=ref.revision, params={"opset": 17})


def test_put_then_get_round_trip_with_checksums(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path / "store")
    with store.staging() as scratch:
        (scratch / "model.onnx").write_bytes(b"onnx-bytes")
        stored = store.put(scratch, _manifest())
    found = store.get(REF)
    assert found is not None
    assert found.manifest.files["model.onnx"].sha256 == sha256_file(stored.local_dir / "model.onnx")
    manifest = json.loads((found.local_dir / "manifest.json").read_text())
    assert manifest["source_revision"] == "sha256:abc123" and manifest["params"] == {"opset": 17}


def test_folder_without_manifest_is_not_an_artifact(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    leftover = tmp_path / "artifacts" / REF.path
    leftover.mkdir(parents=True)
    (leftover / "model.onnx").write_bytes(b"half written")
    assert store.get(REF) is None
    with store.staging() as scratch:
        (scratch / "model.onnx").write_bytes(b"complete")
        store.put(scratch, _manifest())
    assert (store.get(REF).local_dir / "model.onnx").read_bytes() == b"complete"  # leftover replaced


def test_failed_stage_leaves_nothing(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    with pytest.raises(RuntimeError), store.staging() as scratch:
        (scratch / "model.onnx").write_bytes(b"partial")
        raise RuntimeError("stage crashed")
    assert store.get(REF) is None
    assert not any((tmp_path / ".staging").iterdir())


def test_existing_version_is_never_overwritten(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    for payload in (b"first", b"second"):
        with store.staging() as scratch:
            (scratch / "f.bin").write_bytes(payload)
            store.put(scratch, _manifest())
    assert (store.get(REF).local_dir / "f.bin").read_bytes() == b"first"


def test_truncated_file_after_publication_is_detected(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    with store.staging() as scratch:
        (scratch / "f.bin").write_bytes(b"0123456789")
        stored = store.put(scratch, _manifest())
    (stored.local_dir / "f.bin").write_bytes(b"01234")
    assert store.get(REF) is None


@pytest.mark.requires("non-root")  # root can write anywhere: permission errors cannot be caused as root
def test_unwritable_store_gives_clear_error(tmp_path: Path) -> None:
    tmp_path.chmod(0o500)
    with pytest.raises(StoreError, match="not writable"):
        LocalArtifactStore(tmp_path / "store")


def test_store_on_a_file_gives_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="not writable"):
        LocalArtifactStore(blocker)


def test_pointer_moves_keep_history(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    assert store.read_pointer("production") is None
    store.write_pointer("production", {"artifact": "a/1"})
    store.write_pointer("production", {"artifact": "a/2"})
    assert store.read_pointer("production")["artifact"] == "a/2"
    history = (tmp_path / "pointers" / "production.history.jsonl").read_text().splitlines()
    assert [json.loads(line)["artifact"] for line in history] == ["a/1", "a/2"]
    with pytest.raises(StoreError):
        store.write_pointer("../escape", {})
