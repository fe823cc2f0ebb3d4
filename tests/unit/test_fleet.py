"""The fleet file (FleetSpec), the children's parameters and keys, and the fleet report."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import pytest

from asr_optimize.fleet import (
    FleetError,
    FleetReport,
    FleetRow,
    child_parameters,
    expected_pointer,
    idempotency_key,
    load_fleet_file,
    parse_fleet,
    promotion_from_report,
    promotion_lines,
)
from tests.support.assets import REPO_ROOT


def spec_data(**over: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "models": [{"model": "ai4bharat/indicwav2vec-hindi", "language": "hi",
                    "triton": {"model_name": "w_hi", "pipeline_name": "asr_hi"}},
                   {"model": "ai4bharat/indicwav2vec_v1_tamil", "revision": "abc123",
                    "triton": {"model_name": "w_ta", "pipeline_name": "asr_ta"}}],
        "gpu_types": [{"name": "nvidia-h100-80gb-hbm3-sm90", "work_queue": "h100"}],
    }
    data.update(over)
    return data


def error_of(data: Any) -> str:
    with pytest.raises(FleetError) as caught:
        parse_fleet(data, "fleet.yaml")
    return str(caught.value)


def test_the_example_fleet_file_is_valid_and_names_the_indicwav2vec_models() -> None:
    spec = load_fleet_file(REPO_ROOT / "deploy" / "fleet.example.yaml")
    assert [m.language for m in spec.models] == ["hi", "bn", "or"]
    assert all(m.model.startswith("ai4bharat/indicwav2vec") for m in spec.models)
    assert len(spec.children()) == len(spec.models) * len(spec.gpu_types)


def test_unknown_keys_are_errors_that_name_the_field() -> None:
    data = spec_data()
    data["models"][1]["revison"] = "main"
    assert "models.1.revison: Extra inputs are not permitted" in error_of(data)
    assert "gpu_types.0.queue" in error_of(spec_data(gpu_types=[{"name": "a100-sm80", "queue": "x"}]))
    assert "max_paralel" in error_of(spec_data(max_paralel=2))
    typo = spec_data(models=[{"model": "m", "triton": {"pipline_name": "x"}}])
    assert "models.0.triton.pipline_name" in error_of(typo)


def test_duplicates_and_bad_values_are_refused_with_the_field() -> None:
    twice = spec_data(models=[{"model": "a/b"}, {"model": "c/d", "name": "x"}, {"model": "a/b"}])
    message = error_of(twice)
    assert "models" in message and "models[2] 'a/b' is already models[0]" in message
    # the same hub model twice is fine under two names (e.g. two Triton targets)
    ok = parse_fleet(spec_data(models=[{"model": "a/b", "triton": {"model_name": "m1", "pipeline_name": "p1"}},
                                       {"model": "a/b", "name": "b2",
                                        "triton": {"model_name": "m2", "pipeline_name": "p2"}}]))
    assert [m.key for m in ok.models] == ["a/b", "b2"]
    gpus = [{"name": "a100-sm80", "work_queue": "q1"}, {"name": "a100-sm80", "work_queue": "q2"}]
    assert "GPU type(s) listed twice: a100-sm80" in error_of(spec_data(gpu_types=gpus))
    assert "gpu_types.0.name" in error_of(spec_data(gpu_types=[{"name": "NVIDIA H100.80", "work_queue": "q"}]))
    assert "models: List should have at least 1 item" in error_of(spec_data(models=[]))
    assert "gpu_types: Field required" in error_of({"models": [{"model": "m"}]})
    assert "max_parallel" in error_of(spec_data(max_parallel=0))
    unsafe = spec_data(models=[{"model": "m", "triton": {"model_name": "../x"}}])
    assert "models.0.triton.model_name" in error_of(unsafe)


def test_two_children_on_the_same_triton_models_are_refused() -> None:
    same = spec_data(models=[{"model": "a/b"}, {"model": "c/d"}])  # both on the deployment's default Triton models
    message = error_of(same)
    assert "models[1] (c/d) on gpu_types[0]" in message and "models[0] (a/b)" in message
    two_gpus = spec_data(gpu_types=[{"name": "h100-sm90", "work_queue": "h100"},
                                    {"name": "a100-sm80", "work_queue": "a100"}])
    assert "replace each other" in error_of(two_gpus)
    for gpu in two_gpus["gpu_types"]:  # each GPU type its own Triton: fine
        gpu["parameters"] = {"options": {"triton": {"url": f"http://triton-{gpu['work_queue']}:8000"}}}
    assert len(parse_fleet(two_gpus).children()) == 4
    off = spec_data(models=[{"model": "a/b"}, {"model": "c/d"}],
                    parameters={"options": {"triton": {"enabled": False}}})
    assert len(parse_fleet(off).children()) == 2


def test_bad_files_are_one_line_errors(tmp_path: Path) -> None:
    for text, expected in [("models: [", "cannot read fleet file"), ("- a\n- b\n", "must hold a mapping"),
                           ("", "must hold a mapping")]:
        path = tmp_path / "fleet.yaml"
        path.write_text(text)
        with pytest.raises(FleetError, match=expected):
            load_fleet_file(path)
    with pytest.raises(FleetError, match="cannot read fleet file"):
        load_fleet_file(tmp_path / "missing.yaml")


def test_child_parameters_merge_fleet_gpu_type_model_fields_and_model_overrides() -> None:
    data = spec_data(parameters={"store": "block:s", "options": {"benchmark": {"iterations": 5},
                                                                  "triton": {"url": "http://fleet:8000"}}})
    data["gpu_types"][0]["parameters"] = {"options": {"triton": {"url": "http://h100:8000"}}}
    data["models"][1]["parameters"] = {"options": {"benchmark": {"iterations": 7}}, "device": "cuda"}
    spec = parse_fleet(data)
    gpu = spec.gpu_types[0]
    hindi, tamil = (child_parameters(spec, m, gpu) for m in spec.models)
    assert hindi == {"store": "block:s", "model": "ai4bharat/indicwav2vec-hindi", "options": {
        "benchmark": {"iterations": 5},
        "triton": {"url": "http://h100:8000", "swap": {"model_name": "w_hi", "pipeline_name": "asr_hi"}}}}
    assert "revision" not in hindi  # latest: the deployment's default
    assert tamil["revision"] == "abc123" and tamil["device"] == "cuda"
    assert tamil["options"]["benchmark"] == {"iterations": 7}
    assert spec.parameters["options"]["benchmark"] == {"iterations": 5}  # merging copies, never edits the spec


def test_idempotency_keys_and_pointers() -> None:
    spec = parse_fleet(spec_data())
    hindi, tamil = spec.models
    gpu = spec.gpu_types[0]
    key = idempotency_key("nightly", hindi, gpu, 1)
    assert key == idempotency_key("nightly", hindi, gpu, 1)
    assert len({key, idempotency_key("nightly", hindi, gpu, 2), idempotency_key("other", hindi, gpu, 1),
                idempotency_key("nightly", tamil, gpu, 1)}) == 4
    assert "nvidia-h100-80gb-hbm3-sm90" in key and "/latest/" in key
    renamed = hindi.model_copy(update={"revision": "deadbeef"})
    assert idempotency_key("nightly", renamed, gpu, 1) != key
    assert expected_pointer(hindi, gpu) == "ai4bharat--indicwav2vec-hindi.production.nvidia-h100-80gb-hbm3-sm90"


def test_promotion_is_read_back_from_the_report_section_the_flow_writes() -> None:
    markdown = "\n".join(["# report", *promotion_lines(True, "onnx-fp16 passed the gate\nand is the fastest"),
                          "- evaluation set: demo"])
    assert promotion_from_report(markdown) == (True, "onnx-fp16 passed the gate and is the fastest")
    assert promotion_from_report("\n".join(promotion_lines(False, "no servable artifact"))) == (
        False, "no servable artifact")
    assert promotion_from_report("# a report without it") == (None, "")


def row(model: str, outcome: str, **over: Any) -> FleetRow:
    base = dict(model=model, source=model, revision="latest", gpu_type="h100-sm90", work_queue="h100",
                outcome=outcome, state={"completed": "Completed", "reused": "Completed"}.get(outcome, "Failed"),
                flow_run_name=f"run-{model}", flow_run_id=f"id-{model}", attempt=1)
    return FleetRow(**{**base, **over})


def test_report_markdown_and_csv(tmp_path: Path) -> None:
    report = FleetReport(fleet_key="k1", deployment="asr-optimize/prod", rows=[
        row("hi", "completed", promoted=True, decision="onnx-fp16 | fastest", pointer="hi.production.h100-sm90"),
        row("bn", "reused", promoted=False, decision="already in production"),
        row("ta", "failed", message="Flow run encountered an exception: ModelResolutionError: no model\nat /x"),
        row("mr", "not-started", state="", flow_run_name="", flow_run_id="", message="work queue 'q' does not exist"),
    ])
    assert [r.model for r in report.failed()] == ["ta", "mr"]
    assert report.counts() == {"completed": 1, "reused": 1, "failed": 1, "not-started": 1}
    md = report.markdown()
    assert "# asr-optimize fleet `k1`" in md and "children: 4 (1 completed, 1 failed, 1 not-started, 1 reused)" in md
    assert ("| hi |  | latest | h100-sm90 | h100 | completed | Completed | run-hi (`id-hi`) | yes "
            "| onnx-fp16 \\| fastest") in md
    assert "## Not completed" in md
    assert ("- **ta** on h100-sm90: failed, Failed: Flow run encountered an exception: ModelResolutionError: "
            "no model at /x") in md
    assert "- **mr** on h100-sm90: not-started, no run: work queue 'q' does not exist" in md
    md_path, csv_path = report.write(tmp_path / "fleet-run")
    assert md_path.read_text() == md
    rows = list(csv.DictReader(io.StringIO(csv_path.read_text())))
    assert [(r["model"], r["outcome"], r["promoted"]) for r in rows] == [
        ("hi", "completed", "True"), ("bn", "reused", "False"), ("ta", "failed", ""), ("mr", "not-started", "")]
    assert rows[0]["flow_run_id"] == "id-hi" and rows[0]["pointer"] == "hi.production.h100-sm90"


def test_the_fleet_command_fails_in_one_line_before_anything_starts(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    def fleet(path: Path) -> tuple[int, str]:
        env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"} | {"COLUMNS": "400"}
        done = subprocess.run([sys.executable, "-c", "from flows.cli import main; main()", "fleet", str(path)],
                              cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, env=env)
        return done.returncode, " ".join((done.stdout + done.stderr).split())

    bad = tmp_path / "fleet.yaml"
    bad.write_text("models: [{model: a/b, revison: main}]\ngpu_types: [{name: h100-sm90, work_queue: h100}]\n")
    code, out = fleet(bad)
    assert code == 2 and "models.0.revison: Extra inputs are not permitted" in out and "Traceback" not in out, out
    code, out = fleet(REPO_ROOT / "deploy" / "fleet.example.yaml")
    assert code == 2 and "set PREFECT_API_URL" in out and "Traceback" not in out, out


def test_an_upstream_event_selects_one_model_at_its_revision() -> None:
    """``only_models`` names a hub id (what watch-upstream's event carries) or a fleet name; the revision given
    replaces the model's own; a model the fleet does not hold selects nothing."""
    from asr_optimize.fleet import parse_fleet

    spec = parse_fleet({
        "models": [{"model": "ai4bharat/indicwav2vec-hindi", "revision": "main"},
                   {"model": "ai4bharat/indicwav2vec_v1_bengali", "name": "bn",
                    "triton": {"model_name": "am_bn", "pipeline_name": "asr_bn"}}],
        "gpu_types": [{"name": "nvidia-h200-sm90", "work_queue": "h200"}]})
    [hindi] = spec.only(["ai4bharat/indicwav2vec-hindi"], "abc123")
    assert hindi.revision == "abc123" and spec.models[0].revision == "main"
    assert [m.key for m in spec.only(["bn"])] == ["bn"] and spec.only(["bn"])[0].revision == "latest"
    assert spec.only(["someone/else"], "abc123") == []
