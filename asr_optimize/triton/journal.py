"""Crash-safe version history of a Triton model: a journal written before every swap, reconciled on start.

Why: the live list used to be read back from ``config.pbtxt``, which a swap rewrites *before*
the canary. A SIGKILL between the two left a never-canaried version listed as live; the next run kept it and
retired the good one. Now ``<root>/<model>/.swap-journal.json`` (atomic rename, fsync) records the confirmed
versions and the serving one, and marks a candidate as *pending* before its folder is written. ``reconcile``
(called at the start of every swap and before the bundled server starts) removes a pending version: it leaves
the live list, the pipeline is pointed back at the journal's serving version, the folder is deleted. A pending
version is never promoted and the serving version is never deleted.

One swap at a time: ``swap_lock`` (``fcntl.flock`` on ``<root>/.<model>.swap.lock``) is held from reconcile to
settle, so two swaps can no longer both choose N+1 or clear each other's pending mark. A pending mark names its
owner by host, boot id, pid and process start time: a swap is repaired only when its owner is known to be gone,
never because a pid from another host or container happens to be free (or taken) here. The files a swap rewrites
are saved first (``asr_optimize.triton.snapshot``) and put back byte for byte by a repair.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from asr_optimize.fileio import safe_join
from asr_optimize.triton import repository as repo_mod
from asr_optimize.triton import snapshot
from asr_optimize.triton.names import TritonModelName, check_model_name, repo_path
from asr_optimize.triton.repository import RepositoryError

logger = logging.getLogger(__name__)

JOURNAL_NAME = ".swap-journal.json"
STALE_PENDING_S = 6 * 3600.0
"""Default staleness limit: a pending swap whose owner cannot be checked (another host, or a journal from before
owners were recorded) is repaired once it is older than this (``reconcile(stale_after_s=...)``,
``SwapOptions.stale_pending_s``, ``TritonServer(stale_pending_s=...)``)."""
LOCK_SUFFIX = ".swap.lock"


class SwapInProgressError(RepositoryError):
    """Another swap of the same model holds the repository (this host or another); nothing was changed."""


class Owner(BaseModel):
    """Who runs a swap: a pid means something only together with the host, the boot and the process start time."""

    pid: int
    host: str | None = None
    boot_id: str | None = None
    pid_start: int | None = None
    """Start time of the process in clock ticks since boot (``/proc/<pid>/stat`` field 22): a reused pid differs."""

    def describe(self) -> str:
        return f"pid {self.pid}, host {self.host or 'unknown'}"


class Pending(Owner):
    """The candidate version a swap marked before writing it, and its owner (old journals: ``pid`` only)."""

    version: int
    started: float


class Journal(BaseModel):
    model_name: TritonModelName
    pipeline_name: TritonModelName
    serving: int | None = None
    confirmed: list[int] = Field(default_factory=list)
    """Versions that passed the canary (or were serving before the journal existed) and may stay live."""
    pending: Pending | None = None
    updated: float = Field(default_factory=time.time)


def journal_path(root: Path, model: str) -> Path:
    return repo_path(root, model, JOURNAL_NAME)


def read_journal(root: Path, model: str) -> Journal | None:
    path = journal_path(root, model)
    if not path.is_file():
        return None
    try:
        journal = Journal.model_validate_json(path.read_text(encoding="utf-8"))
    except (ValidationError, ValueError) as exc:
        raise RepositoryError(f"{path}: unreadable swap journal ({exc}); inspect the repository, then delete the "
                              "journal to rebuild it from config.pbtxt") from exc
    if journal.model_name != model:
        raise RepositoryError(f"{path}: the swap journal names model {journal.model_name!r}, not its folder {model!r}; "
                              "inspect the repository, then delete the journal to rebuild it from config.pbtxt")
    return journal


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
    journal.pending = Pending(version=version, started=time.time(), **this_process().model_dump())
    write_journal(root, journal)
    return journal


def settle(root: Path, journal: Journal, serving: int | None, confirmed: list[int]) -> Journal:
    """The swap ended (promoted, rolled back, refused or retired): no pending version."""
    journal = journal.model_copy(deep=True)
    journal.pending, journal.serving, journal.confirmed = None, serving, sorted(set(confirmed))
    write_journal(root, journal)
    snapshot.discard(root, journal.model_name)  # no swap in flight: nothing left to restore
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


def boot_id() -> str | None:
    """This boot of this kernel (containers on one host share it; a reboot changes it)."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip() or None
    except OSError:
        return None


