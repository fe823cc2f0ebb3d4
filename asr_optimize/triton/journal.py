"""Crash-safe version history of a Triton model: a journal written before every swap, reconciled on start.

Why (issue #13, item 2): the live list used to be read back from ``config.pbtxt``, which a swap rewrites *before*
the canary. A SIGKILL between the two left a never-canaried version listed as live; the next run kept it and
retired the good one. Now ``<root>/<model>/.swap-journal.json`` (atomic rename, fsync) records the confirmed
versions and the serving one, and marks a candidate as *pending* before its folder is written. ``reconcile``
(called at the start of every swap and before the bundled server starts) removes a pending version: it leaves
the live list, the pipeline is pointed back at the journal's serving version, the folder is deleted. A pending
version is never promoted and the serving version is never deleted.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from asr_optimize.triton import repository as repo_mod
from asr_optimize.triton.repository import RepositoryError

JOURNAL_NAME = ".swap-journal.json"
STALE_PENDING_S = 6 * 3600.0
"""A pending swap older than this is abandoned even if its pid is alive again (pid reuse)."""


class Pending(BaseModel):
    version: int
    pid: int
    started: float


class Journal(BaseModel):
    model_name: str
    pipeline_name: str
    serving: int | None = None
    confirmed: list[int] = Field(default_factory=list)
    """Versions that passed the canary (or were serving before the journal existed) and may stay live."""
    pending: Pending | None = None
    updated: float = Field(default_factory=time.time)


def journal_path(root: Path, model: str) -> Path:
    return Path(root) / model / JOURNAL_NAME


def read_journal(root: Path, model: str) -> Journal | None:
    path = journal_path(root, model)
    if not path.is_file():
        return None
    try:
        return Journal.model_validate_json(path.read_text(encoding="utf-8"))
    except (ValidationError, ValueError) as exc:
        raise RepositoryError(f"{path}: unreadable swap journal ({exc}); inspect the repository, then delete the "
                              "journal to rebuild it from config.pbtxt") from exc


def write_journal(root: Path, journal: Journal) -> None:
    """Atomic and durable: temp file, fsync, rename, fsync of the folder."""
    path = journal_path(root, journal.model_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    journal.updated = time.time()
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        fh.write(journal.model_dump_json(indent=1))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    with contextlib.suppress(OSError):
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def current(root: Path, model: str, pipeline: str) -> Journal:
    """The journal, or one bootstrapped from the repository as it is (a repository from before journals)."""
    journal = read_journal(root, model)
    if journal is not None:
        return journal
    serving = repo_mod.serving_version(root, pipeline)
    on_disk = set(repo_mod.version_dirs(root, model))
    live = [v for v in repo_mod.live_versions(root, model) if v in on_disk]
    return Journal(model_name=model, pipeline_name=pipeline, serving=serving,
                   confirmed=sorted(set(live) | ({serving} if serving in on_disk else set())))


def begin(root: Path, journal: Journal, version: int) -> Journal:
    """Record ``version`` as pending before anything of it is written."""
    journal = journal.model_copy(deep=True)
    journal.pending = Pending(version=version, pid=os.getpid(), started=time.time())
    write_journal(root, journal)
    return journal


def settle(root: Path, journal: Journal, serving: int | None, confirmed: list[int]) -> Journal:
    """The swap ended (promoted, rolled back, refused or retired): no pending version."""
    journal = journal.model_copy(deep=True)
    journal.pending, journal.serving, journal.confirmed = None, serving, sorted(set(confirmed))
    write_journal(root, journal)
    return journal


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this host (a swap's owner, a server's owner)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sweep_staging(root: Path, model: str) -> list[str]:
    removed = []
    for staging in (Path(root) / model).glob(".staging-*"):
        pid = staging.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(staging, ignore_errors=True)
            removed.append(f"removed half-written {staging.name}")
    return removed


def reconcile(root: Path, model: str, pipeline: str, client: Any | None = None, timeout_s: float = 60.0) -> list[str]:
    """Undo a swap that died mid-way: drop its pending version, point the pipeline at the serving one.

    ``client`` (a keyed Triton HTTP client) makes a running server reload the corrected configs before the folder
    is deleted; without one (server not started yet) only files change. Returns what was done, for the report.
    """
    root = Path(root)
    if not (root / model).is_dir():
        return []
    actions = _sweep_staging(root, model)
    journal = read_journal(root, model)
    if journal is None or journal.pending is None:
        return actions
    pending = journal.pending.version
    stale = time.time() - journal.pending.started > STALE_PENDING_S
    if pid_alive(journal.pending.pid) and journal.pending.pid != os.getpid() and not stale:
        raise RepositoryError(f"{root / model}: v{pending} is being deployed by process {journal.pending.pid}; "
                              "wait for it to finish (one swap per repository at a time)")
    on_disk = set(repo_mod.version_dirs(root, model))
    serving = journal.serving if journal.serving in on_disk else None
    keep = sorted({v for v in journal.confirmed if v in on_disk and v != pending} | ({serving} if serving else set()))
    actions.append(f"v{pending} was never confirmed (its swap died): removed, v{serving} keeps serving"
                   if serving else f"v{pending} was never confirmed (its first deployment died): removed")
    pipeline_changed = False
    if keep:
        repo_mod.set_live_versions(root, model, keep)
        if serving is not None and repo_mod.serving_version(root, pipeline) != serving:
            repo_mod.set_serving_version(root, pipeline, serving)
            pipeline_changed = True
            actions.append(f"{pipeline} pointed back at v{serving}")
    if client is not None:
        _reload(client, model, pipeline, keep, pipeline_changed, pending, timeout_s)
    if not keep:  # the first deployment died: nothing to serve
        shutil.rmtree(root / pipeline, ignore_errors=True)
        (root / model / "config.pbtxt").unlink(missing_ok=True)
    if pending != serving and pending not in journal.confirmed:
        shutil.rmtree(root / model / str(pending), ignore_errors=True)
    settle(root, journal, serving, keep)
    return actions


def _reload(client: Any, model: str, pipeline: str, keep: list[int], pipeline_changed: bool, pending: int,
            timeout_s: float) -> None:
    """Make a running server match the corrected files; errors are left for the swap's own checks."""
    with contextlib.suppress(Exception):
        if keep:
            client.load_model(model)
            if pipeline_changed:
                client.load_model(pipeline)
        else:
            client.unload_model(pipeline)
            client.unload_model(model)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            index = client.get_model_repository_index()
        except Exception:
            return
        if not any(e.get("name") == model and e.get("version") == str(pending) and e.get("state") == "READY"
                   for e in index):
            return
        time.sleep(0.1)
