"""Stage 4, TensorRT engines (fp32, fp16, mixed). Built only where ``tensorrt`` imports and a GPU is present.

Without TensorRT the stage reports "skipped" with the reason; production deployments set
``require_tensorrt`` and fail loudly instead.

Layout: one store artifact per precision (stage ``tensorrt-<precision>``, file ``engine.plan``). A precision that
fails to build stores nothing, so the next run retries it, while the precisions that built stay cached. The store
key and manifest include the TensorRT version and the GPU identity (``capabilities.GpuIdentity``: GPU name, compute
capability, CUDA and torch versions): a plan only runs where they match.

API references (TensorRT 10.x Python API; the binding source is NVIDIA/TensorRT ``python/src/infer/pyCore.cpp``,
``pyGraph.cpp`` and ``python/src/parsers/pyOnnx.cpp``):
- Builder / create_network / NetworkDefinitionCreationFlag:
  docs.nvidia.com/deeplearning/tensorrt/api/python_api/infer/Core/Builder.html
- IBuilderConfig (set_flag, set_memory_pool_limit, builder_optimization_level, add_optimization_profile,
  create_timing_cache, set_timing_cache): .../infer/Core/BuilderConfig.html
- IOptimizationProfile.set_shape(input, min, opt, max): .../infer/Core/OptimizationProfile.html
- OnnxParser.parse_from_file / num_errors / get_error -> ParserError.node(), node_name(), node_operator(), code(),
  desc(): .../parsers/Onnx/pyOnnx.html
- ITimingCache.serialize: .../infer/Core/TimingCache.html; usage: "Optimizing Builder Performance" (timing cache)
- TensorRT 11 removed BuilderFlag.FP16 / OBEY_PRECISION_CONSTRAINTS ("Migrating from TensorRT 10.x to 11.x",
  Python API reference): there the engine is strongly typed and precision comes from the ONNX graph itself.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

import onnx
from pydantic import BaseModel, Field, model_validator

from asr_optimize.capabilities import Capabilities, detect_gpu
from asr_optimize.errors import AsrOptimizeError
from asr_optimize.fileio import slugify
from asr_optimize.hashing import sha256_file
from asr_optimize.model.io_spec import ONNX_NAME, SAMPLE_RATE
from asr_optimize.model.onnx_files import save_onnx
from asr_optimize.model.source import ResolvedModel
from asr_optimize.options import Options
from asr_optimize.runners.registry import RunnerSpec
from asr_optimize.store.local import ArtifactRef, ArtifactStore, Manifest
from tasks.common import StageResult, get_logger, run_cached_stage, skipped, stage_task

PLAN_NAME = "engine.plan"
FP32_LAYERS_NAME = "fp32_layers.txt"
TIMING_CACHE_NAME = "timing.cache"
TIMING_CACHE_STAGE = "tensorrt-timing-cache"
Precision = Literal["fp32", "fp16", "mixed"]
STANDARD_DOMAINS = ("", "ai.onnx")

# Mixed precision keeps these in fp32. TensorRT layer types (LayerType member names) and ONNX op types.
FP32_LAYER_TYPES = {"NORMALIZATION", "SOFTMAX", "REDUCE"}
FP32_ONNX_OPS = {"LayerNormalization", "Softmax", "ReduceMean", "ReduceSum", "ReduceMax", "ReduceL2", "Pow", "Sqrt"}
# LayerNorm decomposed into ReduceMean/Pow/Sqrt keeps the module name; the positional conv is named pos_conv_embed.
FP32_NAME_PATTERN = re.compile(r"layer_?norm|pos_conv", re.IGNORECASE)


class EngineBuildError(AsrOptimizeError):
    """TensorRT could not parse or build the network; the message names the failing ONNX node."""


class ProfileBucket(BaseModel):
    """One optimization profile's audio-length range, in seconds of 16 kHz audio."""

    min_seconds: float
    opt_seconds: float
    max_seconds: float

    @model_validator(mode="after")
    def _ordered(self) -> ProfileBucket:
        if not 0 < self.min_seconds <= self.opt_seconds <= self.max_seconds:
            raise ValueError(f"profile bucket needs 0 < min <= opt <= max seconds, got {self}")
        return self


def _default_buckets() -> list[ProfileBucket]:
    return [ProfileBucket(min_seconds=0.5, opt_seconds=2, max_seconds=4),
            ProfileBucket(min_seconds=4, opt_seconds=8, max_seconds=12),
            ProfileBucket(min_seconds=12, opt_seconds=20, max_seconds=30)]


