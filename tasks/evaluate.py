"""Stage 6, evaluate: WER/CER of every backend on the same speech, parity with the fp32 reference, the gate.

The first runner is the reference (PyTorch eager fp32). Every other backend is scored against the ground
truth (WER/CER) and against the reference's own transcripts and logits (parity); the promotion gate then
says, per backend, whether it may ship and, if not, by how much it missed.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from asr_optimize.model.source import is_speed_only
from asr_optimize.options import Options
from asr_optimize.quality.eval_sets import EvalSet, EvalSource, load_eval_set
from asr_optimize.quality.gate import BackendScore, GateDecision, GateThresholds, evaluate_gate
from asr_optimize.quality.metrics import max_abs_logit_diff, transcript_parity, utterance_table, wer_cer
from asr_optimize.runners.base import RunnerUnavailable
from asr_optimize.runners.registry import RunnerSpec, build_runner
from asr_optimize.transcribe import ChunkingOptions, transcribe
from tasks.common import StageResult, get_logger, retry_on_transient, stage_task


class EvaluateOptions(Options):
    source: EvalSource = Field(default_factory=lambda: EvalSource(kind="demo"))
    batch_size: int = Field(8, ge=1)
    chunking: ChunkingOptions = Field(default_factory=ChunkingOptions)
    """Utterances longer than ``chunking.chunk_s`` run in overlapping windows (long-form recordings)."""
    normalization: str = "vistaar"
    gate: GateThresholds = Field(default_factory=GateThresholds)


class BackendEvaluation(BaseModel):
    label: str
    status: str  # ok | skipped | failed
    reason: str = ""
    score: BackendScore | None = None
    decision: GateDecision | None = None


class EvaluationResult(BaseModel):
    reference: str
    eval_set: dict[str, Any]
    backends: list[BackendEvaluation]
    bad_rows: list[dict[str, str]] = Field(default_factory=list)

    def table(self) -> pd.DataFrame:
        """One row per backend: WER/CER, parity, the gate verdict and its reasons."""
        rows = []
        for b in self.backends:
            s = b.score
            verdict = "reference" if b.label == self.reference else (
                ("pass" if b.decision.passed else "FAIL") if b.decision else b.status)
            rows.append({
                "backend": b.label, "status": b.status, "wer": s.wer if s else np.nan, "cer": s.cer if s else np.nan,
                "identical_transcripts": s.identical_fraction if s else np.nan,
                "cer_vs_reference": s.cer_vs_reference if s else np.nan,
                "max_abs_logit_diff": s.max_abs_logit_diff if s else np.nan,
                "gate": verdict, "reasons": "; ".join(b.decision.reasons) if b.decision else b.reason,
            })
        return pd.DataFrame(rows)

    def passing(self) -> list[str]:
        """Labels of the backends that passed the gate (the reference itself excluded)."""
        return [b.label for b in self.backends if b.decision is not None and b.decision.passed]


def evaluate_backends(specs: list[RunnerSpec], eval_set: EvalSet, model_dir: Path, opts: EvaluateOptions,
                      out_dir: Path | None = None) -> EvaluationResult:
    """Transcribe ``eval_set`` with every spec (the first is the reference) and gate the others."""
    log = get_logger()
    waves = [u.audio for u in eval_set.utterances]
    ids, refs = eval_set.ids, eval_set.texts
    transcripts: dict[str, list[str]] = {}
    results: list[BackendEvaluation] = []
    ref_score: BackendScore | None = None
    ref_logits: list[np.ndarray] | None = None
    gate = opts.gate
    if gate.max_wer is not None and is_speed_only(model_dir):
        gate = gate.model_copy(update={"max_wer": None})
        log.warning("evaluate: %s is a random-weight (speed-only) model: the absolute WER ceiling max_wer does not "
                    "apply, only parity with the reference", model_dir)
    for spec in specs:
        try:
            runner = build_runner(spec)
        except RunnerUnavailable as exc:
            results.append(BackendEvaluation(label=spec.label, status="skipped", reason=str(exc)))
            log.warning("evaluate: %s skipped: %s", spec.label, exc)
            continue
        try:
            texts, logits = transcribe(runner, waves, model_dir, batch_size=opts.batch_size, chunking=opts.chunking)
        except Exception as exc:  # a broken backend is reported and gated out, not fatal for the others
            results.append(BackendEvaluation(label=spec.label, status="failed", reason=f"{type(exc).__name__}: {exc}"))
            log.error("evaluate: %s failed: %s", spec.label, exc)
            continue
        finally:
            runner.close()
        transcripts[spec.label] = texts
        rates = wer_cer(refs, texts, normalize=opts.normalization, ids=ids)
        if ref_score is None:
            ref_logits = logits
            score = BackendScore.from_metrics(spec.label, rates, artifact=str(spec.path))
            ref_score, decision = score, None
            reference_texts = texts
        else:
            diff = max(max_abs_logit_diff(r, c) for r, c in zip(ref_logits, logits, strict=True))
            parity = transcript_parity(reference_texts, texts, ids=ids, normalize=opts.normalization,
                                       max_abs_logit_diff=diff)
            score = BackendScore.from_metrics(spec.label, rates, parity, artifact=str(spec.path))
            decision = evaluate_gate(ref_score, score, gate)
        results.append(BackendEvaluation(label=spec.label, status="ok", score=score, decision=decision))
        log.info("evaluate: %-34s WER %6.2f%%  CER %6.2f%%  %s", spec.label, 100 * rates.wer, 100 * rates.cer,
                 "reference" if decision is None else ("gate: pass" if decision.passed else
                                                       "gate: FAIL - " + "; ".join(decision.reasons)))
    if ref_score is None:
        raise RuntimeError(f"the reference backend {specs[0].label} could not transcribe: {results[0].reason}")
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(utterance_table(ids, refs, transcripts, normalize=opts.normalization)).to_csv(
            out_dir / "transcripts.csv", index=False)
    return EvaluationResult(
        reference=specs[0].label, eval_set=eval_set.summary(), backends=results,
        bad_rows=[{"id": b.id, "reason": b.reason} for b in eval_set.bad_rows],
    )


def load_eval_stage(source: EvalSource) -> EvalSet:
    """Load the evaluation speech once (demo set, manifest or HF dataset); bad rows are counted and skipped."""
    eval_set = load_eval_set(source, progress=True)
    get_logger().info("evaluate: %s", eval_set.summary())
    if eval_set.bad_rows:
        get_logger().warning("evaluate: %d bad rows skipped, e.g. %s", len(eval_set.bad_rows), eval_set.bad_rows[:3])
    return eval_set


def evaluate_stage(specs: list[RunnerSpec], eval_set: EvalSet, model_dir: Path, opts: EvaluateOptions,
                   out_dir: Path) -> StageResult[EvaluationResult]:
    """Score every backend on ``eval_set`` and gate them; per-utterance ``transcripts.csv`` in ``out_dir``."""
    start = time.perf_counter()
    evaluation = evaluate_backends(specs, eval_set, model_dir, opts, out_dir)
    passing = evaluation.passing()
    return StageResult(
        stage="evaluate", status="ok", artifact_dir=out_dir, location=str(out_dir / "transcripts.csv"),
        seconds=round(time.perf_counter() - start, 3), output=evaluation,
        metrics={"reference": evaluation.reference, "backends": len(evaluation.backends), "passed_gate": passing,
                 "utterances": evaluation.eval_set.get("utterances"), "bad_rows": len(evaluation.bad_rows)},
    )


load_eval_task = task(load_eval_stage, name="load-eval-set", retries=2, retry_delay_seconds=10,
                      retry_condition_fn=retry_on_transient, cache_policy=NO_CACHE)
evaluate_task = stage_task(evaluate_stage, name="evaluate", tags=["evaluate"])
