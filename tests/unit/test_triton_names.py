"""Triton names, repository paths, swap-journal owners, the swap lock, the pre-swap backup and version integrity
(no server: real folders under tmp_path and real processes)."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from asr_optimize.errors import UnsafePathError
from asr_optimize.triton import journal, snapshot
from asr_optimize.triton.names import InvalidModelName, check_model_name, repo_path

BAD_NAMES = ["", ".", "..", "a/b", "/etc", "../x", "a\\b", ".hidden", "-x", "a b", 'a"b', "a\x00b", "x" * 129]


@pytest.mark.parametrize("name", ["asr", "wav2vec2_ctc", "A.b-c_1", "9", "x" * 128])
def test_good_names_pass(name: str) -> None:
    assert check_model_name(name) == name


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_names_are_refused_everywhere(name: str, tmp_path: Path) -> None:
    from asr_optimize.loadtest.loadgen import ServeBenchOptions
    from asr_optimize.triton.hotswap import SwapOptions
    from blocks.triton_target import TritonTarget

    with pytest.raises(InvalidModelName, match=r"invalid Triton model name .* it "):
        check_model_name(name)
    with pytest.raises(UnsafePathError):
        repo_path(tmp_path, name)
    for field in ("model_name", "pipeline_name"):
        for cls in (SwapOptions, TritonTarget, ServeBenchOptions):
            with pytest.raises(ValidationError, match=rf"{field}\n.*invalid Triton model name"):
                cls(**{field: name})
    assert list(tmp_path.iterdir()) == []


def test_same_model_and_pipeline_name_refused() -> None:
    from asr_optimize.triton.hotswap import SwapOptions
    from blocks.triton_target import TritonTarget

    for cls in (SwapOptions, TritonTarget):
        with pytest.raises(ValidationError, match=r"both named 'asr'|are both 'asr'"):
            cls(model_name="asr", pipeline_name="asr")


def test_repo_path_confines_versions_and_files(tmp_path: Path) -> None:
    assert repo_path(tmp_path, "m", 3, "model.onnx") == tmp_path / "m" / "3" / "model.onnx"
    assert repo_path(tmp_path, "p", "1/ctc.json") == tmp_path / "p" / "1" / "ctc.json"
    for part in ("..", "../../x", "/abs", "", -1):
        with pytest.raises(UnsafePathError):
            repo_path(tmp_path, "m", part)
    (tmp_path / "outside").mkdir()
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "m").symlink_to(tmp_path / "outside")
    with pytest.raises(UnsafePathError, match="symlink"):
        repo_path(tmp_path / "repo", "m", "config.pbtxt")


def test_repository_writers_refuse_bad_names_before_writing(tmp_path: Path) -> None:
    from asr_optimize.triton import repository as repo_mod
    from tests.support.assets import DEMO_MODEL

    repo = tmp_path / "parent" / "repo"
    repo.mkdir(parents=True)
    sentinel = tmp_path / "parent" / "keep.txt"
    sentinel.write_text("keep")
    for name in ("..", "", "a/b"):
        with pytest.raises(UnsafePathError):
            repo_mod.write_pipeline(repo, name, DEMO_MODEL, "wav2vec2_ctc", 1, True)
        with pytest.raises(UnsafePathError):
            repo_mod.write_pipeline(repo, "asr", DEMO_MODEL, name, 1, True)
        with pytest.raises(UnsafePathError):
            repo_mod.version_dirs(repo, name)
    assert sorted(p.name for p in (tmp_path / "parent").iterdir()) == ["keep.txt", "repo"]
    assert list(repo.iterdir()) == [] and sentinel.read_text() == "keep"


# ------------------------------------------------------------------------------------------------ journal owners


def _start_ticks(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])


def test_owner_identity() -> None:
    me = journal.this_process()
    assert me.pid == os.getpid() and me.host == socket.gethostname() and me.pid_start == _start_ticks(os.getpid())
    assert me.boot_id == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert journal.owner_state(me)[0] == "alive"
    other_host = me.model_copy(update={"host": "elsewhere", "boot_id": "0" * 32})
    state, why = journal.owner_state(other_host)
    assert state == "foreign" and "elsewhere" in why
    other_boot = me.model_copy(update={"boot_id": "f" * 32})
    assert journal.owner_state(other_boot)[0] == "foreign"
    reused = me.model_copy(update={"pid_start": me.pid_start - 7})  # the pid exists, a different process holds it
    state, why = journal.owner_state(reused)
    assert state == "dead" and "another process" in why
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert journal.owner_state(me.model_copy(update={"pid": child.pid}))[0] == "dead"
    assert journal.owner_state(journal.Owner(pid=os.getpid()))[0] == "unknown"  # old journal, pid alive
    assert journal.owner_state(journal.Owner(pid=child.pid))[0] == "dead"


def test_old_pid_only_journal_still_reads(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    old = {"model_name": "m", "pipeline_name": "p", "serving": 1, "confirmed": [1],
           "pending": {"version": 2, "pid": 12345, "started": time.time()}, "updated": time.time()}
    journal.journal_path(tmp_path, "m").write_text(json.dumps(old))
    record = journal.read_journal(tmp_path, "m")
    assert record.pending.version == 2 and record.pending.pid == 12345 and record.pending.host is None


def test_journal_naming_another_model_or_a_bad_name_is_refused(tmp_path: Path) -> None:
    from asr_optimize.triton.repository import RepositoryError

    (tmp_path / "m").mkdir()
    for names in ({"model_name": "other", "pipeline_name": "p"}, {"model_name": "m", "pipeline_name": ".."}):
        journal.journal_path(tmp_path, "m").write_text(json.dumps(names))
        with pytest.raises(RepositoryError, match="journal"):
            journal.read_journal(tmp_path, "m")


# ------------------------------------------------------------------------------------------------ the swap lock


def _hold_lock(root: str, ready, release) -> None:
    with journal.swap_lock(Path(root), "m"):
        ready.set()
        release.wait(30)


def test_swap_lock_excludes_another_process_and_names_it(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(str(tmp_path), ready, release))
    holder.start()
    try:
        assert ready.wait(60)
        start = time.monotonic()
        busy = rf"another swap of m is in progress \(pid {holder.pid}, host {socket.gethostname()}"
        with pytest.raises(journal.SwapInProgressError, match=busy), journal.swap_lock(tmp_path, "m", timeout_s=0.5):
            pass
        assert time.monotonic() - start >= 0.5
    finally:
        release.set()
        holder.join(30)
    with journal.swap_lock(tmp_path, "m", timeout_s=5):  # released when its holder is done
        assert json.loads(journal.lock_path(tmp_path, "m").read_text())["pid"] == os.getpid()
    assert journal.lock_path(tmp_path, "m") == tmp_path / ".m.swap.lock"


def test_swap_lock_released_when_holder_is_killed(tmp_path: Path) -> None:
    code = ("import sys, time; from pathlib import Path; from asr_optimize.triton import journal\n"
            "with journal.swap_lock(Path(sys.argv[1]), 'm'):\n    print('held', flush=True); time.sleep(600)\n")
    child = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        with pytest.raises(journal.SwapInProgressError), journal.swap_lock(tmp_path, "m"):
            pass
    finally:
        child.kill()
        child.wait(10)
    with journal.swap_lock(tmp_path, "m", timeout_s=5):
        pass


# ------------------------------------------------------------------------------------------------ backup, integrity


def test_snapshot_restores_bytes_and_removes_what_the_swap_created(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    config = tmp_path / "m" / "config.pbtxt"
    config.write_bytes(b'name: "m"\ninstance_group [ { kind: KIND_CPU } ]\n  odd   spacing kept\n')
    before = config.read_bytes()
    saved = snapshot.take(tmp_path, "m", "p")
    config.write_text("kind: KIND_GPU\n")
    (tmp_path / "p" / "1").mkdir(parents=True)
    (tmp_path / "p" / "config.pbtxt").write_text("pipeline")
    (tmp_path / "p" / "1" / "model.py").write_text("code")
    changed = snapshot.restore(tmp_path, snapshot.read(tmp_path, "m"))
    assert config.read_bytes() == before and not (tmp_path / "p").exists()
    assert set(changed) == {"m/config.pbtxt", "p/config.pbtxt", "p/1/model.py"}
    assert saved == snapshot.read(tmp_path, "m")
    (snapshot.backup_dir(tmp_path, "m") / "0").write_bytes(b"damaged")  # a damaged backup restores nothing
    config.write_text("kind: KIND_GPU\n")
    with pytest.raises(snapshot.SnapshotError, match="damaged"):
        snapshot.restore(tmp_path, saved)
    assert config.read_text() == "kind: KIND_GPU\n"


def test_verify_version_names_a_same_size_corruption(tmp_path: Path) -> None:
    from asr_optimize.triton import repository as repo_mod

    artifact = tmp_path / "art" / "model.plan"
    artifact.parent.mkdir()
    artifact.write_bytes(b"engine bytes" * 100)
    repo = tmp_path / "repo"
    manifest = repo_mod.write_acoustic_version(repo, "m", 1, artifact, "tensorrt_plan")
    assert manifest.files == {"model.plan": manifest.sha256}
    assert repo_mod.verify_version(repo, "m", 1).version == 1
    deployed = repo / "m" / "1" / "model.plan"
    data = bytearray(deployed.read_bytes())
    data[5] ^= 0xFF
    deployed.write_bytes(bytes(data))
    with pytest.raises(repo_mod.IntegrityError, match=r"m v1 is damaged: .*/m/1/model.plan sha256 .* does not match"):
        repo_mod.verify_version(repo, "m", 1)
    with pytest.raises(repo_mod.IntegrityError, match="producer recorded"):  # a candidate that is not what was built
        repo_mod.write_acoustic_version(repo, "m", 2, artifact, "tensorrt_plan",
                                        artifact_manifest={"sha256": "0" * 64})
    assert repo_mod.version_dirs(repo, "m") == [1] and not list((repo / "m").glob(".staging-*"))