class EngineOptions(Options):
    """How engines are built. Several narrow profiles: one very wide profile makes wav2vec2 engines slow."""

    precisions: list[Precision] = Field(default_factory=lambda: ["fp32", "fp16", "mixed"])
    buckets: list[ProfileBucket] = Field(default_factory=_default_buckets)
    batch_min: int = 1
    batch_opt: int = 8
    batch_max: int = 32
    workspace_gib: float = 8.0
    builder_optimization_level: int = 3  # TensorRT's default; 0 (fast build) .. 5 (slowest build, best tactics)
    # weak: fp32 graph + builder precision flags (TensorRT 10). strong: precision set in the ONNX graph
    # (required by TensorRT 11). auto: weak where BuilderFlag.FP16 exists, else strong.
    typing: Literal["auto", "weak", "strong"] = "auto"
    timing_cache_file: Path | None = None  # None: the timing cache lives in the model store

    @model_validator(mode="after")
    def _valid(self) -> EngineOptions:
        if not self.precisions or len(set(self.precisions)) != len(self.precisions):
            raise ValueError(f"precisions must be a non-empty list without repeats, got {self.precisions}")
        if not self.buckets:
            raise ValueError("at least one profile bucket is needed")
        if not 1 <= self.batch_min <= self.batch_opt <= self.batch_max:
            raise ValueError(f"need 1 <= batch_min <= batch_opt <= batch_max, got "
                             f"{self.batch_min}/{self.batch_opt}/{self.batch_max}")
        if self.workspace_gib <= 0:
            raise ValueError("workspace_gib must be positive")
        if not 0 <= self.builder_optimization_level <= 5:
            raise ValueError("builder_optimization_level must be 0..5")
        return self

    def profile_shapes(self) -> list[tuple[tuple[int, int], tuple[int, int], tuple[int, int]]]:
        """(min, opt, max) ``[batch, samples]`` shapes per profile, shortest audio first."""
        shapes = []
        for b in sorted(self.buckets, key=lambda b: b.max_seconds):
            samples = [round(s * SAMPLE_RATE) for s in (b.min_seconds, b.opt_seconds, b.max_seconds)]
            shapes.append(((self.batch_min, samples[0]), (self.batch_opt, samples[1]), (self.batch_max, samples[2])))
        return shapes


def keep_in_fp32(name: str, kind: str) -> bool:
    """Whether mixed precision pins this layer/node (``kind``: TensorRT LayerType name or ONNX op type) to fp32."""
    return kind in FP32_LAYER_TYPES or kind in FP32_ONNX_OPS or bool(FP32_NAME_PATTERN.search(name))


def nonstandard_ops(onnx_path: Path) -> list[str]:
    """Ops outside the standard ONNX domain (e.g. ORT's com.microsoft fusions), which TensorRT cannot import."""
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    return sorted({f"{n.domain}.{n.op_type}" for n in graph.node if n.domain not in STANDARD_DOMAINS})


def choose_onnx(optimized: StageResult, export: StageResult | None) -> tuple[Path, str, str]:
    """(graph, source stage, source key) to build from: the simplified plain-ONNX graph, else the export.

    ONNX Runtime's transformer fusions emit com.microsoft ops (SkipLayerNormalization, Gelu) that TensorRT's ONNX
    parser has no importer for; TensorRT does its own fusions from the plain graph, so the optimize stage keeps
    an onnxsim-only ``model.sim.onnx`` for it.
    """
    from tasks.optimize import FP32_NAME, SIMPLIFIED_NAME

    for name in (SIMPLIFIED_NAME, FP32_NAME):
        if optimized.artifact_dir is None or not (path := optimized.file(name)).is_file():
            continue
        foreign = nonstandard_ops(path)
        if not foreign:
            return path, "optimize", optimized.key or ""
        get_logger().info("tensorrt: %s has ONNX Runtime-only ops %s; not usable by TensorRT", name, foreign)
    if export is not None and export.artifact_dir is not None and (path := export.file(ONNX_NAME)).is_file():
        return path, "export", export.key or ""
    raise EngineBuildError("no ONNX graph TensorRT can import: the optimized graph uses ONNX Runtime-only ops and "
                           "no export artifact was passed (build_engines(..., export=...))")


