"""The per-run key that unlocks Triton's restricted APIs (model repository/control, shared memory, trace, logging).

Why: in explicit model-control mode anyone who can reach the server could ``POST /v2/repository/models/x/load``
a python model and run code as the server's user. The bundled server is started with
``--http-restricted-api`` / ``--grpc-restricted-protocol`` for those APIs and a fresh random key; every client
in this package (hot-swap, health, the load generator, the soak) sends it. Inference, health, metadata, model
config (read-only) and statistics stay open so ordinary clients and the Triton runner keep working.

Keys travel with the endpoint (``asr_optimize.triton.endpoint``): a server started in this process registers its
key; for a server started elsewhere set ``ASR_OPTIMIZE_TRITON_API_KEY`` (a child process, e.g. a subprocess running
a swap, inherits it from ``TritonServer.client_env()``).
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

KEY_ENV = "ASR_OPTIMIZE_TRITON_API_KEY"
HEADER = "x-asr-optimize-key"
GRPC_HEADER = f"triton-grpc-protocol-{HEADER}"
"""Triton's gRPC frontend expects restricted-protocol metadata under this prefixed name."""
RESTRICTED = ("model-repository", "shared-memory", "trace", "logging")
"""Write-capable or file-touching APIs: load/unload (with config or file overrides), repository index, shared-memory
regions (map host memory), trace and log settings (write files)."""

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
