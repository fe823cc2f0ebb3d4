"""``asr-optimize fleet`` against a real Prefect server: two work queues, each with a real ``prefect worker start``
process, three models (one broken on purpose) x two GPU types, then a rerun with the same fleet key.

The child deployment is ``tests/support/fleet_child.py`` (a stand-in for asr-optimize/prod, see its docstring: six
whole asr-optimize runs take far too long on a 2-core host); the fleet flow, its CLI and the report are the
product's.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.assets import DEMO_MODEL, REPO_ROOT
from tests.support.servers import VENV_BIN, prefect_api, prefect_server, stop_process

CHILD = "asr-optimize-fleet-child/stand-in"
QUEUES = {"gpu-a-sm90": "gpu-a", "gpu-b-sm80": "gpu-b"}


def env_for(server: dict[str, str]) -> dict[str, str]:
    return {**os.environ, **server, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", "COLUMNS": "400"}




def cli(server: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from flows.cli import main; main()", *args], cwd=cwd,
                          env=env_for(server), capture_output=True, text=True, timeout=200)


@pytest.fixture(scope="module")
def fleet_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A real server with gpu-pool (process), its queues gpu-a and gpu-b, each served by a real process worker, and
    the stand-in child deployed with `prefect deploy` from a prefect.yaml like the project's."""
    home = tmp_path_factory.mktemp("fleet-prefect")
    with prefect_server(home) as server:
        env = env_for(server)
        prefect_api(server, "/work_pools/", {"name": "gpu-pool", "type": "process"})
        for queue in QUEUES.values():
            prefect_api(server, "/work_pools/gpu-pool/queues", {"name": queue})
        project = {
            "name": "fleet-test", "prefect-version": "3.9.1",
            "pull": [{"prefect.deployments.steps.set_working_directory": {"directory": str(REPO_ROOT)}}],
            "deployments": [{"name": "stand-in", "entrypoint": "tests.support.fleet_child:fleet_child_flow",
                             "work_pool": {"name": "gpu-pool", "work_queue_name": "default"}}],
        }
        (home / "prefect.yaml").write_text(yaml.safe_dump(project))
        deploy = subprocess.run([str(VENV_BIN / "prefect"), "--no-prompt", "deploy", "--prefect-file",
                                 str(home / "prefect.yaml"), "--name", "stand-in"], cwd=REPO_ROOT, env=env,
                                capture_output=True, text=True, timeout=120)
        assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]
        workers = []
        for queue in QUEUES.values():
            with open(home / f"worker-{queue}.log", "w") as out:
                workers.append(subprocess.Popen(
                    [str(VENV_BIN / "prefect"), "worker", "start", "--pool", "gpu-pool", "--work-queue", queue,
                     "--type", "process", "--name", f"worker-{queue}"],
                    cwd=home, env={**env, "PREFECT_WORKER_QUERY_SECONDS": "2"}, stdout=out, stderr=subprocess.STDOUT,
                    start_new_session=True))
        try:
            yield {**server, "home": str(home)}
        finally:
            for worker in workers:
                stop_process(worker, timeout=30)


def child_runs(server: dict[str, str]) -> list[dict[str, Any]]:
    [deployment] = prefect_api(server, "/deployments/filter", {"deployments": {"name": {"any_": ["stand-in"]}}})
    return prefect_api(server, "/flow_runs/filter", {"deployments": {"id": {"any_": [deployment["id"]]}}})


def read_report(reports: Path) -> tuple[str, list[dict[str, str]]]:
    [folder] = [p for p in reports.iterdir() if (p / "fleet.csv").is_file()]
    return (folder / "fleet.md").read_text(), list(csv.DictReader((folder / "fleet.csv").open()))


