"""Hot-swap, canary, rollback, the asr pipeline and health checks against the real bundled tritonserver.

Each test starts its own server on an empty repository and deploys the versions its assertions start from (v1, or
v1 then v2 with v1 retired, ...): any test runs alone, in any order."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from asr_optimize.triton import repository as repo_mod
from tests.support.assets import DEMO_MODEL, TINY_OVERRIDES, VOCAB_DIR
from tests.support.triton_server import ClientLoop, copy_artifact, corrupt_weights, demo_canary, export

pytestmark = pytest.mark.requires("tritonserver")

MODEL, PIPELINE = repo_mod.DEFAULT_MODEL_NAME, repo_mod.DEFAULT_PIPELINE_NAME


@pytest.fixture(scope="module")
def good_model(tiny_model: Path) -> Path:
    """The bundled demo model when present (real Hindi transcripts), else the tiny random model."""
    return DEMO_MODEL if (DEMO_MODEL / "config.json").is_file() else tiny_model


@pytest.fixture(scope="module")
def onnx_files(good_model: Path, demo_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from asr_optimize.model.source import init_random_model

    base = tmp_path_factory.mktemp("triton-onnx")
    if good_model == DEMO_MODEL:
        good = copy_artifact(demo_onnx, base / "good" / "model.onnx")
    else:
        good = export(good_model, base / "good")
    other = init_random_model(VOCAB_DIR, base / "other-model", seed=7, overrides=TINY_OVERRIDES)
    garbage = base / "garbage" / "model.onnx"
    garbage.parent.mkdir()
    garbage.write_bytes(b"\x08\x07not an onnx model" * 100)
    return {
        "good": good,
        "good_copy": copy_artifact(good, base / "good-copy" / "model.onnx"),
        "other": export(other, base / "other"),
        "other_model": other,
        "corrupt": corrupt_weights(good, base / "corrupt" / "model.onnx"),
        "garbage": garbage,
    }


@pytest.fixture(scope="module")
def canary(good_model: Path):
    """Six demo utterances with the good model's PyTorch transcripts."""
    return demo_canary(good_model, 6)


@pytest.fixture()
def server(triton):
    """A fresh bundled server on an empty repository (nothing deployed)."""
    return triton


def _swap(server, artifact: Path, model_dir: Path, canary, **opts):
    from asr_optimize.triton.hotswap import SwapOptions, hot_swap

    return hot_swap(server.repository, artifact, model_dir, canary, server.http_url,
                    SwapOptions(grace_s=0.5, **opts))


def _deploy(server, good_model: Path, onnx_files: dict[str, Path], canary, versions: int) -> None:
    """Bring a fresh server to the state after ``versions`` good swaps: v1; then v2 with v1 retired (keep 1);
    then v3 beside v2 (keep 2, the default). Checked as it goes, so a setup failure is not blamed on the test.
    One canary utterance is enough to promote these known-good versions (the tests' own swaps use all six)."""
    from asr_optimize.triton.hotswap import CanarySet, SwapOptions, hot_swap

    one = CanarySet(canary.ids[:1], canary.waves[:1], canary.reference_transcripts[:1],
                    canary.texts[:1] if canary.texts else None)
    steps = [("good", {}), ("good_copy", {"keep_versions": 1}), ("good_copy", {})][:versions]
    for number, (artifact, opts) in enumerate(steps, start=1):
        decision = hot_swap(server.repository, onnx_files[artifact], good_model, one, server.http_url,
                            SwapOptions(grace_s=0, **opts))
        assert decision.promoted and decision.serving_version == number, decision.summary()
    live = {1: [1], 2: [2], 3: [2, 3]}[versions]
    assert repo_mod.live_versions(server.repository, MODEL) == live


def _transcripts(server, waves: list[np.ndarray]) -> list[str]:
    from asr_optimize.triton.endpoint import http_client
    from asr_optimize.triton.hotswap import pipeline_transcribe

    return pipeline_transcribe(http_client(server.http_url), PIPELINE, waves)


