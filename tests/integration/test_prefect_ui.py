"""A completed asr-optimize run, seen in the real Prefect UI through headless Chromium (Debian's ``chromium``).

The screenshots stay in pytest's tmp dir; set ``ASR_OPTIMIZE_KEEP_SCREENSHOTS=<folder>`` to keep copies.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.capabilities import chromium_path
from tests.support.servers import prefect_api, prefect_server

pytestmark = pytest.mark.requires("chromium")
CHROMIUM = chromium_path()
STAGE_TASKS = ["resolve-model", "profile", "export-onnx", "optimize-onnx", "tensorrt-engines", "fused-engines",
               "benchmark", "evaluate", "promote", "deploy-triton", "report"]
ARTIFACTS = ["asr-optimize-report", "asr-optimize-stages", "asr-optimize-benchmarks"]


@pytest.fixture(scope="module")
def completed_run(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[dict[str, str]]:
    """A real server, and one completed run of the whole flow on the tiny model."""
    work = tmp_path_factory.mktemp("ui-run")
    with prefect_server(work / "prefect-home") as server:
        result = subprocess.run(
            [str(Path(sys.executable).parent / "asr-optimize"), "run", "--model", str(tiny_model), "--store",
             str(work / "store"), "--reports", str(work / "reports"), "--device", "cpu", "--bench-cases", "1x1",
             "--iterations", "2"],
            env={**os.environ, **server}, capture_output=True, text=True, timeout=600,
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        runs = prefect_api(server, "/flow_runs/filter")
        assert len(runs) == 1 and runs[0]["state_type"] == "COMPLETED"
        yield {**server, "run_id": runs[0]["id"], "run_name": runs[0]["name"],
               "ui": server["PREFECT_API_URL"].removesuffix("/api")}


def chromium(args: list[str], url: str, profile: Path, budget_ms: int) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
         f"--user-data-dir={profile}", "--window-size=1400,1800", f"--virtual-time-budget={budget_ms}", *args, url],
        capture_output=True, text=True, timeout=120,
    )


def page_text(url: str, profile: Path, expect: list[str]) -> str:
    """The rendered page as text (scripts and tags stripped); waits longer once if something is missing."""
    text = ""
    for budget in (15000, 40000):
        dom = chromium(["--dump-dom"], url, profile, budget).stdout
        text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", re.sub(r"<(script|style)\b.*?</\1>", "", dom, flags=re.S)))
        if all(item in text for item in expect):
            break
    return text


def screenshot(url: str, profile: Path, out: Path) -> Path:
    chromium([f"--screenshot={out}"], url, profile, 15000)
    assert out.is_file() and out.stat().st_size > 20_000, f"no screenshot of {url}"
    if keep := os.environ.get("ASR_OPTIMIZE_KEEP_SCREENSHOTS"):
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(out, Path(keep) / out.name)
    return out


def test_run_page_shows_stage_tasks_and_report_artifacts(completed_run: dict[str, str], tmp_path: Path) -> None:
    run_id, name, ui = completed_run["run_id"], completed_run["run_name"], completed_run["ui"]
    profile = tmp_path / "chromium-profile"

    # the page the brief names: /runs/flow-run/<id> (the classic UI): run state, graph, and the stages' logs
    classic = f"{ui}/runs/flow-run/{run_id}"
    text = page_text(classic, profile, [name, "Completed", *STAGE_TASKS])
    assert name in text and "Completed" in text
    for task in STAGE_TASKS:
        assert re.search(rf"\b{re.escape(task)}-[0-9a-f]{{3}}\b", text), f"{task} not on {classic}"
    screenshot(classic, profile, tmp_path / "flow-run-graph-and-logs.png")

    # the default (v2) UI: the Task Runs tab lists every stage as Completed, the Artifacts tab the report
    tasks_url = f"{ui}/v2/runs/flow-run/{run_id}?tab=TaskRuns"
    text = page_text(tasks_url, profile, STAGE_TASKS)
    for task in STAGE_TASKS:
        assert re.search(rf"\b{re.escape(task)}-[0-9a-f]{{3}}\b", text), f"{task} not in the Task Runs tab"
    counts = re.search(r"(\d+) Task runs \((\d+) Completed\)", text)
    assert counts and counts[1] == counts[2] and int(counts[1]) >= len(STAGE_TASKS), counts
    screenshot(tasks_url, profile, tmp_path / "flow-run-task-runs.png")

    artifacts_url = f"{ui}/v2/runs/flow-run/{run_id}?tab=Artifacts"
    text = page_text(artifacts_url, profile, ARTIFACTS)
    for key in ARTIFACTS:
        assert key in text, f"artifact {key} not on {artifacts_url}"
    assert "MARKDOWN asr-optimize-report" in text and "TABLE asr-optimize-benchmarks" in text
    screenshot(artifacts_url, profile, tmp_path / "flow-run-artifacts.png")
