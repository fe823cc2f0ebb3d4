"""The command line and the settings: defaults from one place, options files validated, bad input refused early."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from asr_optimize.settings import Settings, get_settings
from flows.cli import app, build_options, eval_source
from tests.support.assets import ASSETS

runner = CliRunner()


@pytest.fixture()
def fresh_settings() -> Iterator[None]:
    """Settings re-read from the environment in the test, and nothing read under the test's environment left cached
    for the next test, also when an assertion fails."""
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                            fresh_settings: None) -> None:
    monkeypatch.setenv("ASR_OPTIMIZE_STORE", "s3://models/asr")
    monkeypatch.setenv("ASR_OPTIMIZE_TRITON_REPOSITORY", str(tmp_path / "repo"))
    settings = Settings()
    assert settings.store == "s3://models/asr" and settings.triton_repository == tmp_path / "repo"
    get_settings.cache_clear()
    from tasks.deploy_triton import TritonOptions

    assert TritonOptions().repository == tmp_path / "repo"  # the flow's default is the settings' value
    get_settings.cache_clear()


def test_options_file_sets_any_stage_option_and_flags_win(tmp_path: Path) -> None:
    path = tmp_path / "opts.yaml"
    path.write_text("benchmark:\n  iterations: 7\n  warmup: 0\nevaluate:\n  batch_size: 4\n"
                    "triton:\n  enabled: false\n")
    opts = build_options(path, {"benchmark.iterations": 9})
    assert (opts.benchmark.iterations, opts.benchmark.warmup, opts.evaluate.batch_size) == (9, 0, 4)
    assert opts.triton.enabled is False


@pytest.mark.parametrize(("text", "field"), [
    ("benchmark:\n  iterations: 0\n", "benchmark.iterations"),
    ("benchmark:\n  cases: [{batch: 0, seconds: 1}]\n", "benchmark.cases.0.batch"),
    ("nosuchstage:\n  x: 1\n", "nosuchstage"),
])
def test_bad_options_file_names_the_field(tmp_path: Path, text: str, field: str) -> None:
    path = tmp_path / "opts.yaml"
    path.write_text(text)
    with pytest.raises(typer.BadParameter, match=field.replace(".", r"\.")):
        build_options(path, {})


def test_options_file_must_be_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "opts.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(typer.BadParameter, match="mapping"):
        build_options(path, {})


@pytest.mark.parametrize("args", [["--bench-cases", "0x1"], ["--iterations", "0"], ["--bench-cases", "abc"]])
def test_run_refuses_bad_benchmark_input_before_any_work(args: list[str]) -> None:
    result = runner.invoke(app, ["run", *args])
    assert result.exit_code == 2
    assert "Invalid value" in result.output


def test_bench_refuses_bad_cases() -> None:
    result = runner.invoke(app, ["bench", "--cases", "1x0", "--device", "cpu"])
    assert result.exit_code == 2 and "benchmark case '1x0'" in result.output


def test_eval_source_forms() -> None:
    assert eval_source("demo") == {"kind": "demo"}
    assert eval_source("data/test.tsv") == {"kind": "manifest", "path": "data/test.tsv"}
    assert eval_source("hf:mozilla/cv:hi:validation") == {
        "kind": "hf", "dataset_id": "mozilla/cv", "config": "hi", "split": "validation"}


DEMO_AUDIO = sorted((ASSETS / "demo-testset" / "audio").glob("*.flac"))


def test_transcribe_prints_text_and_json_with_word_times() -> None:
    import json

    plain = runner.invoke(app, ["transcribe", str(DEMO_AUDIO[1])])
    assert plain.exit_code == 0, plain.output
    as_json = runner.invoke(app, ["transcribe", str(DEMO_AUDIO[1]), "--timestamps", "--json"])
    assert as_json.exit_code == 0, as_json.output
    doc = json.loads(as_json.output[as_json.output.index("{"):])
    (item,) = doc["files"]
    assert item["text"] and item["text"] in plain.output
    words = item["words"]
    assert [w["word"] for w in words] == item["text"].split()
    assert all(0 <= w["start_s"] < w["end_s"] <= item["duration_s"] for w in words)


def test_transcribe_production_runs_what_the_pointer_records(tmp_path: Path) -> None:
    from asr_optimize.paths import DEFAULT_MODEL
    from asr_optimize.runners.registry import RunnerSpec
    from asr_optimize.store.local import LocalArtifactStore, production_pointer, slugify_model

    store = LocalArtifactStore(tmp_path / "store")
    missing = runner.invoke(app, ["transcribe", str(DEMO_AUDIO[0]), "--production", "--store", str(store.root)])
    assert missing.exit_code == 2 and "no production artifact" in missing.output
    spec = RunnerSpec(kind="pytorch", path=DEFAULT_MODEL)  # what promote records: the runner spec of the artifact
    store.write_pointer(production_pointer(slugify_model(str(DEFAULT_MODEL))), {
        "candidate": spec.label, "artifact_id": "test", "spec": spec.model_dump(mode="json")})
    via_pointer = runner.invoke(app, ["transcribe", str(DEMO_AUDIO[0]), "--production", "--store", str(store.root)])
    direct = runner.invoke(app, ["transcribe", str(DEMO_AUDIO[0])])
    assert via_pointer.exit_code == 0, via_pointer.output
    assert via_pointer.output.splitlines()[-1] == direct.output.splitlines()[-1]


def test_transcribe_names_a_missing_file(tmp_path: Path) -> None:
    result = runner.invoke(app, ["transcribe", str(tmp_path / "nope.wav")])
    assert result.exit_code == 2 and "nope.wav" in result.output
