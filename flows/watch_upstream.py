"""The ``watch-upstream`` flow: emit ``asr.model.updated`` when a watched hub model gets a new revision.

For each watched model it asks the hub (``huggingface_hub``; honours ``HF_ENDPOINT``) for the commit sha of
``main`` and compares it with what the model store remembers:

- the ``upstream--<model>`` pointer: the last revision this watcher announced, and
- the model's ``production`` pointer: the revision the last promoted build was made from.

A sha that neither knows is new: the watcher emits one Prefect event

    event:    asr.model.updated
    resource: huggingface.model.<owner/name>
    payload:  {"revision": <sha>, "model": <owner/name>, "previous": <sha or null>}

and records it in the ``upstream--<model>`` pointer (with history), so the next check stays quiet. The
``asr-optimize/prod`` deployment has a trigger on that event that passes ``revision`` as a parameter
(see ``prefect.yaml``). A sha the store already knows emits nothing.

    asr-optimize watch --model ai4bharat/indicwav2vec-hindi --store model_store
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Literal

from prefect import flow
from pydantic import BaseModel

from asr_optimize.errors import AsrOptimizeError
from asr_optimize.settings import get_settings
from asr_optimize.store.local import ArtifactStore, production_pointer, slugify_model
from tasks.common import get_logger

EVENT_NAME = "asr.model.updated"
DEFAULT_WATCHED = ["ai4bharat/indicwav2vec-hindi"]


class UpstreamCheck(BaseModel):
    """What the watcher found and did for one model."""

    model: str
    action: Literal["emitted", "unchanged", "error"]
    revision: str | None = None
    previous: str | None = None
    event_id: str | None = None
    reason: str = ""


def upstream_pointer(model: str) -> str:
    """The store pointer that remembers the last announced revision of ``model``."""
    return f"upstream--{slugify_model(model)}"


def resource_id(model: str) -> str:
    """The Prefect event resource id of a hub model (what the prod deployment's trigger matches)."""
    return f"huggingface.model.{model}"


def latest_revision(model: str, branch: str = "main") -> str:
    """The commit sha of ``branch`` on the hub (``HF_ENDPOINT`` if set), with a clear error."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    endpoint = os.environ.get("HF_ENDPOINT") or None
    where = endpoint or "huggingface.co"
    try:
        info = HfApi(endpoint=endpoint, token=os.environ.get("HF_TOKEN") or None).model_info(model, revision=branch)
    except RepositoryNotFoundError as exc:
        raise AsrOptimizeError(f"hub ({where}) has no model {model!r} (or it is private)") from exc
    except RevisionNotFoundError as exc:
        raise AsrOptimizeError(f"model {model!r} has no branch {branch!r}") from exc
    except (HfHubHTTPError, OSError) as exc:
        raise AsrOptimizeError(f"cannot ask the hub ({where}) about {model!r}: {exc}") from exc
    if not info.sha:
        raise AsrOptimizeError(f"hub answered for {model!r} without a commit sha")
    return info.sha


def _emit(model: str, revision: str, previous: str | None) -> str | None:
    from prefect.events import emit_event

    event = emit_event(
        event=EVENT_NAME,
        resource={"prefect.resource.id": resource_id(model), "prefect.resource.name": model},
        payload={"revision": revision, "model": model, "previous": previous},
    )
    return str(event.id) if event is not None else None


def check_upstream(
    models: list[str],
    store: ArtifactStore,
    revision_of: Callable[[str], str] = latest_revision,
    emit: Callable[[str, str, str | None], str | None] = _emit,
) -> list[UpstreamCheck]:
    """Compare each model's newest hub revision with the store; emit one event per new revision."""
    log = get_logger()
    results = []
    for model in models:
        try:
            sha = revision_of(model)
        except AsrOptimizeError as exc:
            log.error("watch-upstream: %s", exc)
            results.append(UpstreamCheck(model=model, action="error", reason=str(exc)))
            continue
        seen: dict[str, Any] = store.read_pointer(upstream_pointer(model)) or {}
        built: dict[str, Any] = store.read_pointer(production_pointer(slugify_model(model))) or {}
        previous = seen.get("revision") or built.get("revision")
        if sha in (seen.get("revision"), built.get("revision")):
            log.info("watch-upstream: %s is still at %s: nothing to do", model, sha)
            if seen.get("revision") != sha:  # built already, never announced: remember it quietly
                store.write_pointer(upstream_pointer(model), {"model": model, "revision": sha, "event_id": None})
            results.append(UpstreamCheck(model=model, action="unchanged", revision=sha, previous=previous,
                                         reason="revision already seen or built"))
            continue
        event_id = emit(model, sha, previous)
        store.write_pointer(upstream_pointer(model), {"model": model, "revision": sha, "event_id": event_id})
        log.info("watch-upstream: %s has a new revision %s (was %s): emitted %s %s", model, sha,
                 previous or "unknown", EVENT_NAME, event_id)
        results.append(UpstreamCheck(model=model, action="emitted", revision=sha, previous=previous,
                                     event_id=event_id, reason="new revision"))
    return results


@flow(name="watch-upstream", log_prints=True)
def watch_upstream_flow(models: list[str] | None = None, store: str | None = None) -> list[UpstreamCheck]:
    """Emit ``asr.model.updated`` for every watched hub model whose ``main`` moved since the last check."""
    from blocks.model_store import open_store

    results = check_upstream(models or DEFAULT_WATCHED, open_store(store or get_settings().store))
    errors = [r for r in results if r.action == "error"]
    if errors:
        raise AsrOptimizeError("; ".join(f"{r.model}: {r.reason}" for r in errors))
    return results
