"""Promotion: only a gate-passing artifact, only if clearly faster than production, never the same one twice."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from asr_optimize.quality.gate import BackendScore, evaluate_gate
from asr_optimize.runners.registry import RunnerSpec
from asr_optimize.store.local import LocalArtifactStore
from tasks.benchmark import BenchmarkTable
from tasks.evaluate import BackendEvaluation, EvaluationResult
from tasks.promote import choose_candidate

SPECS = [
    RunnerSpec(kind="pytorch", path=Path("/m")),
    RunnerSpec(kind="onnxruntime", variant="fast", path=Path("/a/fast.onnx"), artifact="optimize:k1/fast.onnx"),
    RunnerSpec(kind="onnxruntime", variant="broken", path=Path("/a/broken.onnx")),
]
REF, FAST, BROKEN = (s.label for s in SPECS)


REFERENCE = BackendScore(name="ref", wer=0.10, cer=0.03, n_utterances=10)


def _entry(label: str, wer: float) -> BackendEvaluation:
    """A backend scored by the real gate: same WER passes, +2 points fails."""
    score = BackendScore(name=label, wer=wer, cer=0.03 + (wer - 0.10), n_utterances=10,
                         identical_fraction=1.0 if wer == 0.10 else 0.8)
    return BackendEvaluation(label=label, status="ok", score=score, decision=evaluate_gate(REFERENCE, score))


def _evaluation(fast_wer: float = 0.10) -> EvaluationResult:
    return EvaluationResult(reference=REF, eval_set={}, backends=[
        BackendEvaluation(label=REF, status="ok", score=REFERENCE), _entry(FAST, fast_wer),
        _entry(BROKEN, 0.12)])


def _bench(fast_ms: float, broken_ms: float = 1.0) -> BenchmarkTable:
    return BenchmarkTable(rows=pd.DataFrame([
        {"runner": r, "case": "4x5s", "batch": 4, "seconds": 5.0, "status": "ok", "p50_ms": ms}
        for r, ms in ((REF, 100.0), (FAST, fast_ms), (BROKEN, broken_ms))
    ]).to_dict(orient="records"))


def test_fastest_passing_artifact_is_chosen_not_a_faster_failing_one(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    decision = choose_candidate(SPECS, _evaluation(), _bench(40.0), store, "cpu", "m.production")
    assert decision.promoted and decision.candidate == FAST  # 'broken' is faster but failed the gate
    assert decision.artifact_id == "optimize:k1/fast.onnx" and decision.artifact == "/a/fast.onnx"


def test_no_promotion_when_nothing_passes(tmp_path: Path) -> None:
    evaluation = _evaluation(fast_wer=0.12)
    decision = choose_candidate(SPECS, evaluation, _bench(40.0), LocalArtifactStore(tmp_path), "cpu", "m.production")
    assert not decision.promoted and "no servable artifact passed the accuracy gate" in decision.reason


def test_an_artifact_the_serving_target_cannot_load_is_never_promoted(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    only_plans = choose_candidate(SPECS, _evaluation(), _bench(40.0), store, "cpu", "m.production",
                                  servable={"tensorrt"})
    assert not only_plans.promoted and "not servable by the Triton target: ['onnxruntime']" in only_plans.reason
    assert choose_candidate(SPECS, _evaluation(), _bench(40.0), store, "cpu", "m.production",
                            servable={"onnxruntime"}).promoted


def test_production_is_kept_unless_clearly_faster(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    store.write_pointer("m.production", {"candidate": "old", "artifact": "/a/old.onnx", "case": "4x5s",
                                         "latency_ms": 41.0, "device": "cpu"})
    noise = choose_candidate(SPECS, _evaluation(), _bench(40.0), store, "cpu", "m.production")
    assert not noise.promoted and "not 5% faster" in noise.reason
    assert choose_candidate(SPECS, _evaluation(), _bench(30.0), store, "cpu", "m.production").promoted
    # recorded by another worker: its local path differs, the store identity is the same
    store.write_pointer("m.production", {"candidate": FAST, "artifact": "/worker-2/cache/fast.onnx",
                                         "artifact_id": "optimize:k1/fast.onnx", "case": "4x5s",
                                         "latency_ms": 90.0, "device": "cpu"})
    same = choose_candidate(SPECS, _evaluation(), _bench(30.0), store, "cpu", "m.production")
    assert not same.promoted and "already in production" in same.reason


def test_fused_engine_is_promoted_only_where_triton_serves_it(tmp_path: Path) -> None:
    """The bundled server serves fused engines (python backend + this venv); a Triton URL only when marked so."""
    from tasks.deploy_triton import TritonOptions, servable_kinds

    fused = RunnerSpec(kind="fused", variant="engine+graphs", precision="fp16", device="cuda",
                       path=Path("/store/fused-fp16/k2"), artifact="fused-fp16:k2")
    specs = [*SPECS, fused]
    evaluation = _evaluation()
    evaluation.backends.append(_entry(fused.label, 0.10))
    rows = [*_bench(40.0).rows, {"runner": fused.label, "case": "4x5s", "batch": 4, "seconds": 5.0, "status": "ok",
                                 "p50_ms": 10.0}]
    bench = BenchmarkTable(rows=rows)
    store = LocalArtifactStore(tmp_path)
    bundled = choose_candidate(specs, evaluation, bench, store, "cuda", "m.production",
                               servable=servable_kinds(TritonOptions(url=None)))
    assert bundled.promoted and bundled.candidate == fused.label
    assert bundled.artifact == "/store/fused-fp16/k2" and bundled.artifact_id == "fused-fp16:k2"
    ngc = choose_candidate(specs, evaluation, bench, store, "cuda", "m.production",
                           servable=servable_kinds(TritonOptions(url="triton:8000")))
    assert ngc.promoted and ngc.candidate == FAST  # the fused engine is faster but that server cannot load it
    marked = TritonOptions(url="triton:8000", url_serves_fused=True)
    assert choose_candidate(specs, evaluation, bench, store, "cuda", "m.production",
                            servable=servable_kinds(marked)).candidate == fused.label
