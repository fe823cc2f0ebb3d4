"""A helper process that stops a server we started when we die, however we die.

A SIGKILLed or crashed flow runs no ``finally`` and no ``atexit``; the servers it started (the bundled tritonserver,
the temporary Prefect API) would live on, holding memory, ports and databases. The watchdog is a tiny separate
Python process in its own session that blocks reading a pipe from us: the read returns at EOF, which the kernel
delivers when we close the pipe or when we die. It then stops the watched process (SIGTERM, then SIGKILL after a
grace period), only if that pid still runs the expected program (a reused pid is left alone), and removes a work
folder if given.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys

_SCRIPT = r"""
import os, shutil, signal, sys, time
pid, group, marker = int(sys.argv[1]), sys.argv[2] == "1", sys.argv[3].encode()
work_dir, grace_s = sys.argv[4], float(sys.argv[5])
signal.signal(signal.SIGINT, signal.SIG_IGN)
try:
    sys.stdin.buffer.read()  # EOF: the owner closed the pipe or died
except BaseException:
    pass
def alive():
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return marker in fh.read()
    except OSError:
        return False
def kill(sig):
    try:
        os.killpg(pid, sig) if group else os.kill(pid, sig)
    except OSError:
        pass
if alive():
    kill(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    if group or alive():  # a group: also what outlived its leader (python backend stubs)
        kill(signal.SIGKILL)
if work_dir:
    shutil.rmtree(work_dir, ignore_errors=True)
"""


class Watchdog:
    """Stops process ``pid`` (its whole process group when ``group``: the pid must lead it) once this process
    closes the watchdog or dies. ``marker`` must appear in the process's command line for it to be stopped."""

    def __init__(self, pid: int, marker: str, *, group: bool = False, work_dir: str = "", grace_s: float = 15.0):
        self.process: subprocess.Popen[bytes] | None = subprocess.Popen(
            [sys.executable, "-I", "-c", _SCRIPT, str(pid), "1" if group else "0", marker, work_dir, str(grace_s)],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )

    def close(self) -> None:
        """Let the watchdog do its work now (the watched process is usually stopped already) and wait for it."""
        if self.process is None:
            return
        with contextlib.suppress(OSError):
            assert self.process.stdin is not None
            self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
        self.process = None