def process_start(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot (``/proc/<pid>/stat`` field 22), or None if unknown."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[19])  # fields after "(comm)" start at field 3
    except (OSError, ValueError, IndexError):
        return None


def this_process() -> Owner:
    return Owner(pid=os.getpid(), host=socket.gethostname(), boot_id=boot_id(), pid_start=process_start(os.getpid()))


OwnerState = Literal["alive", "dead", "foreign", "unknown"]


def owner_state(owner: Owner) -> tuple[OwnerState, str]:
    """Whether a swap's owner still runs, and how it was told.

    alive: on this host (same hostname and boot id), the pid exists and started when the owner did. dead: on this
    host, and the pid is gone or belongs to a newer process (pid reuse; a container's pid 1 looks alive forever).
    foreign: another host, or this host before a reboot: nothing here can tell, so it is not touched.
    unknown: a journal from before owners were recorded (pid only) whose pid exists."""
    if owner.host is None and owner.boot_id is None:
        alive = pid_alive(owner.pid)
        return ("unknown" if alive else "dead"), f"pid {owner.pid}, no host recorded"
    me = this_process()
    if owner.host != me.host or (owner.boot_id and me.boot_id and owner.boot_id != me.boot_id):
        boot = f", boot {owner.boot_id[:8]}" if owner.boot_id else ""
        return "foreign", f"pid {owner.pid}, host {owner.host}{boot}: not this host ({me.host})"
    if not pid_alive(owner.pid):
        return "dead", f"pid {owner.pid} on this host has exited"
    start = process_start(owner.pid)
    if owner.pid_start is not None and start is not None and start != owner.pid_start:
        return "dead", f"pid {owner.pid} on this host is now another process (started later): the owner exited"
    return "alive", f"pid {owner.pid}, host {owner.host}"


def lock_path(root: Path, model: str) -> Path:
    """``<root>/.<model>.swap.lock``: beside the model's folder, so it outlives that folder's removal."""
    return safe_join(Path(root), f".{check_model_name(model)}{LOCK_SUFFIX}")


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(info["since"])))
        return f"pid {info['pid']}, host {info['host']}, since {since}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"


@contextlib.contextmanager
def swap_lock(root: Path, model: str, timeout_s: float = 0.0, poll_s: float = 0.1) -> Iterator[None]:
    """Hold the exclusive swap lock of ``model`` (``fcntl.flock``) for the whole swap: reconcile to settle.

    Waits up to ``timeout_s`` for a swap in progress, then raises ``SwapInProgressError`` naming its holder. The
    kernel releases the lock when its holder dies (even by SIGKILL), so a dead swap never blocks the next one."""
    path = lock_path(root, model)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise SwapInProgressError(
                        f"another swap of {model} is in progress ({_holder(path)}); waited {timeout_s:.0f} s for "
                        f"it in {Path(root)}: retry when it has finished (lock {path.name})") from None
                time.sleep(poll_s)
        me = this_process()
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": me.pid, "host": me.host, "boot_id": me.boot_id,
                                  "since": time.time()}).encode(), 0)
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _sweep_staging(root: Path, model: str) -> list[str]:
    removed = []
    folder = repo_path(root, model)
    for staging in [*folder.glob(".staging-*"), *folder.glob(f"{snapshot.BACKUP_DIR}.*.tmp")]:
        pid = staging.name.removesuffix(".tmp").replace(".", "-").rsplit("-", 1)[-1]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(staging, ignore_errors=True)
            removed.append(f"removed half-written {staging.name}")
    return removed


def reconcile(root: Path, model: str, pipeline: str, client: Any | None = None, timeout_s: float = 60.0,
              stale_after_s: float = STALE_PENDING_S, lock_timeout_s: float = 0.0) -> list[str]:
    """Undo a swap that died mid-way (see ``reconcile_locked``), holding the model's swap lock.

    Raises ``SwapInProgressError`` when another swap holds the lock longer than ``lock_timeout_s``."""
    if not repo_path(root, model).is_dir():
        return []
    with swap_lock(root, model, lock_timeout_s):
        return reconcile_locked(root, model, pipeline, client, timeout_s, stale_after_s)


