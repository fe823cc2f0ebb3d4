"""``asr-optimize fleet`` against a real Prefect server: two work queues, each with a real ``prefect worker start``
process, four models (one broken on purpose) x two GPU types; one worker is killed mid-run (with the run it was
running), the project's automation marks that run Crashed when its heartbeats stop, and a rerun with the same fleet
key resumes: only the crashed and the failed children run again.

The child deployment is ``tests/support/fleet_child.py`` (a stand-in for asr-optimize/prod, see its docstring: six
whole asr-optimize runs take far too long on a 2-core host); the fleet flow, its CLI and the report are the
product's.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.assets import DEMO_MODEL, REPO_ROOT
from tests.support.servers import VENV_BIN, prefect_api, prefect_server, stop_process

CHILD = "asr-optimize-fleet-child/stand-in"
QUEUES = {"gpu-a-sm90": "gpu-a", "gpu-b-sm80": "gpu-b"}
HEARTBEAT_S = 30  # the smallest Prefect allows
CRASHED_AFTER_S = 60  # the project's automation says 600 s; the same automation, sooner, for a test


def env_for(server: dict[str, str]) -> dict[str, str]:
    """Every process of the test heartbeats at the test's pace, as the automation's shorter window expects."""
    return {**os.environ, **server, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", "COLUMNS": "400",
            "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_S)}


def cli(server: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from flows.cli import main; main()", *args], cwd=cwd,
                          env=env_for(server), capture_output=True, text=True, timeout=200)


@dataclass
class FleetServer:
    """The test's Prefect server, its project folder and the running worker of each queue."""

    api: dict[str, str]
    home: Path
    workers: dict[str, subprocess.Popen] = field(default_factory=dict)

    def start_worker(self, queue: str, pool: str = "gpu-pool") -> None:
        env = {**env_for(self.api), "PREFECT_WORKER_QUERY_SECONDS": "2"}
        with open(self.home / f"worker-{queue}.log", "a") as out:
            self.workers[queue] = subprocess.Popen(
                [str(VENV_BIN / "prefect"), "worker", "start", "--pool", pool, "--work-queue", queue,
                 "--type", "process", "--name", f"worker-{queue}"],
                cwd=self.home, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def kill_worker(self, queue: str, run_pid: int) -> None:
        """What a machine failure does: the worker and the flow run it started die at once, nothing reports."""
        worker = self.workers.pop(queue)
        for kill in (lambda: os.killpg(worker.pid, signal.SIGKILL), lambda: os.kill(run_pid, signal.SIGKILL)):
            with contextlib.suppress(ProcessLookupError):
                kill()
        worker.wait(timeout=30)


@pytest.fixture(scope="module")
def fleet_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetServer]:
    """A real server with gpu-pool (process), its queues gpu-a and gpu-b, each served by a real process worker, the
    project's automation for runs whose heartbeats stop, and, deployed with `prefect deploy` from a prefect.yaml like
    the project's, the stand-in child on gpu-pool and the fleet flow on cpu-pool (a worker of its own)."""
    home = tmp_path_factory.mktemp("fleet-prefect")
    with prefect_server(home) as server:
        env = env_for(server)
        for pool in ("gpu-pool", "cpu-pool"):
            prefect_api(server, "/work_pools/", {"name": pool, "type": "process"})
        for queue in QUEUES.values():
            prefect_api(server, "/work_pools/gpu-pool/queues", {"name": queue})
        automation = yaml.safe_load((REPO_ROOT / "deploy" / "automations" /
                                     "crash-unresponsive-flow-runs.yaml").read_text())
        automation["trigger"]["within"] = CRASHED_AFTER_S
        (home / "automation.yaml").write_text(yaml.safe_dump(automation))
        create = subprocess.run([str(VENV_BIN / "prefect"), "automation", "create", "--from-file",
                                 str(home / "automation.yaml")], env=env, capture_output=True, text=True, timeout=60)
        assert create.returncode == 0, create.stdout + create.stderr
        project = {
            "name": "fleet-test", "prefect-version": "3.9.1",
            "pull": [{"prefect.deployments.steps.set_working_directory": {"directory": str(REPO_ROOT)}}],
            "deployments": [{"name": "stand-in", "entrypoint": "tests.support.fleet_child:fleet_child_flow",
                             "work_pool": {"name": "gpu-pool", "work_queue_name": "default"}},
                            {"name": "fleet", "entrypoint": "flows.fleet:asr_optimize_fleet",
                             "work_pool": {"name": "cpu-pool", "work_queue_name": "default"}}],
        }
        (home / "prefect.yaml").write_text(yaml.safe_dump(project))
        deploy = subprocess.run([str(VENV_BIN / "prefect"), "--no-prompt", "deploy", "--prefect-file",
                                 str(home / "prefect.yaml"), "--all"], cwd=REPO_ROOT, env=env,
                                capture_output=True, text=True, timeout=180)
        assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]
        running = FleetServer(api=server, home=home)
        for queue in QUEUES.values():
            running.start_worker(queue)
        running.start_worker("default", pool="cpu-pool")
        try:
            yield running
        finally:
            for worker in running.workers.values():
                stop_process(worker, timeout=30)


