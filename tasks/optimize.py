"""Stage 3, optimize: onnxsim, ONNX Runtime's transformer fusions, and an fp16 variant (fp32 I/O).

Each variant is checked against the PyTorch reference again: an optimization that changes transcripts is
reported, and the promotion gate (evaluate stage) decides what may ship.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx

from asr_optimize.hashing import hash_waves
from asr_optimize.model.io_spec import ONNX_NAME, WAV2VEC2_CTC
from asr_optimize.model.onnx_files import op_counts, save_onnx, size_mb
from asr_optimize.model.source import ResolvedModel, read_config
from asr_optimize.options import Options
from asr_optimize.quality.parity import check_parity
from asr_optimize.runners.ort_runner import OrtRunner
from asr_optimize.runners.torch_runner import TorchRunner
from asr_optimize.store.local import ArtifactStore
from tasks.common import StageResult, get_logger, run_cached_stage, stage_task

SIMPLIFIED_NAME = "model.sim.onnx"
FP32_NAME = "model.opt.onnx"
FP16_NAME = "model.fp16.onnx"


class OptimizeOptions(Options):
    simplify: bool = True
    transformer_fusions: bool = True
    fp16: bool = True
    # False: ORT's packed-QKV ``Attention`` op; True: ``MultiHeadAttention`` (separate Q/K/V inputs)
    use_multi_head_attention: bool = False
    fp32_parity_atol: float = WAV2VEC2_CTC.fp32_atol
    fp16_parity_atol: float = WAV2VEC2_CTC.fp16_atol  # fp16 logits differ by rounding; the gate judges transcripts


def cast_bool_tiles(model: onnx.ModelProto) -> int:
    """Wrap ``Tile`` on bool tensors as Cast(int32) -> Tile -> Cast(bool). Returns how many were rewritten.

    ONNX Runtime's CUDA provider has no bool ``Tile``, so wav2vec2's padding-mask expansion ran on the CPU, and a
    single CPU node stops ONNX Runtime from capturing the run as a CUDA graph. Same values, all nodes on CUDA.
    """
    from onnx import TensorProto, helper

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except ValueError:  # graphs over 2 GB cannot be inferred in memory; they keep the CPU Tile
        return 0
    types = {v.name: v.type.tensor_type.elem_type
             for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]}
    rewritten, nodes = 0, []
    for node in model.graph.node:
        if node.op_type == "Tile" and types.get(node.input[0]) == TensorProto.BOOL:
            as_int, tiled = f"{node.input[0]}__int32", f"{node.output[0]}__int32"
            nodes.append(helper.make_node("Cast", [node.input[0]], [as_int], to=TensorProto.INT32,
                                          name=f"{node.name}/cast_in"))
            nodes.append(helper.make_node("Tile", [as_int, node.input[1]], [tiled], name=node.name))
            nodes.append(helper.make_node("Cast", [tiled], [node.output[0]], to=TensorProto.BOOL,
                                          name=f"{node.name}/cast_out"))
            rewritten += 1
        else:
            nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return rewritten


def simplify_onnx(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    """onnxsim constant folding / dead-node removal. Returns (model, outcome)."""
    try:
        from onnxsim import simplify

        simplified, ok = simplify(model)
    except Exception as exc:  # onnxsim raises plain RuntimeErrors for graphs it cannot handle
        return model, f"onnxsim failed, graph kept as exported: {type(exc).__name__}: {str(exc)[:200]}"
    if not ok:
        return model, "onnxsim check failed, graph kept as exported"
    return simplified, "ok"


def optimize_onnx(
    onnx_path: Path, model_dir: Path, out_dir: Path, opts: OptimizeOptions, parity_waves: list[np.ndarray]
) -> dict[str, Any]:
    """Write the optimized variants and return counts, sizes and parity for each.

    - ``model.sim.onnx``: onnxsim of the export, standard ONNX ops only (the TensorRT parser's input);
    - ``model.opt.onnx``: ORT transformer fusions (contrib ops: Attention, SkipLayerNormalization, ...), then
      onnxsim; fusing first matters, since onnxsim's folding breaks the attention pattern the fuser matches;
    - ``model.fp16.onnx``: ``model.opt.onnx`` in fp16 with fp32 inputs and outputs.
    """
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.onnx_model import OnnxModel
    from onnxruntime.transformers.optimizer import optimize_model

    config = read_config(model_dir)
    metrics: dict[str, Any] = {"before": {"nodes": sum(op_counts(onnx_path).values()), "size_mb": size_mb(onnx_path)}}
    simplified, metrics["onnxsim"] = simplify_onnx(onnx.load(str(onnx_path))) if opts.simplify else (None, "disabled")
    variants: dict[str, tuple[Path, float]] = {}
    if simplified is not None:
        save_onnx(simplified, out_dir / SIMPLIFIED_NAME)
        variants["simplified"] = (out_dir / SIMPLIFIED_NAME, opts.fp32_parity_atol)
        del simplified

    # plain ONNX still (shape inference cannot type contrib ops): fix what would keep nodes off the GPU first
    base = onnx.load(str(onnx_path))
    metrics["bool_tiles_cast"] = cast_bool_tiles(base)
    prepared = out_dir / "model.prepared.onnx"
    save_onnx(base, prepared)
    del base
    fused: dict[str, int] = {}
    if opts.transformer_fusions:
        fusion = FusionOptions("bert")
        fusion.use_multi_head_attention = opts.use_multi_head_attention
        optimizer = optimize_model(
            str(prepared), model_type="bert", num_heads=config["num_attention_heads"],
            hidden_size=config["hidden_size"], opt_level=0, use_gpu=False, optimization_options=fusion,
        )
        fused = {k: int(v) for k, v in optimizer.get_fused_operator_statistics().items() if v}
        model = optimizer.model
    else:
        model = onnx.load(str(prepared))
    for leftover in out_dir.glob("model.prepared.onnx*"):
        leftover.unlink()
    if opts.simplify:
        model, outcome = simplify_onnx(model)
        metrics["onnxsim_after_fusion"] = outcome
    optimized = OnnxModel(model)
    fp32_path = out_dir / FP32_NAME
    save_onnx(optimized.model, fp32_path)
    metrics["fused_operators"] = fused
    variants["fp32"] = (fp32_path, opts.fp32_parity_atol)
    if opts.fp16:
        optimized.convert_float_to_float16(keep_io_types=True)
        save_onnx(optimized.model, out_dir / FP16_NAME)
        variants["fp16"] = (out_dir / FP16_NAME, opts.fp16_parity_atol)

    reference = TorchRunner(model_dir)
    for name, (path, atol) in variants.items():
        runner = OrtRunner(path, "cpu", precision="fp16" if name == "fp16" else "fp32")
        parity = check_parity(reference, runner, parity_waves, model_dir, atol=atol)
        metrics[name] = {
            "file": path.name, "nodes": sum(op_counts(path).values()), "size_mb": size_mb(path),
            "op_counts": op_counts(path), "parity": parity.model_dump(),
        }
        runner.close()
    return metrics


def optimize_stage(store: ArtifactStore, model: ResolvedModel, export: StageResult, opts: OptimizeOptions,
                   parity_waves: list[np.ndarray]) -> StageResult:
    """Optimize the exported graph; cached per export artifact, options and parity audio."""
    result = run_cached_stage(
        store, model, "optimize", opts.model_dump(),
        {"export": export.key or "", "parity_audio": hash_waves(parity_waves)},
        lambda out: optimize_onnx(export.file(ONNX_NAME), model.local_dir, out, opts, parity_waves),
    )
    log = get_logger()
    m = result.metrics
    log.info("optimize: onnxsim %s; fused %s; nodes %s -> %s", m["onnxsim"], m["fused_operators"] or "none",
             m["before"]["nodes"], m["fp32"]["nodes"])
    for precision in ("fp32", "fp16"):
        if precision in m:
            p = m[precision]["parity"]
            log.info("optimize: %s parity max |logit diff| %.3g, identical transcripts %.0f%%",
                     precision, p["max_abs_logit_diff"], 100 * p["identical_fraction"])
    return result


optimize_task = stage_task(optimize_stage, name="optimize-onnx", retries=1)
