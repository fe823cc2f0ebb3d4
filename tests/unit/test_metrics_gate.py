"""WER/CER on hand-computed examples, parity statistics, logit diffs, and the promotion gate."""

from __future__ import annotations

import math

import numpy as np
import pytest

from asr_optimize.quality.gate import BackendScore, GateThresholds, evaluate_gate
from asr_optimize.quality.metrics import (
    LogitDiffTracker,
    max_abs_logit_diff,
    transcript_parity,
    utterance_table,
    wer_cer,
)

# Hand-computed: "नमक" -> "नमन" is 1 word substitution (1 ref word) and 1 char substitution (3 chars);
# "घर जा" -> "घर" is 1 word deletion (2 ref words) and 3 char deletions (" ", "ज", "ा" of 5 chars).
REFS = ["नमक।", "घर, जा!"]
HYPS = ["नमन", "घर"]


def test_wer_cer_hand_computed() -> None:
    r = wer_cer(REFS, HYPS, ids=["a", "b"])
    assert r.wer == pytest.approx(2 / 3)
    assert r.cer == pytest.approx(4 / 8)
    assert (r.ref_words, r.ref_chars, r.char_errors) == (3, 8, 4)
    assert (r.word_substitutions, r.word_deletions, r.word_insertions) == (1, 1, 0)
    assert r.sentence_accuracy == 0.0
    a, b = r.utterances
    assert (a.id, a.reference, a.hypothesis, a.wer, a.cer) == ("a", "नमक", "नमन", 1.0, pytest.approx(1 / 3))
    assert (b.wer, b.cer, b.word_deletions, b.char_deletions) == (0.5, pytest.approx(3 / 5), 1, 3)
    assert b.row()["wer"] == 0.5


def test_normalization_changes_the_score() -> None:
    # Unnormalized: "नमक।"->"नमन" sub, "घर,"->"घर" sub, "जा!" deleted: 3 errors / 3 words.
    assert wer_cer(REFS, HYPS, normalize=False).wer == pytest.approx(1.0)
    assert wer_cer(["ज़रूर आना"], ["जरूर आना"]).wer == pytest.approx(0.5)  # nukta kept: an error
    assert wer_cer(["ज़रूर आना"], ["जरूर आना"], normalize="vistaar").cer == pytest.approx(1 / 9)


def test_perfect_and_insertion_cases() -> None:
    r = wer_cer(["एक दो तीन"], ["एक दो तीन"])
    assert (r.wer, r.cer, r.sentence_accuracy) == (0.0, 0.0, 1.0)
    r = wer_cer(["एक दो"], ["एक दो तीन चार"])
    assert r.wer == pytest.approx(1.0) and r.word_insertions == 2


def test_wer_cer_input_errors() -> None:
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        wer_cer(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="no words"):
        wer_cer(["।"], ["x"])


def test_utterance_table_has_a_column_per_backend() -> None:
    rows = utterance_table(["a", "b"], REFS, {"fp32": ["नमक", "घर जा"], "fp16": HYPS})
    assert rows[0]["reference"] == "नमक"
    assert (rows[0]["fp32_wer"], rows[0]["fp16"], rows[1]["fp16_cer"]) == (0.0, "नमन", pytest.approx(0.6))


def test_transcript_parity() -> None:
    ref = [f"वाक्य {i}" for i in range(50)]
    cand = list(ref)
    cand[7] = "वाक्य सात"  # one of 50 differs: "7" -> "सात" (1 word substitution)
    p = transcript_parity(ref, cand, ids=[f"u{i}" for i in range(50)])
    assert (p.identical, p.identical_fraction, p.differing_ids) == (49, 0.98, ["u7"])
    assert p.wer_vs_reference == pytest.approx(1 / 100)
    ref_chars = sum(len(t) for t in ref)
    assert p.cer_vs_reference == pytest.approx(3 / ref_chars)  # "7" -> "सात" (3 code points): 1 sub + 2 ins
    # Punctuation-only differences are not disagreements after normalization; empty pairs agree.
    q = transcript_parity(["राम।", ""], ["राम", ""])
    assert q.identical_fraction == 1.0 and q.cer_vs_reference == 0.0


def test_max_abs_logit_diff_masks_padding() -> None:
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((2, 10, 5)).astype(np.float32)
    cand = ref.copy()
    cand[0, 3, 1] += 0.25  # inside utterance 0 (7 valid frames)
    cand[1, 8, :] = 99.0  # padding of utterance 1 (6 valid frames): ignored
    cand[1, 9, 0] = np.nan  # NaN in padding: ignored
    assert max_abs_logit_diff(ref, cand, [7, 6]) == pytest.approx(0.25, abs=1e-6)
    assert max_abs_logit_diff(ref, cand) == math.inf  # unmasked, the NaN counts
    cand[1, 2, 2] = np.nan
    assert max_abs_logit_diff(ref, cand, [7, 6]) == math.inf
    assert max_abs_logit_diff(ref[0], ref[0].astype(np.float16)) < 1e-2  # 2-D input, fp16 candidate
    with pytest.raises(ValueError, match="shapes differ"):
        max_abs_logit_diff(ref, ref[:1])
    with pytest.raises(ValueError, match="outside"):
        max_abs_logit_diff(ref, ref, [11, 2])


