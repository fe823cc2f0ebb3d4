"""Rolling hot swap across several Triton replicas (each its own server and model repository).

The first replica is the canary: the artifact is hot-swapped there (``hotswap.hot_swap``: load beside the serving
version, canary audio through the gate, promote or roll back). Then the others, one at a time, each with the same
swap and canary, while the rest keep serving. If any replica refuses, rolls back or cannot be reached, every replica
already promoted is reverted to its previous version (``hotswap.revert_promotion``), newest first, and the replicas
not reached are left untouched: the fleet of replicas never stays split between two versions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from asr_optimize.errors import AsrOptimizeError, TransientError
from asr_optimize.triton.hotswap import CanarySet, SwapDecision, SwapOptions, hot_swap, revert_promotion

ReplicaAction = Literal["promoted", "rolled_back", "refused", "failed", "reverted", "revert_failed", "not_started"]


class ReplicaOutcome(BaseModel):
    """What the rolling swap did on one replica."""

    url: str
    repository: str
    action: ReplicaAction
    serving_version: int | None = None
    previous_version: int | None = None
    detail: str = ""
    health: str | None = None
    """The health check's summary after a successful rolling swap (filled by the caller that runs it)."""


class RollingSwapDecision(BaseModel):
    """The outcome on every replica, in swap order; ``promoted`` only when every replica was."""

    model_name: str
    replicas: list[ReplicaOutcome] = Field(default_factory=list)
    decisions: list[SwapDecision] = Field(default_factory=list)
    """The hot-swap decision of each replica it reached, in order."""

    @property
    def promoted(self) -> bool:
        return bool(self.replicas) and all(r.action == "promoted" for r in self.replicas)

    def summary(self) -> str:
        if self.promoted:
            versions = ", ".join(f"v{r.serving_version}" for r in self.replicas)
            return f"{self.model_name}: promoted on all {len(self.replicas)} replicas ({versions})"
        failed = next((r for r in self.replicas if r.action in ("refused", "rolled_back", "failed")), None)
        reverted = sum(r.action == "reverted" for r in self.replicas)
        where = f"replica {self.replicas.index(failed) + 1} ({failed.url}) {failed.action.replace('_', ' ')}: " \
                f"{failed.detail}" if failed else "no replica was promoted"
        return f"{self.model_name}: not promoted; {where}; {reverted} replica(s) reverted to their previous version"

    def markdown(self) -> str:
        lines = [f"## Rolling swap across {len(self.replicas)} Triton replicas", "", f"**{self.summary()}**", "",
                 "| # | replica | action | serving | previous | health | detail |", "|---|---|---|---|---|---|---|"]
        for i, r in enumerate(self.replicas, 1):
            detail = r.detail.replace("|", "/")[:300]
            lines.append(f"| {i} | `{r.url}` | {r.action.replace('_', ' ')} | {r.serving_version} | "
                         f"{r.previous_version} | {r.health or ''} | {detail} |")
        return "\n".join(lines) + "\n"


def rolling_swap(
    replicas: list[tuple[Path, str]],
    artifact: Path,
    model_dir: Path,
    canary: CanarySet,
    opts: SwapOptions | None = None,
    source: str = "",
    artifact_manifest: dict[str, Any] | None = None,
) -> RollingSwapDecision:
    """Swap ``artifact`` into every (repository, url) replica in order; on any failure revert those promoted."""
    opts = opts or SwapOptions()
    result = RollingSwapDecision(model_name=opts.model_name)
    promoted: list[tuple[int, Path, str, SwapDecision]] = []
    for index, (root, url) in enumerate(replicas):
        outcome = ReplicaOutcome(url=url, repository=str(root), action="failed")
        result.replicas.append(outcome)
        try:
            decision = hot_swap(root, artifact, model_dir, canary, url, opts, source=source,
                                artifact_manifest=artifact_manifest)
        except (AsrOptimizeError, TransientError) as exc:  # unreachable, a swap in progress: nothing changed there
            outcome.detail = f"{type(exc).__name__}: {exc}"
        else:
            result.decisions.append(decision)
            outcome.action = decision.action
            outcome.serving_version, outcome.previous_version = decision.serving_version, decision.previous_version
            outcome.detail = "" if decision.promoted else "; ".join(decision.reasons)
            if decision.promoted:
                promoted.append((index, Path(root), url, decision))
                continue
        for later_root, later_url in replicas[index + 1 :]:
            result.replicas.append(ReplicaOutcome(url=later_url, repository=str(later_root), action="not_started"))
        _revert_all(result, promoted, opts)
        break
    return result


def _revert_all(result: RollingSwapDecision, promoted: list[tuple[int, Path, str, SwapDecision]],
                opts: SwapOptions) -> None:
    """Revert every promoted replica, newest first; a revert that fails is reported, the others still run."""
    for index, root, url, decision in reversed(promoted):
        outcome = result.replicas[index]
        try:
            done = revert_promotion(root, url, decision, opts)
        except Exception as exc:  # keep reverting the others; the journal lets the next swap finish this one
            outcome.action, outcome.detail = "revert_failed", f"{type(exc).__name__}: {exc}"
            continue
        outcome.action, outcome.serving_version = "reverted", decision.previous_version
        outcome.detail = "; ".join(done)
