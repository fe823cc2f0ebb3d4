"""The promotion gate: may an optimized artifact replace the fp32 reference in production?

Why a pure function: the decision must be reproducible from the recorded numbers alone (in the report,
in tests, in a post-mortem), so it takes two ``BackendScore`` records and thresholds and returns a
``GateDecision`` whose reasons name the artifact and say by how much it missed. Promotion code only
reads ``decision.passed``; the report prints ``decision.reasons``.

Checks (all must pass; a missing measurement the thresholds ask for is a failure, never a pass):
- same evaluation set size as the reference (otherwise the comparison is meaningless);
- WER and CER no more than ``max_wer_delta`` / ``max_cer_delta`` (absolute fractions) above the reference;
- WER at most ``max_wer`` (an absolute ceiling, whatever the reference scored);
- at least ``min_identical_fraction`` of transcripts identical to the reference's (after normalization);
- optional: CER of candidate transcripts vs reference transcripts, max |logit diff|;
- optional latency: when the current production latency is given, the candidate must beat it.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field

from asr_optimize.options import Options
from asr_optimize.quality.metrics import ErrorRates, ParityStats


class GateThresholds(Options):
    """Gate limits. Deltas are absolute fractions: 0.005 = 0.5 WER points."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_wer_delta: float = Field(0.005, ge=0)
    max_wer: float | None = Field(0.5, ge=0)
    """Absolute ceiling: a candidate whose WER on the evaluation set is above it (0.5 = 50 %) is refused whatever the
    reference scored. The deltas only compare with the reference, and a broken reference (a vocabulary that does not
    match the CTC head: ~100 % WER) would wave every faithful copy of itself through. None: off."""
    max_cer_delta: float | None = Field(0.002, ge=0)
    """IndicWav2Vec's CER is ~1/3.5 of its WER (3.3% vs 11.6%), so 0.2 CER points ~ 0.5-0.7 WER points."""
    min_identical_fraction: float | None = Field(0.98, ge=0, le=1)
    max_cer_vs_reference: float | None = Field(None, ge=0)
    max_abs_logit_diff: float | None = Field(None, ge=0)
    require_faster_than_production: bool = True
    """Only applies when ``evaluate_gate`` is given the production latency."""
    min_latency_gain: float = Field(0.05, ge=0, lt=1)
    """Required relative improvement: candidate latency < production * (1 - gain). Below 5 % a new artifact is
    noise, not worth a swap in production; 0 = strictly faster. The one latency rule: promotion uses it too."""


class BackendScore(BaseModel):
    """What the gate needs to know about one evaluated backend / artifact."""

    model_config = ConfigDict(frozen=True)

    name: str
    """Backend or artifact name as shown in the report, e.g. 'onnx-fp16'."""
    wer: float
    cer: float
    n_utterances: int
    identical_fraction: float | None = None
    cer_vs_reference: float | None = None
    max_abs_logit_diff: float | None = None
    latency_ms: float | None = None
    artifact: str | None = None
    """Where the artifact lives (path / URI / sha256), for the report."""

    @classmethod
    def from_metrics(
        cls,
        name: str,
        rates: ErrorRates,
        parity: ParityStats | None = None,
        latency_ms: float | None = None,
        artifact: str | None = None,
    ) -> BackendScore:
        """Assemble a score from ``wer_cer`` and ``transcript_parity`` results."""
        return cls(
            name=name,
            wer=rates.wer,
            cer=rates.cer,
            n_utterances=rates.n_utterances,
            identical_fraction=parity.identical_fraction if parity else None,
            cer_vs_reference=parity.cer_vs_reference if parity else None,
            max_abs_logit_diff=parity.max_abs_logit_diff if parity else None,
            latency_ms=latency_ms,
            artifact=artifact,
        )


