"""The whole flow against a real Prefect server on loopback: every stage runs, a rerun reuses the cache."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.servers import prefect_api, prefect_server

CLI = str(Path(sys.executable).parent / "asr-optimize")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    with prefect_server(tmp_path_factory.mktemp("prefect-home")) as env:
        yield env


def _run_flow(env: dict[str, str], model: Path, store: Path, reports: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CLI, "run", "--model", str(model), "--store", str(store), "--reports", str(reports), "--device", "cpu",
         "--bench-cases", "1x1,2x2", "--iterations", "3"],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=600,
    )


def test_flow_runs_end_to_end_and_reuses_cache(server: dict[str, str], tiny_model: Path, tmp_path: Path) -> None:
    store, reports = tmp_path / "store", tmp_path / "reports"
    earlier = {r["id"] for r in prefect_api(server, "/flow_runs/filter", {})}  # other tests' runs on this server
    first = _run_flow(server, tiny_model, store, reports)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]

    runs = [r for r in prefect_api(server, "/flow_runs/filter", {"sort": "START_TIME_DESC"}) if r["id"] not in earlier]
    assert len(runs) == 1 and runs[0]["state_type"] == "COMPLETED"
    tasks = prefect_api(server, "/task_runs/filter", {"flow_runs": {"id": {"any_": [runs[0]["id"]]}}})
    names = {t["name"].rsplit("-", 1)[0] for t in tasks}
    assert {"resolve-model", "profile", "export-onnx", "optimize-onnx", "tensorrt-engines", "fused-engines",
            "benchmark", "load-eval-set", "evaluate", "promote", "deploy-triton", "report"} <= names
    assert all(t["state_type"] == "COMPLETED" for t in tasks)
    artifacts = {a["key"] for a in prefect_api(server, "/artifacts/filter",
                                        {"artifacts": {"flow_run_id": {"any_": [runs[0]["id"]]}}})}
    assert {"asr-optimize-report", "asr-optimize-benchmarks", "asr-optimize-stages"} <= artifacts

    report_dirs = list(reports.iterdir())
    assert len(report_dirs) == 1
    report = (report_dirs[0] / "report.md").read_text()
    assert "tensorrt | skipped | tensorrt not importable" in report
    for name in ("benchmarks.csv", "stages.csv", "profile_operators.csv", "benchmark_latency.png",
                 "benchmark_speedup.html"):
        assert (report_dirs[0] / name).is_file(), name
    stages = (report_dirs[0] / "stages.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in stages[1:]] == [
        "profile", "export", "optimize", "tensorrt", "fused-engine", "benchmark", "evaluate", "promote",
        "deploy-triton", "report"]
    manifests = list(store.glob("artifacts/**/manifest.json"))
    assert {m.parent.parent.name for m in manifests} == {"profile", "export", "optimize"}

    second = _run_flow(server, tiny_model, store, reports)
    assert second.returncode == 0, second.stderr[-3000:]
    log = second.stdout + second.stderr
    for stage in ("profile", "export", "optimize"):
        assert f"{stage}: reusing cached artifact" in log
    assert "built in" not in log


def test_bad_model_fails_clearly_and_writes_nothing(server: dict[str, str], tmp_path: Path) -> None:
    store = tmp_path / "store"
    result = _run_flow(server, tmp_path / "no-such-model", store, tmp_path / "reports")
    assert result.returncode != 0
    assert "no such folder" in result.stdout + result.stderr
    assert not list(store.glob("artifacts/**/manifest.json"))
