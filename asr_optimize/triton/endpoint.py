"""One Triton endpoint: its addresses as users type them, its restricted-API key, and the clients that talk to it.

Addresses are checked once (``host:port``, ``http://host:port`` or ``grpc://host:port``): tritonclient's HTTP and
gRPC clients want ``host:port`` without a scheme, and a URL of the wrong kind or a port out of range would otherwise
surface as a resolver error deep inside a run. A server this process started (``TritonServer``) registers its
endpoint, so a URL of it resolves to both addresses and the key; any other server gets the key from
``ASR_OPTIMIZE_TRITON_API_KEY``. Every client in the package comes from ``http_client`` or ``grpc_client`` here.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel

from asr_optimize.errors import AsrOptimizeError
from asr_optimize.triton import auth

Protocol = Literal["http", "grpc"]
SCHEMES: dict[Protocol, tuple[str, ...]] = {"http": ("http", "https"), "grpc": ("grpc",)}
DEFAULT_PORTS: dict[Protocol, int] = {"http": 8000, "grpc": 8001}


class EndpointError(AsrOptimizeError):
    """An address that cannot name a Triton endpoint of the expected protocol."""


def parse_address(text: str, protocol: Protocol) -> str:
    """``host:port`` for tritonclient's ``protocol`` client; refuses the other protocol's scheme and bad ports."""
    raw = text.strip()
    if not raw:
        raise EndpointError(f"empty Triton {protocol} address")
    parts = urlsplit(raw if "://" in raw else f"//{raw}")
    scheme = parts.scheme
    if scheme and scheme not in SCHEMES[protocol]:
        other = "gRPC (host:port, default port 8001)" if protocol == "grpc" else "HTTP (http://host:port, default 8000)"
        raise EndpointError(f"{raw!r} is a {scheme}:// address, but this needs Triton's {other}")
    if parts.path.strip("/") or parts.query or parts.fragment:
        raise EndpointError(f"{raw!r}: a Triton address is host:port, without a path")
    host = parts.hostname
    if not host:
        raise EndpointError(f"{raw!r}: no host name")
    try:
        port = parts.port
    except ValueError:
        raise EndpointError(f"{raw!r}: the port must be a number from 1 to 65535") from None
    if port is None:
        port = DEFAULT_PORTS[protocol]
    if not 1 <= port <= 65535:  # urlsplit accepts 0
        raise EndpointError(f"{raw!r}: the port must be a number from 1 to 65535")
    host = f"[{host}]" if ":" in host else host
    return f"{host}:{port}"


class TritonEndpoint(BaseModel, frozen=True):
    """A Triton server's HTTP and gRPC addresses (``host:port``) and the key for its restricted APIs."""

    http: str | None = None
    grpc: str | None = None
    api_key: str | None = None

    def http_headers(self) -> dict[str, str]:
        return {auth.HEADER: self.api_key} if self.api_key else {}

    def grpc_headers(self) -> dict[str, str]:
        return {auth.GRPC_HEADER: self.api_key} if self.api_key else {}


_lock = threading.Lock()
_started: list[TritonEndpoint] = []
"""Servers started by this process (``TritonServer`` registers and unregisters them)."""


def register(endpoint: TritonEndpoint) -> None:
    with _lock:
        _started.append(endpoint)


def unregister(endpoint: TritonEndpoint) -> None:
    with _lock:
        if endpoint in _started:
            _started.remove(endpoint)


def resolve(url: str, protocol: Protocol = "http") -> TritonEndpoint:
    """The endpoint ``url`` names: a server this process started (both addresses, its key), else ``url`` alone with
    the key from ``ASR_OPTIMIZE_TRITON_API_KEY``. A started server's HTTP address also resolves for gRPC."""
    address = parse_address(url, protocol)
    with _lock:
        for endpoint in _started:
            if address in (endpoint.http, endpoint.grpc):
                return endpoint
    key = os.environ.get(auth.KEY_ENV) or None
    return TritonEndpoint(**{protocol: address}, api_key=key)


def http_client(url: str, timeout_s: float = 60.0) -> Any:
    """A ``tritonclient.http`` client for ``url`` whose every call carries the endpoint's key."""
    import tritonclient.http as httpclient

    endpoint = resolve(url, "http")
    client = httpclient.InferenceServerClient(endpoint.http or parse_address(url, "http"),
                                              connection_timeout=timeout_s, network_timeout=timeout_s)
    return auth.KeyedClient(client, endpoint.http_headers())


def grpc_address(url: str) -> str:
    """The gRPC ``host:port`` for ``url``: a started server's gRPC port when ``url`` is its HTTP address."""
    endpoint = resolve(url, "grpc")
    return endpoint.grpc or parse_address(url, "grpc")


def grpc_client(url: str) -> Any:
    """A ``tritonclient.grpc.aio`` client for ``url`` (asyncio) whose every call carries the endpoint's key."""
    import tritonclient.grpc.aio as grpcclient

    endpoint = resolve(url, "grpc")
    return auth.KeyedClient(grpcclient.InferenceServerClient(grpc_address(url)), endpoint.grpc_headers())