def reconcile_locked(root: Path, model: str, pipeline: str, client: Any | None = None, timeout_s: float = 60.0,
                     stale_after_s: float = STALE_PENDING_S) -> list[str]:
    """Undo a swap that died mid-way: the files it rewrote are restored from its backup (byte for byte), its pending
    version leaves the live list and is deleted, the pipeline points at the serving version. The caller holds the
    swap lock.

    A pending swap is repaired only when its owner is known to be gone (``owner_state``): one from another host is
    left alone and reported unless it is older than ``stale_after_s``; one whose owner is alive raises
    ``SwapInProgressError``. ``client`` (a keyed Triton HTTP client) makes a running server reload the corrected
    configs before the folder is deleted; without one (server not started yet) only files change. Returns what was
    done, for the report; each action is also logged.
    """
    root = Path(root)
    check_model_name(pipeline, "Triton pipeline name")
    if not repo_path(root, model).is_dir():
        return []
    actions = _sweep_staging(root, model)
    journal = read_journal(root, model)
    if journal is None or journal.pending is None:
        if snapshot.backup_dir(root, model).exists():  # died after saving the backup, before marking pending
            snapshot.discard(root, model)
            actions.append(f"removed the backup of a {model} swap that died before it changed anything")
        return _logged(root, model, actions)
    owner = journal.pending
    pending = owner.version
    state, who = owner_state(owner)
    mine = owner.pid == os.getpid() and owner.pid_start in (None, process_start(owner.pid))
    if mine and state in ("alive", "unknown"):  # this process holds the lock: its own earlier swap died
        state, who = "dead", f"pid {owner.pid} (this process: an earlier swap of it ended without settling)"
    age = time.time() - owner.started
    if state == "alive" or (state == "unknown" and age <= stale_after_s):
        raise SwapInProgressError(f"another swap of {model} is in progress ({who}): v{pending} is being deployed "
                                  f"into {root}; wait for it to finish")
    if state == "foreign" and age <= stale_after_s:
        actions.append(f"v{pending} of {model} is pending from another host ({who}, started {age / 60:.0f} min ago): "
                       f"left alone; it is repaired on its host, or here once older than {stale_after_s:.0f} s")
        return _logged(root, model, actions)
    why = who if state == "dead" else f"{who}; older than the {stale_after_s:.0f} s staleness limit"
    on_disk = set(repo_mod.version_dirs(root, model))
    serving = journal.serving if journal.serving in on_disk else None
    keep = sorted({v for v in journal.confirmed if v in on_disk and v != pending} | ({serving} if serving else set()))
    actions.append(f"v{pending} was never confirmed (its swap died: {why}): removed, v{serving} keeps serving"
                   if serving else f"v{pending} was never confirmed (its first deployment died: {why}): removed")
    was_serving = _serving_or_none(root, pipeline)
    restored: list[str] = []
    try:
        saved = snapshot.read(root, model)
        if saved is not None and (saved.model_name, saved.pipeline_name) == (model, pipeline):
            restored = snapshot.restore(root, saved)
    except (OSError, ValueError) as exc:
        actions.append(f"the swap's backup could not be restored ({type(exc).__name__}: {exc}); "
                       "the live versions and the serving version were repaired in place")
    if restored:
        actions.append("restored as before the swap: " + ", ".join(restored))
    pipeline_changed = any(r.startswith(f"{pipeline}/") for r in restored)
    if keep:
        if repo_mod.read_config(root, model) is not None and repo_mod.live_versions(root, model) != keep:
            repo_mod.set_live_versions(root, model, keep)
        if serving is not None and repo_mod.read_config(root, pipeline) is not None \
                and repo_mod.serving_version(root, pipeline) != serving:
            repo_mod.set_serving_version(root, pipeline, serving)
            pipeline_changed = True
        if serving is not None and was_serving not in (None, serving):
            actions.append(f"{pipeline} pointed back at v{serving}")
    if client is not None:
        _reload(client, model, pipeline, keep, pipeline_changed, pending, timeout_s)
    if not keep:  # the first deployment died: nothing to serve
        shutil.rmtree(repo_path(root, pipeline), ignore_errors=True)
        repo_path(root, model, "config.pbtxt").unlink(missing_ok=True)
    if pending != serving and pending not in journal.confirmed:
        shutil.rmtree(repo_path(root, model, pending), ignore_errors=True)
    settle(root, journal, serving, keep)
    return _logged(root, model, actions)


def _serving_or_none(root: Path, pipeline: str) -> int | None:
    try:
        return repo_mod.serving_version(root, pipeline)
    except (RepositoryError, ValueError):
        return None


def _logged(root: Path, model: str, actions: list[str]) -> list[str]:
    for action in actions:
        logger.warning("swap journal repair in %s: %s", repo_path(root, model), action)
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