class GateCheck(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    passed: bool
    observed: float | None
    limit: float | None
    message: str


class GateDecision(BaseModel):
    model_config = ConfigDict(frozen=True)

    candidate: str
    reference: str
    passed: bool
    reasons: list[str]
    """One human-readable line per failed check (empty when passed)."""
    checks: list[GateCheck]

    def summary(self) -> str:
        """One line for logs and the report header."""
        if self.passed:
            return (
                f"{self.candidate}: PASSED the promotion gate vs {self.reference} ({len(self.checks)} checks)"
            )
        return f"{self.candidate}: REFUSED promotion: " + "; ".join(self.reasons)

    def markdown(self) -> str:
        """A small table for a Prefect markdown artifact."""
        lines = [f"**{self.summary()}**", "", "| check | result | detail |", "|---|---|---|"]
        lines += [f"| {c.name} | {'pass' if c.passed else 'FAIL'} | {c.message} |" for c in self.checks]
        return "\n".join(lines)


def latency_bound(production_latency_ms: float, thresholds: GateThresholds) -> float:
    """The latency a candidate must stay under to replace production (the one latency rule)."""
    return production_latency_ms * (1 - thresholds.min_latency_gain)


def _pts(x: float) -> str:
    """Fraction -> percentage points with a sign, e.g. 0.009 -> '+0.90'."""
    return f"{x * 100:+.2f}"


def _finite(*values: float | None) -> bool:
    return all(v is not None and math.isfinite(v) for v in values)


def evaluate_gate(
    reference: BackendScore,
    candidate: BackendScore,
    thresholds: GateThresholds | None = None,
    production_latency_ms: float | None = None,
) -> GateDecision:
    """Decide whether ``candidate`` may be promoted, comparing it with ``reference`` (the fp32 baseline)."""
    t = thresholds or GateThresholds()
    c, r = candidate.name, reference.name
    checks: list[GateCheck] = []

    def add(name: str, ok: bool, observed: float | None, limit: float | None, msg: str) -> None:
        checks.append(GateCheck(name=name, passed=ok, observed=observed, limit=limit, message=msg))

    same_set = candidate.n_utterances == reference.n_utterances and candidate.n_utterances > 0
    add(
        "same evaluation set",
        same_set,
        candidate.n_utterances,
        reference.n_utterances,
        f"{c} scored {candidate.n_utterances} utterances, {r} scored {reference.n_utterances}"
        + ("" if same_set else ": not comparable"),
    )

    for metric, limit in (("WER", t.max_wer_delta), ("CER", t.max_cer_delta)):
        if limit is None:
            continue
        cand_v, ref_v = getattr(candidate, metric.lower()), getattr(reference, metric.lower())
        if not _finite(cand_v, ref_v):
            add(
                f"{metric} delta",
                False,
                None,
                limit,
                f"{c}: {metric} is not a finite number ({cand_v} vs {ref_v})",
            )
            continue
        delta = cand_v - ref_v
        ok = delta <= limit + 1e-12
        add(
            f"{metric} delta",
            ok,
            delta,
            limit,
            f"{c}: {metric} {cand_v:.2%} vs {r} {ref_v:.2%} ({_pts(delta)} points"
            + (
                f", within the allowed +{limit * 100:.2f})"
                if ok
                else f"), exceeds the allowed +{limit * 100:.2f} points"
            ),
        )

    if t.max_wer is not None:
        if not _finite(candidate.wer):
            add("WER ceiling", False, None, t.max_wer, f"{c}: WER is not a finite number ({candidate.wer})")
        else:
            ok = candidate.wer <= t.max_wer + 1e-12
            add(
                "WER ceiling",
                ok,
                candidate.wer,
                t.max_wer,
                f"{c}: WER {candidate.wer:.2%} "
                + (
                    f"within the absolute ceiling max_wer {t.max_wer:.0%}"
                    if ok
                    else f"on the evaluation set ({candidate.n_utterances} utterances) exceeds the absolute ceiling "
                    f"max_wer {t.max_wer:.0%}, whatever {r} scored ({reference.wer:.2%}): the model, its vocabulary "
                    "or the evaluation set is broken"
                ),
            )

    if t.min_identical_fraction is not None:
        f = candidate.identical_fraction
        if not _finite(f):
            add(
                "identical transcripts",
                False,
                None,
                t.min_identical_fraction,
                f"{c}: no transcript parity measured",
            )
        else:
            ok = f >= t.min_identical_fraction - 1e-12
            n_same = round(f * candidate.n_utterances)
            add(
                "identical transcripts",
                ok,
                f,
                t.min_identical_fraction,
                f"{c}: {f:.1%} of transcripts identical to {r} ({n_same}/{candidate.n_utterances}), "
                + ("required" if ok else "below the required")
                + f" {t.min_identical_fraction:.1%}",
            )

    for name, observed, limit, what in (
        (
            "CER vs reference",
            candidate.cer_vs_reference,
            t.max_cer_vs_reference,
            f"CER against {r}'s transcripts",
        ),
        ("max |logit diff|", candidate.max_abs_logit_diff, t.max_abs_logit_diff, f"max |logit diff| vs {r}"),
    ):
        if limit is None:
            continue
        if not _finite(observed):
            add(name, False, observed, limit, f"{c}: {what} not measured or not finite ({observed})")
        else:
            ok = observed <= limit
            add(
                name,
                ok,
                observed,
                limit,
                f"{c}: {what} {observed:.4g} " + ("<=" if ok else "exceeds") + f" {limit:.4g}",
            )

    if production_latency_ms is not None and t.require_faster_than_production:
        bound = latency_bound(production_latency_ms, t)
        lat = candidate.latency_ms
        if not _finite(lat):
            add("latency", False, None, bound, f"{c}: no latency measured to compare with production")
        else:
            ok = lat < bound
            gain = 1 - lat / production_latency_ms
            add(
                "latency",
                ok,
                lat,
                bound,
                f"{c}: latency {lat:.2f} ms vs production {production_latency_ms:.2f} ms "
                + f"({abs(gain):.1%} {'faster' if gain > 0 else 'slower'})"
                + ("" if ok else f", needs < {bound:.2f} ms"),
            )

    failed = [ch.message for ch in checks if not ch.passed]
    return GateDecision(candidate=c, reference=r, passed=not failed, reasons=failed, checks=checks)
