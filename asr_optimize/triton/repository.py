"""Triton model repository generation: the acoustic model (one folder per version) and the ``asr`` pipeline.

Layout (a local folder; the same layout works for the NGC tritonserver image)::

    <root>/<model_name>/config.pbtxt          platform tensorrt_plan | onnxruntime_onnx, or backend python
    <root>/<model_name>/<N>/model.{plan,onnx} (+ model.py for the python backend) + manifest.json
    <root>/<model_name>/<N>/engine/ + model.py + manifest.json   the fused engine (python backend, PyTorch)
    <root>/<pipeline_name>/config.pbtxt       python BLS: audio -> length bucket -> acoustic model -> CTC -> text
    <root>/<pipeline_name>/1/{model.py,ctc.json,chunking.py}

The acoustic config lists live versions with ``version_policy { specific { versions: [...] } }``; the
pipeline's ``acoustic_version`` parameter names the one that serves. Both are rewritten atomically.

Serving on a GPU: the acoustic model runs on GPU instances (ONNX Runtime CUDA with I/O binding,
optionally a CUDA graph per fixed shape) behind Triton's dynamic batcher, which merges only requests of the same
shape. The ``asr`` pipeline therefore pads every utterance to a length bucket (default 2/5/10/20 s; padding is
masked through ``attention_mask`` and only the valid frames are decoded), so requests of different lengths share
batches. Utterances longer than the largest bucket are cut into overlapping windows (``asr_optimize.audio.chunking``,
copied beside the pipeline) sent as one batch, and their logits stitched. ``BatchingOptions`` holds every knob.
A model whose output zero padding changes (``asr_optimize.model.inputs``: group-norm, conformer, data2vec-audio) is
never padded: its version manifest records that, and the pipeline sends each length alone (``pad_batches``).

The fused engine (``python_fused``) also runs in the python backend: both python kinds write the same parameter set,
so an ONNX version and a fused version can be live side by side under one config (a swap between them changes only
the live versions).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from asr_optimize import defaults
from asr_optimize.errors import AsrOptimizeError
from asr_optimize.fileio import atomic_write_text, safe_join
from asr_optimize.hashing import sha256_file
from asr_optimize.model.ctc import CtcVocabulary
from asr_optimize.model.inputs import PADDED, InputPolicy
from asr_optimize.model.io_spec import SAMPLE_RATE, WAV2VEC2_CTC
from asr_optimize.model.io_spec import WAV2VEC2_CTC as IO
from asr_optimize.options import Options
from asr_optimize.transcribe import ChunkingOptions
from asr_optimize.triton.backends import CTC_PIPELINE, FUSED_ACOUSTIC, ORT_ACOUSTIC
from asr_optimize.triton.names import TritonModelName, check_model_name, repo_path

CHUNKING_SOURCE = Path(__file__).resolve().parents[1] / "audio" / "chunking.py"
"""The long-form windowing module (numpy only), copied into the pipeline's version folder."""

ModelKind = Literal["python_onnxruntime", "python_fused", "onnxruntime_onnx", "tensorrt_plan"]
PYTHON_KINDS: tuple[str, ...] = ("python_onnxruntime", "python_fused")
"""Kinds served by Triton's python backend (one config can hold versions of both)."""
FUSED_ENGINE_JSON = "engine.json"
"""Marks a fused engine folder (``asr_optimize.engine.fused.ENGINE_JSON``; not imported: that module needs torch)."""
FUSED_ENGINE_DIR = "engine"
DEFAULT_MODEL_NAME = defaults.TRITON_MODEL_NAME
DEFAULT_PIPELINE_NAME = defaults.TRITON_PIPELINE_NAME
MANIFEST_NAME = "manifest.json"


class RepositoryError(AsrOptimizeError):
    """The model repository or an artifact for it is missing, malformed or inconsistent."""


class IntegrityError(RepositoryError):
    """A file of a deployed version (or of a candidate) does not match the sha256 recorded for it."""


