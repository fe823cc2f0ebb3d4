"""The artifact store: content-addressed artifacts, each with a manifest written last.

An artifact is a folder of files addressed by ``<model>/<revision>/<stage>/<key>``, where ``key`` hashes
everything that determines its contents (inputs, parameters, stage code). A folder counts as an artifact
only once its ``manifest.json`` exists, and the manifest lists the sha256 of every file, so a crash never
leaves a half artifact that looks whole.

Trust: nothing read back is trusted. ``get`` checks every file's sha256 against the manifest (a damaged artifact is
reported and reads as absent, so it is rebuilt), an unreadable manifest reads as absent, and every name from a
manifest or a ref is joined with ``safe_join`` so it cannot leave the store.

Concurrency: the local store publishes by renaming one complete folder onto the final name (atomic); a writer that
loses the race discards its own copy and reuses the winner's. A published folder is never deleted in place: a damaged
one is moved aside under a per-artifact lock, then replaced.

``LocalArtifactStore`` is the embedded default (a folder). The S3 store lives in ``asr_optimize.store.s3``
and follows the same interface; stages only ever see local folders.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import platform
import re
import shutil
import stat
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from asr_optimize import __version__
from asr_optimize.errors import StoreError, UnsafePathError
from asr_optimize.fileio import (
    atomic_write_text,
    check_pointer_name,
    disk_full_errors,
    fsync_dir,
    new_dir,
    safe_join,
    slugify,
    umask,
)
from asr_optimize.hashing import sha256_file

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
STAGING_DIR = ".staging"
LOCKS_DIR = ".locks"
STALE_STAGING_S = 24 * 3600.0
"""Leftovers in ``.staging/`` untouched this long belong to a dead run and are swept when a store opens."""


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
    upload_id: str | None = None
    """S3 only: the unique prefix the data files were staged under before this manifest committed them."""


class StoredArtifact(BaseModel):
    """A complete artifact, available as a local folder."""

    manifest: Manifest
    local_dir: Path
    location: str
    reused: bool = False
    """True when ``put`` found the artifact already published (e.g. by a concurrent run) and kept that one."""

    def file(self, name: str) -> Path:
        return self.local_dir / name


HUB_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?")
"""One part of a hub id (owner or name): the hub forbids ``--`` and ``..`` in it, which keeps hub slugs unambiguous."""


def is_hub_id(text: str) -> bool:
    """``owner/name`` as ``resolve_model`` reads it (when no such local folder exists)."""
    return text.count("/") == 1 and not text.startswith((".", "/", "~"))


def model_identity(model: str) -> str:
    """The normalized, kind-qualified identity of a model source: ``hub:owner/name``, ``dir:/real/path`` or
    ``s3://bucket/key``. ``./m``, ``m`` and ``/abs/m`` (one folder) share one identity; a hub id and a folder of the
    same spelling do not (an existing folder wins, as in ``resolve_model``)."""
    text = str(model).strip()
    if text.startswith("s3://"):
        bucket, _, key = text[5:].partition("/")
        return f"s3://{bucket}/{key.strip('/')}"
    path = Path(text).expanduser()
    with contextlib.suppress(OSError, RuntimeError, ValueError):
        if path.exists():  # a local folder: its real location, however it was spelled
            return f"dir:{path.resolve()}"
    if is_hub_id(text):
        return f"hub:{text}"
    return f"dir:{os.path.abspath(path)}"  # a folder that does not exist (yet): normalized, not resolved


def slugify_model(model: str) -> str:
    """A filesystem- and S3-safe name for a model id, path or URI: the cache folder, artifact prefix and
    ``production`` pointer of that model, so two different models must never share one.

    A hub id ``owner/name`` becomes ``owner--name`` (injective: hub names never contain ``--`` or ``..``; the same
    name as earlier releases, so existing stores keep their pointers). Every other source becomes
    ``<readable tail>..<12 hex of sha256(model_identity)>``: the ``..`` no hub slug contains, the hash telling apart
    sources that read alike (``s3://prod/x`` and ``s3://staging/x``, ``m+1`` and ``m 1``, hub ``a/b`` and folder
    ``/a/b``). The slug is one path segment that is never ``.`` or ``..`` and never starts with a dot.
    """
    identity = model_identity(model)
    kind, _, rest = identity.partition(":")
    if kind == "hub" and all(HUB_NAME.fullmatch(p) and "--" not in p and ".." not in p for p in rest.split("/")):
        return rest.replace("/", "--")
    digest = hashlib.sha256(identity.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    readable = slugify(rest, sep="--")[-48:].lstrip(".-").rstrip(".-")
    return f"{readable if readable not in ('', 'x') else 'model'}..{digest}"


def production_pointer(model_slug: str, gpu_type: str | None = None) -> str:
    """The name of a model's ``production`` pointer (one per model, so a store can serve several). With ``gpu_type``
    (``GpuIdentity.gpu_type``, no dots) the pointer of the engines promoted for that GPU type,
    ``<model>.production.<gpu type>``; without it the plain name earlier releases wrote, for everything else."""
    return f"{model_slug}.production" + (f".{gpu_type}" if gpu_type else "")


REBUILD_HINT = ("Rerun `asr-optimize run` for this model to rebuild it (a damaged artifact is moved aside and "
                "rebuilt under the same key).")


def artifact_ref(artifact_id: str, model_slug: str, revision: str) -> tuple[ArtifactRef, str | None]:
    """(ref, file name or None) of a pointer's ``artifact_id`` ``<stage>:<key>[/<file>]`` (what promote records)."""
    stage, sep, rest = str(artifact_id).partition(":")
    key, _, file = rest.partition("/")
    if not (sep and stage and key and revision):
        raise StoreError(f"the production pointer names artifact {artifact_id!r} (revision {revision!r}), not a "
                         f"store artifact <stage>:<key>/<file>, so it cannot be verified. {REBUILD_HINT}")
    return ArtifactRef(model_slug=model_slug, revision=revision, stage=stage, key=key), file or None