def child_runs(server: dict[str, str]) -> list[dict[str, Any]]:
    [deployment] = prefect_api(server, "/deployments/filter", {"deployments": {"name": {"any_": ["stand-in"]}}})
    return prefect_api(server, "/flow_runs/filter", {"deployments": {"id": {"any_": [deployment["id"]]}}})


def wait_for_heartbeat(server: dict[str, str], model_folder: str, queue: str, timeout_s: float = 60) -> None:
    """Until the server has a heartbeat event of the child run of ``model_folder`` on ``queue``."""
    [run] = [r for r in child_runs(server)
             if Path(r["parameters"]["model"]).name == model_folder and r["work_queue_name"] == queue]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        page = prefect_api(server, "/events/filter", {"filter": {
            "event": {"name": ["prefect.flow-run.heartbeat"]},
            "resource": {"id": [f"prefect.flow-run.{run['id']}"]}}, "limit": 1})
        if page["events"]:
            return
        time.sleep(1)
    raise AssertionError(f"no heartbeat from flow run {run['name']} within {timeout_s} s")


def wait_until_final(server: dict[str, str], queue: str, but: str, timeout_s: float = 120) -> None:
    """Until every child run on ``queue`` except the one of model folder ``but`` is in a final state."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        others = [r for r in child_runs(server)
                  if r["work_queue_name"] == queue and Path(r["parameters"]["model"]).name != but]
        if all(r["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") for r in others):
            return
        time.sleep(1)
    raise AssertionError(f"runs on {queue} still going after {timeout_s} s")


def read_report(reports: Path) -> tuple[str, list[dict[str, str]]]:
    [folder] = [p for p in reports.iterdir() if (p / "fleet.csv").is_file()]
    return (folder / "fleet.md").read_text(), list(csv.DictReader((folder / "fleet.csv").open()))


def test_a_fleet_runs_every_model_on_every_gpu_queue_survives_a_killed_worker_and_a_rerun_resumes(
    fleet_server: FleetServer, tiny_model: Path, tmp_path: Path
) -> None:
    server = fleet_server.api
    broken = tmp_path / "broken-model"  # a model folder the pipeline refuses: not a CTC model
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"architectures": ["BertModel"], "model_type": "bert"}))
    held = shutil.copytree(tiny_model, tmp_path / "held-model")  # its gpu-a run waits until its worker is killed
    hold = tmp_path / "hold"
    hold.mkdir()
    (hold / "hold-none").touch()  # gpu-a's runs see no FLEET_TEST_GPU: "none"
    fleet_file = tmp_path / "fleet.yaml"
    fleet_file.write_text(yaml.safe_dump({
        "deployment": CHILD, "max_parallel": 4,
        "parameters": {"options": {"triton": {"enabled": False}}},
        "models": [{"model": str(tiny_model), "name": "tiny-hi", "language": "hi"},
                   {"model": str(DEMO_MODEL), "name": "demo-hi", "language": "hi"},
                   {"model": str(broken), "name": "broken-ta", "language": "ta"},
                   {"model": str(held), "name": "held-mr", "language": "mr",
                    "parameters": {"options": {"stand_in_hold": str(hold)}}}],
        "gpu_types": [{"name": "gpu-a-sm90", "work_queue": "gpu-a"},
                      {"name": "gpu-b-sm80", "work_queue": "gpu-b", "job_variables": {"env": {"FLEET_TEST_GPU": "b"}}}],
    }))
    reports = tmp_path / "reports"
    started = time.monotonic()
    out, err = tmp_path / "fleet.out", tmp_path / "fleet.err"  # files: a full pipe would block the fleet meanwhile
    with out.open("w") as stdout_file, err.open("w") as stderr_file, subprocess.Popen(
            [sys.executable, "-c", "from flows.cli import main; main()", "fleet", str(fleet_file), "--key", "k1",
             "--timeout-s", "300", "--poll-s", "2", "--reports", str(reports)],
            cwd=tmp_path, env=env_for(server), stdout=stdout_file, stderr=stderr_file) as fleet:
        # gpu-a's machine fails while it runs held-mr: its worker and that run die without a word
        pid_file = hold / "pid-none"
        deadline = time.monotonic() + 150
        while not pid_file.exists() and time.monotonic() < deadline and fleet.poll() is None:
            time.sleep(0.5)
        assert pid_file.exists(), "held-mr never started on gpu-a"
        wait_for_heartbeat(server, "held-model", "gpu-a")  # it has been running for a while: the server heard it
        wait_until_final(server, "gpu-a", but="held-model")  # it is gpu-a's only run (started last)
        fleet_server.kill_worker("gpu-a", int(pid_file.read_text()))
        killed_after_s = time.monotonic() - started
        fleet.wait(timeout=360)
    first_s = time.monotonic() - started
    stdout, stderr = out.read_text(), err.read_text()
    output = " ".join((stdout + stderr).split())
    assert fleet.returncode == 1, output[-4000:]  # the fleet ran, and some children did not complete
    assert "broken-ta on gpu-a-sm90: failed" in output and "held-mr on gpu-a-sm90: failed" in output
    assert "Traceback" not in stdout, stdout[stdout.find("Traceback") - 1500:][:4000]

    runs = child_runs(server)
    assert len(runs) == 8
    by_model: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        by_model.setdefault(Path(run["parameters"]["model"]).name, []).append(run)
    expected_states = {"broken-model": {"gpu-a": "FAILED", "gpu-b": "FAILED"},
                       "held-model": {"gpu-a": "CRASHED", "gpu-b": "COMPLETED"}}
    for name, model_runs in by_model.items():
        assert sorted(r["work_queue_name"] for r in model_runs) == ["gpu-a", "gpu-b"], name
        states = {r["work_queue_name"]: r["state_type"] for r in model_runs}
        assert states == expected_states.get(name, {"gpu-a": "COMPLETED", "gpu-b": "COMPLETED"}), (name, states)
        for run in model_runs:
            options = {k: v for k, v in run["parameters"]["options"].items() if k != "stand_in_hold"}
            assert options == {"triton": {"enabled": False}}
            expected = {"env": {"FLEET_TEST_GPU": "b"}} if run["work_queue_name"] == "gpu-b" else {}
            assert (run["job_variables"] or {}) == expected

    markdown, rows = read_report(reports)
    assert [(r["model"], r["gpu_type"], r["outcome"]) for r in rows] == [
        ("tiny-hi", "gpu-a-sm90", "completed"), ("tiny-hi", "gpu-b-sm80", "completed"),
        ("demo-hi", "gpu-a-sm90", "completed"), ("demo-hi", "gpu-b-sm80", "completed"),
        ("broken-ta", "gpu-a-sm90", "failed"), ("broken-ta", "gpu-b-sm80", "failed"),
        ("held-mr", "gpu-a-sm90", "failed"), ("held-mr", "gpu-b-sm80", "completed")]
    for row in rows[:4] + rows[7:]:
        assert row["state"] == "Completed" and row["promoted"] == "True" and row["flow_run_id"]
        assert row["decision"].startswith("stand-in promoted sha256:")
        assert row["decision"].endswith("(worker GPU b)" if row["gpu_type"] == "gpu-b-sm80" else "(worker GPU none)")
        assert row["pointer"].endswith(".production." + row["gpu_type"])
    crashed = rows[6]  # marked by the automation once its heartbeats stopped
    assert crashed["state"] == "Crashed" and "No heartbeat" in crashed["message"], crashed
    for row in rows[4:6]:  # why it failed: the child's own error, through its final state's message
        assert row["state"] == "Failed", row
        assert "UnsupportedModelError" in row["message"] and "is not a supported CTC model" in row["message"], row
    assert "## Not completed" in markdown and "**broken-ta** on gpu-a-sm90: failed" in markdown
    assert "**held-mr** on gpu-a-sm90: failed" in markdown

    [fleet_run] = prefect_api(server, "/flow_runs/filter", {"flows": {"name": {"any_": ["asr-optimize-fleet"]}}})
    assert fleet_run["state_type"] == "FAILED"
    artifacts = prefect_api(server, "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [fleet_run["id"]]}}})
    [artifact] = [a for a in artifacts if a["key"] == "asr-optimize-fleet"]
    assert artifact["data"] == markdown

    # gpu-a's machine is back; the same key again resumes: the completed children are reused, the crashed one and
    # the broken ones get their second attempt
    (hold / "hold-none").unlink()
    fleet_server.start_worker("gpu-a")
    started = time.monotonic()
    again = cli(server, tmp_path, "fleet", str(fleet_file), "--key", "k1", "--timeout-s", "150",
                "--poll-s", "2", "--reports", str(tmp_path / "reports-2"))
    again_s = time.monotonic() - started
    assert again.returncode == 1, (again.stdout + again.stderr)[-4000:]
    new = [r for r in child_runs(server) if r["id"] not in {run["id"] for run in runs}]
    assert sorted((Path(r["parameters"]["model"]).name, r["work_queue_name"]) for r in new) == [
        ("broken-model", "gpu-a"), ("broken-model", "gpu-b"), ("held-model", "gpu-a")]
    _, rows2 = read_report(tmp_path / "reports-2")
    assert [r["outcome"] for r in rows2] == ["reused"] * 4 + ["failed"] * 2 + ["completed", "reused"]
    kept = [0, 1, 2, 3, 7]
    assert [rows2[i]["flow_run_id"] for i in kept] == [rows[i]["flow_run_id"] for i in kept]
    assert [r["attempt"] for r in rows2] == ["1"] * 4 + ["2"] * 3 + ["1"]
    assert rows2[0]["promoted"] == "True" and rows2[6]["promoted"] == "True"  # read back from each child's report

    # what an upstream-revision event starts (the fleet deployment's trigger sets only_models), run as the
    # deployment is, by `prefect deployment run` on a worker: that model alone, on every GPU type; a model the fleet
    # does not hold starts nothing
    before = {r["id"] for r in child_runs(server)}
    params = {"fleet": str(fleet_file), "key": "event-1", "reports_dir": str(tmp_path / "r3"),
              "only_models": ["tiny-hi", "someone/else"]}
    event = subprocess.run([str(VENV_BIN / "prefect"), "deployment", "run", "asr-optimize-fleet/fleet", "--params",
                            json.dumps(params), "--watch", "--watch-timeout", "200"], cwd=tmp_path,
                           env=env_for(server), capture_output=True, text=True, timeout=260)
    assert event.returncode == 0, (event.stdout + event.stderr)[-4000:]
    _, rows3 = read_report(tmp_path / "r3")
    assert [(r["model"], r["gpu_type"], r["outcome"]) for r in rows3] == [
        ("tiny-hi", "gpu-a-sm90", "completed"), ("tiny-hi", "gpu-b-sm80", "completed")]
    started_by_event = [r for r in child_runs(server) if r["id"] not in before]
    assert sorted((r["parameters"]["model"], r["work_queue_name"]) for r in started_by_event) == [
        (str(tiny_model), "gpu-a"), (str(tiny_model), "gpu-b")]
    [event_run] = prefect_api(server, "/flow_runs/filter", {"deployments": {"name": {"any_": ["fleet"]}}})
    assert event_run["state_type"] == "COMPLETED"

    # a deployment that does not exist: one line, exit 2, no fleet run
    missing = cli(server, tmp_path, "fleet", str(fleet_file), "--deployment", "asr-optimize/nope")
    out = " ".join((missing.stdout + missing.stderr).split())
    assert missing.returncode == 2 and "deployment 'asr-optimize/nope' does not exist" in out, out[-2000:]
    assert "Traceback" not in out
    fleet_runs = prefect_api(server, "/flow_runs/filter", {"flows": {"name": {"any_": ["asr-optimize-fleet"]}}})
    assert len(fleet_runs) == 3
    print(f"fleet: first run {first_s:.0f} s (worker killed {killed_after_s:.0f} s in), rerun {again_s:.0f} s")
