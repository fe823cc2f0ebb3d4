"""The fused engine against Hugging Face: folding and fusion correctness on CPU fp32, padding rule, engine folder.

Two models: the bundled demo model (layer-norm feature encoder, pre-LN) and a small random group-norm / post-LN
config, so both HF encoder variants and both feature-encoder norms are covered.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from asr_optimize.model.ctc import conv_output_length
from asr_optimize.model.source import init_random_model, load_model
from asr_optimize.paths import DEFAULT_MODEL
from asr_optimize.runners.base import RunnerUnavailable
from asr_optimize.runners.fused_engine import FusedEngineOptions, FusedRunner, build_fused_engine
from asr_optimize.runners.registry import RunnerSpec, build_runner
from asr_optimize.transcribe import transcribe

KERNELS, STRIDES = [10, 3, 3, 3, 3, 2, 2], [5, 2, 2, 2, 2, 2, 2]
ATOL = 1e-4
GROUP_POST_LN = {
    "feat_extract_norm": "group", "do_stable_layer_norm": False, "conv_bias": False, "hidden_size": 64,
    "num_attention_heads": 4, "intermediate_size": 128, "num_hidden_layers": 2, "conv_dim": [32] * 7,
    "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 4,
}


@pytest.fixture(scope="module")
def group_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return init_random_model(DEFAULT_MODEL, tmp_path_factory.mktemp("fused") / "group-post-ln", seed=3,
                             overrides=GROUP_POST_LN)


@pytest.fixture(scope="module")
def demo_hf() -> torch.nn.Module:
    return load_model(DEFAULT_MODEL)


def _padded_batch(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = np.array([16_000, 12_345, 7_003])
    x = np.zeros((3, 16_000), dtype=np.float32)
    mask = np.zeros((3, 16_000), dtype=np.int64)
    for i, n in enumerate(lengths):
        x[i, :n] = rng.standard_normal(n)
        mask[i, :n] = 1
    return x, mask, conv_output_length(lengths, KERNELS, STRIDES)


def _hf_logits(model: torch.nn.Module, x: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    with torch.no_grad():
        m = None if mask is None else torch.from_numpy(mask)
        return model(torch.from_numpy(x), attention_mask=m).logits.numpy()


def test_demo_logits_match_hf_padded_batch(demo_fused_engine: Path, demo_hf: torch.nn.Module) -> None:
    runner = FusedRunner(demo_fused_engine, device="cpu", precision="fp32")
    x, mask, frames = _padded_batch()
    out, ref = runner.infer(x, mask), _hf_logits(demo_hf, x, mask)
    assert out.shape == ref.shape and out.dtype == np.float32
    assert np.abs(out - ref).max() < ATOL  # padded frames too: same zeroing and key masking as HF
    for i, n in enumerate(frames):  # batched == one at a time
        alone = runner.infer(x[i: i + 1, : mask[i].sum()], None)
        assert alone.shape[1] == n
        assert np.abs(alone[0] - out[i, :n]).max() < ATOL


def test_buckets_pad_without_changing_logits(demo_fused_engine: Path, demo_hf: torch.nn.Module) -> None:
    runner = FusedRunner(demo_fused_engine, device="cpu", precision="fp32", buckets=[(2, 9_000), (4, 20_000)])
    x, mask, frames = _padded_batch(seed=1)
    out = runner.infer(x, mask)  # padded to the (4, 20000) bucket: one filler row, 4000 more samples
    ref = _hf_logits(demo_hf, x, mask)
    assert out.shape == ref.shape
    for i, n in enumerate(frames):
        assert np.abs(out[i, :n] - ref[i, :n]).max() < ATOL
    short = x[2:3, :7_003]
    assert np.abs(runner.infer(short, None) - _hf_logits(demo_hf, short, None)).max() < ATOL
    runner.cuda_graphs = True  # the automatic graph buckets: batch to a power of two, samples to whole seconds
    assert runner._bucket(3, 20_001) == (4, 32_000) and runner._bucket(64, 160_000) == (64, 160_000)
    assert runner._bucket(2, 9_000) == (2, 9_000)  # a configured bucket wins


def test_blocks_stack_like_one_batch(demo_fused_engine: Path) -> None:
    """The Triton backend's path: one block per request, lengths instead of masks, padded to a bucket."""
    runner = FusedRunner(demo_fused_engine, device="cpu", precision="fp32", buckets=[(4, 20_000)])
    x, mask, frames = _padded_batch(seed=2)
    expected = runner.infer(x, mask)
    blocks = [x[:1], torch.from_numpy(x[1:])]  # a host array and a (CPU) torch tensor
    got = runner.to_numpy(runner.run_prepared(runner.prepare_blocks(blocks, mask.sum(axis=1))))
    assert np.array_equal(got, expected)
    full = runner.to_numpy(runner.run_prepared(runner.prepare_blocks([x[:1], x[:1]], None)))
    assert np.array_equal(full[1], full[0]) and full.shape[1] == frames[0]
    exact = FusedRunner(demo_fused_engine, device="cpu", precision="fp32", buckets=[(4, 16_000)])
    assert exact.prepare_blocks([x[:1], x[:1]], None).mask is None  # batch padding alone needs no mask (flash)
    assert np.array_equal(exact.to_numpy(exact.run_prepared(exact.prepare_blocks([x[:1], x[:1]], None))), full)
    with pytest.raises(ValueError, match="different widths"):
        runner.prepare_blocks([x[:1], x[:1, :8_000]], None)


