"""Stage 7, promote: pick the fastest artifact that passed the accuracy gate; move ``production`` after deployment.

An artifact is promoted only if it passed the gate AND beats the latency recorded for the current production
artifact on the same device and batch shape by the gate's ``min_latency_gain`` (``asr_optimize.quality.gate``, the one
latency rule). Otherwise the pointer stays, and the report says why. The pointer records the artifact by its
store identity (``<stage>:<key>/<file>``), never by a worker-local path, so "already in production" holds across
workers. An engine (``RunnerSpec.gpu_bound``: TensorRT, fused) runs only on the GPU type it was built for, so it is
promoted under that GPU type's pointer (``<model>.production.<gpu type>``); everything else keeps the model's plain
``production`` pointer.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from asr_optimize.capabilities import GpuIdentity
from asr_optimize.quality.gate import GateThresholds, latency_bound
from asr_optimize.runners.registry import RunnerSpec
from asr_optimize.store.local import ArtifactStore, production_pointer, slugify_model
from tasks.benchmark import BenchmarkTable
from tasks.common import StageResult, get_logger, stage_task
from tasks.evaluate import EvaluationResult

STAGE = "promote"


class PromotionDecision(BaseModel):
    promoted: bool
    candidate: str | None = None
    artifact: str | None = None  # local path of the chosen file (fused: its engine folder) on this worker
    artifact_id: str | None = None  # its identity in the store (what the pointer records)
    spec: RunnerSpec | None = None  # how to run it (``asr-optimize transcribe --production`` rebuilds it from here)
    case: str | None = None
    latency_ms: float | None = None
    previous: dict[str, Any] | None = None
    pointer: str | None = None  # the production pointer it replaces (None: the model's plain one)
    gpu: GpuIdentity | None = None  # the GPU type a GPU-bound artifact is promoted for
    reason: str


def choose_candidate(specs: list[RunnerSpec], evaluation: EvaluationResult, benchmarks: BenchmarkTable,
                     store: ArtifactStore, device: str, pointer: str, thresholds: GateThresholds | None = None,
                     servable: set[str] | None = None, gpu_pointer: str | None = None) -> PromotionDecision:
    """The fastest gate-passing artifact on the largest benchmarked shape, if it beats production enough.

    ``servable``: the runner kinds the serving target can load (None: no serving constraint). An artifact the
    target cannot serve is never promoted, however fast: production would point at something nothing serves.
    ``gpu_pointer``: this GPU type's pointer, which a GPU-bound candidate is compared with and would replace
    (None: every candidate is measured against ``pointer``).
    """
    thresholds = thresholds or GateThresholds()
    passing = set(evaluation.passing())
    artifacts = {s.label: s for s in specs if s.kind != "pytorch" and s.label in passing
                 and (servable is None or s.kind in servable)}
    previous = store.read_pointer(pointer)
    if not artifacts:
        failed = [b.label for b in evaluation.backends if b.decision is not None and not b.decision.passed]
        unservable = sorted({s.kind for s in specs if s.label in passing and s.kind != "pytorch"} - (servable or set()))
        note = f"; passing but not servable by the Triton target: {unservable}" if servable and unservable else ""
        return PromotionDecision(promoted=False, previous=previous, reason=(
            f"no servable artifact passed the accuracy gate (failed: {failed or 'none evaluated'}{note})"))
    table = benchmarks.frame()
    ok = table[(table["status"] == "ok") & table["runner"].isin(list(artifacts))] if not table.empty else table
    if ok.empty:
        return PromotionDecision(promoted=False, previous=previous,
                                 reason="gate-passing artifacts were not benchmarked")
    largest = ok.sort_values(["batch", "seconds"]).iloc[-1]["case"]
    best = ok[ok["case"] == largest].sort_values("p50_ms").iloc[0]
    spec = artifacts[best["runner"]]
    if gpu_pointer and spec.gpu_bound:
        pointer, previous = gpu_pointer, store.read_pointer(gpu_pointer)
    identity = spec.artifact or str(spec.path)
    decision = dict(candidate=spec.label, artifact=str(spec.path), artifact_id=identity, spec=spec, case=largest,
                    latency_ms=float(best["p50_ms"]), previous=previous, pointer=pointer)
    if previous and identity in (previous.get("artifact_id"), previous.get("artifact")):
        return PromotionDecision(promoted=False, **decision, reason=f"{spec.label} is already in production")
    comparable = previous and previous.get("device") == device and previous.get("case") == largest
    if comparable and float(best["p50_ms"]) >= latency_bound(float(previous["latency_ms"]), thresholds):
        return PromotionDecision(promoted=False, **decision, reason=(
            f"{spec.label} passed the gate but is not {thresholds.min_latency_gain:.0%} faster than production "
            f"{previous.get('candidate')} ({best['p50_ms']:.2f} ms vs {previous['latency_ms']:.2f} ms at {largest})"))
    return PromotionDecision(promoted=True, **decision,
                             reason=f"{spec.label} passed the gate and is the fastest at {largest}")


def promote_stage(specs: list[RunnerSpec], evaluation: StageResult[EvaluationResult],
                  benchmarks: StageResult[BenchmarkTable], store: ArtifactStore, device: str, model: str,
                  thresholds: GateThresholds | None = None, servable: set[str] | None = None,
                  gpu: GpuIdentity | None = None) -> StageResult[PromotionDecision]:
    """Pick the artifact to promote (or say why none); the pointer moves only after deployment succeeds. ``gpu``: the
    run's GPU identity (``Capabilities.gpu_identity()``), whose type keys the pointer of a GPU-bound artifact."""
    if evaluation.output is None or benchmarks.output is None:
        decision = PromotionDecision(promoted=False, reason="no evaluation or benchmark to decide on")
    else:
        slug = slugify_model(model)
        gpu_pointer = production_pointer(slug, gpu.gpu_type) if gpu else None
        decision = choose_candidate(specs, evaluation.output, benchmarks.output, store, device,
                                    production_pointer(slug), thresholds, servable, gpu_pointer)
        if gpu_pointer and decision.pointer == gpu_pointer:
            decision = decision.model_copy(update={"gpu": gpu})
    (get_logger().info if decision.promoted else get_logger().warning)("promote: %s", decision.reason)
    return StageResult(stage=STAGE, status="ok" if decision.promoted else "skipped",
                       reason=None if decision.promoted else decision.reason, location=decision.artifact_id,
                       metrics={"candidate": decision.candidate, "case": decision.case,
                                "latency_ms": decision.latency_ms}, output=decision)


def move_production_pointer(store: ArtifactStore, decision: PromotionDecision, device: str, model: str,
                            revision: str, deployment: dict[str, Any] | None = None) -> None:
    """Point the decision's ``production`` pointer (the model's, or its GPU type's for an engine) at the promoted
    artifact (history kept; the old value stays there)."""
    pointer = decision.pointer or production_pointer(slugify_model(model))
    store.write_pointer(pointer, {
        "candidate": decision.candidate, "artifact_id": decision.artifact_id, "artifact": decision.artifact,
        "spec": decision.spec.model_dump(mode="json") if decision.spec else None,
        "case": decision.case, "latency_ms": decision.latency_ms, "device": device, "model": model,
        "revision": revision, "deployment": deployment or {},
        "gpu": decision.gpu.model_dump() if decision.gpu else None,
    })
    get_logger().info("promote: %s -> %s", pointer, decision.candidate)


promote_task = stage_task(promote_stage, name="promote")
