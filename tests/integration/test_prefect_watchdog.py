"""The temporary Prefect API a command-line run starts does not outlive the run, even when the run is SIGKILLed
(``flows.prefect_api``, ``asr_optimize.watchdog``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from flows.prefect_api import SERVER_MARKER

REPO_ROOT = Path(__file__).resolve().parents[2]


def children_running(parent: int, marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent and marker.encode() in cmdline:
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        return b"create_app" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def test_sigkilled_run_leaves_no_prefect_server(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    cli = subprocess.Popen([sys.executable, "-m", "flows.cli", "run", "--device", "cpu", "--store",
                            str(tmp_path / "store"), "--reports", str(tmp_path / "reports")],
                           cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        servers: list[int] = []
        while not servers and time.monotonic() < deadline and cli.poll() is None:
            servers = children_running(cli.pid, SERVER_MARKER)
            time.sleep(0.2)
        assert servers, "the run never started a temporary Prefect server"
        os.kill(cli.pid, signal.SIGKILL)
        cli.wait(timeout=30)
        deadline = time.monotonic() + 30
        while alive(servers[0]) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not alive(servers[0]), "the temporary Prefect server outlived the SIGKILLed run"
    finally:
        if cli.poll() is None:
            cli.kill()
        for pid in children_running(1, SERVER_MARKER):
            if str(tmp_path) in Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace"):
                os.kill(pid, signal.SIGKILL)
