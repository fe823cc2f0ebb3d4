"""prefect.yaml + deploy/setup.sh against a real Prefect server, and asr-optimize/dev run by a real process worker."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.assets import REPO_ROOT
from tests.support.servers import VENV_BIN, prefect_api, prefect_server, stop_process

STAGE_TASKS = {"resolve-model", "profile", "export-onnx", "optimize-onnx", "tensorrt-engines", "fused-engines",
               "benchmark", "load-eval-set", "evaluate", "promote", "deploy-triton", "report"}


def client_env(server: dict[str, str]) -> dict[str, str]:
    """Environment for CLI processes talking to the test server (the venv's tools first on PATH)."""
    return {**os.environ, **server, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHON": str(VENV_BIN / "python"), "PREFECT": str(VENV_BIN / "prefect")}


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A real server set up by deploy/setup.sh (pools, gpu limit, blocks, `prefect deploy --all`)."""
    with prefect_server(tmp_path_factory.mktemp("prefect-home")) as server:
        result = subprocess.run(["bash", "deploy/setup.sh"], cwd=REPO_ROOT,
                                env={**client_env(server), "GPU_QUEUES": "default h100"}, capture_output=True,
                                text=True, timeout=300)
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
        yield {**server, "setup_log": result.stdout}


def test_setup_registers_pools_limit_and_all_deployments(deployed: dict[str, str]) -> None:
    deployments = {d["name"]: d for d in prefect_api(deployed, "/deployments/filter")}
    flows = {f["id"]: f["name"] for f in prefect_api(deployed, "/flows/filter")}
    names = {f"{flows[d['flow_id']]}/{name}" for name, d in deployments.items()}
    assert names == {"asr-optimize/prod", "asr-optimize/dev", "watch-upstream/hourly", "asr-optimize-fleet/fleet"}
    for name in names:  # `prefect deployment ls` at the end of setup.sh lists them too
        assert name in deployed["setup_log"]

    prod, dev, hourly = deployments["prod"], deployments["dev"], deployments["hourly"]
    assert prod["work_pool_name"] == "gpu-pool" and dev["work_pool_name"] == hourly["work_pool_name"] == "cpu-pool"
    assert prod["parameters"]["model"] == "ai4bharat/indicwav2vec-hindi"
    assert prod["parameters"]["require_gpu"] is True and prod["parameters"]["require_tensorrt"] is True
    assert prod["parameters"]["device"] == "cuda"
    assert [s["schedule"]["cron"] for s in prod["schedules"]] == ["0 2 * * *"]
    assert [s["schedule"]["cron"] for s in hourly["schedules"]] == ["0 * * * *"]
    fleet = deployments["fleet"]
    assert fleet["work_pool_name"] == "cpu-pool"
    assert [s["schedule"]["cron"] for s in fleet["schedules"]] == ["0 3 * * *"]
    assert fleet["parameters"]["fleet"] == "deploy/fleet.example.yaml"
    assert fleet["parameters"]["deployment"] == "asr-optimize/prod"
    assert (REPO_ROOT / fleet["parameters"]["fleet"]).is_file()
    assert dev["schedules"] == [] and dev["parameters"]["device"] == "cpu"
    pull = dev["pull_steps"][0]["prefect.deployments.steps.set_working_directory"]
    assert Path(pull["directory"]) == REPO_ROOT  # the checkout `prefect deploy` ran in

    automations = prefect_api(deployed, "/automations/filter")
    [trigger] = [a for a in automations if a["actions"][0].get("deployment_id") == prod["id"]]
    assert trigger["trigger"]["expect"] == ["asr.model.updated"]
    assert trigger["trigger"]["match"] == {"prefect.resource.id": "huggingface.model.ai4bharat/indicwav2vec-hindi"}
    assert trigger["actions"][0]["parameters"] == {"revision": "{{ event.payload.revision }}"}
    [on_fleet] = [a for a in automations if a["actions"][0].get("deployment_id") == fleet["id"]]
    assert on_fleet["enabled"] is False  # prod's own trigger rebuilds its model unless the fleet takes over
    assert on_fleet["actions"][0]["parameters"] == {"only_models": ["{{ event.payload.model }}"],
                                                    "revision": "{{ event.payload.revision }}"}

    # a run whose heartbeats stopped (worker or machine gone) is marked Crashed instead of staying Running
    [zombies] = [a for a in automations if a["name"] == "asr-optimize-crash-unresponsive-flow-runs"]
    assert zombies["trigger"]["posture"] == "Proactive" and zombies["trigger"]["within"] == 600
    assert zombies["trigger"]["after"] == ["prefect.flow-run.heartbeat"]
    assert zombies["actions"] == [{"type": "change-flow-run-state", "name": None, "state": "CRASHED",
                                   "message": zombies["actions"][0]["message"], "force": False}]

    pools = {p["name"]: p["type"] for p in prefect_api(deployed, "/work_pools/filter")}
    assert pools["gpu-pool"] == pools["cpu-pool"] == "process"
    # one prod run at a time per GPU queue (not per deployment: a fleet's GPU types build in parallel)
    assert prod.get("concurrency_limit") is None
    queues = prefect_api(deployed, "/work_pools/gpu-pool/queues/filter")
    assert {q["name"]: q["concurrency_limit"] for q in queues} == {"default": 1, "h100": 1}  # one made, one set
    limits = {c["tag"]: c["concurrency_limit"] for c in prefect_api(deployed, "/concurrency_limits/filter")}
    assert limits == {"gpu": 1}
    if (REPO_ROOT / "deploy" / "register_blocks.py").is_file():
        blocks = {b["name"] for b in prefect_api(deployed, "/block_documents/filter")}
        assert "asr-optimize-store" in blocks

    # running it again changes nothing and does not fail
    again = subprocess.run(["bash", "deploy/setup.sh"], cwd=REPO_ROOT, env={**client_env(deployed), "DEPLOY": "0"},
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert {c["tag"]: c["concurrency_limit"] for c in prefect_api(deployed, "/concurrency_limits/filter")} == {"gpu": 1}
    assert "automation asr-optimize-crash-unresponsive-flow-runs exists" in again.stdout
    names = [a["name"] for a in prefect_api(deployed, "/automations/filter")]
    assert names.count("asr-optimize-crash-unresponsive-flow-runs") == 1


def test_dev_deployment_completes_every_stage_on_a_process_worker(
    deployed: dict[str, str], tiny_model: Path, tmp_path: Path
) -> None:
    env = client_env(deployed)
    params = {
        "model": str(tiny_model), "store": str(tmp_path / "store"), "reports_dir": str(tmp_path / "reports"),
        "options": {"benchmark": {"cases": [{"batch": 1, "seconds": 1}], "iterations": 2, "warmup": 1}},
    }
    run = subprocess.run([str(VENV_BIN / "prefect"), "deployment", "run", "asr-optimize/dev", "--params",
                          json.dumps(params)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    [dev] = prefect_api(deployed, "/deployments/filter", {"deployments": {"name": {"any_": ["dev"]}}})
    [flow_run] = prefect_api(deployed, "/flow_runs/filter", {"deployments": {"id": {"any_": [dev["id"]]}}})
    assert flow_run["state_type"] == "SCHEDULED"

    worker_log = tmp_path / "worker.log"
    with open(worker_log, "w") as out:
        worker = subprocess.Popen(
            [str(VENV_BIN / "prefect"), "worker", "start", "--pool", "cpu-pool", "--type", "process",
             "--name", "test-worker"],
            cwd=tmp_path, env={**env, "PREFECT_WORKER_QUERY_SECONDS": "2"}, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 480
        state = flow_run["state_type"]
        while time.monotonic() < deadline and state not in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            time.sleep(3)
            state = prefect_api(deployed, f"/flow_runs/{flow_run['id']}", method="GET")["state_type"]
    finally:
        stop_process(worker, timeout=30)
    log = worker_log.read_text()
    assert state == "COMPLETED", log[-6000:]

    tasks = prefect_api(deployed, "/task_runs/filter", {"flow_runs": {"id": {"any_": [flow_run["id"]]}}})
    names = {t["name"].rsplit("-", 1)[0] for t in tasks}
    assert names >= STAGE_TASKS, names
    assert all(t["state_type"] == "COMPLETED" for t in tasks), [(t["name"], t["state_type"]) for t in tasks]
    artifacts = {a["key"] for a in prefect_api(deployed, "/artifacts/filter",
                                       {"artifacts": {"flow_run_id": {"any_": [flow_run["id"]]}}})}
    assert {"asr-optimize-report", "asr-optimize-stages", "asr-optimize-benchmarks"} <= artifacts
    assert list((tmp_path / "store").glob("artifacts/**/manifest.json"))
    assert len(list((tmp_path / "reports").glob("*/report.md"))) == 1
    # the parameters went through the deployment unchanged
    stored = prefect_api(deployed, f"/flow_runs/{flow_run['id']}", method="GET")
    assert stored["parameters"]["model"] == str(tiny_model) and stored["deployment_id"]