def write_reduced_precision_onnx(src: Path, dst: Path, mixed: bool) -> list[str]:
    """fp16 copy of ``src`` with fp32 I/O (for strongly typed builds); ``mixed`` keeps sensitive nodes in fp32.

    Returns the names of the nodes kept in fp32.
    """
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = onnx.load(str(src))
    keep = [n.name for n in model.graph.node if mixed and keep_in_fp32(n.name, n.op_type)]
    ops = list(DEFAULT_OP_BLOCK_LIST) + (sorted(FP32_ONNX_OPS) if mixed else [])
    converted = convert_float_to_float16(model, keep_io_types=True, op_block_list=ops, node_block_list=keep)
    save_onnx(converted, dst)
    return keep


def parser_errors(parser: Any) -> str:
    """Every ONNX parser error, each with the failing node (index, name, operator)."""
    lines = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        # node_name()/node_operator() exist from TensorRT 10.0 (pyOnnx.cpp); node() is -1 for graph-level errors
        name = err.node_name() if hasattr(err, "node_name") else ""
        op = err.node_operator() if hasattr(err, "node_operator") else ""
        lines.append(f"node #{err.node()} {name!r} ({op}): {err.code()}: {err.desc()}")
    return "; ".join(lines) or "parser returned failure without errors"


def strongly_typed(trt: Any, opts: EngineOptions) -> bool:
    """Resolve ``opts.typing``: TensorRT 11 has no BuilderFlag.FP16, so it is always strongly typed."""
    if opts.typing == "auto":
        return not hasattr(trt.BuilderFlag, "FP16")
    return opts.typing == "strong"


def pin_fp32_layers(trt: Any, network: Any) -> list[str]:
    """Constrain LayerNorm, Softmax, reductions and the positional conv to fp32 (needs OBEY_PRECISION_CONSTRAINTS)."""
    floats = {trt.float32, trt.float16}
    pinned = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if not keep_in_fp32(layer.name, layer.type.name):
            continue
        outputs = [layer.get_output(j) for j in range(layer.num_outputs)]
        if not outputs or any(t.dtype not in floats for t in outputs):
            continue  # shape/index layers: precision constraints do not apply
        layer.precision = trt.float32  # ILayer.precision / set_output_type: pyGraph.cpp ILayer bindings
        for j in range(layer.num_outputs):
            layer.set_output_type(j, trt.float32)
        pinned.append(layer.name)
    return pinned


def gpu_identity() -> dict[str, str]:
    """The GPU (CUDA device 0) and CUDA / torch versions the engine was built on, as its metrics record them."""
    gpu = detect_gpu()
    return gpu.key() if gpu else {}


def trtexec_command(onnx_path: Path, precision: str, opts: EngineOptions, inputs: list[str], pinned: list[str],
                    strong: bool) -> str:
    """The equivalent trtexec line for the first profile (one --minShapes/--optShapes/--maxShapes set per run)."""
    lo, mid, hi = opts.profile_shapes()[0]

    def shapes(s: tuple[int, int]) -> str:
        return ",".join(f"{name}:{s[0]}x{s[1]}" for name in inputs)

    parts = [f"trtexec --onnx={onnx_path.name} --saveEngine={precision}.plan", f"--minShapes={shapes(lo)}",
             f"--optShapes={shapes(mid)}", f"--maxShapes={shapes(hi)}",
             f"--memPoolSize=workspace:{int(opts.workspace_gib * 1024)}",  # MiB
             f"--builderOptimizationLevel={opts.builder_optimization_level}", "--timingCacheFile=timing.cache"]
    if strong:
        parts.append("--stronglyTyped")
    elif precision != "fp32":
        parts.append("--fp16")
    if pinned:
        parts += ["--precisionConstraints=obey", "--layerPrecisions=" + ",".join(f"{n}:fp32" for n in pinned),
                  "--layerOutputTypes=" + ",".join(f"{n}:fp32" for n in pinned)]
    return " ".join(parts)