def test_first_deploy_pipeline_matches_pytorch(server, good_model, onnx_files, canary) -> None:
    """(c) audio in, Hindi text out: the asr pipeline equals PyTorch's greedy transcripts of the same audio."""
    from asr_optimize.runners.ort_runner import OrtRunner
    from asr_optimize.runners.triton_runner import TritonRunner
    from asr_optimize.transcribe import transcribe

    decision = _swap(server, onnx_files["good"], good_model, canary)
    assert decision.promoted, decision.summary()
    assert decision.serving_version == 1 and decision.gate is not None and decision.gate.passed
    texts = _transcripts(server, canary.waves)
    assert texts == canary.reference_transcripts
    assert any(texts) and all(any("\u0900" <= ch <= "\u097f" for ch in t) for t in texts if t)
    if good_model == DEMO_MODEL:  # a trained model: its transcripts should be close to the ground truth
        from asr_optimize.quality.metrics import wer_cer

        assert wer_cer(canary.texts, texts).cer < 0.3

    runner = TritonRunner(server.http_url, MODEL, version=1)
    assert runner.uses_attention_mask
    runner_texts, logits = transcribe(runner, canary.waves, good_model, batch_size=16)  # > max_batch_size: split
    assert runner_texts == canary.reference_transcripts
    _, ort_logits = transcribe(OrtRunner(onnx_files["good"]), canary.waves, good_model)
    assert max(float(np.abs(a - b).max()) for a, b in zip(logits, ort_logits, strict=True)) < 1e-4


def test_good_version_promoted_under_load(server, good_model, onnx_files, canary) -> None:
    """(a) v2 is promoted and v1 retired while a client sends requests the whole time: zero failures."""
    _deploy(server, good_model, onnx_files, canary, versions=1)
    with ClientLoop(server.http_url, PIPELINE, canary.waves[0]) as loop:
        decision = _swap(server, onnx_files["good_copy"], good_model, canary, keep_versions=1)
    assert decision.promoted, decision.summary()
    assert (decision.previous_version, decision.serving_version) == (1, 2)
    assert decision.retired_versions == [1] and decision.live_versions == [2]
    assert loop.errors == [] and len(loop.texts) >= 10
    assert set(loop.outcomes) == {canary.reference_transcripts[0]}
    assert repo_mod.version_dirs(server.repository, MODEL) == [2]
    assert repo_mod.serving_version(server.repository, PIPELINE) == 2
    assert "triton-deploy" not in decision.markdown() and "promoted" in decision.markdown()


def test_canary_failure_rolls_back(server, good_model, onnx_files, canary) -> None:
    """(b) a different model loads fine but fails the canary: rolled back, v2 answered every request."""
    _deploy(server, good_model, onnx_files, canary, versions=2)
    with ClientLoop(server.http_url, PIPELINE, canary.waves[0]) as loop:
        decision = _swap(server, onnx_files["other"], onnx_files["other_model"], canary)
    assert decision.action == "rolled_back", decision.summary()
    assert decision.gate is not None and not decision.gate.passed
    assert "canary" in decision.reasons[0] and "identical" in decision.reasons[0]
    assert decision.serving_version == 2 and decision.live_versions == [2]
    assert loop.errors == [] and set(loop.outcomes) == {canary.reference_transcripts[0]}
    assert repo_mod.version_dirs(server.repository, MODEL) == [2]
    assert _transcripts(server, canary.waves) == canary.reference_transcripts
    # the report quotes reference and served transcripts side by side, not only counts
    differing = [row for row in decision.canary if row.reference != row.triton]
    assert differing and len(decision.canary) == len(canary.ids)
    first, quote = differing[0], '"'
    summary, markdown = decision.summary(), decision.markdown()
    assert f"(e.g. {first.id}: reference {quote}{first.reference[:40]}" in summary
    assert summary.count(" vs served ") == min(3, len(differing))
    assert "| id | reference (in process) | served (Triton) |" in markdown
    assert f"| {first.id} | {quote}{first.reference}{quote} | " in markdown
    assert f"of {len(canary.ids)} identical)" in markdown