def test_demo_transcripts_identical(demo_fused_engine: Path) -> None:
    from asr_optimize.quality.eval_sets import load_eval_set

    waves = [u.audio for u in load_eval_set()][:12]
    ref, _ = transcribe(build_runner(RunnerSpec(kind="pytorch", path=DEFAULT_MODEL)), waves, DEFAULT_MODEL)
    spec = RunnerSpec(kind="fused", variant="engine", precision="fp32", device="cpu", path=demo_fused_engine)
    fused = build_runner(spec)
    assert fused.label == "fused:engine:fp32@cpu"
    got, _ = transcribe(fused, waves, demo_fused_engine, batch_size=4)  # the engine folder carries vocab + config
    assert got == ref


@pytest.mark.parametrize("stats", ["valid", "padded"])
def test_group_norm_post_ln(group_model: Path, tmp_path: Path, stats: str) -> None:
    """Group-norm stats over each utterance's own frames ('valid') or over the padded batch like HF ('padded')."""
    engine = tmp_path / "engine"
    metrics = build_fused_engine(group_model, engine, FusedEngineOptions(group_norm_stats=stats))
    assert not any("pre-LN" in f for f in metrics["folded"])
    hf = load_model(group_model)
    runner = FusedRunner(engine, device="cpu", precision="fp32")
    x, mask, frames = _padded_batch(seed=2)
    out = runner.infer(x, mask)
    batched_ref = _hf_logits(hf, x, mask)
    for i, n in enumerate(frames):
        alone_x = x[i: i + 1, : mask[i].sum()]
        alone_ref = _hf_logits(hf, alone_x, None)
        assert np.abs(runner.infer(alone_x, None) - alone_ref).max() < ATOL
        if stats == "valid":  # batching changes nothing
            assert np.abs(out[i, :n] - alone_ref[0]).max() < ATOL
        else:  # HF's batched statistics
            assert np.abs(out[i, :n] - batched_ref[i, :n]).max() < ATOL


