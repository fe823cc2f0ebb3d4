"""Model repository generation (no server needed): configs parse as Triton ModelConfig, versions, manifests."""

from __future__ import annotations

from pathlib import Path

import pytest

from asr_optimize.fileio import atomic_write_text
from asr_optimize.triton import repository as repo_mod
from asr_optimize.triton.repository import BatchingOptions, RepositoryError
from tests.support.assets import VOCAB_DIR

pytestmark = pytest.mark.requires("tritonclient")  # tritonclient[grpc] provides Triton's ModelConfig protobuf


@pytest.mark.parametrize("kind", ["python_onnxruntime", "python_fused", "onnxruntime_onnx", "tensorrt_plan"])
def test_acoustic_config_parses(tmp_path: Path, kind: repo_mod.ModelKind) -> None:
    text = repo_mod.acoustic_config("am", kind, [3, 1], ["input_values", "attention_mask"], 77,
                                    BatchingOptions(max_batch_size=16, preferred_batch_sizes=[4, 8, 32]))
    atomic_write_text(tmp_path / "am" / "config.pbtxt", text)
    config = repo_mod.read_config(tmp_path, "am")
    assert config.max_batch_size == 16 and list(config.dynamic_batching.preferred_batch_size) == [4, 8]
    assert config.dynamic_batching.max_queue_delay_microseconds == 2000
    assert [i.name for i in config.input] == ["input_values", "attention_mask"]
    assert list(config.input[0].dims) == [-1] and list(config.output[0].dims) == [-1, 77]
    assert repo_mod.live_versions(tmp_path, "am") == [1, 3]
    if kind == "python_onnxruntime":
        assert config.backend == "python" and config.instance_group[0].kind == 2  # KIND_CPU
    elif kind == "python_fused":  # the fused engine is for GPUs: auto puts it there
        assert config.backend == "python" and config.instance_group[0].kind == 1  # KIND_GPU
        assert config.parameters["bucket_samples"].string_value == "32000,80000,160000,320000"
    else:
        assert config.platform == kind and config.instance_group[0].kind == 1  # KIND_GPU


def test_write_version_and_pipeline(tmp_path: Path) -> None:
    artifact = tmp_path / "art" / "model.plan"
    artifact.parent.mkdir()
    artifact.write_bytes(b"engine")
    root = tmp_path / "repo"
    assert repo_mod.kind_for_artifact(artifact) == "tensorrt_plan"
    manifest = repo_mod.write_acoustic_version(root, "am", 1, artifact, "tensorrt_plan")
    assert (root / "am" / "1" / "model.plan").read_bytes() == b"engine" and manifest.version == 1
    assert repo_mod.read_manifest(root, "am", 1) == manifest
    assert repo_mod.version_dirs(root, "am") == [1] and not list((root / "am").glob(".staging*"))
    with pytest.raises(RepositoryError, match="never overwritten"):
        repo_mod.write_acoustic_version(root, "am", 1, artifact, "tensorrt_plan")
    with pytest.raises(RepositoryError, match="artifact not found"):
        repo_mod.write_acoustic_version(root, "am", 2, tmp_path / "missing.onnx", "python_onnxruntime")

    repo_mod.write_pipeline(root, "asr", VOCAB_DIR, "am", 1, has_mask=True)
    assert repo_mod.serving_version(root, "asr") == 1
    ctc = repo_mod.pipeline_ctc(root, "asr")
    assert ctc is not None and ctc["tokens"][ctc["blank_id"]] == "<pad>" and ctc["do_normalize"] is True
    repo_mod.set_pipeline_version(root, "asr", "am", 2, has_mask=True)
    assert repo_mod.serving_version(root, "asr") == 2
    config = repo_mod.read_config(root, "asr")
    assert config.output[0].data_type == 13  # TYPE_STRING (BYTES)


def test_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(RepositoryError, match="unknown artifact type"):
        repo_mod.kind_for_artifact(tmp_path / "model.bin")
    (tmp_path / "weights.safetensors").write_bytes(b"x")  # no engine.json beside it: not a fused engine
    with pytest.raises(RepositoryError, match="unknown artifact type"):
        repo_mod.kind_for_artifact(tmp_path / "weights.safetensors")
    garbage = tmp_path / "model.onnx"
    garbage.write_bytes(b"\x08\x07garbage" * 10)
    with pytest.raises(RepositoryError, match="not a readable ONNX model"):
        repo_mod.onnx_inputs(garbage)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.pbtxt").write_text("name: [unclosed")
    with pytest.raises(RepositoryError, match=r"malformed config\.pbtxt"):
        repo_mod.read_config(tmp_path, "m")
    assert repo_mod.live_versions(tmp_path, "absent") == [] and repo_mod.serving_version(tmp_path, "absent") is None


def test_metadata_problems() -> None:
    from asr_optimize.triton.health import metadata_problems

    manifest = repo_mod.VersionManifest(
        model_name="am", version=2, kind="python_onnxruntime", model_file="model.onnx", sha256="x",
        inputs=["input_values", "attention_mask"], vocab_size=77, source="s",
    )
    good = {"versions": ["2"], "inputs": [{"name": "input_values", "datatype": "FP32", "shape": [-1, -1]},
                                          {"name": "attention_mask", "datatype": "INT64", "shape": [-1, -1]}],
            "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, -1, 77]}]}
    assert metadata_problems(good, manifest) == []
    bad = {**good, "versions": ["1"], "outputs": [{"name": "logits", "datatype": "FP16", "shape": [-1, -1, 76]}]}
    problems = metadata_problems(bad, manifest)
    assert len(problems) == 3 and any("FP16" in p for p in problems) and any("not among" in p for p in problems)