def build_engine(onnx_path: Path, out_dir: Path, precision: str, opts: EngineOptions,
                 timing_cache_path: Path | None) -> dict[str, Any]:
    """Build ``out_dir/engine.plan`` for one precision; loads and updates the timing cache file; returns metrics."""
    import tensorrt as trt

    log = get_logger()
    strong = strongly_typed(trt, opts)
    with tempfile.TemporaryDirectory(prefix="trt-onnx-") as tmp:
        source, pinned = onnx_path, []
        if strong and precision != "fp32":
            source = Path(tmp) / f"model.{precision}.onnx"
            pinned = write_reduced_precision_onnx(onnx_path, source, mixed=precision == "mixed")
        trt_logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(trt_logger)
        # TensorRT 10: explicit batch is always on; flags=0 is a weakly typed network (Builder.html)
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strong else 0
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, trt_logger)
        if not parser.parse_from_file(str(source)):  # reads external data next to the file
            raise EngineBuildError(f"TensorRT could not parse {onnx_path.name}: {parser_errors(parser)}")
        inputs = [network.get_input(i).name for i in range(network.num_inputs)]
        for i in range(network.num_inputs):
            if len(network.get_input(i).shape) != 2:
                raise EngineBuildError(f"input {inputs[i]} has shape {network.get_input(i).shape}; "
                                       "expected [batch, samples]")

        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(opts.workspace_gib * 2**30))
        config.builder_optimization_level = opts.builder_optimization_level
        profiles = opts.profile_shapes()
        for lo, mid, hi in profiles:
            profile = builder.create_optimization_profile()
            for name in inputs:  # attention_mask, when exported, has the same [batch, samples] shape
                profile.set_shape(name, lo, mid, hi)
            config.add_optimization_profile(profile)
        if not strong and precision in ("fp16", "mixed"):
            config.set_flag(trt.BuilderFlag.FP16)
        if not strong and precision == "mixed":
            config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
            pinned = pin_fp32_layers(trt, network)
            if not pinned:
                raise EngineBuildError("mixed precision found no LayerNorm/Softmax/reduction/pos_conv layer to pin")

        cached = timing_cache_path.read_bytes() if timing_cache_path and timing_cache_path.is_file() else b""
        cache = config.create_timing_cache(cached)  # empty buffer -> new cache
        config.set_timing_cache(cache, ignore_mismatch=False)  # a cache from another GPU/version is rejected
        start = time.perf_counter()
        plan = builder.build_serialized_network(network, config)
        seconds = round(time.perf_counter() - start, 2)
        if plan is None:
            raise EngineBuildError(f"TensorRT failed to build the {precision} engine (see the TensorRT log above)")
        plan_path = out_dir / PLAN_NAME
        with open(plan_path, "wb") as handle:
            handle.write(plan)  # IHostMemory supports the buffer protocol
        if timing_cache_path is not None:
            timing_cache_path.write_bytes(bytes(memoryview(cache.serialize())))
    if pinned:
        (out_dir / FP32_LAYERS_NAME).write_text("\n".join(pinned) + "\n", encoding="utf-8")
    log.info("tensorrt: %s engine built in %.1f s (%.1f MB)", precision, seconds, plan_path.stat().st_size / 2**20)
    return {
        "precision": precision,
        "tensorrt_version": trt.__version__,
        **gpu_identity(),
        "typing": "strong" if strong else "weak",
        "inputs": inputs,
        "profiles": [{"min": list(lo), "opt": list(mid), "max": list(hi)} for lo, mid, hi in profiles],
        "fp32_layers": len(pinned),
        "build_seconds": seconds,
        "size_mb": round(plan_path.stat().st_size / 2**20, 2),
        "timing_cache_bytes_in": len(cached),
        "trtexec": trtexec_command(onnx_path, precision, opts, inputs, pinned, strong),
    }


def engine_environment(caps: Capabilities) -> dict[str, str]:
    """What an engine is bound to (TensorRT version, GPU name, compute capability, CUDA and torch versions); part of
    every engine's store key and manifest, so another GPU type never reuses it."""
    gpu = caps.gpu_identity()
    bound = gpu.key() if gpu else {"gpu": "none", "compute_capability": "none"}
    return {"tensorrt": caps.tensorrt_version or "none", **bound}


def engine_params(opts: EngineOptions, precision: str, env: dict[str, str]) -> dict[str, Any]:
    """Store-key parameters of one engine: build options, precision and ``engine_environment``."""
    params = opts.model_dump(mode="json", exclude={"precisions", "timing_cache_file"})
    return {**params, "precision": precision, **env}


def timing_cache_pointer(env: dict[str, str]) -> str:
    """Store pointer naming the latest timing cache for this TensorRT version + GPU."""
    return slugify(f"tensorrt-timing-cache--{env['tensorrt']}--{env['gpu']}--sm{env['compute_capability']}")


def fetch_timing_cache(store: ArtifactStore, env: dict[str, str], dest: Path) -> str | None:
    """Copy the store's timing cache for ``env`` to ``dest``; returns its sha256, or None if there is none."""
    pointer = store.read_pointer(timing_cache_pointer(env))
    if not pointer or "ref" not in pointer:
        return None
    found = store.get(ArtifactRef(**pointer["ref"]))
    if found is None or not found.file(TIMING_CACHE_NAME).is_file():
        return None
    shutil.copyfile(found.file(TIMING_CACHE_NAME), dest)
    return sha256_file(dest)