def test_logit_diff_tracker_keeps_the_max() -> None:
    t = LogitDiffTracker()
    a = np.zeros((1, 4, 3), dtype=np.float32)
    t.update(a, a + 0.5, [4])
    t.update(a, a + 0.1, [4])
    assert (t.value, t.batches) == (0.5, 2)


# ------------------------------------------------------------------ the gate


def _score(name: str, refs: list[str], hyps: list[str], ref_hyps: list[str], **kw: float) -> BackendScore:
    return BackendScore.from_metrics(name, wer_cer(refs, hyps), transcript_parity(ref_hyps, hyps), **kw)


@pytest.fixture
def corpus() -> tuple[list[str], list[str]]:
    refs = [f"यह वाक्य संख्या {i} है और यह ठीक है" for i in range(100)]
    fp32 = list(refs)
    for i in range(0, 100, 10):  # the fp32 reference already makes some errors
        fp32[i] = fp32[i].replace("ठीक", "ठिक")
    return refs, fp32


def test_gate_passes_an_identical_candidate(corpus: tuple[list[str], list[str]]) -> None:
    refs, fp32 = corpus
    reference = _score("pytorch-fp32", refs, fp32, fp32)
    candidate = _score("onnx-fp16", refs, list(fp32), fp32, latency_ms=8.0)
    d = evaluate_gate(reference, candidate, production_latency_ms=14.5)
    assert d.passed, d.reasons
    assert d.reasons == []
    assert "PASSED" in d.summary() and "onnx-fp16" in d.markdown()
    assert {c.name for c in d.checks} >= {"WER delta", "CER delta", "identical transcripts", "latency"}


def test_gate_refuses_a_degraded_candidate_and_says_why(corpus: tuple[list[str], list[str]]) -> None:
    refs, fp32 = corpus
    degraded = list(fp32)
    for i in range(1, 100, 20):  # 5 of 100 utterances lose a word: 5 deletions over 900 words
        degraded[i] = degraded[i].replace(" और", "")
    reference = _score("pytorch-fp32", refs, fp32, fp32)
    candidate = _score("trt-fp16-broken", refs, degraded, fp32)
    assert candidate.wer - reference.wer == pytest.approx(5 / 900)
    d = evaluate_gate(reference, candidate)
    assert not d.passed
    text = " | ".join(d.reasons)
    assert all(r.startswith("trt-fp16-broken:") for r in d.reasons)
    assert "WER 1.67% vs pytorch-fp32 1.11% (+0.56 points), exceeds the allowed +0.50 points" in text
    assert "95.0% of transcripts identical to pytorch-fp32 (95/100), below the required 98.0%" in text
    assert "REFUSED" in d.summary() and "FAIL" in d.markdown()


def test_gate_threshold_boundary_and_overrides() -> None:
    ref = BackendScore(name="fp32", wer=0.10, cer=0.03, n_utterances=200, identical_fraction=1.0)
    at_limit = ref.model_copy(update={"name": "fp16", "wer": 0.105, "cer": 0.032, "identical_fraction": 0.98})
    assert evaluate_gate(ref, at_limit).passed
    strict = GateThresholds(max_wer_delta=0.001, min_identical_fraction=0.99)
    d = evaluate_gate(ref, at_limit, strict)
    assert not d.passed and len(d.reasons) == 2


def test_gate_refuses_missing_or_broken_measurements() -> None:
    ref = BackendScore(name="fp32", wer=0.10, cer=0.03, n_utterances=200, identical_fraction=1.0)
    no_parity = ref.model_copy(update={"name": "ort-fp16", "identical_fraction": None})
    assert "no transcript parity measured" in evaluate_gate(ref, no_parity).reasons[0]
    nan_wer = ref.model_copy(update={"name": "ort-fp16", "wer": float("nan")})
    assert "WER is not a finite number" in evaluate_gate(ref, nan_wer).reasons[0]
    other_set = ref.model_copy(update={"name": "ort-fp16", "n_utterances": 150})
    assert "not comparable" in evaluate_gate(ref, other_set).reasons[0]
    logits = ref.model_copy(update={"name": "ort-fp16", "max_abs_logit_diff": math.inf})
    d = evaluate_gate(ref, logits, GateThresholds(max_abs_logit_diff=0.5))
    assert not d.passed and "max |logit diff|" in d.reasons[0]


def test_gate_latency_criterion() -> None:
    ref = BackendScore(name="fp32", wer=0.10, cer=0.03, n_utterances=10, identical_fraction=1.0)
    fast = ref.model_copy(update={"name": "trt-fp16", "latency_ms": 2.3})
    slow = ref.model_copy(update={"name": "ort-fp32", "latency_ms": 9.5})
    assert evaluate_gate(ref, fast, production_latency_ms=8.9).passed
    d = evaluate_gate(ref, slow, production_latency_ms=8.9)
    assert not d.passed and "ort-fp32: latency 9.50 ms vs production 8.90 ms (6.7% slower)" in d.reasons[0]
    unmeasured = ref.model_copy(update={"name": "x"})
    assert not evaluate_gate(ref, unmeasured, production_latency_ms=8.9).passed
    assert evaluate_gate(ref, unmeasured).passed  # no production latency known: the criterion is off
    assert evaluate_gate(ref, slow, GateThresholds(require_faster_than_production=False), 8.9).passed
    gain = GateThresholds(min_latency_gain=0.8)
    assert not evaluate_gate(ref, fast, gain, production_latency_ms=8.9).passed  # 2.3 > 8.9 * 0.2
