"""A run that cannot deploy still reports, exits non-zero and leaves production alone; bad paths fail before work."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

CLI = str(Path(sys.executable).parent / "asr-optimize")


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, "run", "--device", "cpu", *args], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"})


def test_unwritable_reports_folder_fails_before_any_stage(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    start = time.monotonic()
    result = _run("--reports", str(blocker / "reports"), "--store", str(tmp_path / "store"))
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert "is not writable" in result.stdout + result.stderr
    assert not (tmp_path / "store").exists()  # nothing was built
    assert time.monotonic() - start < 120


def test_unreachable_triton_fails_the_run_after_the_report(tiny_model: Path, tmp_path: Path) -> None:
    store, reports = tmp_path / "store", tmp_path / "reports"
    result = _run("--model", str(tiny_model), "--store", str(store), "--reports", str(reports), "--bench-cases", "1x1",
                  "--iterations", "2", "--triton-url", "http://127.0.0.1:9", "--triton-repository",
                  str(tmp_path / "repo"))
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]
    assert "deploy-triton" in output and "report in" in output
    (report_dir,) = list(reports.iterdir())
    stages = dict(line.split(",")[:2] for line in (report_dir / "stages.csv").read_text().splitlines()[1:])
    assert stages["deploy-triton"] == "failed" and stages["report"] == "ok" and stages["evaluate"] == "ok"
    assert not list(store.glob("pointers/*production*"))  # production did not move to an undeployed artifact
