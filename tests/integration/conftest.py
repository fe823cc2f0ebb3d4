"""Integration tests: real servers on loopback (Prefect, moto_server S3, the bundled tritonserver, an HF endpoint),
whole-flow runs, slow end-to-end work. Every test here is marked ``slow`` (``make test-fast`` leaves them out)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.s3_server import MotoServer, start_moto_server
from tests.support.servers import stop_process

INTEGRATION = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)  # before -m deselection, so `-m "not slow"` leaves these out
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.resolve().is_relative_to(INTEGRATION):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def moto_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """A real S3 endpoint for the session: moto_server on loopback with IAM auth on; each test makes its own bucket."""
    server = start_moto_server(tmp_path_factory.mktemp("moto"))
    try:
        yield server
    finally:
        stop_process(server.process, timeout=5)


@pytest.fixture()
def triton(tmp_path: Path):
    """A bundled tritonserver on a fresh, empty repository (``tmp_path / "triton-repo"``), stopped after the test."""
    from asr_optimize.triton.server import TritonServer

    with TritonServer(tmp_path / "triton-repo") as running:
        yield running
