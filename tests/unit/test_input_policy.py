"""Models whose output zero padding changes: the input policy, in-process batching, export, and the Triton repository
files that serve them (no server; the served path is ``tests/integration/test_triton_unpadded_models.py``).

The group-norm model is wav2vec2-base style (random weights, ``tests/support/tiny_models.py``); the layer-norm
models (the demo model, the tiny IndicWav2Vec-style model) are the padded counterpart.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from asr_optimize.audio.load import make_batch
from asr_optimize.model.inputs import PADDED, decide_input_policy, exact_length_infer, input_policy
from asr_optimize.runners.ort_runner import OrtRunner
from asr_optimize.runners.torch_runner import TorchRunner
from asr_optimize.transcribe import ChunkingOptions, transcribe
from tests.support.assets import DEMO_MODEL

LENGTHS_S = (1.0, 1.37, 2.2, 0.8, 1.37)
"""Mixed lengths, two of them equal (those share a batch even when padding is not allowed)."""


def _waves(seed: int = 11) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for seconds in LENGTHS_S:
        n = int(seconds * 16_000)
        t = np.arange(n) / 16_000
        out.append((0.1 * np.sin(2 * np.pi * rng.uniform(90, 300) * t) + 0.05 * rng.standard_normal(n))
                   .astype(np.float32))
    return out


# ------------------------------------------------------------------------------------------ the decision


def test_policy_from_config_files(group_norm_model: Path, conformer_model: Path, tiny_model: Path) -> None:
    assert input_policy(DEMO_MODEL) == PADDED and input_policy(tiny_model).pad_batches
    group = input_policy(group_norm_model)
    assert not group.attention_mask and not group.pad_batches and "group" in group.reason
    conformer = input_policy(conformer_model)
    assert conformer.attention_mask and not conformer.pad_batches and "conformer" in conformer.reason


@pytest.mark.parametrize(("config", "preprocessor", "mask", "pad"), [
    ({"model_type": "wav2vec2", "feat_extract_norm": "layer"}, {"return_attention_mask": True}, True, True),
    ({"model_type": "wav2vec2"}, {"return_attention_mask": True}, False, False),  # HF's default norm is group
    ({"model_type": "hubert", "feat_extract_norm": "group"}, {"return_attention_mask": True}, False, False),
    ({"model_type": "wav2vec2", "feat_extract_norm": "layer"}, {}, False, False),  # extractor default: no mask
    ({"model_type": "wav2vec2", "feat_extract_norm": "layer"}, None, True, True),  # built with a mask
    ({"model_type": "data2vec-audio"}, {"return_attention_mask": True}, True, False),
    ({"model_type": "wav2vec2-conformer", "feat_extract_norm": "layer"}, {"return_attention_mask": True}, True, False),
])
def test_policy_table(config: dict, preprocessor: dict | None, mask: bool, pad: bool) -> None:
    policy = decide_input_policy(config, preprocessor)
    assert (policy.attention_mask, policy.pad_batches) == (mask, pad), policy.reason


def _tiny_hf(kind: str):
    import torch
    from transformers import (
        Data2VecAudioConfig,
        Data2VecAudioForCTC,
        HubertConfig,
        HubertForCTC,
        Wav2Vec2Config,
        Wav2Vec2ConformerConfig,
        Wav2Vec2ConformerForCTC,
        Wav2Vec2ForCTC,
        WavLMConfig,
        WavLMForCTC,
    )

    small = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
             "conv_dim": [16] * 7, "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 4, "vocab_size": 12}
    layer = {"feat_extract_norm": "layer", "do_stable_layer_norm": True, "conv_bias": True}
    classes = {
        "wav2vec2-layer": (Wav2Vec2Config, Wav2Vec2ForCTC, layer),
        "wav2vec2-group": (Wav2Vec2Config, Wav2Vec2ForCTC, {"feat_extract_norm": "group"}),
        "hubert-layer": (HubertConfig, HubertForCTC, layer),
        "hubert-group": (HubertConfig, HubertForCTC, {"feat_extract_norm": "group"}),
        "wavlm-layer": (WavLMConfig, WavLMForCTC, {**layer, "num_buckets": 32, "max_bucket_distance": 100}),
        "data2vec-audio": (Data2VecAudioConfig, Data2VecAudioForCTC, {"num_conv_pos_embeddings": 5}),
        "conformer-layer": (Wav2Vec2ConformerConfig, Wav2Vec2ConformerForCTC,
                            {"feat_extract_norm": "layer", "conv_depthwise_kernel_size": 7}),
    }
    config_cls, model_cls, extra = classes[kind]
    torch.manual_seed(0)
    return model_cls(config_cls(**{**small, **extra})).eval()


@pytest.mark.parametrize("kind", ["wav2vec2-layer", "wav2vec2-group", "hubert-layer", "hubert-group", "wavlm-layer",
                                  "data2vec-audio", "conformer-layer"])
def test_policy_says_what_padding_does(kind: str) -> None:
    """The table against Hugging Face itself: a masked, padded row equals the utterance alone exactly when the policy
    allows padding (random weights; the differences where it does not are 0.1-0.3)."""
    import torch

    model = _tiny_hf(kind)
    policy = decide_input_policy(model.config.to_dict(), {"return_attention_mask": True})
    batch = make_batch(_waves()[:3])
    with torch.no_grad():
        padded = model(torch.from_numpy(batch.input_values), attention_mask=torch.from_numpy(batch.attention_mask))
        diffs = []
        for row, n in enumerate(batch.lengths):
            alone = model(torch.from_numpy(batch.input_values[row : row + 1, :n])).logits[0]
            diffs.append(float((padded.logits[row, : alone.shape[0]] - alone).abs().max()))
    assert (max(diffs) < 1e-4) == policy.pad_batches, (kind, policy, diffs)


# ------------------------------------------------------------------------------------------ in process


def test_exact_length_infer_equals_one_at_a_time(group_norm_model: Path) -> None:
    runner = TorchRunner(group_norm_model)
    batch = make_batch(_waves())
    calls: list[tuple[int, ...]] = []

    def infer(values: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        calls.append(values.shape)
        assert mask is None
        return runner.infer(values, mask)

    exact = exact_length_infer(infer, group_norm_model)(batch.input_values, batch.attention_mask)
    padded = runner.infer(batch.input_values, batch.attention_mask)
    assert sorted(calls) == sorted({(2 if s == 1.37 else 1, int(s * 16_000)) for s in LENGTHS_S})  # equal lengths
    worst_padded = 0.0
    for row, n in enumerate(batch.lengths):
        alone = runner.infer(batch.input_values[row : row + 1, :n])[0]
        np.testing.assert_allclose(exact[row, : alone.shape[0]], alone, atol=1e-5)
        assert not exact[row, alone.shape[0] :].any()
        worst_padded = max(worst_padded, float(np.abs(padded[row, : alone.shape[0]] - alone).max()))
    assert worst_padded > 1e-2  # what a padded batch would have given: why the policy exists


@pytest.mark.parametrize("which", ["group_norm", "conformer"])
def test_mixed_length_batches_equal_one_at_a_time(which: str, request: pytest.FixtureRequest) -> None:
    """transcribe() of mixed lengths in one batch = each utterance alone, with PyTorch and with the ONNX export, for
    short utterances and for long-form windows (window batches of 4 vs 1)."""
    model_dir: Path = request.getfixturevalue(f"{which}_model")
    onnx_path: Path = request.getfixturevalue(f"{which}_onnx")
    waves = _waves()
    windows = ChunkingOptions(chunk_s=1.2, stride_s=0.3, split_on_silence=False)
    for runner in (TorchRunner(model_dir), OrtRunner(onnx_path)):
        batched = transcribe(runner, waves, model_dir, batch_size=8)
        alone = [transcribe(runner, [w], model_dir, batch_size=1) for w in waves]
        assert batched.texts == [a.texts[0] for a in alone]
        for got, one in zip(batched.logits, alone, strict=True):
            np.testing.assert_allclose(got, one.logits[0], atol=1e-4)
        long_batched = transcribe(runner, waves, model_dir, chunking=windows.model_copy(update={"batch_size": 4}))
        long_alone = transcribe(runner, waves, model_dir, chunking=windows.model_copy(update={"batch_size": 1}))
        assert max(long_batched.windows) > 1 and long_batched.texts == long_alone.texts
        for got, one in zip(long_batched.logits, long_alone.logits, strict=True):
            np.testing.assert_allclose(got, one, atol=1e-4)


def test_export_follows_the_policy(group_norm_onnx: Path, conformer_onnx: Path, tiny_onnx: Path) -> None:
    from asr_optimize.triton.repository import onnx_inputs

    assert onnx_inputs(group_norm_onnx) == ["input_values"]  # wav2vec2-base style: no attention mask
    assert onnx_inputs(conformer_onnx) == ["input_values", "attention_mask"]
    assert onnx_inputs(tiny_onnx) == ["input_values", "attention_mask"]


# ------------------------------------------------------------------------------------------ the served files


@pytest.mark.requires("tritonclient")
def test_repository_serves_by_the_manifest(group_norm_model: Path, group_norm_onnx: Path, tmp_path: Path) -> None:
    from asr_optimize.triton import repository as repo_mod
    from asr_optimize.triton.health import padding_problems
    from asr_optimize.triton.hotswap import _incompatible

    root = tmp_path / "repo"
    policy = input_policy(group_norm_model)
    manifest = repo_mod.write_acoustic_version(root, "am", 1, group_norm_onnx, "python_onnxruntime",
                                               input_policy=policy)
    assert manifest.inputs == ["input_values"] and not manifest.pads_batches
    assert repo_mod.read_manifest(root, "am", 1).input_policy == policy  # recorded for the served side
    legacy = manifest.model_copy(update={"input_policy": None, "inputs": ["input_values", "attention_mask"]})
    assert legacy.pads_batches  # versions written before the field were served with buckets

    opts = repo_mod.BatchingOptions()
    fused = repo_mod.python_parameters("KIND_GPU", opts, pad_batches=False)
    assert fused["bucket_samples"] == "" and fused["long_form_chunk_s"] == ""
    assert repo_mod.python_parameters("KIND_GPU", opts)["bucket_samples"] == "32000,80000,160000,320000"

    repo_mod.write_pipeline(root, "asr", group_norm_model, "am", 1, has_mask=False, batching=opts,
                            pad_batches=manifest.pads_batches)
    params = repo_mod.read_config(root, "asr").parameters
    assert params["bucket_samples"].string_value == "" and params["pad_batches"].string_value == "false"
    assert repo_mod.pipeline_pads(root, "asr") is False and padding_problems(root, "asr", manifest) == []
    repo_mod.set_pipeline_version(root, "asr", "am", 1, has_mask=True, batching=opts)  # a padding pipeline
    assert repo_mod.pipeline_pads(root, "asr") is True
    assert "must run at exact lengths" in padding_problems(root, "asr", manifest)[0]
    assert padding_problems(root, "asr", legacy) == []

    # a conformer-like version (mask, but no padding) after a padded one: the pipeline cannot serve both
    unpadded = legacy.model_copy(update={"version": 2, "input_policy": policy.model_copy(
        update={"attention_mask": True, "reason": "its convolution module reads across zero padding"})})
    reason = _incompatible(legacy, unpadded)
    assert reason is not None and "exact lengths (its convolution" in reason and "new model and pipeline" in reason
    assert _incompatible(manifest, manifest.model_copy(update={"version": 2})) is None
