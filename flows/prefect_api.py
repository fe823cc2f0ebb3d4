"""The Prefect API a command-line run talks to: ``PREFECT_API_URL`` when set, else a temporary local server that
cannot outlive the command.

Prefect's own temporary server stops at interpreter exit only; a SIGKILLed or crashed CLI would leave it running
(about 220 MB, holding its database). Here it is started explicitly, watched by ``asr_optimize.watchdog``, and
stopped when the command ends however it ends.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

from asr_optimize.watchdog import Watchdog

SERVER_MARKER = "prefect.server.api.server:create_app"
"""In the temporary server's command line (``uvicorn --factory prefect.server.api.server:create_app``)."""


def _drain_to_api() -> None:
    """Send the logs and events still queued for the API before the temporary server stops (else Prefect reports
    "Error logging to API" at exit)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        with suppress(Exception):  # best effort: the run's result is already decided
            worker.drain_all(timeout=10)


@contextmanager
def prefect_api() -> Iterator[str | None]:
    """Yield the API URL in use: the configured one, or a temporary server's for the duration of the block."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if PREFECT_API_URL.value():
        yield PREFECT_API_URL.value()
        return
    from prefect.server.api.server import SubprocessASGIServer

    watchdogs: list[Watchdog] = []

    class WatchedServer(SubprocessASGIServer):
        def _run_uvicorn_command(self) -> Any:  # each server process is watched from the moment it exists
            process = super()._run_uvicorn_command()
            watchdogs.append(Watchdog(process.pid, SERVER_MARKER, grace_s=5.0))
            return process

    server = WatchedServer()
    try:
        server.start()
    except BaseException:
        server.stop()
        for watchdog in watchdogs:
            watchdog.close()
        raise
    previous = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = server.api_url  # for child processes (Dask workers, subprocess stages)
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            yield server.api_url
    finally:
        _drain_to_api()
        if previous is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = previous
        server.stop()
        for watchdog in watchdogs:
            watchdog.close()
