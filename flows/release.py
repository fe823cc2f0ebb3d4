"""The release step: choose the artifact to promote, swap it into Triton, then move the ``production`` pointer.

One function holds the whole decision so it is made in one place: the promote stage picks among the artifacts the
configured Triton can serve; the deploy stage hot-swaps the pick (canary, health check, rollback); the pointer moves
only when the deployment succeeded or was skipped (no Triton configured), never after a rollback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel

from asr_optimize.capabilities import Capabilities
from asr_optimize.errors import AsrOptimizeError, StoreError
from asr_optimize.model.source import ResolvedModel
from asr_optimize.quality.gate import GateThresholds
from asr_optimize.runners.registry import RunnerSpec
from asr_optimize.store.local import ArtifactStore, artifact_ref, slugify_model
from blocks.triton_target import TritonTarget
from tasks.common import StageResult, get_logger
from tasks.deploy_triton import STAGE as DEPLOY_STAGE
from tasks.deploy_triton import TritonOptions, deploy_task, servable_kinds
from tasks.promote import PromotionDecision, move_production_pointer, promote_task


class Release(BaseModel):
    """What the release step did: the promotion decision, the deployment, and whether ``production`` moved."""

    promotion: StageResult[PromotionDecision]
    deployment: StageResult
    pointer_moved: bool = False

    @property
    def decision(self) -> PromotionDecision | None:
        return self.promotion.output


def triton_options_from_block(opts: TritonOptions) -> TritonOptions:
    """``opts`` with the URL, repository and model names of its ``target_block`` (a saved TritonTarget), if any."""
    if not opts.target_block:
        return opts
    target = TritonTarget.load(opts.target_block)
    if target.is_s3:
        raise AsrOptimizeError(f"Triton target {opts.target_block!r} has an s3:// repository; the hot-swap needs a "
                               "folder the worker and the server share (mount it), S3 repositories are not swapped")
    swap = opts.swap.model_copy(update={"model_name": target.model_name, "pipeline_name": target.pipeline_name})
    return opts.model_copy(update={"url": target.http_url, "repository": Path(target.repository), "swap": swap})


def deploy_or_failed(*args: Any) -> StageResult:
    """The deploy stage's result; a deploy that still fails after its retries becomes a failed row, not a crash."""
    state = deploy_task(*args, return_state=True)
    if state.is_completed():
        return state.result()
    message = state.message or "deploy task did not complete"
    get_logger().error("%s: %s", DEPLOY_STAGE, message)
    return StageResult(stage=DEPLOY_STAGE, status="failed", reason=message)


def damaged_artifact(store: ArtifactStore, decision: PromotionDecision | None, model: ResolvedModel) -> str | None:
    """Why the promoted artifact must not be served (a file no longer matches its manifest's sha256, or it is gone
    from the store), or None. The store verified it when the stages reused it; this checks it again right before
    it is copied into Triton."""
    if decision is None or not decision.promoted or not decision.artifact_id:
        return None
    if decision.spec is not None and decision.spec.kind == "pytorch":
        return None  # the model folder itself: pinned by its revision, not a store artifact
    try:
        ref, _ = artifact_ref(decision.artifact_id, slugify_model(model.source), model.revision)
        store.verify_artifact(ref)
    except StoreError as exc:
        return str(exc)
    return None


def release(specs: list[RunnerSpec], evaluation: StageResult, benchmark: StageResult, store: ArtifactStore,
            device: str, model: ResolvedModel, eval_set: Any, caps: Capabilities, gate: GateThresholds,
            triton: TritonOptions) -> Release:
    """Promote the fastest servable artifact that passed the gate, deploy it, and record it as production."""
    promotion = promote_task(specs, evaluation, benchmark, store, device, model.source, gate, servable_kinds(triton),
                             caps.gpu_identity())
    decision = promotion.output
    if (damage := damaged_artifact(store, decision, model)) is not None:
        get_logger().error("%s: %s", DEPLOY_STAGE, damage)
        deployment = StageResult(stage=DEPLOY_STAGE, status="failed", reason=damage)
    else:
        deployment = deploy_or_failed(promotion, eval_set, model, caps, triton)
    moved = decision is not None and decision.promoted and deployment.status in ("ok", "skipped")
    if moved:
        move_production_pointer(store, decision, device, model.source, model.revision,
                                {"triton": deployment.status, **deployment.metrics})
    return Release(promotion=promotion, deployment=deployment, pointer_moved=moved)
