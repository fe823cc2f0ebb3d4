"""Faults caused for real on the local artifact store: two concurrent writers, corrupted and truncated files, a full
disk, permissions, stale leftovers, hostile names. Each test asserts that nothing was lost or escaped and that the
error or warning names the problem. (The S3 store's faults: ``tests/integration/test_reliability_store.py``.)"""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import asr_optimize.store.local as store_module
from asr_optimize.errors import StoreError, UnsafePathError
from asr_optimize.fileio import atomic_write_text, safe_join
from asr_optimize.store.local import LocalArtifactStore, slugify_model
from tests.support.assets import REPO_ROOT
from tests.support.store_faults import REF, SIZE, assert_whole, fill, manifest, race

# ------------------------------------------------------------------------------------------ concurrent publishes


def test_two_concurrent_local_writers_one_artifact_loser_reuses(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    store_a, store_b = LocalArtifactStore(tmp_path / "store"), LocalArtifactStore(tmp_path / "store")
    stages = [fill(tmp_path / "stage-a", b"A"), fill(tmp_path / "stage-b", b"B")]
    results = race(monkeypatch, store_module, [lambda: store_a.put(stages[0], manifest()),
                                               lambda: store_b.put(stages[1], manifest())])
    assert sorted(r.reused for r in results) == [False, True]  # one published, the other reports reuse
    winner = next(r for r in results if not r.reused)
    loser = next(r for r in results if r.reused)
    assert loser.local_dir == winner.local_dir and loser.manifest == winner.manifest
    assert_whole(winner.local_dir, winner.manifest)  # nothing of the loser mixed in, nothing deleted
    byte = json.loads((winner.local_dir / "sub" / "vocab.json").read_text())["writer"].encode()
    assert (winner.local_dir / "model.onnx").read_bytes() == byte * SIZE
    assert LocalArtifactStore(tmp_path / "store").get(REF) is not None
    assert not any((tmp_path / "store" / ".staging").iterdir())  # the loser's copy was discarded


# ------------------------------------------------------------------------------------------ corruption


def test_same_size_corruption_is_detected_and_rebuilt(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = LocalArtifactStore(tmp_path / "store")
    first = store.put(fill(tmp_path / "stage", b"A"), manifest())
    onnx = first.local_dir / "model.onnx"
    with open(onnx, "r+b") as handle:  # flip bytes in the middle: same size, different content
        handle.seek(SIZE // 2)
        handle.write(b"XXXX")
    assert onnx.stat().st_size == SIZE
    with caplog.at_level(logging.WARNING, logger="asr_optimize.store.local"):
        assert store.get(REF) is None
    assert "damaged (model.onnx does not match its manifest sha256)" in caplog.text
    rebuilt = store.put(fill(tmp_path / "stage2", b"A"), manifest())
    assert not rebuilt.reused
    assert_whole(rebuilt.local_dir, rebuilt.manifest)
    assert store.get(REF) is not None
    aside = list((tmp_path / "store" / ".staging").glob("replaced-*/*"))
    assert len(aside) == 1 and (aside[0] / "model.onnx").read_bytes()[SIZE // 2:SIZE // 2 + 4] == b"XXXX"


def test_truncated_local_manifest_reads_as_absent(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = LocalArtifactStore(tmp_path / "store")
    stored = store.put(fill(tmp_path / "stage", b"A"), manifest())
    path = stored.local_dir / "manifest.json"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with caplog.at_level(logging.WARNING, logger="asr_optimize.store.local"):
        assert store.get(REF) is None  # no exception
    assert "manifest" in caplog.text and "unreadable" in caplog.text and str(path) in caplog.text
    assert store.put(fill(tmp_path / "stage2", b"A"), manifest()).reused is False
    assert store.get(REF) is not None


# ------------------------------------------------------------------------------------------ disk full


@pytest.mark.requires("tmpfs-mount")
def test_disk_full_during_publish_is_a_clear_error_and_publishes_nothing(tmp_path: Path) -> None:
    """A real ENOSPC: the store lives on a 1 MiB tmpfs mounted in a private user+mount namespace."""
    mnt = tmp_path / "small-disk"
    mnt.mkdir()
    stage = fill(tmp_path / "stage", b"A")  # 3 MiB on the big disk: publishing copies it onto the small one
    script = tmp_path / "publish.py"
    script.write_text(textwrap.dedent(f"""
        import json, sys
        from pathlib import Path
        from asr_optimize.errors import NoSpaceError
        from asr_optimize.store.local import ArtifactRef, LocalArtifactStore, Manifest
        ref = ArtifactRef(model_slug="demo", revision="sha256:abc", stage="export", key="k1")
        store = LocalArtifactStore(Path({str(mnt / "store")!r}))
        out = {{}}
        try:
            store.put(Path({str(stage)!r}), Manifest(ref=ref, source_model="d", source_revision="r"))
            out["error"] = None
        except NoSpaceError as exc:
            out["error"] = str(exc)
        out["get"] = store.get(ref) is not None
        out["artifacts"] = sorted(str(p) for p in (store.root / "artifacts").rglob("*"))
        out["staging"] = sorted(str(p) for p in (store.root / ".staging").rglob("*"))
        small = Path({str(tmp_path / "small")!r})
        small.mkdir(exist_ok=True)
        (small / "f.bin").write_bytes(b"ok")
        out["after"] = store.put(small, Manifest(ref=ref, source_model="d", source_revision="r")).reused
        print(json.dumps(out))
    """))
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run(
        ["unshare", "-rm", "sh", "-c", 'mount -t tmpfs -o size=1m tmpfs "$1" || exit 77; exec "$2" "$3"', "sh",
         str(mnt), sys.executable, str(script)],
        capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr  # 77: the tmpfs could not be mounted
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["error"] and out["error"].startswith("no space left on the disk holding")
    assert "while writing" in out["error"] and "artifacts/demo" in out["error"]
    assert out["get"] is False and out["artifacts"] == []  # nothing half-published
    assert out["staging"] == []  # the half copy was removed
    assert out["after"] is False  # the store still works once there is room


# ------------------------------------------------------------------------------------------ permissions, leftovers


@pytest.mark.parametrize("mask", [0o022, 0o002])
def test_store_files_respect_the_umask(tmp_path: Path, mask: int) -> None:
    old = os.umask(mask)
    try:
        store = LocalArtifactStore(tmp_path / "store")
        with store.staging() as scratch:
            fill(scratch, b"A")
            stored = store.put(scratch, manifest())
        atomic_write_text(tmp_path / "store" / "note.txt", "x")
    finally:
        os.umask(old)
    paths = [stored.local_dir, *stored.local_dir.rglob("*"), tmp_path / "store" / "note.txt"]
    for path in paths:
        mode = stat.S_IMODE(path.stat().st_mode)
        expected = (0o777 if path.is_dir() else 0o666) & ~mask
        assert mode == expected, f"{path}: {oct(mode)} != {oct(expected)}"


def test_stale_staging_leftovers_are_swept_on_open(tmp_path: Path) -> None:
    root = tmp_path / "store"
    LocalArtifactStore(root)
    old, fresh = root / ".staging" / "stage-killed", root / ".staging" / "stage-running"
    for folder in (old, fresh):
        (folder / "sub").mkdir(parents=True)
        (folder / "sub" / "model.onnx").write_bytes(b"x" * 1000)
    two_days_ago = time.time() - 2 * 24 * 3600
    for p in (old, old / "sub", old / "sub" / "model.onnx"):
        os.utime(p, (two_days_ago, two_days_ago))
    LocalArtifactStore(root)
    assert not old.exists() and (fresh / "sub" / "model.onnx").is_file()


# ------------------------------------------------------------------------------------------ names


def test_model_slug_is_independent_of_spelling(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "m").mkdir()
    monkeypatch.chdir(tmp_path)
    spellings = ["./m", "m", str(tmp_path / "m"), str(tmp_path / "m") + "/", "m/../m"]
    assert len({slugify_model(s) for s in spellings}) == 1
    assert slugify_model("ai4bharat/indicwav2vec-hindi") == "ai4bharat--indicwav2vec-hindi"
    for hostile in ("..", ".", "../../etc", "/", "..\\..", "....//"):
        slug = slugify_model(hostile)
        assert slug and "/" not in slug and slug not in (".", "..") and not slug.startswith(".")


def test_refs_and_names_cannot_leave_the_store(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path / "store")
    for ref in (REF.model_copy(update={"model_slug": ".."}), REF.model_copy(update={"stage": "../../x"}),
                REF.model_copy(update={"key": "/abs"})):
        with pytest.raises(UnsafePathError):
            store.get(ref)
    with pytest.raises(StoreError, match="invalid pointer name"):
        store.write_pointer("../escape", {})
    os.symlink(tmp_path, tmp_path / "store" / "artifacts" / "link")
    with pytest.raises(UnsafePathError, match="symlink"):
        safe_join(tmp_path / "store" / "artifacts", "link/x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]


def test_private_stage_files_become_readable_as_the_umask_allows(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        store = LocalArtifactStore(tmp_path / "store")
        with store.staging() as scratch:
            fill(scratch, b"A")
            (scratch / "model.onnx").chmod(0o600)  # as tempfile.mkstemp would leave it
            stored = store.put(scratch, manifest())
    finally:
        os.umask(old)
    assert stat.S_IMODE((stored.local_dir / "model.onnx").stat().st_mode) == 0o644
