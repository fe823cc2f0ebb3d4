"""Swap safety against the real bundled tritonserver, real repository folders and real processes: names that would
escape the repository, a rollback that leaves the candidate's config behind, two swaps at once, pending swaps of
other hosts and reused pids, and damaged files of deployed versions and candidates."""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from asr_optimize.triton import repository as repo_mod
from tests.support.assets import DEMO_MODEL
from tests.support.triton_server import copy_artifact, demo_canary

pytestmark = pytest.mark.requires("tritonserver")

MODEL, PIPELINE = repo_mod.DEFAULT_MODEL_NAME, repo_mod.DEFAULT_PIPELINE_NAME


@pytest.fixture(scope="module")
def artifacts(demo_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("swap-safety-onnx")
    good = copy_artifact(demo_onnx, base / "good" / "model.onnx")
    return {"good": good, "copy": copy_artifact(good, base / "copy" / "model.onnx"),
            "copy2": copy_artifact(good, base / "copy2" / "model.onnx")}


@pytest.fixture(scope="module")
def canary():
    return demo_canary(DEMO_MODEL, 3)


def _tree(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """sha256 of every file below ``folder`` (``__pycache__`` left out: the python backend writes it on load)."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and "__pycache__" not in p.parts and p.name not in skip}


def _texts(url: str, waves) -> list[str]:
    from asr_optimize.triton.endpoint import http_client
    from asr_optimize.triton.hotswap import pipeline_transcribe

    return pipeline_transcribe(http_client(url), PIPELINE, waves)


def _first_deploy(repo: Path, url: str, artifact: Path, canary) -> None:
    from asr_optimize.triton.hotswap import SwapOptions, hot_swap

    decision = hot_swap(repo, artifact, DEMO_MODEL, canary, url, SwapOptions(grace_s=0))
    assert decision.promoted and decision.serving_version == 1, decision.summary()


def _corrupt_same_size(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(b ^ 0x5A for b in data[middle:middle + 64])
    path.write_bytes(bytes(data))


# ------------------------------------------------------------------------------------------ 1: names


def test_names_that_escape_the_repository_are_refused_before_anything_is_written(tmp_path: Path, artifacts,
                                                                                  canary) -> None:
    """``..``, ``""`` and ``a/b`` as model or pipeline name (options updated with model_copy, as the flow does with a
    block's names, skip pydantic validation): refused with a clear message; no file in the repository or its parent
    changes, the serving version keeps serving. The block refuses such names when it is built."""
    from pydantic import ValidationError

    from asr_optimize.triton.hotswap import SwapOptions, hot_swap
    from asr_optimize.triton.names import InvalidModelName
    from asr_optimize.triton.server import TritonServer
    from blocks.triton_target import TritonTarget

    parent = tmp_path / "parent"
    repo = parent / "repo"
    with TritonServer(repo) as server:
        _first_deploy(repo, server.http_url, artifacts["good"], canary)
        (parent / "sentinel.txt").write_text("the repository's parent")
        (repo / "sentinel.txt").write_text("the repository")
        before = _tree(parent)
        for field in ("model_name", "pipeline_name"):
            for name in ("..", "", "a/b"):
                opts = SwapOptions(grace_s=0).model_copy(update={field: name})
                with pytest.raises(InvalidModelName, match=rf"invalid Triton (model|pipeline) name {name!r}: it "):
                    hot_swap(repo, artifacts["copy"], DEMO_MODEL, canary, server.http_url, opts)
                with pytest.raises(ValidationError, match="invalid Triton model name"):
                    TritonTarget(**{field: name})
        same = SwapOptions(grace_s=0).model_copy(update={"pipeline_name": MODEL})
        with pytest.raises(InvalidModelName, match="need two names"):
            hot_swap(repo, artifacts["copy"], DEMO_MODEL, canary, server.http_url, same)
        assert _tree(parent) == before
        assert _texts(server.http_url, canary.waves) == canary.reference_transcripts


# ------------------------------------------------------------------------------------------ 2: byte-exact rollback


def test_refused_gpu_swap_restores_every_config_byte_for_byte(tmp_path: Path, artifacts, canary) -> None:
    """A swap whose config asks for KIND_GPU on this CPU-only host cannot load: it is rolled back, the acoustic and
    pipeline configs and files are byte-identical to before, v1 keeps serving, and a fresh server start loads."""
    from asr_optimize.triton import journal
    from asr_optimize.triton.endpoint import http_client
    from asr_optimize.triton.hotswap import SwapOptions, hot_swap
    from asr_optimize.triton.server import TritonServer

    repo = tmp_path / "repo"
    with TritonServer(repo) as server:
        _first_deploy(repo, server.http_url, artifacts["good"], canary)
        before = _tree(repo, skip=(journal.JOURNAL_NAME,))
        gpu = SwapOptions(grace_s=0, batching=repo_mod.BatchingOptions(instance_kind="KIND_GPU"))
        decision = hot_swap(repo, artifacts["copy"], DEMO_MODEL, canary, server.http_url, gpu)
        assert decision.action == "rolled_back" and decision.serving_version == 1, decision.summary()
        assert "loading v2 failed" in decision.reasons[0]
        assert _tree(repo, skip=(journal.JOURNAL_NAME,)) == before  # configs, pipeline files, v1: every byte
        assert "KIND_GPU" not in (repo / MODEL / "config.pbtxt").read_text()
        assert not (repo / MODEL / "2").exists() and not (repo / MODEL / ".swap-backup").exists()
        record = journal.read_journal(repo, MODEL)
        assert record.pending is None and record.serving == 1 and record.confirmed == [1]
        assert _texts(server.http_url, canary.waves) == canary.reference_transcripts
        assert http_client(server.http_url).is_server_ready()
    with TritonServer(repo, load=[MODEL, PIPELINE]) as fresh:  # the config on disk loads on a new server
        assert fresh.reconciled == []
        assert _texts(fresh.http_url, canary.waves) == canary.reference_transcripts


# ------------------------------------------------------------------------------------------ 3: two swaps at once


def _swap_process(repo: str, artifact: str, url: str, canary, barrier, results) -> None:
    from asr_optimize.triton.hotswap import SwapOptions, hot_swap

    barrier.wait(60)
    started = time.monotonic()
    try:
        decision = hot_swap(Path(repo), Path(artifact), DEMO_MODEL, canary, url,
                            SwapOptions(grace_s=0, keep_versions=3, lock_timeout_s=300))
        results.put({"pid": os.getpid(), "action": decision.action, "candidate": decision.candidate_version,
                     "summary": decision.summary(), "started": started, "ended": time.monotonic()})
    except Exception as exc:  # a clear refusal is an acceptable outcome: report it
        results.put({"pid": os.getpid(), "action": "error", "error": f"{type(exc).__name__}: {exc}",
                     "started": started, "ended": time.monotonic()})


def test_two_processes_swapping_at_once_take_turns(tmp_path: Path, artifacts, canary,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Two real processes released by one barrier swap into one repository: the swap lock makes them take turns;
    both promote distinct versions (or one is refused naming the other); the journal, the config and the folders
    agree afterwards and no confirmed version was lost."""
    from asr_optimize.triton import auth, journal
    from asr_optimize.triton.server import TritonServer

    repo = tmp_path / "repo"
    with TritonServer(repo) as server:
        _first_deploy(repo, server.http_url, artifacts["good"], canary)
        monkeypatch.setenv(auth.KEY_ENV, server.api_key)  # the spawned children find the server's key here
        ctx = multiprocessing.get_context("spawn")
        barrier, results = ctx.Barrier(2), ctx.Queue()
        procs = [ctx.Process(target=_swap_process, args=(str(repo), str(artifacts[a]), server.http_url, canary,
                                                        barrier, results)) for a in ("copy", "copy2")]
        for proc in procs:
            proc.start()
        outcomes = [results.get(timeout=500) for _ in procs]
        for proc in procs:
            proc.join(60)
            assert proc.exitcode == 0
        promoted = [o for o in outcomes if o["action"] == "promoted"]
        refused = [o for o in outcomes if o["action"] != "promoted"]
        assert promoted, outcomes
        for o in refused:
            assert "another swap of wav2vec2_ctc is in progress (pid" in o.get("error", ""), outcomes
        candidates = [o["candidate"] for o in promoted]
        assert len(set(candidates)) == len(candidates) and set(candidates) <= {2, 3}, outcomes
        if len(promoted) == 2:  # they took turns: one finished before the other chose its version
            first, second = sorted(promoted, key=lambda o: o["candidate"])
            assert "was v1" in first["summary"] and f"was v{first['candidate']}" in second["summary"], outcomes
        record = journal.read_journal(repo, MODEL)
        assert record.pending is None and record.serving == max(candidates)
        expected = sorted([1, *candidates])
        assert record.confirmed == expected == repo_mod.live_versions(repo, MODEL) == repo_mod.version_dirs(repo, MODEL)
        assert repo_mod.serving_version(repo, PIPELINE) == max(candidates)
        for version in expected:
            repo_mod.verify_version(repo, MODEL, version)
        assert _texts(server.http_url, canary.waves) == canary.reference_transcripts


# ------------------------------------------------------------------------------------------ 4: pending owners


def _pending_swap(repo: Path, artifact: Path, owner: dict) -> None:
    """The state a swap leaves mid-way: its backup saved, v2 written and listed live, the journal marking it pending
    by ``owner``."""
    from asr_optimize.triton import journal, snapshot

    snapshot.take(repo, MODEL, PIPELINE)
    repo_mod.write_acoustic_version(repo, MODEL, 2, artifact, "python_onnxruntime", artifact_manifest={
        "vocab_size": len(repo_mod.ctc_info(DEMO_MODEL)["tokens"])})
    repo_mod.set_live_versions(repo, MODEL, [1, 2])
    record = journal.read_journal(repo, MODEL)
    record.pending = journal.Pending(version=2, started=time.time(), **owner)
    journal.write_journal(repo, record)


def test_pending_swap_of_another_host_is_left_alone_and_a_reused_pid_is_repaired(
        tmp_path: Path, artifacts, canary, caplog: pytest.LogCaptureFixture) -> None:
    """A server start on a repository shared with another host does not delete the version that host is deploying
    (different boot id and hostname); a pending entry whose pid is alive here but started at another time (pid
    reuse) is repaired, and the repair is logged. Past the staleness limit another host's entry is repaired too."""
    from asr_optimize.triton import journal
    from asr_optimize.triton.server import TritonServer

    repo = tmp_path / "repo"
    with TritonServer(repo) as server:
        _first_deploy(repo, server.http_url, artifacts["good"], canary)
    config_v1 = (repo / MODEL / "config.pbtxt").read_bytes()
    me = journal.this_process()
    _pending_swap(repo, artifacts["copy"], {"pid": 1, "host": "other-host", "boot_id": "0" * 32, "pid_start": 99})
    v2_files = _tree(repo / MODEL / "2")
    with TritonServer(repo, load=[MODEL, PIPELINE]) as shared:
        assert any("pending from another host (pid 1, host other-host" in a and "left alone" in a
                   for a in shared.reconciled), shared.reconciled
        assert _texts(shared.http_url, canary.waves) == canary.reference_transcripts
    assert _tree(repo / MODEL / "2") == v2_files and repo_mod.live_versions(repo, MODEL) == [1, 2]
    assert journal.read_journal(repo, MODEL).pending.host == "other-host"

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        start = journal.process_start(sleeper.pid)
        assert start is not None
        record = journal.read_journal(repo, MODEL)
        record.pending = journal.Pending(version=2, started=time.time(), pid=sleeper.pid, host=me.host,
                                         boot_id=me.boot_id, pid_start=start + 1)  # alive pid, another process
        journal.write_journal(repo, record)
        caplog.set_level(logging.WARNING, logger="asr_optimize.triton")
        with TritonServer(repo, load=[MODEL, PIPELINE]) as restarted:
            assert any("v2 was never confirmed" in a and "now another process" in a for a in restarted.reconciled)
            assert _texts(restarted.http_url, canary.waves) == canary.reference_transcripts
    finally:
        sleeper.kill()
        sleeper.wait(10)
    assert any("swap journal repair" in r.getMessage() and "v2 was never confirmed" in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]
    assert repo_mod.version_dirs(repo, MODEL) == [1] and repo_mod.live_versions(repo, MODEL) == [1]
    assert (repo / MODEL / "config.pbtxt").read_bytes() == config_v1
    record = journal.read_journal(repo, MODEL)
    assert record.pending is None and record.serving == 1 and record.confirmed == [1]

    _pending_swap(repo, artifacts["copy"], {"pid": 1, "host": "other-host", "boot_id": "0" * 32})
    record = journal.read_journal(repo, MODEL)
    record.pending.started -= 120
    journal.write_journal(repo, record)
    actions = journal.reconcile(repo, MODEL, PIPELINE, stale_after_s=60)  # another host, but past the limit
    assert any("v2 was never confirmed" in a and "staleness limit" in a for a in actions), actions
    assert repo_mod.version_dirs(repo, MODEL) == [1] and journal.read_journal(repo, MODEL).pending is None


# ------------------------------------------------------------------------------------------ 5: sha256 at load


def test_damaged_files_fail_the_health_check_and_refuse_the_swap(tmp_path: Path, artifacts, canary,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A candidate whose bytes are not the ones its producer recorded, or whose repository copy changes before
    Triton loads it, is refused (nothing loaded, v1 serves). A deployed version whose file is changed in place
    (same size) fails the health check naming the file, and a server start on it is refused."""
    from asr_optimize.triton import journal
    from asr_optimize.triton.health import health_check
    from asr_optimize.triton.hotswap import SwapOptions, hot_swap
    from asr_optimize.triton.server import TritonServer, TritonServerError

    repo = tmp_path / "repo"
    damaged = copy_artifact(artifacts["copy"], tmp_path / "damaged" / "model.onnx")
    good_sha = hashlib.sha256(artifacts["copy"].read_bytes()).hexdigest()
    _corrupt_same_size(damaged)
    with TritonServer(repo) as server:
        url = server.http_url
        _first_deploy(repo, url, artifacts["good"], canary)
        assert health_check(url, repo, canary.waves[:1], n_requests=2).passed

        decision = hot_swap(repo, damaged, DEMO_MODEL, canary, url, SwapOptions(grace_s=0),
                            artifact_manifest={"sha256": good_sha})
        assert decision.action == "refused" and "its producer recorded" in decision.reasons[0], decision.summary()

        real_write = repo_mod.write_acoustic_version

        def write_then_damage(root, name, version, *args, **kwargs):
            manifest = real_write(root, name, version, *args, **kwargs)
            _corrupt_same_size(root / name / str(version) / "model.onnx")  # changed between write and load
            return manifest

        monkeypatch.setattr(repo_mod, "write_acoustic_version", write_then_damage)
        decision = hot_swap(repo, artifacts["copy"], DEMO_MODEL, canary, url, SwapOptions(grace_s=0))
        monkeypatch.undo()
        assert decision.action == "refused", decision.summary()
        assert "refused before loading" in decision.reasons[0] and "/2/model.onnx sha256" in decision.reasons[0]
        assert "does not match its manifest" in decision.reasons[0]
        assert repo_mod.version_dirs(repo, MODEL) == [1] and repo_mod.live_versions(repo, MODEL) == [1]
        assert journal.read_journal(repo, MODEL).pending is None
        assert _texts(url, canary.waves) == canary.reference_transcripts

        deployed = repo / MODEL / "1" / "model.onnx"
        original = deployed.read_bytes()
        _corrupt_same_size(deployed)
        assert deployed.stat().st_size == len(original)
        report = health_check(url, repo, canary.waves[:1], n_requests=2)
        assert not report.passed
        assert any(f"{deployed} sha256" in p and "does not match its manifest" in p for p in report.problems), \
            report.problems
    refused = TritonServer(repo, load=[MODEL, PIPELINE])
    try:
        with pytest.raises(TritonServerError, match=rf"{MODEL} v1 is damaged: {deployed} sha256"):
            refused.start()
        assert refused.process is None  # refused before tritonserver was launched
    finally:
        refused.cleanup()
    deployed.write_bytes(original)