def publish_timing_cache(store: ArtifactStore, model: ResolvedModel, env: dict[str, str], src: Path) -> str:
    """Store ``src`` as a content-addressed artifact and move this environment's pointer to it."""
    digest = sha256_file(src)
    ref = ArtifactRef(model_slug="tensorrt-timing-cache", revision=slugify(f"{env['tensorrt']}-{env['gpu']}"),
                      stage=TIMING_CACHE_STAGE, key=digest[:16])
    with store.staging() as scratch:
        shutil.copyfile(src, scratch / TIMING_CACHE_NAME)
        manifest = Manifest(ref=ref, source_model=model.source, source_revision=model.revision, params=env,
                            metrics={"bytes": src.stat().st_size})
        store.put(scratch, manifest)
    store.write_pointer(timing_cache_pointer(env), {"ref": ref.model_dump(), "sha256": digest})
    return digest


def build_engines(store: ArtifactStore, model: ResolvedModel, optimized: StageResult, caps: Capabilities,
                  opts: EngineOptions, export: StageResult | None = None) -> StageResult:
    """Build (or reuse) one engine per precision; a precision that fails is recorded and the others still build."""
    reason = caps.why_no_tensorrt()
    if reason:
        return skipped("tensorrt", reason)
    log = get_logger()
    start = time.perf_counter()
    onnx_path, source_stage, source_key = choose_onnx(optimized, export)
    env = engine_environment(caps)
    engines: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="trt-cache-") as tmp:
        cache_path = opts.timing_cache_file or Path(tmp) / TIMING_CACHE_NAME
        cache_sha = sha256_file(cache_path) if opts.timing_cache_file and cache_path.is_file() else None
        if opts.timing_cache_file is None:
            cache_sha = fetch_timing_cache(store, env, cache_path)
        log.info("tensorrt: TensorRT %s on %s (sm %s), from %s, timing cache %s", env["tensorrt"], env["gpu"],
                 env["compute_capability"], onnx_path.name, "found" if cache_sha else "new")
        for precision in opts.precisions:
            try:
                result = run_cached_stage(
                    store, model, f"tensorrt-{precision}", engine_params(opts, precision, env),
                    {"onnx": f"{source_stage}:{source_key}"},
                    lambda out, p=precision: build_engine(onnx_path, out, p, opts, cache_path),
                )
                engines[precision] = {"status": result.status, "plan": str(result.file(PLAN_NAME)),
                                      "location": result.location, "key": result.key, **result.metrics}
            except Exception as exc:  # one precision failing must not cost the others
                log.error("tensorrt: %s engine failed: %s: %s", precision, type(exc).__name__, exc)
                engines[precision] = {"status": "failed", "reason": f"{type(exc).__name__}: {str(exc)[:1000]}"}
        if opts.timing_cache_file is None and cache_path.is_file() and sha256_file(cache_path) != cache_sha:
            try:
                publish_timing_cache(store, model, env, cache_path)
            except Exception as exc:  # the engines are fine without it; the next build is just slower
                log.warning("tensorrt: could not store the timing cache: %s", exc)
    return combine_results(engines, env, source_stage, round(time.perf_counter() - start, 3))


def combine_results(engines: dict[str, dict[str, Any]], env: dict[str, str], source: str,
                    seconds: float) -> StageResult:
    """One StageResult for all precisions: failed only if every precision failed."""
    failed = {p: e["reason"] for p, e in engines.items() if e["status"] == "failed"}
    statuses = {e["status"] for e in engines.values()}
    status = "failed" if len(failed) == len(engines) else ("cached" if statuses == {"cached"} else "ok")
    reason = "; ".join(f"{p} failed: {r}" for p, r in failed.items()) or None
    return StageResult(stage="tensorrt", status=status, reason=reason, seconds=seconds,
                       metrics={"engines": engines, "onnx_source": source, **env})


def engine_runner_specs(result: StageResult) -> list[RunnerSpec]:
    """Runner specs (kind ``tensorrt``) for every engine this stage produced; empty when skipped."""
    return [
        RunnerSpec(kind="tensorrt", variant="engine", precision=precision, device="cuda", path=Path(info["plan"]),
                   options={"precision": precision}, artifact=f"tensorrt-{precision}:{info.get('key')}/{PLAN_NAME}")
        for precision, info in result.metrics.get("engines", {}).items() if info.get("plan")
    ]


tensorrt_task = stage_task(build_engines, name="tensorrt-engines", tags=["gpu"])
