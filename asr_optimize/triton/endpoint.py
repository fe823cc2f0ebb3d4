"""Triton addresses as users type them, checked once: ``host:port``, ``http://host:port`` or ``grpc://host:port``.

Why: tritonclient's HTTP client wants ``host:port`` without a scheme and its gRPC client the same for another port; a
URL of the wrong kind or a port out of range used to surface as a resolver error deep inside a run. Every command
that takes an address parses it here and gets one clear message instead.
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from asr_optimize.errors import AsrOptimizeError

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
