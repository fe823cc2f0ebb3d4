"""Content hashes: every artifact is addressed by what went into it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    """sha256 of a file's bytes, streamed so large weights never sit in memory twice."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_tree(root: Path) -> str:
    """One hash for a folder: relative paths and file contents, in sorted order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(sha256_file(path).encode())
    return digest.hexdigest()


def stable_hash(obj: Any, length: int = 16) -> str:
    """A short, stable hash of JSON-serializable parameters (sorted keys)."""
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def hash_waves(waves: list[np.ndarray]) -> str:
    """A short hash of audio samples, so parity/eval audio is part of a stage's cache key."""
    digest = hashlib.sha256()
    for wave in waves:
        digest.update(np.ascontiguousarray(wave, dtype=np.float32).tobytes())
    return digest.hexdigest()[:16]
