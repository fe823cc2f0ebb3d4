"""Rolling hot swaps across three real bundled tritonservers (``asr_optimize.triton.rolling``).

What this proves: a new artifact goes to every replica in turn under steady load on all three with zero failed
requests; when a later replica fails (its canary refuses the new version, or its server is gone), the replica already
promoted goes back to its previous version, the replica not reached keeps its version, and requests keep succeeding
throughout.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest

from asr_optimize.triton import journal
from asr_optimize.triton import repository as repo_mod
from tests.support.assets import DEMO_MODEL
from tests.support.triton_server import ClientLoop, demo_canary

pytestmark = pytest.mark.requires("tritonserver")

PIPELINE = repo_mod.DEFAULT_PIPELINE_NAME
MODEL = repo_mod.DEFAULT_MODEL_NAME


def _serving(root: Path) -> int | None:
    return journal.current(root, MODEL, PIPELINE).serving


def test_rolling_swap_across_three_replicas(demo_onnx: Path, tmp_path: Path) -> None:
    from asr_optimize.triton.hotswap import SwapOptions
    from asr_optimize.triton.rolling import rolling_swap
    from asr_optimize.triton.server import TritonServer
    from tasks.deploy_triton import TritonOptions, TritonReplica, deploy_replicas

    canary = demo_canary(DEMO_MODEL, n=3)
    opts = SwapOptions(grace_s=0)
    with contextlib.ExitStack() as stack:
        servers = [stack.enter_context(TritonServer(tmp_path / f"replica-{i}")) for i in range(3)]
        replicas = [(s.repository, s.http_url) for s in servers]

        # the deploy stage's path: rolling swap, then a health check of every replica
        stage = deploy_replicas(replicas, demo_onnx, DEMO_MODEL, canary, opts,
                                TritonOptions(url=servers[0].http_url, health_requests=3,
                                              replicas=[TritonReplica(url=u, repository=r) for r, u in replicas[1:]]),
                                "onnx:test", None)
        assert stage.status == "ok", stage.reason
        first = stage.output
        assert [r.serving_version for r in first.replicas] == [1, 1, 1]
        assert all(r.health and r.health.startswith("healthy: ") for r in first.replicas), first.markdown()

        # every replica under load while the next version rolls through them one at a time
        with contextlib.ExitStack() as load:
            loops = [load.enter_context(ClientLoop(s.http_url, PIPELINE, canary.waves[0])) for s in servers]
            second = rolling_swap(replicas, demo_onnx, DEMO_MODEL, canary, opts, source="onnx:test")
        assert second.promoted, second.summary()
        assert [(r.action, r.serving_version, r.previous_version) for r in second.replicas] == [("promoted", 2, 1)] * 3
        for loop in loops:
            assert loop.errors == [] and len(loop.texts) >= 3
            assert set(loop.outcomes) == {canary.reference_transcripts[0]}
        assert "promoted on all 3 replicas (v2, v2, v2)" in second.markdown()

        # replica 2's canary fails for real: its pipeline decodes with a drifted blank id, the word delimiter's (as a
        # hand-edited or stale ctc.json would have; the vocabulary itself is checked before a swap), so v3's canary
        # transcripts lose their spaces and differ from the reference.
        # Replica 1 (already promoted to v3) goes back to v2; replica 3 is not touched.
        drifted = servers[1].repository / PIPELINE / "1" / "ctc.json"
        good_ctc = drifted.read_text(encoding="utf-8")
        ctc = json.loads(good_ctc)
        ctc["blank_id"] = ctc["tokens"].index(ctc["word_delimiter"])
        drifted.write_text(json.dumps(ctc), encoding="utf-8")
        from asr_optimize.triton.endpoint import http_client

        http_client(servers[1].http_url).load_model(PIPELINE)
        with ClientLoop(servers[0].http_url, PIPELINE, canary.waves[0]) as loop:
            refused = rolling_swap(replicas, demo_onnx, DEMO_MODEL, canary, opts, source="onnx:test")
        assert not refused.promoted
        assert [r.action for r in refused.replicas] == ["reverted", "rolled_back", "not_started"], refused.markdown()
        assert "canary" in refused.replicas[1].detail and refused.replicas[1].serving_version == 2
        assert [r.serving_version for r in refused.replicas[:2]] == [2, 2]
        assert "v3 unloaded and removed" in refused.replicas[0].detail
        assert loop.errors == [] and set(loop.outcomes) == {canary.reference_transcripts[0]}
        assert [_serving(s.repository) for s in servers] == [2, 2, 2]
        assert repo_mod.version_dirs(servers[2].repository, MODEL) == [1, 2]
        drifted.write_text(good_ctc, encoding="utf-8")

        # replica 2's server is gone: replica 1 (already promoted again) goes back to v2, replica 3 is not touched
        servers[1].stop()
        with ClientLoop(servers[0].http_url, PIPELINE, canary.waves[0]) as loop:
            third = rolling_swap(replicas, demo_onnx, DEMO_MODEL, canary, opts, source="onnx:test")
        assert not third.promoted
        assert [r.action for r in third.replicas] == ["reverted", "failed", "not_started"], third.markdown()
        assert "TritonUnavailable" in third.replicas[1].detail
        assert third.replicas[0].serving_version == 2 and "unloaded and removed" in third.replicas[0].detail
        assert "replica 2" in third.summary() and "1 replica(s) reverted" in third.summary()
        assert loop.errors == [] and set(loop.outcomes) == {canary.reference_transcripts[0]}
        assert _serving(servers[0].repository) == 2 and repo_mod.serving_version(servers[0].repository, PIPELINE) == 2
        assert repo_mod.version_dirs(servers[0].repository, MODEL) == [2]  # v1 was retired when v3 was promoted
        assert repo_mod.version_dirs(servers[2].repository, MODEL) == [1, 2] and _serving(servers[2].repository) == 2
        # the reverted replica still answers through its pipeline, on v2
        from asr_optimize.triton.hotswap import pipeline_transcribe

        assert pipeline_transcribe(http_client(servers[0].http_url), PIPELINE, canary.waves[:1]) == \
            canary.reference_transcripts[:1]


def test_revert_of_a_first_deployment_removes_both_models(demo_onnx: Path, tmp_path: Path) -> None:
    from asr_optimize.triton.endpoint import http_client
    from asr_optimize.triton.hotswap import SwapOptions, hot_swap, revert_promotion
    from asr_optimize.triton.repository import RepositoryError
    from asr_optimize.triton.server import TritonServer

    canary = demo_canary(DEMO_MODEL, n=2)
    with TritonServer(tmp_path / "repo") as server:
        decision = hot_swap(server.repository, demo_onnx, DEMO_MODEL, canary, server.http_url, SwapOptions(grace_s=0))
        assert decision.promoted
        done = revert_promotion(server.repository, server.http_url, decision)
        assert "first deployment" in done[0]
        client = http_client(server.http_url)
        assert not client.is_model_ready(PIPELINE) and not client.is_model_ready(MODEL)
        assert not (server.repository / MODEL).exists() and not (server.repository / PIPELINE).exists()
        with pytest.raises(RepositoryError, match="nothing was reverted"):
            revert_promotion(server.repository, server.http_url, decision)


def test_replicas_need_a_running_first_server() -> None:
    from pydantic import ValidationError

    from tasks.deploy_triton import TritonOptions

    with pytest.raises(ValidationError, match=r"triton\.replicas needs triton\.url"):
        TritonOptions(url=None, replicas=[{"url": "http://b:8000", "repository": "/srv/b"}])