def test_corrupt_version_rolls_back(server, good_model, onnx_files, canary) -> None:
    """(b) weights ONNX Runtime refuses fail to load in Triton: rolled back; garbage is refused before writing."""
    from asr_optimize.triton.endpoint import http_client

    _deploy(server, good_model, onnx_files, canary, versions=2)
    with ClientLoop(server.http_url, PIPELINE, canary.waves[1]) as loop:
        decision = _swap(server, onnx_files["corrupt"], good_model, canary)
        refused = _swap(server, onnx_files["garbage"], good_model, canary)
    assert decision.action == "rolled_back", decision.summary()
    assert "loading v3 failed" in decision.reasons[0]
    assert refused.action == "refused" and "not a readable ONNX model" in refused.reasons[0]
    assert loop.errors == [] and set(loop.outcomes) == {canary.reference_transcripts[1]}
    assert repo_mod.version_dirs(server.repository, MODEL) == [2]
    assert repo_mod.live_versions(server.repository, MODEL) == [2]
    client = http_client(server.http_url)
    assert client.is_server_ready(), (decision.reasons, client.get_model_repository_index())
    assert _transcripts(server, canary.waves) == canary.reference_transcripts


def test_health_check_and_stage_results(server, good_model, onnx_files, canary) -> None:
    from tasks.deploy_triton import deploy, health_check

    _deploy(server, good_model, onnx_files, canary, versions=2)
    result, report = health_check(server.http_url, server.repository, canary.waves, n_requests=10)
    assert result.status == "ok", report.problems
    assert report.serving_version == 2 and report.metadata_ok and report.failures == 0
    assert 0 < report.latency_p50_ms <= report.latency_p99_ms

    stage, decision = deploy(onnx_files["good_copy"], good_model, server.repository, server.http_url, canary)
    assert stage.status == "ok" and stage.metrics["serving_version"] == 3 and decision.promoted
    assert stage.artifact_dir == server.repository / MODEL / "3"
    manifest = json.loads((stage.artifact_dir / "manifest.json").read_text())
    assert manifest["kind"] == "python_onnxruntime" and manifest["inputs"] == ["input_values", "attention_mask"]
    assert repo_mod.live_versions(server.repository, MODEL) == [2, 3]  # keep_versions=2 by default

    manifest_path = server.repository / MODEL / "3" / "manifest.json"
    original = manifest_path.read_text()
    manifest_path.write_text(json.dumps({**manifest, "vocab_size": manifest["vocab_size"] + 1}))
    _, bad = health_check(server.http_url, server.repository, canary.waves[:1], n_requests=2)
    manifest_path.write_text(original)
    assert not bad.passed and any("vocabulary" in p for p in bad.problems)


def test_swap_reloads_only_the_versions_it_keeps(server, good_model, onnx_files, canary) -> None:
    """Triton reloads every version its config lists on each load call. A swap lists only what stays (the serving
    version and the candidate): older versions leave in the same reload, so K=2 costs two loads, not five."""
    _deploy(server, good_model, onnx_files, canary, versions=3)
    before = len(server.log_tail(10**8).splitlines())
    decision = _swap(server, onnx_files["good_copy"], good_model, canary)
    assert decision.promoted and decision.previous_version == 3 and decision.serving_version == 4, decision.summary()
    assert decision.retired_versions == [2] and decision.live_versions == [3, 4]
    assert "retire" not in decision.timings  # no second reload after promotion
    loads = [line for line in server.log_tail(10**8).splitlines()[before:] if f'"loading: {MODEL}:' in line]
    assert sorted(line.rsplit(":", 1)[-1].strip('"') for line in loads) == ["3", "4"]
    assert repo_mod.version_dirs(server.repository, MODEL) == [3, 4]
    assert _transcripts(server, canary.waves) == canary.reference_transcripts


def test_triton_down_changes_nothing(tmp_path: Path, good_model, onnx_files, canary) -> None:
    from asr_optimize.triton.hotswap import TritonUnavailable, hot_swap
    from asr_optimize.triton.server import free_port
    from tasks.deploy_triton import health_check

    url = f"127.0.0.1:{free_port()}"
    with pytest.raises(TritonUnavailable, match=r"not reachable.*nothing was changed"):
        hot_swap(tmp_path, onnx_files["good"], good_model, canary, url)
    assert list(tmp_path.iterdir()) == []
    result, _ = health_check(url, tmp_path, canary.waves[:1])
    assert result.status == "failed" and "unreachable" in (result.reason or "")
