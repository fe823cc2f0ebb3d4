"""watch-upstream against a local HF-compatible endpoint and a real Prefect server: a new hub revision makes
exactly one asr-optimize/prod flow run with that revision (through the trigger in prefect.yaml); an unchanged
one makes none. Also: resolve_model downloads a hub id through HF_ENDPOINT and pins the commit sha.
(The decision alone, without servers: ``tests/unit/test_watch_upstream.py``.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.assets import REPO_ROOT
from tests.support.hf_endpoint import FakeHub, fake_hub
from tests.support.servers import VENV_BIN, prefect_api, prefect_server

MODEL = "ai4bharat/indicwav2vec-hindi"
SHA_1, SHA_2 = "1" * 40, "2" * 40


@pytest.fixture()
def hub(tiny_model: Path) -> Iterator[FakeHub]:
    with fake_hub(MODEL, tiny_model, SHA_1) as served:
        yield served


def hub_env(hub: FakeHub, tmp: Path) -> dict[str, str]:
    return {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp / "hf-home"),
            "HF_HUB_DISABLE_TELEMETRY": "1"}


def test_resolve_model_downloads_through_hf_endpoint_and_pins_the_sha(hub: FakeHub, tmp_path: Path) -> None:
    script = ("import sys; from asr_optimize.model.source import resolve_model; "
              "r = resolve_model(sys.argv[1], revision=sys.argv[2] or None, cache_dir=sys.argv[3]); "
              "print(r.model_dump_json())")

    def resolve(revision: str) -> dict[str, Any]:
        # a fresh interpreter: huggingface_hub reads HF_ENDPOINT / HF_HUB_OFFLINE when it is imported
        result = subprocess.run([sys.executable, "-c", script, MODEL, revision, str(tmp_path / "cache")],
                                env=hub_env(hub, tmp_path), capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr[-3000:]
        return json.loads(result.stdout.strip().splitlines()[-1])

    latest = resolve("")
    assert latest["kind"] == "hub" and latest["revision"] == SHA_1 and latest["architecture"] == "Wav2Vec2ForCTC"
    folder = Path(latest["local_dir"])
    assert folder.name == SHA_1 and (folder / "model.safetensors").read_bytes() == (
        hub.folder / "model.safetensors").read_bytes()
    assert f"GET /{MODEL}/resolve/{SHA_1}/model.safetensors" in hub.requests

    hub.set_sha(SHA_2)
    assert resolve("")["revision"] == SHA_2  # main moved
    assert resolve(SHA_1)["revision"] == SHA_1  # an explicit revision stays pinned


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A real server with asr-optimize/prod deployed from prefect.yaml (its trigger included)."""
    with prefect_server(tmp_path_factory.mktemp("prefect-home")) as env:
        client = {**os.environ, **env}
        prefect = str(VENV_BIN / "prefect")
        for command in ([prefect, "work-pool", "create", "gpu-pool", "--type", "process"],
                        [prefect, "--no-prompt", "deploy", "--name", "prod"]):
            result = subprocess.run(command, cwd=REPO_ROOT, env=client, capture_output=True, text=True, timeout=180)
            assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        yield env


def watch(server: dict[str, str], hub: FakeHub, store: Path, model: str = MODEL) -> subprocess.CompletedProcess:
    """One run of the watcher flow, as the hourly deployment would run it."""
    return subprocess.run([sys.executable, "-m", "flows.cli", "watch", "--model", model, "--store", str(store)],
                          cwd=REPO_ROOT, env={**hub_env(hub, store.parent), **server}, capture_output=True, text=True,
                          timeout=180)


def watch_ok(server: dict[str, str], hub: FakeHub, store: Path) -> dict[str, Any]:
    result = watch(server, hub, store)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    [check] = json.loads(result.stdout.strip().splitlines()[-1])
    return check


def prod_runs(server: dict[str, str]) -> list[dict[str, Any]]:
    [prod] = prefect_api(server, "/deployments/filter", {"deployments": {"name": {"any_": ["prod"]}}})
    runs = prefect_api(server, "/flow_runs/filter", {"deployments": {"id": {"any_": [prod["id"]]}}})
    return [r for r in runs if r["auto_scheduled"] is False]  # not the nightly cron's runs


def wait_for_runs(server: dict[str, str], count: int, timeout: float = 90) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        runs = prod_runs(server)
        if len(runs) >= count or time.monotonic() > deadline:
            return runs
        time.sleep(1)


def events(server: dict[str, str]) -> list[dict[str, Any]]:
    page = prefect_api(server, "/events/filter", {"filter": {"event": {"name": ["asr.model.updated"]}}, "limit": 50})
    return page["events"]


def test_new_revision_makes_exactly_one_prod_run_and_unchanged_makes_none(
    server: dict[str, str], hub: FakeHub, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    first = watch_ok(server, hub, store)
    assert first["action"] == "emitted" and first["revision"] == SHA_1 and first["previous"] is None
    [run] = wait_for_runs(server, 1)
    assert run["parameters"]["revision"] == SHA_1 and run["state_type"] == "SCHEDULED"
    assert run["parameters"].get("model", MODEL) == MODEL
    assert json.loads((store / "pointers" / "upstream--ai4bharat--indicwav2vec-hindi.json").read_text())[
        "revision"] == SHA_1

    # the same sha again, twice: nothing is emitted, no run appears
    for _ in range(2):
        assert watch_ok(server, hub, store)["action"] == "unchanged"
    time.sleep(5)  # give a (wrong) automation time to act
    assert [r["id"] for r in prod_runs(server)] == [run["id"]]
    assert [e["payload"]["revision"] for e in events(server)] == [SHA_1]

    # AI4Bharat publishes a new commit: one more run, with the new revision
    hub.set_sha(SHA_2)
    second = watch_ok(server, hub, store)
    assert second["action"] == "emitted" and second["revision"] == SHA_2 and second["previous"] == SHA_1
    runs = wait_for_runs(server, 2)
    assert sorted(r["parameters"]["revision"] for r in runs) == [SHA_1, SHA_2]
    time.sleep(3)
    assert len(prod_runs(server)) == 2
    assert sorted(e["payload"]["revision"] for e in events(server)) == [SHA_1, SHA_2]
    history = (store / "pointers" / "upstream--ai4bharat--indicwav2vec-hindi.history.jsonl").read_text()
    assert [json.loads(line)["revision"] for line in history.splitlines()] == [SHA_1, SHA_2]


def test_unknown_model_fails_clearly_and_emits_nothing(server: dict[str, str], hub: FakeHub, tmp_path: Path) -> None:
    before = len(events(server))
    result = watch(server, hub, tmp_path / "store", model="nobody/no-such-model")
    assert result.returncode != 0
    assert "has no model 'nobody/no-such-model'" in result.stdout + result.stderr
    assert len(events(server)) == before