def describe_files(folder: Path) -> dict[str, FileEntry]:
    """sha256 and size of every file below ``folder`` (the manifest excluded)."""
    entries = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel != MANIFEST_NAME:
            entries[rel] = FileEntry(sha256=sha256_file(path), size=path.stat().st_size)
    return entries


def verify_files(folder: Path, manifest: Manifest) -> str | None:
    """Why ``folder`` does not hold exactly what ``manifest`` lists (size and sha256), or None if it does."""
    for rel, entry in manifest.files.items():
        path = safe_join(folder, rel)
        if not path.is_file():
            return f"{rel} is missing"
        size = path.stat().st_size
        if size != entry.size:
            return f"{rel} has {size} bytes, its manifest says {entry.size}"
        if sha256_file(path) != entry.sha256:
            return f"{rel} does not match its manifest sha256"
    return None


def read_manifest(path: Path) -> Manifest | None:
    """The manifest at ``path``; None (with a warning) when it is missing, truncated or not a manifest."""
    try:
        return Manifest.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError, ValidationError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        logger.warning("artifact manifest %s is unreadable (%s): treating the artifact as absent", path, first)
        return None


def runtime_environment() -> dict[str, str]:
    """Versions that decide whether an artifact is valid elsewhere (read from package metadata: the store does not
    import torch)."""
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    onnxruntime = next((v for v in map(installed, ("onnxruntime-gpu", "onnxruntime")) if v != "not installed"),
                       "not installed")
    return {"python": platform.python_version(), "torch": installed("torch"), "onnxruntime": onnxruntime,
            "host": platform.node()}


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temp file beside ``path`` and rename it into place (umask-respecting)."""
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False, default=str))


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (between processes and between threads: each call opens its own file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link on the same filesystem (instant, no extra space), else copy; readable as the umask allows."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)  # a new file: 0666 & ~umask
        return
    mode = stat.S_IMODE(os.stat(dst).st_mode)
    readable = mode | (0o444 & ~umask())  # a stage's mkstemp file (0600) must not stay private in a shared store
    if readable != mode:
        os.chmod(dst, readable)


def copy_tree_shared(src: Path, dst: Path) -> None:
    """Copy ``src`` into the existing folder ``dst``; folders get umask modes (not a ``mkdtemp`` source's 0700).

    Written out (not ``shutil.copytree``) so the first error, e.g. ENOSPC, stops the copy and keeps its errno.
    """
    for folder, dirs, files in os.walk(src):
        rel = Path(folder).relative_to(src)
        for name in sorted(dirs):
            (dst / rel / name).mkdir(exist_ok=True)
        for name in sorted(files):
            _link_or_copy(Path(folder) / name, dst / rel / name)


def publish_folder(complete: Path, final: Path, existing_ok: Callable[[], Any | None], trash: Path,
                   lock: Path) -> Any | None:
    """Rename the complete folder ``complete`` onto ``final``; None when ours is now published.

    When ``final`` already exists, ``existing_ok()`` decides: a value means a valid artifact is there, so ours is
    discarded and that value returned. An invalid folder there (damaged, or a pre-manifest leftover) is moved aside
    into ``trash`` under ``lock`` and ours takes its place. A valid published folder is never removed.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(10):
        try:
            os.rename(complete, final)
            fsync_dir(final.parent)
            return None
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                raise
        with file_lock(lock):
            if (found := existing_ok()) is not None:
                shutil.rmtree(complete, ignore_errors=True)
                return found
            with contextlib.suppress(FileNotFoundError):
                aside = new_dir(trash, "replaced-")
                os.rename(final, aside / final.name)
                logger.warning("moved the damaged or incomplete folder %s aside to %s", final, aside)
                try:
                    os.rename(complete, final)
                    fsync_dir(final.parent)
                    return None
                except OSError as exc:
                    if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                        raise
    raise StoreError(f"cannot publish {final}: it kept changing under concurrent writers")


def sweep_stale(folder: Path, max_age_s: float) -> int:
    """Remove entries of ``folder`` in which nothing changed for ``max_age_s`` (a killed run's leftovers)."""
    if not folder.is_dir():
        return 0
    now, removed = time.time(), 0
    for entry in folder.iterdir():
        try:
            paths = [entry, *entry.rglob("*")] if entry.is_dir() else [entry]
            newest = max(p.lstat().st_mtime for p in paths)
        except OSError:
            continue  # removed meanwhile by its owner
        if now - newest > max_age_s:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    entry.unlink()
            removed += 1
    if removed:
        logger.info("swept %d stale leftover(s) older than %.0f h from %s", removed, max_age_s / 3600, folder)
    return removed


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

    def verify_artifact(self, ref: ArtifactRef) -> StoredArtifact:
        """The artifact at ``ref`` with every file checked against its manifest's sha256, or a ``StoreError`` that
        says what is wrong and how to recover. For running an artifact outside the flow (``transcribe
        --production``): a damaged file must be refused, not run."""
        found = self.get(ref)  # stores verify on read; a damaged artifact reads as absent (the warning names the file)
        if found is None:
            raise StoreError(f"artifact {ref.path} in {self.describe()} is missing or damaged (see the warning above "
                             f"for the file); refusing to run it. {REBUILD_HINT}")
        return found

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """A scratch folder for a stage to write into; removed afterwards whatever happens."""
        import tempfile

        scratch = new_dir(Path(tempfile.gettempdir()), "asr-optimize-stage-")
        try:
            yield scratch
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


class LocalArtifactStore(ArtifactStore):
    """A folder: ``artifacts/<ref.path>/`` per artifact, ``pointers/<name>.json`` per pointer."""

    def __init__(self, root: Path | str, stale_after_s: float = STALE_STAGING_S) -> None:
        self.root = Path(root).expanduser().resolve()
        try:
            (self.root / "artifacts").mkdir(parents=True, exist_ok=True)
            (self.root / "pointers").mkdir(parents=True, exist_ok=True)
            probe = self.root / f".write-probe-{uuid.uuid4().hex}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise StoreError(f"model store {self.root} is not writable: {exc.strerror or exc}") from exc
        sweep_stale(self.root / STAGING_DIR, stale_after_s)

    def describe(self) -> str:
        return f"local folder {self.root}"

    def _dir(self, ref: ArtifactRef) -> Path:
        return safe_join(self.root / "artifacts", ref.path)

    def _lock(self, ref: ArtifactRef) -> Path:
        return self.root / LOCKS_DIR / (hashlib.sha256(ref.path.encode()).hexdigest()[:32] + ".lock")

    def _problem(self, ref: ArtifactRef, folder: Path, manifest: Manifest) -> str | None:
        """Why ``folder`` is not the artifact ``manifest`` describes at ``ref``, or None; a manifest naming a file
        outside the artifact (hostile or hand-edited) is never followed: the error names the folder to delete."""
        try:
            problem = verify_files(folder, manifest)
        except UnsafePathError as exc:
            raise UnsafePathError(f"artifact {ref.path} in {self.root} refused: its manifest names a file outside "
                                  f"the artifact ({exc}); delete the folder {folder} to rebuild it") from None
        if problem is None and manifest.ref.path != ref.path:
            problem = f"its manifest describes {manifest.ref.path}"
        return problem

    def get(self, ref: ArtifactRef) -> StoredArtifact | None:
        folder = self._dir(ref)
        manifest = read_manifest(folder / MANIFEST_NAME)
        if manifest is None:
            return None
        problem = self._problem(ref, folder, manifest)
        if problem is not None:
            logger.warning("artifact %s is damaged (%s): it will be rebuilt", folder, problem)
            return None
        return StoredArtifact(manifest=manifest, local_dir=folder, location=str(folder))

    def verify_artifact(self, ref: ArtifactRef) -> StoredArtifact:
        folder = self._dir(ref)
        manifest = read_manifest(folder / MANIFEST_NAME)
        if manifest is None:
            raise StoreError(f"artifact {ref.path} is missing from {self.root} (no readable {MANIFEST_NAME} in "
                             f"{folder}); refusing to run it. {REBUILD_HINT}")
        problem = self._problem(ref, folder, manifest)
        if problem is not None:
            raise StoreError(f"artifact {ref.path} in {self.root} is damaged: {problem} ({folder}); refusing to run "
                             f"it. {REBUILD_HINT}")
        return StoredArtifact(manifest=manifest, local_dir=folder, location=str(folder))

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """Stage inside the store so publishing is a same-filesystem rename (group-readable, umask respected)."""
        scratch = new_dir(self.root / STAGING_DIR, "stage-")
        try:
            yield scratch
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def put(self, staging_dir: Path, manifest: Manifest) -> StoredArtifact:
        final = self._dir(manifest.ref)
        existing = self.get(manifest.ref)
        if existing is not None:
            return existing.model_copy(update={"reused": True})  # same key, same content; never overwrite
        manifest.files = describe_files(staging_dir)
        complete = new_dir(self.root / STAGING_DIR, "publish-")
        try:
            with disk_full_errors(final):
                # a linked copy keeps the caller's staging folder valid until it is cleaned up
                copy_tree_shared(staging_dir, complete)
                with contextlib.suppress(FileNotFoundError):
                    (complete / MANIFEST_NAME).unlink()
                write_json_atomic(complete / MANIFEST_NAME, manifest.model_dump(mode="json"))
                found = publish_folder(complete, final, lambda: self.get(manifest.ref),
                                       self.root / STAGING_DIR, self._lock(manifest.ref))
        except StoreError:
            raise
        except OSError as exc:
            raise StoreError(f"cannot publish artifact {manifest.ref.path} in {self.root}: {exc}") from exc
        finally:
            shutil.rmtree(complete, ignore_errors=True)
        if found is not None:
            logger.info("artifact %s was published by another run meanwhile: reusing it", manifest.ref.path)
            return found.model_copy(update={"reused": True})
        return StoredArtifact(manifest=manifest, local_dir=final, location=str(final))

    def _pointer_path(self, name: str) -> Path:
        return safe_join(self.root / "pointers", f"{check_pointer_name(name)}.json")

    def read_pointer(self, name: str) -> dict[str, Any] | None:
        path = self._pointer_path(name)
        try:
            data = json.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise StoreError(f"pointer {path} is unreadable ({exc}): restore it from "
                             f"{path.with_suffix('.history.jsonl').name} or delete it") from exc
        if not isinstance(data, dict):
            raise StoreError(f"pointer {path} is not a JSON object: restore it from its history or delete it")
        return data

    def write_pointer(self, name: str, value: dict[str, Any]) -> None:
        path = self._pointer_path(name)
        record = {**value, "updated_at": datetime.now(UTC).isoformat(timespec="seconds")}
        history = path.with_suffix(".history.jsonl")
        with disk_full_errors(history), open(history, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
        write_json_atomic(path, record)
