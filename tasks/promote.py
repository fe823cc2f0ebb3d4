"""Stage 8a, promote: pick the fastest artifact that passed the accuracy gate and move the ``production`` pointer.

An artifact is promoted only if it passed the gate AND beats the latency recorded for the current production
artifact on the same device and batch shape. Otherwise the pointer stays, and the report says why.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from prefect import task
from pydantic import BaseModel

from asr_optimize.store import ArtifactStore, production_pointer, slugify_model
from tasks.benchmark import RunnerSpec
from tasks.common import get_logger
from tasks.evaluate import EvaluationResult


class PromotionDecision(BaseModel):
    promoted: bool
    candidate: str | None = None
    artifact: str | None = None
    case: str | None = None
    latency_ms: float | None = None
    previous: dict[str, Any] | None = None
    reason: str


MIN_LATENCY_GAIN = 0.05  # below 5 % faster, a new artifact is noise, not worth a swap in production


def choose_candidate(specs: list[RunnerSpec], evaluation: EvaluationResult, benchmarks: pd.DataFrame,
                     store: ArtifactStore, device: str, pointer: str,
                     min_gain: float = MIN_LATENCY_GAIN) -> PromotionDecision:
    """The fastest gate-passing artifact on the largest benchmarked shape, if it beats production by ``min_gain``."""
    passing = set(evaluation.passing())
    artifacts = {s.label: s for s in specs if s.kind != "pytorch" and s.label in passing}
    previous = store.read_pointer(pointer)
    if not artifacts:
        failed = [b.label for b in evaluation.backends if b.decision is not None and not b.decision.passed]
        return PromotionDecision(promoted=False, previous=previous,
                                 reason=f"no artifact passed the accuracy gate (failed: {failed or 'none evaluated'})")
    ok = benchmarks[(benchmarks["status"] == "ok") & benchmarks["runner"].isin(list(artifacts))]
    if ok.empty:
        return PromotionDecision(promoted=False, previous=previous,
                                 reason="gate-passing artifacts were not benchmarked")
    largest = ok.sort_values(["batch", "seconds"]).iloc[-1]["case"]
    best = ok[ok["case"] == largest].sort_values("p50_ms").iloc[0]
    spec = artifacts[best["runner"]]
    decision = dict(candidate=spec.label, artifact=str(spec.path), case=largest, latency_ms=float(best["p50_ms"]),
                    previous=previous)
    if previous and previous.get("artifact") == str(spec.path):
        return PromotionDecision(promoted=False, **decision, reason=f"{spec.label} is already in production")
    comparable = previous and previous.get("device") == device and previous.get("case") == largest
    if comparable and float(best["p50_ms"]) >= float(previous["latency_ms"]) * (1 - min_gain):
        return PromotionDecision(promoted=False, **decision, reason=(
            f"{spec.label} passed the gate but is not {min_gain:.0%} faster than production "
            f"{previous.get('candidate')} ({best['p50_ms']:.2f} ms vs {previous['latency_ms']:.2f} ms at {largest})"))
    return PromotionDecision(promoted=True, **decision,
                             reason=f"{spec.label} passed the gate and is the fastest at {largest}")


@task(name="choose-candidate")
def choose_candidate_task(specs: list[RunnerSpec], evaluation: EvaluationResult, benchmarks: pd.DataFrame,
                          store: ArtifactStore, device: str, model: str) -> PromotionDecision:
    """Pick the artifact to promote (or say why none); the pointer moves only after deployment succeeds."""
    decision = choose_candidate(specs, evaluation, benchmarks, store, device, production_pointer(slugify_model(model)))
    log = get_logger()
    (log.info if decision.promoted else log.warning)("promote: %s", decision.reason)
    return decision


@task(name="move-production-pointer")
def move_production_task(store: ArtifactStore, decision: PromotionDecision, device: str, model: str,
                         revision: str, deployment: dict[str, Any] | None = None) -> None:
    """Point the model's ``production`` at the promoted artifact (history kept; the old value stays there)."""
    store.write_pointer(production_pointer(slugify_model(model)), {
        "candidate": decision.candidate, "artifact": decision.artifact, "case": decision.case,
        "latency_ms": decision.latency_ms, "device": device, "model": model, "revision": revision,
        "deployment": deployment or {},
    })
    get_logger().info("promote: production -> %s", decision.candidate)
