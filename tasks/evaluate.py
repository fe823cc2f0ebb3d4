"""Stage 6, evaluate: WER/CER of every backend on the same speech, parity with the fp32 reference, the gate.

The first runner is the reference (PyTorch eager fp32). Every other backend is scored against the ground
truth (WER/CER) and against the reference's own transcripts and logits (parity); the promotion gate then
says, per backend, whether it may ship and, if not, by how much it missed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from asr_optimize import defaults
from asr_optimize.capabilities import cuda_device_ids
from asr_optimize.errors import AudioInputError
from asr_optimize.eval_shards import BackendRun, ShardResult, merge_shards, plan_shards, transcribe_shard
from asr_optimize.model.source import is_speed_only
from asr_optimize.options import Options
from asr_optimize.quality.eval_sets import EvalSet, EvalSource, load_eval_set
from asr_optimize.quality.gate import BackendScore, GateDecision, GateThresholds, evaluate_gate
from asr_optimize.quality.metrics import max_abs_logit_diff, transcript_parity, utterance_table, wer_cer
from asr_optimize.runners.base import RunnerUnavailable
from asr_optimize.runners.registry import RunnerSpec, build_runner
from asr_optimize.transcribe import ChunkingOptions, transcribe
from tasks.common import StageResult, get_logger, retry_on_transient, stage_task


class DaskOptions(Options):
    """Shard the evaluation's utterances over a Dask cluster (prefect-dask's ``DaskTaskRunner``). The merged result
    is the one-process result bit for bit (``asr_optimize.eval_shards``); off, everything runs in this process."""

    enabled: bool = False
    address: str | None = None
    """An existing scheduler (``tcp://host:8786``); None: a temporary cluster of ``n_workers`` on this host."""
    n_workers: int | None = Field(None, ge=1)
    """Size of the temporary cluster; None: one worker per visible GPU when the backends run on CUDA, else
    ``defaults.EVAL_DASK_CPU_WORKERS``."""
    shard_size: int = Field(defaults.EVAL_SHARD_SIZE, ge=1)
    """Utterances per shard, rounded up to whole batches of ``batch_size``."""
    torch_threads: int | None = Field(None, ge=1)
    """PyTorch intra-op threads per worker; None: this process's count, with which CPU logits match the one-process
    run bit for bit. 1 fits more workers on a CPU, but PyTorch's CPU logits then differ in their last bits."""


class EvaluateOptions(Options):
    source: EvalSource = Field(default_factory=lambda: EvalSource(kind="demo"))
    batch_size: int = Field(8, ge=1)
    chunking: ChunkingOptions = Field(default_factory=ChunkingOptions)
    """Utterances longer than ``chunking.chunk_s`` run in overlapping windows (long-form recordings)."""
    normalization: str = "vistaar"
    gate: GateThresholds = Field(default_factory=GateThresholds)
    dask: DaskOptions = Field(default_factory=DaskOptions)


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
    """Transcribe ``eval_set`` with every spec (the first is the reference) and gate the others; in this process,
    or sharded over Dask (``opts.dask``) with the same result."""
    log = get_logger()
    waves = [u.audio for u in eval_set.utterances]
    ids, refs = eval_set.ids, eval_set.texts
    transcripts: dict[str, list[str]] = {}
    results: list[BackendEvaluation] = []
    ref_score: BackendScore | None = None
    gate = opts.gate
    if gate.max_wer is not None and is_speed_only(model_dir):
        gate = gate.model_copy(update={"max_wer": None})
        log.warning("evaluate: %s is a random-weight (speed-only) model: the absolute WER ceiling max_wer does not "
                    "apply, only parity with the reference", model_dir)
    runs = (transcribe_on_dask(specs, waves, model_dir, opts) if opts.dask.enabled
            else transcribe_here(specs, waves, model_dir, opts))
    for spec, run in zip(specs, runs, strict=True):
        if run.status == "skipped":
            results.append(BackendEvaluation(label=spec.label, status="skipped", reason=run.reason))
            log.warning("evaluate: %s skipped: %s", spec.label, run.reason)
            continue
        if run.status == "failed":
            results.append(BackendEvaluation(label=spec.label, status="failed", reason=run.reason))
            log.error("evaluate: %s failed: %s", spec.label, run.reason)
            continue
        texts = run.texts
        transcripts[spec.label] = texts
        rates = wer_cer(refs, texts, normalize=opts.normalization, ids=ids)
        if ref_score is None:
            score = BackendScore.from_metrics(spec.label, rates, artifact=str(spec.path))
            ref_score, decision = score, None
            reference_texts = texts
        else:
            parity = transcript_parity(reference_texts, texts, ids=ids, normalize=opts.normalization,
                                       max_abs_logit_diff=run.max_logit_diff)
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


def transcribe_here(specs: list[RunnerSpec], waves: list[np.ndarray], model_dir: Path,
                    opts: EvaluateOptions) -> Iterator[BackendRun]:
    """Every backend in this process, one after another (lazily: only the reference's logits are kept)."""
    ref_logits: list[np.ndarray] | None = None
    for spec in specs:
        try:
            runner = build_runner(spec)
        except RunnerUnavailable as exc:
            yield BackendRun(label=spec.label, status="skipped", reason=str(exc))
            continue
        failure = None
        try:
            texts, logits = transcribe(runner, waves, model_dir, batch_size=opts.batch_size, chunking=opts.chunking)
        except Exception as exc:  # a broken backend is reported and gated out, not fatal for the others
            failure = f"{type(exc).__name__}: {exc}"
        finally:
            runner.close()
        if failure is not None:
            yield BackendRun(label=spec.label, status="failed", reason=failure)
            continue
        diff = None
        if ref_logits is None:
            ref_logits = logits
        else:
            diff = max(max_abs_logit_diff(r, c) for r, c in zip(ref_logits, logits, strict=True))
        yield BackendRun(label=spec.label, status="ok", texts=texts, max_logit_diff=diff)


@task(name="evaluate-shard", task_run_name="evaluate-shard-{shard}", cache_policy=NO_CACHE)
def evaluate_shard(shard: int, indices: list[int], waves: list[np.ndarray], specs: list[RunnerSpec],
                   model_dir: Path, batch_size: int, chunking: ChunkingOptions, torch_threads: int) -> ShardResult:
    """One shard on a Dask worker: every backend, each runner built here (sessions do not pickle)."""
    return ShardResult(indices=indices, backends=transcribe_shard(specs, waves, model_dir, batch_size, chunking,
                                                                  torch_threads))


def transcribe_on_dask(specs: list[RunnerSpec], waves: list[np.ndarray], model_dir: Path,
                       opts: EvaluateOptions) -> list[BackendRun]:
    """Every backend on every shard, one Prefect task run per shard on the Dask cluster; merged in shard order."""
    import torch

    try:
        shards = plan_shards(waves, model_dir, opts.batch_size, opts.chunking, opts.dask.shard_size)
    except AudioInputError as exc:  # what transcribe would raise for every backend
        return [BackendRun(label=s.label, status="failed", reason=f"{type(exc).__name__}: {exc}") for s in specs]
    threads = opts.dask.torch_threads or torch.get_num_threads()
    with dask_task_runner(opts.dask, specs) as runner:
        get_logger().info("evaluate: %d utterances in %d shards on Dask (%s)", len(waves), len(shards),
                          opts.dask.address or "a temporary cluster on this host")
        futures = [runner.submit(evaluate_shard, {
            "shard": k, "indices": indices, "waves": [waves[i] for i in indices], "specs": specs,
            "model_dir": model_dir, "batch_size": opts.batch_size, "chunking": opts.chunking, "torch_threads": threads,
        }) for k, indices in enumerate(shards)]
        results = [future.result() for future in futures]
    return merge_shards([s.label for s in specs], len(waves), results)


@contextmanager
def dask_task_runner(opts: DaskOptions, specs: list[RunnerSpec]) -> Iterator[Any]:
    """A started ``DaskTaskRunner``: on ``opts.address``, else on a temporary cluster (one worker per GPU when the
    backends run on CUDA). Shard task runs report to this run's Prefect API, the temporary one included."""
    from prefect.settings import PREFECT_API_URL, PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW, temporary_settings
    from prefect_dask import DaskTaskRunner

    if opts.address:
        if not PREFECT_API_URL.value():
            get_logger().warning("evaluate: no PREFECT_API_URL: workers on other hosts cannot reach this run's "
                                 "temporary Prefect API; set PREFECT_API_URL to a server they can reach")
        runner = DaskTaskRunner(address=opts.address)
    else:
        gpus = cuda_device_ids() if any(s.device == "cuda" for s in specs) else []
        n_workers = opts.n_workers or len(gpus) or defaults.EVAL_DASK_CPU_WORKERS
        runner = DaskTaskRunner(cluster_class=local_cluster, cluster_kwargs={"n_workers": n_workers, "gpus": gpus})
    api = {PREFECT_API_URL: prefect_api_url(), PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW: "ignore"}
    with temporary_settings(updates=api), runner:
        yield runner


def prefect_api_url() -> str:
    """The Prefect API this process reports to: the configured one, else its temporary local server (started here
    if needed), so task runs on the workers join the same run instead of each starting a server of their own."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    if url := PREFECT_API_URL.value():
        return url
    with get_client(sync_client=True) as client:
        return str(client.api_url)


def local_cluster(n_workers: int, gpus: list[str]) -> Any:
    """A Dask cluster on loopback: ``n_workers`` single-threaded worker processes; with ``gpus``, worker ``i`` sees
    only GPU ``gpus[i % len(gpus)]`` (``CUDA_VISIBLE_DEVICES``), so backends built on ``cuda`` spread over GPUs."""
    from distributed import Nanny, Scheduler, SpecCluster

    workers = {
        i: {"cls": Nanny, "options": {"nthreads": 1, "host": "127.0.0.1",
                                      "env": {"CUDA_VISIBLE_DEVICES": gpus[i % len(gpus)]} if gpus else {}}}
        for i in range(n_workers)
    }
    scheduler = {"cls": Scheduler, "options": {"host": "127.0.0.1", "dashboard": False}}
    return SpecCluster(scheduler=scheduler, workers=workers, name="asr-optimize-evaluate")


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
