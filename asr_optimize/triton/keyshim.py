"""Keep the bundled tritonserver's restricted-API key away from other local users.

Triton 2.51 takes the key only as a command-line flag, and ``/proc/<pid>/cmdline`` is world-readable: any local
user could read it and load a python model, i.e. run code as the flow's user. ``/proc/<pid>/environ`` is readable
only by the process's owner (and root). So the command line carries a marked placeholder
(``@asr-optimize-keyshim@--http-restricted-api=...:x-asr-optimize-key=@ASR_OPTIMIZE_TRITON_KEY@``), the key
travels in ``$ASR_OPTIMIZE_TRITON_SERVER_KEY``, and a tiny LD_PRELOAD library (``keyshim.c``) swaps the real key
into tritonserver's argv before ``main`` without touching the memory /proc shows, then wipes and unsets the
variable (the python backend stubs do not get it). Fails closed: without the library tritonserver sees stray
arguments and exits; with the library but no key it exits before ``main``.

The library is compiled once per source version into ``<cache_root>/triton-keyshim-<hash>.so`` with the system C
compiler (``$CC``, else ``cc``/``gcc``/``clang``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from asr_optimize.errors import AsrOptimizeError

KEY_ENV = "ASR_OPTIMIZE_TRITON_SERVER_KEY"
MARKER = "@asr-optimize-keyshim@"
PLACEHOLDER = "@ASR_OPTIMIZE_TRITON_KEY@"
SOURCE = Path(__file__).with_name("keyshim.c")


class KeyShimError(AsrOptimizeError):
    """The key shim cannot be built (no C compiler, or the compiler failed)."""


def marked(flags: list[str]) -> list[str]:
    """Flags to put on the command line: each gets the marker the shim looks for."""
    return [MARKER + flag for flag in flags]


def _compiler() -> str | None:
    if cc := os.environ.get("CC", "").split():
        return shutil.which(cc[0])
    return next((path for name in ("cc", "gcc", "clang") if (path := shutil.which(name))), None)


def build(cache_root: Path | None = None) -> Path:
    """The compiled shim (built on first use, rebuilt when ``keyshim.c`` changes); mode 0755, written atomically."""
    if cache_root is None:
        from asr_optimize.settings import get_settings

        cache_root = get_settings().cache_root
    source = SOURCE.read_bytes()
    target = Path(cache_root) / f"triton-keyshim-{hashlib.sha256(source).hexdigest()[:16]}.so"
    if any(c in str(target) for c in " :"):
        raise KeyShimError(f"the tritonserver key shim's path {target} has a space or colon, which LD_PRELOAD cannot "
                           "carry: set ASR_OPTIMIZE_CACHE_ROOT to a plain path")
    if target.is_file():
        return target
    cc = _compiler()
    if cc is None:
        raise KeyShimError(
            "the bundled tritonserver needs a C compiler (apt-get install gcc) to keep its API key private: "
            f"it builds a small LD_PRELOAD library from {SOURCE} once into {target.parent}"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=target.name + ".", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        result = subprocess.run([cc, "-shared", "-fPIC", "-O2", "-o", tmp, str(SOURCE), "-ldl"],
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise KeyShimError(f"building the tritonserver key shim with {cc} failed: {result.stderr.strip()[-800:]}")
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def server_env(env: dict[str, str], key: str, shim: Path) -> dict[str, str]:
    """``env`` plus the key (for the shim only) and the shim first in LD_PRELOAD."""
    preload = " ".join(p for p in (str(shim), env.get("LD_PRELOAD", "")) if p)
    return {**env, KEY_ENV: key, "LD_PRELOAD": preload}
