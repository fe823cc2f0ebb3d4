"""The files a swap rewrites, saved before its first write and restored byte for byte when it is rolled back.

Why: the rollback used to regenerate ``config.pbtxt`` from the *candidate's* options, so a swap refused because its
instance kind could not load (``KIND_GPU`` on a CPU host) left ``KIND_GPU`` in the config and every later server
start failed. Now the swap saves the acoustic model's ``config.pbtxt`` and the pipeline's config and files to
``<root>/<model>/.swap-backup/`` (a folder renamed into place, fsynced) before it writes anything; a rollback, and
the journal's repair of a swap that died (``journal.reconcile``), put exactly those bytes back and remove what the
swap created. The backup is discarded when the swap settles.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from pydantic import BaseModel

from asr_optimize.fileio import atomic_write_bytes, fsync_dir
from asr_optimize.hashing import sha256_file
from asr_optimize.triton.names import TritonModelName, repo_path

BACKUP_DIR = ".swap-backup"
INDEX = "snapshot.json"
PIPELINE_FILES = ("config.pbtxt", "1/model.py", "1/ctc.json", "1/chunking.py")
"""What ``repository.write_pipeline`` / ``set_serving_version`` write in the pipeline's folder."""


class SnapshotError(OSError):
    """The backup cannot be read back intact (a blob is missing or its sha256 differs)."""


class Entry(BaseModel):
    name: TritonModelName
    file: str
    sha256: str | None
    """None: the file did not exist before the swap (a restore deletes it)."""


class Snapshot(BaseModel):
    model_name: TritonModelName
    pipeline_name: TritonModelName
    entries: list[Entry]
    pipeline_existed: bool
    pipeline_version_existed: bool


def backup_dir(root: Path, model: str) -> Path:
    return repo_path(root, model, BACKUP_DIR)


def tracked(model: str, pipeline: str) -> list[tuple[str, str]]:
    """(model name, file) of everything a swap may rewrite outside the candidate's own version folder."""
    return [(model, "config.pbtxt"), *((pipeline, f) for f in PIPELINE_FILES)]


def take(root: Path, model: str, pipeline: str) -> Snapshot:
    """Save the tracked files to the model's backup folder (complete and durable before this returns)."""
    root = Path(root)
    final = backup_dir(root, model)
    staging = repo_path(root, model, f"{BACKUP_DIR}.{os.getpid()}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    entries = []
    try:
        for i, (name, file) in enumerate(tracked(model, pipeline)):
            path = repo_path(root, name, file)
            if path.is_file():
                shutil.copyfile(path, staging / str(i))
                entries.append(Entry(name=name, file=file, sha256=sha256_file(staging / str(i))))
            else:
                entries.append(Entry(name=name, file=file, sha256=None))
        snapshot = Snapshot(model_name=model, pipeline_name=pipeline, entries=entries,
                            pipeline_existed=repo_path(root, pipeline).is_dir(),
                            pipeline_version_existed=repo_path(root, pipeline, 1).is_dir())
        (staging / INDEX).write_text(snapshot.model_dump_json(indent=1), encoding="utf-8")
        for blob in staging.iterdir():
            with open(blob, "rb") as fh:
                os.fsync(fh.fileno())
        fsync_dir(staging)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(staging, final)
        fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return snapshot


def read(root: Path, model: str) -> Snapshot | None:
    """The saved snapshot of ``model``'s last unsettled swap, or None."""
    path = backup_dir(root, model) / INDEX
    if not path.is_file():
        return None
    snapshot = Snapshot.model_validate_json(path.read_text(encoding="utf-8"))
    if snapshot.model_name != model:
        raise SnapshotError(f"{path} belongs to {snapshot.model_name!r}, not {model!r}")
    return snapshot


def restore(root: Path, snapshot: Snapshot) -> list[str]:
    """Put every tracked file back as it was (byte for byte), delete those the swap created, remove a pipeline
    folder the swap created. Returns the files changed (``name/file``); blobs are checked by sha256 first, so a
    damaged backup changes nothing."""
    root = Path(root)
    folder = backup_dir(root, snapshot.model_name)
    blobs: dict[int, bytes] = {}
    for i, entry in enumerate(snapshot.entries):
        if entry.sha256 is None:
            continue
        blob = folder / str(i)
        if not blob.is_file() or sha256_file(blob) != entry.sha256:
            raise SnapshotError(f"{blob}: the saved copy of {entry.name}/{entry.file} is missing or damaged; "
                                "nothing was restored")
        blobs[i] = blob.read_bytes()
    changed = []
    for i, entry in enumerate(snapshot.entries):
        path = repo_path(root, entry.name, entry.file)
        if entry.sha256 is None:
            if path.is_file():
                path.unlink()
                changed.append(f"{entry.name}/{entry.file}")
        elif not path.is_file() or sha256_file(path) != entry.sha256:
            atomic_write_bytes(path, blobs[i])
            changed.append(f"{entry.name}/{entry.file}")
    pipeline = repo_path(root, snapshot.pipeline_name)
    if not snapshot.pipeline_existed and pipeline.is_dir():
        shutil.rmtree(pipeline)
    elif not snapshot.pipeline_version_existed and repo_path(root, snapshot.pipeline_name, 1).is_dir():
        shutil.rmtree(repo_path(root, snapshot.pipeline_name, 1))
    return changed


def discard(root: Path, model: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(backup_dir(root, model))