class BatchingOptions(Options):
    """Scheduler settings of the acoustic model (the batcher only merges requests of the same shape)."""

    max_batch_size: int = Field(8, ge=1)
    preferred_batch_sizes: list[int] = Field(default_factory=lambda: [4, 8])
    max_queue_delay_us: int = Field(2000, ge=0)
    instance_count: int = Field(1, ge=1)
    instance_kind: Literal["KIND_CPU", "KIND_GPU", "auto"] = "auto"
    """auto: GPU for tensorrt_plan / onnxruntime_onnx / python_fused, CPU for the python ONNX Runtime fallback."""
    intra_op_threads: int = Field(1, ge=0)
    """Threads per CPU instance of a python model: ONNX Runtime intra-op, or torch (fused) (0 = library default)."""
    gpu_ids: list[int] | None = None
    """GPUs for the acoustic instances (None: Triton puts ``instance_count`` instances on every visible GPU)."""
    io_binding: bool = True
    """GPU python ONNX Runtime model: bind inputs/outputs to device memory (one copy each way per batch)."""
    gpu_input_tensors: bool = True
    """GPU python models: let Triton hand them inputs it holds on the GPU (``FORCE_CPU_ONLY_INPUT_TENSORS: no``,
    read through DLPack). Measured on H100s (fused engine, serve-bench, 10 s requests) the evidence is mixed: the
    pipeline at concurrency 64 served 2,624x on and 2,084x off (older stub code, two hosts); on one host the acoustic
    model alone served 2,073x on and 2,536x off (tritonserver then copies inputs to the GPU in its own CUDA context,
    beside the stub's). On by default until a same-host pipeline A/B decides
    (docs/decisions, benchmarks/results/h100-2026-11-27)."""
    cuda_graphs: bool = False
    """GPU python ONNX Runtime model: capture one CUDA graph per (batch, samples) shape; each holds its own session
    (weights included), so at most ``cuda_graph_max_shapes`` of them; other shapes use the plain CUDA session."""
    cuda_graph_max_shapes: int = Field(8, ge=1)
    buckets_s: list[float] = Field(default_factory=lambda: [2.0, 5.0, 10.0, 20.0])
    """Pipeline length buckets in seconds (ascending); [] sends every utterance at its own length."""
    long_form: ChunkingOptions = Field(default_factory=ChunkingOptions)
    """Utterances longer than the largest bucket: windows, silence splitting and normalization exactly as in-process
    ``asr_optimize.transcribe`` (same ``ChunkingOptions``), run as one batch and stitched in the pipeline."""
    pipeline_instance_count: int = Field(1, ge=1)
    """``asr`` pipeline instances (processes: normalization, padding, CTC decoding, BLS calls; one hop: each holds
    its own copy of the engine)."""
    one_hop: bool = True
    """A fused engine version is run inside the ``asr`` model (audio in, text out, CTC argmax on the device, no BLS
    hop, no logits through the host); the acoustic model keeps serving the canary. False: the ``asr`` model calls
    the acoustic model by BLS for every request. ONNX and TensorRT versions always go by BLS."""
    pipeline_max_queue_delay_us: int = Field(500, ge=0)
    fused_precision: Literal["auto", "fp16", "fp8", "fp8-mixed"] = "auto"
    """GPU fused model: auto = the precision recorded in each version's manifest (the engine's, or the promoted
    spec's), per version, so fp16 and fp8 versions can be live together. CPU instances always run fp32."""
    fused_max_batch_s: float = Field(640.0, gt=0)
    """Fused model: audio seconds per engine call (batch x padded length; default 64 x 10 s). Larger scheduler
    batches are split. Why: activation memory and the CUDA-graph pool grow with it; with 64 x 20 s shapes one
    replica instance held 17.8 GiB on the H100 and two versions side by side (a hot swap) ran out of memory."""
    fused_warmup: bool | None = None
    """Fused model: capture the CUDA graphs of every (batch, bucket) shape the pipeline sends at load time, so a hot
    swap pays capture before it serves. None: on for GPU instances, off for CPU ones."""
    fused_profile_every: int = Field(0, ge=0)
    """Fused model: N > 0 logs the mean time of the backend's execute phases (inputs, stack, gpu, fetch, responses;
    each CUDA-synchronized) every N executes, to tell the stub's own time from Triton's hand-over of tensors (a
    diagnosis aid; off by default: the synchronization costs time)."""

    @field_validator("buckets_s")
    @classmethod
    def _ascending(cls, value: list[float]) -> list[float]:
        if any(b <= 0 for b in value) or value != sorted(set(value)):
            raise ValueError(f"buckets_s must be positive and strictly ascending, got {value}")
        return value

    def bucket_samples(self, sample_rate: int = SAMPLE_RATE) -> list[int]:
        return [round(b * sample_rate) for b in self.buckets_s]


