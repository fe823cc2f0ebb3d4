"""File helpers every module shares: confined paths, atomic writes, pointer names, disk-full errors.

Why one module: each of these is a security or durability rule (a key from a bucket never escapes its cache, a
reader never sees half a file, files respect the umask so a team can share a store). Written once, checked once.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

from asr_optimize.errors import NoSpaceError, StoreError, UnsafePathError

POINTER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}


def safe_join(root: Path, relative: str) -> Path:
    """``root / relative``, refusing anything that could land outside ``root``.

    Refused: empty names or segments (``a//b``, a trailing ``/``), ``.`` and ``..`` segments, absolute paths,
    backslashes (a Windows separator elsewhere), NUL bytes, and paths whose existing parts are symlinks leading out
    of ``root``. Raises ``UnsafePathError`` naming the offending value.
    """
    rel = str(relative)
    reason = None
    if not rel:
        reason = "is empty"
    elif "\x00" in rel:
        reason = "contains a NUL byte"
    elif "\\" in rel:
        reason = "contains a backslash"
    elif rel.startswith("/") or Path(rel).is_absolute():
        reason = "is absolute"
    else:
        parts = rel.split("/")
        if any(p == "" for p in parts):
            reason = "has an empty path segment"
        elif any(p in (".", "..") for p in parts):
            reason = "has a '.' or '..' segment"
    if reason:
        raise UnsafePathError(f"unsafe name {rel!r} {reason}: it could write outside {root}")
    target = Path(root).joinpath(*rel.split("/"))
    if not target.resolve().is_relative_to(Path(root).resolve()):
        raise UnsafePathError(f"unsafe name {rel!r}: a symlink leads outside {root}")
    return target


def slugify(text: str, sep: str = "-") -> str:
    """``text`` as one safe path segment / S3 key part: runs of other characters become ``sep``, never ``.``/``..``."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", sep, text.strip("/"))
    return slug.lstrip(".-").rstrip("-") or "x"


def check_pointer_name(name: str) -> str:
    """A pointer name is one plain file name (letters, digits, ``._-``; not starting with a dot)."""
    if not isinstance(name, str) or not POINTER_NAME.fullmatch(name):
        raise StoreError(f"invalid pointer name {name!r}: use letters, digits, '.', '_' and '-'")
    return name


@contextlib.contextmanager
def disk_full_errors(what: Path | str) -> Iterator[None]:
    """Turn ENOSPC / EDQUOT into a ``NoSpaceError`` that names the folder and the file being written."""
    try:
        yield
    except OSError as exc:
        if exc.errno in _DISK_FULL and not isinstance(exc, StoreError):
            where = Path(exc.filename) if exc.filename else Path(what)
            raise NoSpaceError(
                f"no space left on the disk holding {where.parent} while writing {what} "
                f"({os.strerror(exc.errno)}): free space or point the store/cache elsewhere"
            ) from exc
        raise


def disk_full_cause(exc: BaseException) -> BaseException | None:
    """The disk-full error behind ``exc``: itself or an exception in its cause/context chain that is an ENOSPC/EDQUOT
    ``OSError`` or (libraries that wrap it, e.g. in a RuntimeError) says so in its message; None otherwise."""
    seen: BaseException | None = exc
    for _ in range(20):
        if seen is None:
            return None
        if isinstance(seen, OSError) and seen.errno in _DISK_FULL:
            return seen
        if any(text in str(seen) for text in ("No space left on device", "Disk quota exceeded")):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _create_file(path: Path) -> int:
    """A new file with mode 0666 & ~umask (mkstemp would force 0600 and hide shared store files)."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)


def fsync_dir(folder: Path) -> None:
    """Persist a rename in ``folder`` (best effort: some filesystems refuse to open folders)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a temp file beside ``path``, fsync, then rename over ``path``.

    Readers see the old content or the new, never half; the file respects the umask; a full disk raises
    ``NoSpaceError`` and leaves ``path`` untouched.
    """
    path = Path(path)
    with disk_full_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
        fd = _create_file(tmp)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str, encoding: str = "utf-8") -> None:
    """``atomic_write_bytes`` for text."""
    atomic_write_bytes(path, text.encode(encoding))


def umask() -> int:
    """The process umask (read without changing it where the OS allows)."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    current = os.umask(0o022)
    os.umask(current)
    return current


def new_dir(parent: Path, prefix: str) -> Path:
    """A fresh, uniquely named folder under ``parent`` with umask-respecting permissions."""
    parent.mkdir(parents=True, exist_ok=True)
    while True:
        folder = parent / f"{prefix}{uuid.uuid4().hex[:16]}"
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue
