"""The stage contract every stage follows: a plain function that returns a ``StageResult``, cached through the store.

- **Plain first.** A stage is an ordinary function ``(inputs, options) -> StageResult`` that works without a Prefect
  server (the benchmark suite and the tests call them directly).
- **Caching lives in the store.** ``run_cached_stage`` keys an artifact by its parameters, the hashes of its inputs,
  the model revision and the code that builds it (the stage module and every first-party module it imports), and
  returns the stored artifact when one is complete. Because the store can be S3, a rerun on another worker reuses it.
- **One factory makes the Prefect task.** ``stage_task(fn, name=..., tags=..., retries=...)`` wraps a stage function
  with retries on transient faults only and tags (``gpu`` for GPU stages, added per run by ``on_device``); no wrapper
  repeats a signature.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, Field

import asr_optimize
from asr_optimize.errors import NoSpaceError, StoreError, TransientError
from asr_optimize.fileio import disk_full_cause
from asr_optimize.hashing import stable_hash
from asr_optimize.model.source import ResolvedModel
from asr_optimize.store.local import ArtifactRef, ArtifactStore, Manifest, runtime_environment

Status = Literal["ok", "cached", "skipped", "failed"]
T = TypeVar("T")


class StageResult(BaseModel, Generic[T]):
    """The outcome of one stage, as the report and the Prefect UI show it; ``output`` carries its typed result."""

    stage: str
    status: Status
    reason: str | None = None
    artifact_dir: Path | None = None
    location: str | None = None
    key: str | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    seconds: float = 0.0
    output: T | None = None

    def file(self, name: str) -> Path:
        if self.artifact_dir is None:
            raise FileNotFoundError(f"stage {self.stage} produced no artifact ({self.status}: {self.reason})")
        return self.artifact_dir / name

    @property
    def usable(self) -> bool:
        """Built now or reused from the store: its artifact can be read."""
        return self.status in ("ok", "cached")


def get_logger() -> logging.Logger | logging.LoggerAdapter:
    """Prefect's run logger inside a flow/task run (shown in the UI), a plain logger elsewhere."""
    try:
        from prefect.exceptions import MissingContextError
        from prefect.logging import get_run_logger

        return get_run_logger()
    except (MissingContextError, RuntimeError, ImportError):
        logger = logging.getLogger("asr_optimize")
        if not logger.handlers:
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
            logger.addHandler(handler)
            logger.setLevel(logging.INFO)
        return logger


def in_prefect_run() -> bool:
    """True inside a Prefect flow or task run, where artifacts can be attached to the run's page in the UI."""
    from prefect.context import FlowRunContext, TaskRunContext

    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def retry_on_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect retry condition: retry network blips and endpoints that are briefly down, nothing else."""
    try:
        state.result()
    except TransientError:
        return True
    except Exception:
        return False
    return False


FIRST_PARTY = ("asr_optimize", "tasks")
"""Packages whose source can change what a stage builds; third-party code is pinned by the manifest's environment."""


def _module_file(name: str, roots: tuple[Path, ...]) -> Path | None:
    """The source file of first-party module ``name`` under ``roots`` (a package's ``__init__.py``), or None."""
    parts = name.split(".")
    for root in roots:
        base = root.joinpath(*parts)
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate
    return None


def _imported_names(path: Path, module: str) -> set[str]:
    """Every module name ``path`` imports (top level or inside functions), ``from X import Y`` giving X and X.Y."""
    names: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import: resolve against this module's package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def source_closure(module: str, roots: tuple[Path, ...] | None = None,
                   first_party: tuple[str, ...] = FIRST_PARTY) -> dict[str, Path]:
    """``module`` and every first-party module it imports, directly or through others (found by reading the source,
    so lazy imports inside functions count), with the parent packages' ``__init__`` files."""
    roots = roots or (Path(asr_optimize.__file__).resolve().parents[1],)
    found: dict[str, Path] = {}
    pending = [module]
    while pending:
        name = pending.pop()
        if name in found or name.split(".")[0] not in first_party:
            continue
        path = _module_file(name, roots)
        if path is None:
            continue  # ``from pkg import function``: the name is not a module
        found[name] = path
        parents = [".".join(name.split(".")[:i]) for i in range(1, len(name.split(".")))]
        pending.extend([*parents, *_imported_names(path, name)])
    return found


@functools.lru_cache(maxsize=64)
def module_code_hash(module: str, roots: tuple[Path, ...] | None = None,
                     first_party: tuple[str, ...] = FIRST_PARTY) -> str:
    """Hash of the source of ``module`` and its first-party import closure: the code its artifacts depend on.

    A docstring edit in a module the stage never imports leaves the key alone; an edit to anything it imports
    (runners, the engine, parity) moves it, so a stored artifact is never reused across a code change that matters.
    """
    digest = hashlib.sha256()
    for name, path in sorted(source_closure(module, roots, first_party).items()):
        digest.update(name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def code_hash(func: Callable[..., Any]) -> str:
    """What a stage's artifact depends on in code: its own module and every first-party module that imports."""
    return module_code_hash(func.__module__)


def run_cached_stage(
    store: ArtifactStore,
    model: ResolvedModel,
    stage: str,
    params: dict[str, Any],
    inputs: dict[str, str],
    build: Callable[[Path], dict[str, Any]],
    use_cache: bool = True,
) -> StageResult:
    """Return the stored artifact for these inputs, or build it in a scratch folder and publish it.

    ``build(out_dir)`` writes the artifact's files and returns its metrics. The manifest is written last.
    """
    log = get_logger()
    key = stable_hash(
        {"stage": stage, "params": params, "inputs": inputs, "revision": model.revision, "code": code_hash(build)}
    )
    ref = ArtifactRef(model_slug=model.slug, revision=model.revision, stage=stage, key=key)
    if use_cache and (found := store.get(ref)) is not None:
        log.info("%s: reusing cached artifact %s (%s)", stage, ref.path, found.location)
        return StageResult(stage=stage, status="cached", artifact_dir=found.local_dir, location=found.location,
                           key=key, metrics=found.manifest.metrics)
    start = time.perf_counter()
    with store.staging() as scratch:
        try:
            metrics = build(scratch)
        except Exception as exc:  # a full disk mid-build: a clear StoreError naming the folder, not a raw OSError
            if isinstance(exc, StoreError) or (cause := disk_full_cause(exc)) is None:
                raise
            raise NoSpaceError(
                f"{stage}: no space left on the disk holding {scratch.parent} while building the artifact in "
                f"{scratch} ({type(cause).__name__}: {cause}); nothing was published: free space there or point the "
                "store (and TMPDIR for S3 stores) at a larger disk, then rerun"
            ) from exc
        seconds = round(time.perf_counter() - start, 3)
        manifest = Manifest(
            ref=ref, source_model=model.source, source_revision=model.revision, params=params, inputs=inputs,
            metrics=metrics, timings={"build_seconds": seconds}, environment=runtime_environment(),
        )
        stored = store.put(scratch, manifest)
    if stored.reused:  # another worker published the same key first: theirs is kept
        log.info("%s: built in %.1f s, but an identical artifact was published meanwhile: reusing %s", stage,
                 seconds, stored.location)
    else:
        log.info("%s: built in %.1f s, stored at %s", stage, seconds, stored.location)
    return StageResult(stage=stage, status="cached" if stored.reused else "ok", artifact_dir=stored.local_dir,
                       location=stored.location, key=key, metrics=metrics, seconds=seconds)


def skipped(stage: str, reason: str, **output: Any) -> StageResult:
    """A stage that could not run here, with the reason logged (shown in logs, report and UI)."""
    get_logger().warning("%s: skipped: %s", stage, reason)
    return StageResult(stage=stage, status="skipped", reason=reason, **output)


def stage_task(
    fn: Callable[..., StageResult],
    *,
    name: str,
    tags: Iterable[str] = (),
    retries: int = 0,
    retry_delay_seconds: int | list[int] = 10,
) -> Any:
    """The Prefect task for stage function ``fn``: same signature, retries only on ``TransientError``.

    Prefect's own result cache is off (``NO_CACHE``): the store is the cache, keyed by content, shared by workers.
    Stages that show something in the UI (report, deploy) create their Prefect artifacts themselves when
    ``in_prefect_run()``.
    """
    from prefect import task
    from prefect.cache_policies import NO_CACHE

    return task(fn, name=name, tags=set(tags), retries=retries, retry_delay_seconds=retry_delay_seconds,
                retry_condition_fn=retry_on_transient if retries else None, cache_policy=NO_CACHE)


def on_device(stage: Any, device: str) -> Any:
    """The task with the ``gpu`` tag when it runs on CUDA: the ``gpu`` concurrency limit then serialises GPU work."""
    return stage.with_options(tags={*stage.tags, "gpu"}) if device == "cuda" else stage