class VersionManifest(BaseModel):
    """What was deployed as one version (``<N>/manifest.json``); the health check compares Triton with it."""

    model_name: TritonModelName
    version: int
    kind: ModelKind
    model_file: str
    sha256: str
    files: dict[str, str] = Field(default_factory=dict)
    """sha256 of every file of the version folder when it was written (relative path -> hex; the manifest itself
    excluded), checked before Triton loads the version and by the health check (``verify_version``). Empty in
    manifests written before this field: only ``model_file`` is checked then."""
    inputs: list[str]
    vocab_size: int
    source: str
    created: float = Field(default_factory=time.time)
    artifact_manifest: dict[str, Any] = Field(default_factory=dict)
    engine_format: int | None = None
    """python_fused: the engine folder format this version needs (``engine.json`` ``format``); the model refuses to
    load when the stub's ``asr_optimize`` reads another."""
    precision: str | None = None
    """python_fused: the precision a GPU instance runs (the promoted spec's, else the engine's build precision)."""
    gpu_load_mb: float | None = None
    """GPU memory this version took when it loaded (driver reading after minus before); the next swap of the same
    kind uses it as the estimate of what N+1 needs beside N."""
    input_policy: InputPolicy | None = None
    """The model's input policy (``asr_optimize.model.inputs``), decided from its config when the version was
    written; the configs and the pipeline serve by it. None in manifests written before this field: those versions
    were served with length buckets (``PADDED``)."""

    @property
    def pads_batches(self) -> bool:
        """Whether the pipeline may zero-pad this version's inputs to length buckets (masked): the policy allows it
        and the graph takes the mask."""
        return (self.input_policy or PADDED).pad_batches and WAV2VEC2_CTC.mask_input in self.inputs


def fused_engine_dir(artifact: Path) -> Path | None:
    """The fused engine folder an artifact path names (the folder, or a file in it), or None."""
    artifact = Path(artifact)
    if artifact.is_dir():
        return artifact if (artifact / FUSED_ENGINE_JSON).is_file() else None
    if artifact.suffix.lower() in (".json", ".safetensors") and (artifact.parent / FUSED_ENGINE_JSON).is_file():
        return artifact.parent  # engine.json or a weights file of the folder
    return None


def kind_for_artifact(artifact: Path, python_fallback: bool = True) -> ModelKind:
    """TensorRT engines -> tensorrt_plan; ONNX -> python ORT model (bundled server) or onnxruntime_onnx; a fused
    engine folder (what promotion records for kind ``fused``) or a file inside it -> python_fused."""
    if fused_engine_dir(artifact) is not None:
        return "python_fused"
    suffix = artifact.suffix.lower()
    if suffix in (".plan", ".engine", ".trt"):
        return "tensorrt_plan"
    if suffix == ".onnx":
        return "python_onnxruntime" if python_fallback else "onnxruntime_onnx"
    raise RepositoryError(f"{artifact}: unknown artifact type {suffix!r} (expected .onnx, .plan or .engine, "
                          f"or a fused engine folder with {FUSED_ENGINE_JSON})")


