"""Triton model and pipeline names: one validated type, and the only way to turn a name into a repository path.

Why: a name is a folder of the model repository, and the swap writes, rewrites and deletes folders by name. With
``pipeline_name: ".."`` a swap wrote the pipeline next to the repository and a failed first deployment emptied the
repository's parent; an empty name deleted the whole repository. Every options model, block and function that
takes a model name uses ``TritonModelName`` (or ``check_model_name``), and every repository path built from a name
or a version goes through ``repo_path`` (``safe_join`` for each part: no ``..``, no absolute paths, no symlink out).

Rules (Triton's, narrowed to what is safe as a folder and in a URL): 1-128 characters, letters, digits, ``_``,
``.``, ``-``, starting with a letter or a digit (so never empty, never ``.``/``..``, never hidden, never a ``/``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator

from asr_optimize.errors import UnsafePathError
from asr_optimize.fileio import safe_join

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
RULE = "1-128 letters, digits, '_', '.' or '-', starting with a letter or digit"


class InvalidModelName(UnsafePathError, ValueError):
    """A Triton model or pipeline name that is not a plain folder name (``..``, empty, ``a/b``, ...).

    Also a ``ValueError``, so pydantic reports it as a validation error of the field that holds the name."""


def _reason(name: object) -> str | None:
    if not isinstance(name, str):
        return f"is a {type(name).__name__}, not a string"
    if name == "":
        return "is empty"
    if name in (".", ".."):
        return "is '.' or '..' (the repository itself or its parent)"
    if "/" in name or "\\" in name:
        return "contains a path separator"
    if len(name) > 128:
        return "is longer than 128 characters"
    if not NAME_PATTERN.fullmatch(name):
        return "has a character outside [A-Za-z0-9_.-] or does not start with a letter or digit"
    return None


def check_model_name(name: str, what: str = "Triton model name") -> str:
    """``name`` if it is a safe Triton model/pipeline name, else ``InvalidModelName`` saying why."""
    if reason := _reason(name):
        raise InvalidModelName(f"invalid {what} {name!r}: it {reason}; a name is a folder of the model repository "
                               f"and must be {RULE}")
    return name


TritonModelName = Annotated[str, AfterValidator(check_model_name)]
"""A model or pipeline name of a Triton repository (see ``check_model_name``)."""


def repo_path(root: Path, name: str, *parts: str | int) -> Path:
    """``root/name/part/...`` for a checked name; each part (a version, a file name) is joined with ``safe_join``."""
    path = safe_join(Path(root), check_model_name(name))
    for part in parts:
        if isinstance(part, int) and (isinstance(part, bool) or part < 0):
            raise UnsafePathError(f"invalid version {part!r} of {name}: versions are positive integers")
        path = safe_join(path, str(part))
    return path
