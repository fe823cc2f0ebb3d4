"""Start real servers on loopback for tests: a Prefect API server with its own PREFECT_HOME (SQLite)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

VENV_BIN = Path(sys.executable).parent

# The codes Prefect's own client retries: the server answers 503 when its database is busy (SQLite locked on a
# loaded host), which says "try again", not "your request is wrong".
RETRYABLE_STATUS = {429, 502, 503}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_process(proc: subprocess.Popen, timeout: float = 20) -> None:
    """Terminate a server process, and kill it if it does not exit within ``timeout`` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    """Poll ``url`` until it answers 200, the process dies, or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"server exited with {proc.returncode} before answering {url}:\n{tail}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


@contextmanager
def prefect_server(home: Path) -> Iterator[dict[str, str]]:
    """A real ``prefect server start`` on 127.0.0.1; yields the env a client process needs."""
    port = free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_API_URL": "",
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(port),
    }
    log = home / "server.log"
    home.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [str(VENV_BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    api = f"http://127.0.0.1:{port}/api"
    try:
        wait_http(f"{api}/health", timeout=120, proc=proc, log=log)
        yield {"PREFECT_API_URL": api, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    finally:
        stop_process(proc)


def prefect_api(server: dict[str, str], path: str, body: dict | None = None, method: str = "POST") -> Any:
    """Call the Prefect REST API the way Prefect's client does: retry the codes the server marks as retryable, a few
    times with backoff; any other error fails the test at once."""
    for attempt in range(6):
        response = httpx.request(method, server["PREFECT_API_URL"] + path,
                                 json=body if method != "GET" else None, timeout=30)
        if response.status_code not in RETRYABLE_STATUS or attempt == 5:
            break
        time.sleep(0.5 * 2 ** attempt)
    response.raise_for_status()
    return response.json()