def onnx_inputs(onnx_path: Path) -> list[str]:
    """Graph input names, reading only the graph (no weights)."""
    import onnx

    try:
        graph = onnx.load(str(onnx_path), load_external_data=False).graph
    except Exception as exc:  # DecodeError and friends for a corrupt file
        raise RepositoryError(f"{onnx_path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from exc
    initializers = {i.name for i in graph.initializer}
    return [i.name for i in graph.input if i.name not in initializers]


def ctc_info(model_dir: Path) -> dict[str, Any]:
    """What the pipeline needs to decode: tokens, blank id, conv kernels/strides, normalization."""
    vocab = CtcVocabulary.from_model_dir(model_dir)
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    pre = model_dir / "preprocessor_config.json"
    normalize = json.loads(pre.read_text(encoding="utf-8")).get("do_normalize", True) if pre.is_file() else True
    return {
        "tokens": list(vocab.tokens),
        "blank_id": vocab.blank_id,
        "word_delimiter": vocab.word_delimiter,
        "conv_kernel": config["conv_kernel"],
        "conv_stride": config["conv_stride"],
        "do_normalize": bool(normalize),
    }


def instance_kind(kind: ModelKind, batching: BatchingOptions) -> str:
    """KIND_GPU or KIND_CPU as the acoustic config will say."""
    if batching.instance_kind != "auto":
        return batching.instance_kind
    return "KIND_CPU" if kind == "python_onnxruntime" else "KIND_GPU"


def fused_parameters(batching: BatchingOptions, pad_batches: bool = True) -> dict[str, str]:
    """Parameters of the served fused engine (``asr_optimize.runners.fused_serving``), the same in the acoustic
    model and the one-hop ``asr`` model, so both capture the same shapes and give the same logits. ``pad_batches``
    false (a model padding changes): no buckets, so the engine neither pads to nor warms up bucket shapes."""
    buckets = batching.bucket_samples() if pad_batches else []
    warmup = "auto" if batching.fused_warmup is None else str(batching.fused_warmup).lower()
    return {"intra_op_threads": str(batching.intra_op_threads),
            "precision": batching.fused_precision, "warmup": warmup,
            "max_batch_seconds": f"{batching.fused_max_batch_s:g}",
            "profile_every": str(batching.fused_profile_every),
            "bucket_samples": ",".join(str(b) for b in buckets),
            "long_form_chunk_s": f"{batching.long_form.chunk_s:g}" if batching.long_form.enabled and buckets else ""}


def python_parameters(group_kind: str, batching: BatchingOptions, pad_batches: bool = True) -> dict[str, str]:
    """Parameters of a python acoustic model: ONNX Runtime's and the fused engine's together (each model.py reads
    its own), so versions of either kind share one config."""
    params = {**fused_parameters(batching, pad_batches), "io_binding": str(batching.io_binding).lower(),
              "cuda_graphs": str(batching.cuda_graphs).lower(),
              "cuda_graph_max_shapes": str(batching.cuda_graph_max_shapes)}
    if group_kind == "KIND_GPU" and batching.gpu_input_tensors:  # GPU-resident inputs stay there (DLPack)
        params["FORCE_CPU_ONLY_INPUT_TENSORS"] = "no"
    return params


def one_hop_device(batching: BatchingOptions) -> str:
    """Where the one-hop ``asr`` model runs a fused engine: the acoustic fused model's first GPU ("cuda:N") when
    its instances are GPU ones, else "cpu"."""
    if instance_kind("python_fused", batching) != "KIND_GPU":
        return "cpu"
    return f"cuda:{batching.gpu_ids[0] if batching.gpu_ids else 0}"


def _params(values: dict[str, str]) -> str:
    return "\n".join(f'parameters: {{ key: "{k}" value: {{ string_value: "{v}" }} }}' for k, v in values.items())


def acoustic_config(
    name: str, kind: ModelKind, versions: list[int], inputs: list[str], vocab_size: int, batching: BatchingOptions,
    pad_batches: bool = True,
) -> str:
    """config.pbtxt of the acoustic model (dynamic time axis, dynamic batching, explicit live versions).

    The batcher merges only requests of one shape, so a model that must not be padded (``pad_batches`` false) still
    batches requests of equal length and never pads across lengths."""
    check_model_name(name)
    header = {
        "python_onnxruntime": 'backend: "python"',
        "python_fused": 'backend: "python"',
        "onnxruntime_onnx": 'platform: "onnxruntime_onnx"',
        "tensorrt_plan": 'platform: "tensorrt_plan"',
    }[kind]
    spec = WAV2VEC2_CTC
    tensors = [f'  {{ name: "{spec.audio_input}" data_type: TYPE_FP32 dims: [ -1 ] }}']
    if spec.mask_input in inputs:
        tensors.append(f'  {{ name: "{spec.mask_input}" data_type: TYPE_INT64 dims: [ -1 ] }}')
    preferred = ", ".join(str(b) for b in batching.preferred_batch_sizes if b <= batching.max_batch_size)
    group_kind = instance_kind(kind, batching)
    gpus = (f" gpus: [ {', '.join(str(g) for g in batching.gpu_ids)} ]"
            if batching.gpu_ids and group_kind == "KIND_GPU" else "")
    lines = [
        f'name: "{name}"',
        header,
        f"max_batch_size: {batching.max_batch_size}",
        f"version_policy: {{ specific: {{ versions: [ {', '.join(str(v) for v in sorted(versions))} ] }} }}",
        "input [\n" + ",\n".join(tensors) + "\n]",
        f'output [\n  {{ name: "{spec.output}" data_type: TYPE_FP32 dims: [ -1, {vocab_size} ] }}\n]',
        "dynamic_batching {"
        + (f" preferred_batch_size: [ {preferred} ]" if preferred else "")
        + f" max_queue_delay_microseconds: {batching.max_queue_delay_us} }}",
        f"instance_group [ {{ kind: {group_kind} count: {batching.instance_count}{gpus} }} ]",
    ]
    if kind in PYTHON_KINDS:
        lines.append(_params(python_parameters(group_kind, batching, pad_batches)))
    return "\n".join(lines) + "\n"


def pipeline_config(
    name: str, acoustic_name: str, acoustic_version: int, has_mask: bool, max_batch_size: int,
    batching: BatchingOptions | None = None, pad_batches: bool = True,
) -> str:
    """config.pbtxt of the ``asr`` model: FP32 (``audio``) or INT16 (``audio_pcm16``) audio in, BYTES text out.

    The inputs allow ragged batches, so the batcher hands one ``execute`` requests of any lengths; the model regroups
    their utterances by length bucket into one engine call per bucket (one hop: a fused engine serving version, run
    in the model on ``one_hop_device``) or one acoustic request (BLS). Without a mask, or for a model whose output
    padding changes (``pad_batches`` false, the version manifest's ``pads_batches``), there are no buckets: every
    utterance and every long-form window goes at its exact length, equal lengths together. The batcher's preferred
    sizes are the acoustic model's, the batch sizes the engine's CUDA graphs are captured for.
    """
    check_model_name(name, "Triton pipeline name")
    check_model_name(acoustic_name)
    batching = batching or BatchingOptions(max_batch_size=max_batch_size)
    pad_batches = pad_batches and has_mask  # without a mask, padding would change the output
    preferred = ", ".join(str(b) for b in batching.preferred_batch_sizes if b <= max_batch_size)
    return "\n".join(
        [
            f'name: "{name}"',
            'backend: "python"',
            f"max_batch_size: {max_batch_size}",
            "input [",
            '  { name: "audio" data_type: TYPE_FP32 dims: [ -1 ] allow_ragged_batch: true optional: true },',
            '  { name: "audio_pcm16" data_type: TYPE_INT16 dims: [ -1 ] allow_ragged_batch: true optional: true },',
            '  { name: "audio_length" data_type: TYPE_INT64 dims: [ 1 ] optional: true }',
            "]",
            'output [ { name: "text" data_type: TYPE_STRING dims: [ 1 ] } ]',
            "dynamic_batching {" + (f" preferred_batch_size: [ {preferred} ]" if preferred else "")
            + f" max_queue_delay_microseconds: {batching.pipeline_max_queue_delay_us} }}",
            f"instance_group [ {{ kind: KIND_CPU count: {batching.pipeline_instance_count} }} ]",
            _params(
                {
                    **fused_parameters(batching, pad_batches),
                    "one_hop": str(batching.one_hop).lower(),
                    "one_hop_device": one_hop_device(batching),
                    "acoustic_model": acoustic_name,
                    "acoustic_version": str(acoustic_version),
                    "acoustic_has_mask": "true" if has_mask else "false",
                    "acoustic_max_batch_size": str(max_batch_size),
                    "pad_batches": "true" if pad_batches else "false",
                    "long_form": batching.long_form.model_dump_json().replace('"', "'"),
                    "sample_rate": str(SAMPLE_RATE),
                }
            ),
        ]
    ) + "\n"


def version_dirs(root: Path, name: str) -> list[int]:
    """Numeric version folders present on disk (live or not)."""
    folder = repo_path(root, name)
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())