def test_engine_folder_round_trip(demo_fused_engine: Path, tmp_path: Path) -> None:
    meta = json.loads((demo_fused_engine / "engine.json").read_text())
    assert meta["precision"] == "fp16" and meta["architecture"]["feat_extract_norm"] == "layer"
    assert any("weight_norm" in f for f in meta["folded"]) and any("QKV" in f for f in meta["folded"])
    for name in ("weights.safetensors", "vocab.json", "config.json"):
        assert (demo_fused_engine / name).is_file()
    copy = tmp_path / "copy"
    copy.mkdir()
    for p in demo_fused_engine.iterdir():
        (copy / p.name).write_bytes(p.read_bytes())
    x, mask, _ = _padded_batch(seed=3)
    a = FusedRunner(demo_fused_engine, device="cpu", precision="fp32").infer(x, mask)
    b = FusedRunner(copy, device="cpu", precision="fp32").infer(x, mask)
    assert np.array_equal(a, b)
    (copy / "weights.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(Exception, match="cannot read engine weights"):
        FusedRunner(copy, device="cpu", precision="fp32")
    with pytest.raises(Exception, match="not a fused engine folder"):
        FusedRunner(tmp_path, device="cpu", precision="fp32")


def test_fp8_engine_scales_and_cpu_refusal(tmp_path: Path) -> None:
    from asr_optimize.engine.fused import FusedModel, load_engine
    from asr_optimize.quality.eval_sets import load_eval_set

    waves = [u.audio for u in load_eval_set()][:8]
    engine = tmp_path / "fp8"
    with pytest.raises(ValueError, match="calibration audio"):
        build_fused_engine(DEFAULT_MODEL, engine, FusedEngineOptions(precision="fp8"))
    metrics = build_fused_engine(DEFAULT_MODEL, engine, FusedEngineOptions(precision="fp8", calibration_utterances=4),
                                 calibration_audio=waves)
    assert metrics["calibration_utterances"] == 4
    meta, weights, fp8 = load_engine(engine)
    scales = meta["fp8"]["activation_scales"]
    assert set(scales) == {f"layers.{i}.{g}" for i in range(4) for g in ("qkv", "out", "up", "down")}
    assert all(0 < s < 1 for s in scales.values())
    w8, ws = fp8["layers.0.up.w8"], fp8["layers.0.up.ws"]
    assert w8.dtype == torch.float8_e4m3fn and ws.shape == (w8.shape[0],)
    rel = (w8.float() * ws[:, None] - weights["layers.0.up.w"]).abs().max() / weights["layers.0.up.w"].abs().max()
    assert rel < 0.07  # e4m3 has 3 mantissa bits
    with pytest.raises(RunnerUnavailable, match=r"compute capability >= 8\.9"):
        FusedRunner(engine, device="cpu", precision="fp8")
    # the fp8 GEMM path itself (torch._scaled_mm has a CPU kernel): same transcripts as fp32 on these utterances
    if not hasattr(torch, "_scaled_mm"):
        return
    runner = FusedRunner(engine, device="cpu", precision="fp32")
    ref, _ = transcribe(runner, waves, engine)
    fp8_cfg = {"mode": "rowwise", "act_scales": scales, "weights": fp8}
    try:
        runner.model = FusedModel(meta["architecture"], weights, "cpu", torch.float32, fp8=fp8_cfg)
        got, _ = transcribe(runner, waves, engine)
    except (RuntimeError, NotImplementedError) as exc:  # a CPU build without fp8 GEMMs
        pytest.skip(f"torch._scaled_mm on CPU: {exc}")
    assert sum(a == b for a, b in zip(got, ref, strict=True)) >= len(ref) - 1


def test_fp8_mixed_plan_is_chosen_on_calibration_audio(tmp_path: Path) -> None:
    """The plan keeps the GEMMs with the largest e4m3 error in fp16, within its cap, from the calibration set."""
    from asr_optimize.engine.fused import FusedModel, load_engine, plan_fp16_gemms
    from asr_optimize.quality.eval_sets import calibration_audio, load_eval_set

    waves = calibration_audio()[:6]
    test_texts = {u.text for u in load_eval_set()}
    assert not test_texts & {json.loads(line)["text"] for line in (DEFAULT_MODEL.parent / "demo-calibration" /
                                                                   "manifest.jsonl").read_text().splitlines()}
    engine = tmp_path / "mixed"
    opts = FusedEngineOptions(precision="fp8-mixed", calibration_utterances=6, mixed_fp16_fraction=0.25)
    metrics = build_fused_engine(DEFAULT_MODEL, engine, opts, calibration_audio=waves)
    meta, weights, fp8 = load_engine(engine)
    plan, scales = meta["fp8"]["mixed_plan"], meta["fp8"]["activation_scales"]
    kept = plan["fp16_gemms"]
    assert meta["fp8"]["fp16_gemms"] == kept and metrics["fp16_gemms"] == len(kept)
    assert len(kept) == 4 and set(kept) <= set(scales)  # 25% of 16 GEMMs
    ranked = list(plan["relative_errors"])  # most sensitive first
    assert sorted(ranked[:4]) == kept
    errors = list(plan["relative_errors"].values())
    assert errors == sorted(errors, reverse=True) and errors[-1] > 0
    assert 0.9 < plan["simulated_frame_agreement"]["all_fp8"] <= 1.0

    # every GEMM in fp16 is the fp32 forward itself: the simulated plan agrees on every frame
    reference = FusedModel(meta["architecture"], weights, "cpu", torch.float32, use_triton=False)
    assert plan_fp16_gemms(reference, waves, scales, fp16_fraction=1.0)["simulated_frame_agreement"]["plan"] == 1.0

    with pytest.raises(RunnerUnavailable, match=r"compute capability >= 8\.9"):
        FusedRunner(engine, device="cpu", precision="fp8-mixed")
    if not hasattr(torch, "_scaled_mm"):
        return
    # the mixed forward (torch._scaled_mm on the CPU): GEMMs of the plan in fp32, the others in e4m3
    runner = FusedRunner(engine, device="cpu", precision="fp32")
    ref, _ = transcribe(runner, waves, engine)
    fp8_cfg = {"mode": "rowwise", "act_scales": scales, "weights": fp8, "fp16_gemms": kept}
    try:
        runner.model = FusedModel(meta["architecture"], weights, "cpu", torch.float32, fp8=fp8_cfg)
        got, _ = transcribe(runner, waves, engine)
    except (RuntimeError, NotImplementedError) as exc:  # a CPU build without fp8 GEMMs
        pytest.skip(f"torch._scaled_mm on CPU: {exc}")
    assert sum(a == b for a, b in zip(got, ref, strict=True)) >= len(ref) - 1
    assert not (set(kept) & set(runner.model.fp8["w"]))  # the plan's GEMMs carry no e4m3 weights


def test_fp16_needs_cuda_and_bad_model(demo_fused_engine: Path, tmp_path: Path) -> None:
    with pytest.raises(RunnerUnavailable, match="only on CUDA"):
        FusedRunner(demo_fused_engine, device="cpu", precision="fp16")
    from asr_optimize.engine.fused import architecture_from_config
    from asr_optimize.errors import UnsupportedModelError

    with pytest.raises(UnsupportedModelError, match="hidden_act"):
        architecture_from_config({"model_type": "wav2vec2", "architectures": ["Wav2Vec2ForCTC"], "vocab_size": 5,
                                  "hidden_act": "relu"})
    with pytest.raises(UnsupportedModelError, match="Wav2Vec2ForCTC"):
        architecture_from_config({"model_type": "hubert", "architectures": ["HubertForCTC"], "vocab_size": 5})


def test_strided_layout_rows() -> None:
    """Every layer's rows are a multiple of the next; valid outputs never read another utterance's frames."""
    from asr_optimize.engine.fused import conv_frames, layer_rows

    for samples in (400, 401, 16_000, 16_005, 160_000, 123_457):
        frames = conv_frames(samples, KERNELS, STRIDES)
        rows = layer_rows(samples, KERNELS, STRIDES, need_all_first=False)
        assert rows[-1] in (frames[-1], frames[-1] + 1)
        for i in range(1, len(rows)):
            assert rows[i - 1] == STRIDES[i] * rows[i]
        grouped = layer_rows(samples, KERNELS, STRIDES, need_all_first=True)
        assert grouped[0] >= frames[0]


@pytest.mark.requires("cuda")
def test_cuda_fp16_and_fp8_close_to_fp32(demo_fused_engine: Path, demo_hf: torch.nn.Module, tmp_path: Path) -> None:
    x, mask, frames = _padded_batch(seed=4)
    ref = _hf_logits(demo_hf, x, mask)
    scale = np.abs(ref).max()
    runner = FusedRunner(demo_fused_engine, device="cuda", precision="fp16", buckets=[(4, 16_000)])
    out = runner.infer(x, mask)
    for i, n in enumerate(frames):
        assert np.abs(out[i, :n] - ref[i, :n]).max() / scale < 0.05
    again = runner.infer(x, mask)  # graph replay gives the same result
    assert np.array_equal(out, again)
    on_gpu = [torch.from_numpy(x[:2]).cuda(), torch.from_numpy(x[2:]).cuda()]  # Triton's GPU inputs (DLPack)
    stacked = runner.to_numpy(runner.run_prepared(runner.prepare_blocks(on_gpu, mask.sum(axis=1))))
    assert np.array_equal(stacked, out)  # same graph, rows copied device to device
    from asr_optimize.runners.fused_engine import fp8_support

    if fp8_support("cuda")[0]:
        from asr_optimize.audio.load import synthetic_audio

        engine = tmp_path / "fp8"
        build_fused_engine(DEFAULT_MODEL, engine, FusedEngineOptions(precision="fp8"),
                           calibration_audio=synthetic_audio(4, 2.0, seed=5))
        out8 = FusedRunner(engine, device="cuda", precision="fp8").infer(x, mask)
        for i, n in enumerate(frames):
            assert np.abs(out8[i, :n] - ref[i, :n]).max() / scale < 0.2