def test_a_fleet_runs_every_model_on_every_gpu_queue_and_a_rerun_reuses_completed_children(
    fleet_server: dict[str, str], tiny_model: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken-model"  # a model folder the pipeline refuses: not a CTC model
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"architectures": ["BertModel"], "model_type": "bert"}))
    fleet_file = tmp_path / "fleet.yaml"
    fleet_file.write_text(yaml.safe_dump({
        "deployment": CHILD, "max_parallel": 4,
        "parameters": {"options": {"triton": {"enabled": False}}},
        "models": [{"model": str(tiny_model), "name": "tiny-hi", "language": "hi"},
                   {"model": str(DEMO_MODEL), "name": "demo-hi", "language": "hi"},
                   {"model": str(broken), "name": "broken-ta", "language": "ta"}],
        "gpu_types": [{"name": "gpu-a-sm90", "work_queue": "gpu-a"},
                      {"name": "gpu-b-sm80", "work_queue": "gpu-b", "job_variables": {"env": {"FLEET_TEST_GPU": "b"}}}],
    }))
    reports = tmp_path / "reports"
    started = time.monotonic()
    first = cli(fleet_server, tmp_path, "fleet", str(fleet_file), "--key", "k1", "--timeout-s", "150",
                "--poll-s", "2", "--reports", str(reports))
    output = " ".join((first.stdout + first.stderr).split())
    first_s = time.monotonic() - started
    assert first.returncode == 1, output[-4000:]  # the fleet ran, and some children did not complete
    assert "broken-ta on gpu-a-sm90: failed" in output and "broken-ta on gpu-b-sm80: failed" in output
    assert "Traceback" not in first.stdout

    runs = child_runs(fleet_server)
    assert len(runs) == 6
    by_model: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        by_model.setdefault(Path(run["parameters"]["model"]).name, []).append(run)
    for name, model_runs in by_model.items():
        assert sorted(r["work_queue_name"] for r in model_runs) == ["gpu-a", "gpu-b"], name
        states = {r["state_type"] for r in model_runs}
        assert states == ({"FAILED"} if name == "broken-model" else {"COMPLETED"}), (name, states)
        for run in model_runs:
            assert run["parameters"]["options"] == {"triton": {"enabled": False}}
            expected = {"env": {"FLEET_TEST_GPU": "b"}} if run["work_queue_name"] == "gpu-b" else {}
            assert (run["job_variables"] or {}) == expected

    markdown, rows = read_report(reports)
    assert [(r["model"], r["gpu_type"], r["outcome"]) for r in rows] == [
        ("tiny-hi", "gpu-a-sm90", "completed"), ("tiny-hi", "gpu-b-sm80", "completed"),
        ("demo-hi", "gpu-a-sm90", "completed"), ("demo-hi", "gpu-b-sm80", "completed"),
        ("broken-ta", "gpu-a-sm90", "failed"), ("broken-ta", "gpu-b-sm80", "failed")]
    for row in rows[:4]:
        assert row["state"] == "Completed" and row["promoted"] == "True" and row["flow_run_id"]
        assert row["decision"].startswith("stand-in promoted sha256:")
        assert row["decision"].endswith("(worker GPU b)" if row["gpu_type"] == "gpu-b-sm80" else "(worker GPU none)")
        assert row["pointer"].endswith(".production." + row["gpu_type"])
    for row in rows[4:]:  # why it failed: the child's own error, through its final state's message
        assert row["state"] == "Failed", row
        assert "UnsupportedModelError" in row["message"] and "is not a supported CTC model" in row["message"], row
    assert "## Not completed" in markdown and "**broken-ta** on gpu-a-sm90: failed" in markdown

    [fleet_run] = prefect_api(fleet_server, "/flow_runs/filter", {"flows": {"name": {"any_": ["asr-optimize-fleet"]}}})
    assert fleet_run["state_type"] == "FAILED"
    artifacts = prefect_api(fleet_server, "/artifacts/filter",
                            {"artifacts": {"flow_run_id": {"any_": [fleet_run["id"]]}}})
    [artifact] = [a for a in artifacts if a["key"] == "asr-optimize-fleet"]
    assert artifact["data"] == markdown

    # the same key again: nothing new for the completed children; the broken ones get a second attempt
    started = time.monotonic()
    again = cli(fleet_server, tmp_path, "fleet", str(fleet_file), "--key", "k1", "--timeout-s", "150",
                "--poll-s", "2", "--reports", str(tmp_path / "reports-2"))
    again_s = time.monotonic() - started
    assert again.returncode == 1, (again.stdout + again.stderr)[-4000:]
    new = [r for r in child_runs(fleet_server) if r["id"] not in {run["id"] for run in runs}]
    assert sorted(Path(r["parameters"]["model"]).name for r in new) == ["broken-model", "broken-model"]
    _, rows2 = read_report(tmp_path / "reports-2")
    assert [r["outcome"] for r in rows2] == ["reused"] * 4 + ["failed"] * 2
    assert [r["flow_run_id"] for r in rows2[:4]] == [r["flow_run_id"] for r in rows[:4]]
    assert [r["attempt"] for r in rows2] == ["1"] * 4 + ["2"] * 2
    assert rows2[0]["promoted"] == "True"  # read back from the reused child's report too

    # what an upstream-revision event starts (the fleet deployment's trigger sets only_models): that model alone,
    # on every GPU type; a model the fleet does not hold starts nothing
    before = {r["id"] for r in child_runs(fleet_server)}
    call = ("import json; from flows.fleet import asr_optimize_fleet; "
            f"r = asr_optimize_fleet(fleet={str(fleet_file)!r}, key='event-1', reports_dir={str(tmp_path / 'r3')!r}, "
            "only_models=['tiny-hi', 'someone/else']); print(json.dumps([x.outcome for x in r.rows]))")
    event = subprocess.run([sys.executable, "-c", call], cwd=tmp_path, env=env_for(fleet_server),
                           capture_output=True, text=True, timeout=200)
    assert event.returncode == 0, (event.stdout + event.stderr)[-4000:]
    assert event.stdout.strip().splitlines()[-1] == '["completed", "completed"]'
    started_by_event = [r for r in child_runs(fleet_server) if r["id"] not in before]
    assert sorted((r["parameters"]["model"], r["work_queue_name"]) for r in started_by_event) == [
        (str(tiny_model), "gpu-a"), (str(tiny_model), "gpu-b")]

    # a deployment that does not exist: one line, exit 2, no fleet run
    missing = cli(fleet_server, tmp_path, "fleet", str(fleet_file), "--deployment", "asr-optimize/nope")
    out = " ".join((missing.stdout + missing.stderr).split())
    assert missing.returncode == 2 and "deployment 'asr-optimize/nope' does not exist" in out, out[-2000:]
    assert "Traceback" not in out
    fleet_runs = prefect_api(fleet_server, "/flow_runs/filter", {"flows": {"name": {"any_": ["asr-optimize-fleet"]}}})
    assert len(fleet_runs) == 3
    print(f"fleet: first run {first_s:.0f} s, rerun {again_s:.0f} s")