def write_acoustic_version(
    root: Path,
    name: str,
    version: int,
    artifact: Path,
    kind: ModelKind,
    source: str = "",
    artifact_manifest: dict[str, Any] | None = None,
    input_policy: InputPolicy | None = None,
) -> VersionManifest:
    """Copy the artifact into ``<root>/<name>/<version>/`` via a staging folder renamed into place; the manifest
    records ``input_policy`` (the model's, from ``asr_optimize.model.inputs``) for the configs that serve it."""
    engine_dir = fused_engine_dir(artifact) if kind == "python_fused" else None
    if kind == "python_fused" and engine_dir is None:
        raise RepositoryError(f"artifact not found: {artifact} is not a fused engine folder (no {FUSED_ENGINE_JSON})")
    if engine_dir is None and not artifact.is_file():
        raise RepositoryError(f"artifact not found: {artifact}")
    target = repo_path(root, name, version)
    if target.exists():
        raise RepositoryError(f"{target} already exists; versions are never overwritten")
    staging = repo_path(root, name, f".staging-{version}-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    fused: dict[str, Any] = {}
    try:
        if engine_dir is not None:
            model_file, inputs, fused = _copy_fused_engine(engine_dir, staging, artifact_manifest or {})
        elif kind == "tensorrt_plan":
            model_file = "model.plan"
            shutil.copy2(artifact, staging / model_file)
            with_mask = input_policy.attention_mask if input_policy is not None else True
            inputs = list((artifact_manifest or {}).get("inputs", IO.input_names(with_mask)))
        else:
            model_file = "model.onnx"
            inputs = onnx_inputs(artifact)
            shutil.copy2(artifact, staging / model_file)
            for extra in artifact.parent.glob(artifact.name + ".data"):  # external weights, if any
                shutil.copy2(extra, staging / extra.name)
            if kind == "python_onnxruntime":
                shutil.copy2(ORT_ACOUSTIC, staging / "model.py")
        engine_vocab = int(fused.pop("vocab_size", 0))
        files = {p.relative_to(staging).as_posix(): sha256_file(p) for p in sorted(staging.rglob("*")) if p.is_file()}
        expected = (artifact_manifest or {}).get("sha256")
        if expected and files[model_file] != expected:
            raise IntegrityError(f"{artifact}: the copy's sha256 {files[model_file][:16]}... differs from the "
                                 f"{expected[:16]}... its producer recorded (artifact_manifest sha256): the artifact "
                                 "is damaged or was replaced; nothing was deployed")
        manifest = VersionManifest(
            model_name=name,
            version=version,
            kind=kind,
            model_file=model_file,
            sha256=files[model_file],
            files=files,
            inputs=inputs,
            vocab_size=int((artifact_manifest or {}).get("vocab_size", 0) or engine_vocab),
            source=source or str(artifact),
            artifact_manifest=artifact_manifest or {},
            input_policy=input_policy,
            **fused,
        )
        (staging / MANIFEST_NAME).write_text(manifest.model_dump_json(indent=2), encoding="utf-8")
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def _copy_fused_engine(
    engine_dir: Path, staging: Path, artifact_manifest: dict[str, Any]
) -> tuple[str, list[str], dict[str, Any]]:
    """The whole engine folder to ``<staging>/engine/`` + the backend as model.py; (model_file, inputs, manifest
    fields). The weights file stands for the version in the manifest (its sha256)."""
    try:
        meta = json.loads((engine_dir / FUSED_ENGINE_JSON).read_text(encoding="utf-8"))
        weights = str(meta["weights_file"])
        engine_format = int(meta["format"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RepositoryError(f"{engine_dir / FUSED_ENGINE_JSON}: not a readable fused engine description "
                              f"({type(exc).__name__}: {exc})") from exc
    if not (engine_dir / weights).is_file():
        raise RepositoryError(f"{engine_dir}: weights file {weights} named by {FUSED_ENGINE_JSON} is missing")
    shutil.copytree(engine_dir, staging / FUSED_ENGINE_DIR)
    shutil.copy2(FUSED_ACOUSTIC, staging / "model.py")
    precision = artifact_manifest.get("precision") or meta.get("precision") or "fp16"
    fields = {"engine_format": engine_format, "precision": str(precision),
              "vocab_size": int(meta.get("architecture", {}).get("vocab_size", 0))}
    return f"{FUSED_ENGINE_DIR}/{weights}", [WAV2VEC2_CTC.audio_input, WAV2VEC2_CTC.mask_input], fields


def write_manifest(root: Path, manifest: VersionManifest) -> None:
    """Rewrite a version's manifest (atomically) after a fact about it was measured."""
    atomic_write_text(repo_path(root, manifest.model_name, manifest.version, MANIFEST_NAME),
                      manifest.model_dump_json(indent=2))


def read_manifest(root: Path, name: str, version: int) -> VersionManifest | None:
    path = repo_path(root, name, version, MANIFEST_NAME)
    return VersionManifest.model_validate_json(path.read_text(encoding="utf-8")) if path.is_file() else None


def verify_version(root: Path, name: str, version: int) -> VersionManifest:
    """The version's manifest, after checking every file it lists (``files``, else ``model_file``) by sha256.

    Raises ``IntegrityError`` naming each missing or changed file: a version whose bytes are not the ones deployed
    (a damaged disk, a partial copy, tampering) is never loaded for serving."""
    manifest = read_manifest(root, name, version)
    folder = repo_path(root, name, version)
    if manifest is None:
        raise IntegrityError(f"{folder}: no {MANIFEST_NAME}; the version's files cannot be verified")
    expected = manifest.files or {manifest.model_file: manifest.sha256}
    problems = []
    for rel, digest in sorted(expected.items()):
        path = safe_join(folder, rel)
        if not path.is_file():
            problems.append(f"{path} is missing")
        elif (actual := sha256_file(path)) != digest:
            problems.append(f"{path} sha256 {actual[:16]}... does not match its manifest's {digest[:16]}...")
    if problems:
        raise IntegrityError(f"{name} v{version} is damaged: " + "; ".join(problems)
                             + " (the files changed after deployment; redeploy the artifact)")
    return manifest


def write_pipeline(
    root: Path, name: str, model_dir: Path, acoustic_name: str, acoustic_version: int, has_mask: bool,
    max_batch_size: int = 8, batching: BatchingOptions | None = None, pad_batches: bool = True,
) -> None:
    """(Re)write the ``asr`` pipeline: model.py, ctc.json, chunking.py and config.pbtxt naming the serving version."""
    check_model_name(acoustic_name)  # before the first file is written
    version_dir = repo_path(root, name, 1)
    version_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(version_dir / "model.py", CTC_PIPELINE.read_text(encoding="utf-8"))
    atomic_write_text(version_dir / "ctc.json", json.dumps(ctc_info(model_dir), ensure_ascii=False, indent=1))
    if CHUNKING_SOURCE.is_file():  # long-form path; without it the pipeline refuses over-long audio clearly
        atomic_write_text(version_dir / "chunking.py", CHUNKING_SOURCE.read_text(encoding="utf-8"))
    set_pipeline_version(root, name, acoustic_name, acoustic_version, has_mask, max_batch_size, batching, pad_batches)


def set_pipeline_version(
    root: Path, name: str, acoustic_name: str, acoustic_version: int, has_mask: bool, max_batch_size: int = 8,
    batching: BatchingOptions | None = None, pad_batches: bool = True,
) -> None:
    atomic_write_text(
        repo_path(root, name, "config.pbtxt"),
        pipeline_config(name, acoustic_name, acoustic_version, has_mask, max_batch_size, batching, pad_batches),
    )


def _write_config(root: Path, name: str, config: Any) -> None:
    from google.protobuf import text_format

    atomic_write_text(repo_path(root, name, "config.pbtxt"), text_format.MessageToString(config, as_utf8=True))


def set_serving_version(root: Path, pipeline: str, acoustic_version: int) -> None:
    """Point an existing pipeline at ``acoustic_version``, keeping every other setting of its config."""
    config = read_config(root, pipeline)
    if config is None:
        raise RepositoryError(f"no {pipeline} pipeline in {root}")
    config.parameters["acoustic_version"].string_value = str(acoustic_version)
    _write_config(root, pipeline, config)


def set_live_versions(root: Path, name: str, versions: list[int]) -> None:
    """Rewrite only the version policy of an existing acoustic config."""
    config = read_config(root, name)
    if config is None:
        raise RepositoryError(f"no config.pbtxt for {name} in {root}")
    del config.version_policy.specific.versions[:]
    config.version_policy.specific.versions.extend(sorted(versions))
    _write_config(root, name, config)


def pipeline_ctc(root: Path, name: str) -> dict[str, Any] | None:
    path = repo_path(root, name, 1, "ctc.json")
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def read_config(root: Path, name: str) -> Any:
    """Parse ``<root>/<name>/config.pbtxt`` into Triton's ModelConfig protobuf (from tritonclient)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    path = repo_path(root, name, "config.pbtxt")
    if not path.is_file():
        return None
    try:
        return text_format.Parse(path.read_text(encoding="utf-8"), model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise RepositoryError(f"{path}: malformed config.pbtxt: {exc}") from exc


def live_versions(root: Path, name: str) -> list[int]:
    """Versions the acoustic config asks Triton to keep loaded."""
    config = read_config(root, name)
    return sorted(config.version_policy.specific.versions) if config is not None else []


def serving_version(root: Path, pipeline: str) -> int | None:
    """The acoustic version the pipeline sends traffic to."""
    config = read_config(root, pipeline)
    if config is None or "acoustic_version" not in config.parameters:
        return None
    return int(config.parameters["acoustic_version"].string_value)


def pipeline_pads(root: Path, pipeline: str) -> bool | None:
    """Whether the pipeline's config zero-pads utterances (length buckets) or long-form windows (None: no pipeline;
    a pipeline written before ``pad_batches`` existed pads). The health check holds this against the serving
    version's manifest (``VersionManifest.pads_batches``)."""
    config = read_config(root, pipeline)
    if config is None:
        return None
    params = config.parameters
    return (params["pad_batches"].string_value if "pad_batches" in params else "true") == "true"
