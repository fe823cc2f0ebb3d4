"""The per-run key that unlocks Triton's restricted APIs (model repository/control, shared memory, trace, logging).

Why: in explicit model-control mode anyone who can reach the server could ``POST /v2/repository/models/x/load``
a python model and run code as the server's user. The bundled server is started with
``--http-restricted-api`` / ``--grpc-restricted-protocol`` for those APIs and a fresh random key; every client
in this package (hot-swap, health, the load generator, the soak) sends it. Inference, health, metadata, model
config (read-only) and statistics stay open so ordinary clients and the Triton runner keep working.

Keys are found by URL: a server started in this process registers its key under its HTTP and gRPC addresses;
for a server started elsewhere set ``ASR_OPTIMIZE_TRITON_API_KEY`` (a child process, e.g. a subprocess running a
swap, inherits it from ``TritonServer.client_env()``).
"""

from __future__ import annotations

import functools
import inspect
import os
import threading
from typing import Any

KEY_ENV = "ASR_OPTIMIZE_TRITON_API_KEY"
HEADER = "x-asr-optimize-key"
GRPC_HEADER = f"triton-grpc-protocol-{HEADER}"
"""Triton's gRPC frontend expects restricted-protocol metadata under this prefixed name."""
RESTRICTED = ("model-repository", "shared-memory", "trace", "logging")
"""Write-capable or file-touching APIs: load/unload (with config or file overrides), repository index, shared-memory
regions (map host memory), trace and log settings (write files)."""

_lock = threading.Lock()
_keys: dict[str, str] = {}


def _norm(url: str) -> str:
    return url.removeprefix("http://").removeprefix("https://").removeprefix("grpc://").rstrip("/")


def register(url: str, key: str) -> None:
    with _lock:
        _keys[_norm(url)] = key


def unregister(url: str) -> None:
    with _lock:
        _keys.pop(_norm(url), None)


def key_for(url: str) -> str | None:
    """The key for the server at ``url``: one this process started, else ``$ASR_OPTIMIZE_TRITON_API_KEY``."""
    with _lock:
        key = _keys.get(_norm(url))
    return key or os.environ.get(KEY_ENV) or None


def http_headers(url: str) -> dict[str, str]:
    key = key_for(url)
    return {HEADER: key} if key else {}


def grpc_headers(url: str) -> dict[str, str]:
    key = key_for(url)
    return {GRPC_HEADER: key} if key else {}


def server_flags(key: str) -> list[str]:
    """tritonserver flags restricting ``RESTRICTED`` to requests that carry ``key`` (Triton 2.51 syntax).

    Command lines are world-readable: the bundled server gets these with ``keyshim.PLACEHOLDER`` as ``key``, and
    ``keyshim`` puts the real key in before tritonserver's ``main``."""
    apis = ",".join(RESTRICTED)
    return [f"--http-restricted-api={apis}:{HEADER}={key}", f"--grpc-restricted-protocol={apis}:{HEADER}={key}"]


class KeyedClient:
    """A tritonclient client (HTTP or gRPC, sync or aio) whose every call carries the restricted-API key."""

    def __init__(self, client: Any, headers: dict[str, str]) -> None:
        self._client = client
        self._headers = headers

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not self._headers or not callable(attr):
            return attr
        try:
            takes_headers = "headers" in inspect.signature(attr).parameters
        except (TypeError, ValueError):
            takes_headers = False
        if not takes_headers:
            return attr

        @functools.wraps(attr)
        def call(*args: Any, headers: dict[str, str] | None = None, **kwargs: Any) -> Any:
            return attr(*args, headers={**self._headers, **(headers or {})}, **kwargs)

        return call
