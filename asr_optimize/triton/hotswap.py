"""Zero-downtime hot-swap of the acoustic model in a Triton repository (explicit model-control mode).

Steps: write version N+1 beside N -> list both as live (version policy) and load -> wait until N+1 is ready ->
canary: the canary audio through the ``asr`` pipeline pinned to N+1 (request parameter), scored against the
reference transcripts by the accuracy gate -> promote (the pipeline's ``acoustic_version`` becomes N+1 and the
pipeline reloads; after a grace period only the last K versions stay live, older folders are deleted) or roll
back (N+1 leaves the live list, the model reloads, its folder is deleted; N never stopped serving).

Triton keeps serving the loaded model while a reload is in progress and keeps it if the reload fails, and
clients reach the acoustic model through the pipeline, which always names its version, so no request ever
lands on a version that has not passed the canary.

Crash safety: the swap journal (``asr_optimize.triton.journal``) marks N+1 pending before its folder is written and
confirms it only after promotion; every swap first reconciles a journal left pending by a killed run (N+1 removed,
the pipeline pointed back at N). The whole swap holds the model's swap lock (a second swap waits, then fails
naming the holder); the files it rewrites are saved before its first write and a rollback puts them back byte for
byte (``asr_optimize.triton.snapshot``); the candidate's copy is checked by sha256 before Triton loads it. Model and
pipeline names are plain folder names (``asr_optimize.triton.names``), checked before anything. On a GPU instance
the swap refuses to start when free GPU memory cannot hold N+1 beside N. Every call to Triton carries the
restricted-API key (``asr_optimize.triton.auth``).

Artifacts: an ONNX graph, a TensorRT plan, or a fused engine folder (``python_fused``); all take the same path.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field, model_validator

from asr_optimize.errors import TransientError
from asr_optimize.fileio import atomic_write_text
from asr_optimize.model.inputs import InputPolicy, input_policy
from asr_optimize.options import Options
from asr_optimize.quality.gate import BackendScore, GateDecision, GateThresholds, evaluate_gate
from asr_optimize.quality.metrics import transcript_parity, wer_cer
from asr_optimize.triton import journal, snapshot
from asr_optimize.triton import repository as repo_mod
from asr_optimize.triton.endpoint import http_client
from asr_optimize.triton.names import InvalidModelName, TritonModelName, check_model_name, repo_path
from asr_optimize.triton.repository import BatchingOptions, ModelKind, RepositoryError

Action = Literal["promoted", "rolled_back", "refused"]


class TritonUnavailable(TransientError):
    """Triton cannot be reached (down, refusing connections, timing out) before anything was changed."""


@dataclass
class CanarySet:
    """Canary utterances: 16 kHz audio, the fp32 reference backend's transcripts, and ground truth if known."""

    ids: list[str]
    waves: list[np.ndarray]
    reference_transcripts: list[str]
    texts: list[str] | None = None


def check_swap_names(model_name: str, pipeline_name: str) -> None:
    """Both names are plain repository folder names (``names.check_model_name``) and differ: the pipeline's folder
    is removed when a first deployment is undone, so it must never be the acoustic model's."""
    check_model_name(model_name)
    check_model_name(pipeline_name, "Triton pipeline name")
    if model_name == pipeline_name:
        raise InvalidModelName(f"the Triton model and pipeline are both named {model_name!r}: they are two folders "
                               "of the repository and need two names")


class SwapOptions(Options):
    model_name: TritonModelName = repo_mod.DEFAULT_MODEL_NAME
    pipeline_name: TritonModelName = repo_mod.DEFAULT_PIPELINE_NAME
    kind: ModelKind | None = None
    """None: from the artifact (.plan -> tensorrt_plan, .onnx -> python ONNX Runtime model, engine folder ->
    python_fused)."""
    batching: BatchingOptions = Field(default_factory=BatchingOptions)
    thresholds: GateThresholds = Field(default_factory=lambda: GateThresholds(max_cer_delta=0.002, max_wer=None))
    """The canary checks serving parity with the reference; the absolute WER ceiling (``max_wer``) was applied at
    promotion, on the evaluation set."""
    keep_versions: int = Field(2, ge=1)
    """Versions left live after promotion (the new one included): K=2 keeps N for a fast manual rollback. Older
    versions leave when the next candidate loads, not after it is promoted: every load call makes Triton reload every
    version its config lists (measured on the bundled tritonserver), so one config change per swap, not two."""
    grace_s: float = Field(5.0, ge=0)
    """Wait this long after promotion before older versions are unloaded (in-flight requests finish)."""
    load_timeout_s: float = Field(300.0, gt=0)
    request_timeout_s: float = Field(60.0, gt=0)
    gpu_memory_factor: float = Field(2.0, gt=0)
    """GPU memory a new version needs per instance, as a multiple of its model file or engine folder (weights +
    ORT arena, or + CUDA-graph activations)."""
    gpu_memory_margin_mb: float = Field(1024.0, ge=0)
    """Free memory that must remain on each GPU after loading the new version beside the serving one."""
    lock_timeout_s: float = Field(1800.0, ge=0)
    """How long a swap waits for another swap of the same model (``journal.swap_lock``) before it gives up."""
    stale_pending_s: float = Field(journal.STALE_PENDING_S, gt=0)
    """A swap left pending by another host (or by a journal without owner) is repaired once older than this."""

    @model_validator(mode="after")
    def _distinct_names(self) -> SwapOptions:
        check_swap_names(self.model_name, self.pipeline_name)
        return self


CANARY_EXAMPLES = 3
"""Differing canary transcripts quoted in a refused swap's one-line summary (the markdown lists up to 10): counts
alone ("0/16 identical") do not tell a broken model from inputs served differently than in process."""
EXAMPLE_CHARS = 80
"""Longest transcript quoted in the summary (the markdown shows them whole)."""


class CanaryRow(BaseModel):
    """One canary utterance: the reference backend's transcript in process and what the Triton pipeline served."""

    id: str
    reference: str
    triton: str


def _quote(text: str, limit: int | None = None) -> str:
    """A transcript for one markdown table cell or one summary line (empty shown as such, long ones cut)."""
    text = " ".join(text.split()).replace("|", "\\|")
    if limit is not None and len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"\"{text}\"" if text else "(empty)"


class SwapDecision(BaseModel):
    """What the hot-swap did and why: the Prefect artifact renders ``markdown()``."""

    model_name: str
    pipeline_name: str
    action: Action
    previous_version: int | None
    candidate_version: int | None
    serving_version: int | None
    live_versions: list[int] = Field(default_factory=list)
    retired_versions: list[int] = Field(default_factory=list)
    reasons: list[str] = Field(default_factory=list)
    gate: GateDecision | None = None
    canary: list[CanaryRow] = Field(default_factory=list)
    timings: dict[str, float] = Field(default_factory=dict)
    reconciled: list[str] = Field(default_factory=list)
    """What the journal check repaired before this swap (a previous swap that died mid-way)."""
    input_policy: InputPolicy | None = None
    """How the model's inputs are served (``asr_optimize.model.inputs``): padded to length buckets or at exact
    lengths, and why; recorded in the version's manifest."""

    @property
    def promoted(self) -> bool:
        return self.action == "promoted"

    def differing(self, limit: int = 10) -> list[CanaryRow]:
        """The first ``limit`` canary utterances whose served transcript differs from the reference's."""
        return [r for r in self.canary if r.reference != r.triton][:limit]

    def summary(self) -> str:
        name = f"{self.model_name} v{self.candidate_version}"
        if self.promoted:
            was = f"was v{self.previous_version}" if self.previous_version else "first deployment"
            return f"{name} promoted: {self.pipeline_name} now serves it ({was})"
        verb = "rolled back" if self.action == "rolled_back" else "refused"
        keep = f"v{self.serving_version} keeps serving" if self.serving_version else "nothing was serving"
        line = f"{name} {verb}, {keep}: " + "; ".join(self.reasons)
        examples = [f"{r.id}: reference {_quote(r.reference, EXAMPLE_CHARS)} vs served "
                    f"{_quote(r.triton, EXAMPLE_CHARS)}" for r in self.differing(CANARY_EXAMPLES)]
        return line + (" (e.g. " + "; ".join(examples) + ")" if examples else "")

    def markdown(self) -> str:
        lines = [f"## Triton hot-swap: {self.action.replace('_', ' ')}", "", f"**{self.summary()}**", "",
                 "| item | value |", "|---|---|",
                 f"| previous serving version | {self.previous_version} |",
                 f"| candidate version | {self.candidate_version} |",
                 f"| serving now | {self.serving_version} |",
                 f"| live versions | {self.live_versions} |",
                 f"| retired versions | {self.retired_versions} |"]
        if self.input_policy is not None:
            how = "padded to length buckets" if self.input_policy.pad_batches else "exact lengths, never padded"
            lines.append(f"| inputs | {how}: {self.input_policy.reason} |")
        lines += [f"| {k} | {v:.2f} s |" for k, v in self.timings.items()]
        lines += [f"| repaired before the swap | {r} |" for r in self.reconciled]
        if self.gate is not None:
            lines += ["", "### Canary gate", "", self.gate.markdown()]
        differing = self.differing()
        if differing:
            same = sum(r.reference == r.triton for r in self.canary)
            lines += ["", f"### Canary transcripts that differ (first {len(differing)}; {same} of {len(self.canary)} "
                      "identical)", "", "| id | reference (in process) | served (Triton) |", "|---|---|---|"]
            lines += [f"| {r.id} | {_quote(r.reference)} | {_quote(r.triton)} |" for r in differing]
        return "\n".join(lines)


def check_gpu_memory(artifact: Path, kind: ModelKind, opts: SwapOptions,
                     serving: repo_mod.VersionManifest | None = None, reloaded: int = 0) -> str | None:
    """Why N+1 cannot load beside N on the GPU, or None (CPU instances, no GPU visible, or enough memory).

    One version needs the larger of the artifact's size x ``gpu_memory_factor`` x instances and what the serving
    version took when it loaded (``gpu_load_mb``, measured, when it is of the same kind): a fused engine's CUDA graphs
    and activations take several times its weights. ``reloaded``: live versions Triton loads again beside N+1 (a load
    call reloads every listed version; the old copies serve until the new ones are ready), so the need is
    (1 + reloaded) versions. A one-hop ``asr`` model holds its own copy of a fused engine: promotion reloads it, its
    new instances load N+1 while the old ones serve, so the need is at least (1 + its instances) versions."""
    from asr_optimize.triton import gpu_memory

    gpus = _acoustic_gpus(kind, opts)
    if not gpus:
        return None
    size_mb = gpu_memory.artifact_bytes(artifact) / 2**20
    estimate = size_mb * opts.gpu_memory_factor * opts.batching.instance_count
    measured = serving.gpu_load_mb if serving is not None and serving.kind == kind and serving.gpu_load_mb else 0.0
    per_gpu = max(estimate, measured / len(gpus))
    one_hop = opts.batching.pipeline_instance_count if kind == "python_fused" and opts.batching.one_hop else 0
    copies = 1 + max(reloaded, one_hop)
    need = per_gpu * copies + opts.gpu_memory_margin_mb
    short = [g for g in gpus if g.free_mb < need]
    if not short:
        return None
    worst = min(short, key=lambda g: g.free_mb)
    basis = (f"measured when v{serving.version} loaded: {measured:.0f} MiB over {len(gpus)} GPU(s)"
             if serving is not None and per_gpu == measured / len(gpus) else
             f"{size_mb:.0f} MiB model x {opts.gpu_memory_factor:g} x {opts.batching.instance_count} instance(s)")
    if reloaded >= one_hop and reloaded:
        basis += f"; x {copies}: Triton reloads the {reloaded} live version(s) beside it"
    elif one_hop:
        basis += f"; x {copies}: the one-hop {opts.pipeline_name} model's {one_hop} instance(s) load it on promotion"
    return (f"not enough free GPU memory to load the new version beside the serving one: GPU {worst.index} has "
            f"{worst.free_mb:.0f} MiB free of {worst.total_mb:.0f} MiB, the new version needs about {need:.0f} MiB "
            f"({basis} + {opts.gpu_memory_margin_mb:.0f} MiB margin); nothing was changed, the serving version keeps "
            "serving. Free GPU memory (other processes; keep_versions above 2 keeps more versions live, each reloaded "
            "beside the new one) or lower the instance count (fused engine: batching.fused_max_batch_s)")


def gpu_used_mb(kind: ModelKind, opts: SwapOptions) -> float | None:
    """Memory in use on the GPUs the acoustic instances use (None for CPU instances or without a GPU)."""
    gpus = _acoustic_gpus(kind, opts)
    return sum(g.used_mb for g in gpus) if gpus else None


def _acoustic_gpus(kind: ModelKind, opts: SwapOptions) -> list[Any] | None:
    """The driver's reading of the GPUs the acoustic instances run on (None: CPU instances, or no GPU visible)."""
    from asr_optimize.triton import gpu_memory

    if repo_mod.instance_kind(kind, opts.batching) != "KIND_GPU":
        return None
    gpus = gpu_memory.gpu_memory()
    if gpus and opts.batching.gpu_ids:
        gpus = [g for g in gpus if g.index in opts.batching.gpu_ids] or gpus
    return gpus


def pipeline_transcribe(
    client: Any, pipeline: str, waves: list[np.ndarray], acoustic_version: int | None = None
) -> list[str]:
    """Texts from the ``asr`` pipeline, one request per utterance (optionally pinned to an acoustic version)."""
    import tritonclient.http as httpclient

    texts = []
    params = {"acoustic_version": str(acoustic_version)} if acoustic_version is not None else None
    for wave in waves:
        audio = np.ascontiguousarray(wave, dtype=np.float32)[None]
        tensor = httpclient.InferInput("audio", list(audio.shape), "FP32")
        tensor.set_data_from_numpy(audio)
        result = client.infer(pipeline, [tensor], parameters=params)
        texts.append(result.as_numpy("text").reshape(-1)[0].decode("utf-8"))
    return texts


def canary_gate(
    canary: CanarySet, transcripts: list[str], thresholds: GateThresholds, name: str
) -> GateDecision:
    """Score Triton's canary transcripts against the reference backend's with the promotion gate."""
    truth = canary.texts or canary.reference_transcripts
    reference = BackendScore.from_metrics(
        "reference", wer_cer(truth, canary.reference_transcripts, ids=canary.ids),
        transcript_parity(canary.reference_transcripts, canary.reference_transcripts, ids=canary.ids),
    )
    candidate = BackendScore.from_metrics(
        name, wer_cer(truth, transcripts, ids=canary.ids),
        transcript_parity(canary.reference_transcripts, transcripts, ids=canary.ids),
    )
    return evaluate_gate(reference, candidate, thresholds)


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).strip()[:400]}"


def wait_ready(client: Any, name: str, version: int | None, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if client.is_model_ready(name, str(version) if version else ""):
                return True
        except Exception:  # a reload in progress or a blip: keep polling until the deadline
            pass
        time.sleep(0.2)
    return False


@dataclass
class _Swap:
    root: Path
    artifact: Path
    model_dir: Path
    canary: CanarySet
    opts: SwapOptions
    client: Any
    source: str
    artifact_manifest: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)
    history: journal.Journal | None = None
    saved: snapshot.Snapshot | None = None
    """The files the swap rewrites, as they were before its first write (restored by a rollback)."""
    live_before: list[int] = field(default_factory=list)
    """The live versions before the swap (what the restored config lists)."""

    def settle(self, serving: int | None, confirmed: list[int]) -> None:
        assert self.history is not None
        self.history = journal.settle(self.root, self.history, serving, confirmed)

    @property
    def name(self) -> str:
        return self.opts.model_name

    @property
    def pipeline(self) -> str:
        return self.opts.pipeline_name

    def write_acoustic_config(self, versions: list[int], manifest: repo_mod.VersionManifest) -> None:
        text = repo_mod.acoustic_config(self.name, manifest.kind, versions, manifest.inputs, manifest.vocab_size,
                                        self.opts.batching, pad_batches=manifest.pads_batches)
        atomic_write_text(repo_path(self.root, self.name, "config.pbtxt"), text)

    def timed(self, label: str, start: float) -> None:
        self.timings[label] = round(time.perf_counter() - start, 3)


def _incompatible(serving: repo_mod.VersionManifest | None, new: repo_mod.VersionManifest,
                  batching: BatchingOptions | None = None) -> str | None:
    if serving is None:
        return None
    if serving.kind != new.kind and {serving.kind, new.kind} <= set(repo_mod.PYTHON_KINDS):
        # ONNX Runtime and fused versions share the python config; only the instance kind must agree
        batching = batching or BatchingOptions()
        kinds = {k: repo_mod.instance_kind(k, batching) for k in (serving.kind, new.kind)}
        if len(set(kinds.values())) > 1:
            return (f"kind {new.kind!r} would run on {kinds[new.kind]} but serving v{serving.version} "
                    f"({serving.kind}) runs on {kinds[serving.kind]}: set BatchingOptions.instance_kind to one of "
                    "them so both versions fit one config")
    for key in ("kind", "inputs", "vocab_size"):
        if key == "kind" and {serving.kind, new.kind} <= set(repo_mod.PYTHON_KINDS):
            continue
        if getattr(serving, key) != getattr(new, key):
            return (f"{key} {getattr(new, key)!r} differs from serving v{serving.version}'s "
                    f"{getattr(serving, key)!r}: all versions share one config; deploy under a new model name")
    if serving.pads_batches != new.pads_batches:  # the pipeline pads (or not) for every version it serves
        how = {True: "padded to length buckets", False: "run at exact lengths"}
        why = f" ({new.input_policy.reason})" if new.input_policy else ""
        return (f"v{new.version}'s inputs are {how[new.pads_batches]}{why}, but serving v{serving.version}'s are "
                f"{how[serving.pads_batches]}: one pipeline serves both; deploy under a new model and pipeline name")
    return None


def hot_swap(
    root: Path,
    artifact: Path,
    model_dir: Path,
    canary: CanarySet,
    url: str,
    opts: SwapOptions | None = None,
    source: str = "",
    artifact_manifest: dict[str, Any] | None = None,
) -> SwapDecision:
    """Deploy ``artifact`` (an ONNX graph, TensorRT engine or fused engine folder of ``model_dir``) as the next
    version.

    Raises ``TritonUnavailable`` if the server is unreachable before anything changed, ``InvalidModelName`` for a
    model or pipeline name that is not a plain folder name (before anything is written), ``SwapInProgressError``
    when another swap of the model holds its lock past ``lock_timeout_s`` or is pending on another host; every later
    failure (load error, not ready in time, canary refused, server gone) rolls back and returns the decision.
    """
    opts = opts or SwapOptions()
    check_swap_names(opts.model_name, opts.pipeline_name)  # options updated with model_copy skip validation
    root = Path(root)
    client = http_client(url, opts.request_timeout_s)
    try:
        live = bool(client.is_server_live())
    except Exception as exc:
        raise TritonUnavailable(f"Triton at {url} is not reachable: {_error(exc)}; nothing was changed") from exc
    if not live:
        raise TritonUnavailable(f"Triton at {url} is not live; nothing was changed")
    kind = opts.kind or repo_mod.kind_for_artifact(artifact)
    if kind == "python_fused":  # the folder, whichever of its files was named
        artifact = repo_mod.fused_engine_dir(artifact) or artifact
    keyed = http_client(url, opts.load_timeout_s)
    with journal.swap_lock(root, opts.model_name, opts.lock_timeout_s):  # reconcile to settle: one swap at a time
        return _swap_locked(root, artifact, model_dir, canary, opts, source, artifact_manifest, client, keyed, kind)


def _swap_locked(root: Path, artifact: Path, model_dir: Path, canary: CanarySet, opts: SwapOptions, source: str,
                 artifact_manifest: dict[str, Any] | None, client: Any, keyed: Any, kind: ModelKind) -> SwapDecision:
    repaired = journal.reconcile_locked(root, opts.model_name, opts.pipeline_name, keyed, opts.load_timeout_s,
                                        opts.stale_pending_s)
    history = journal.current(root, opts.model_name, opts.pipeline_name)
    if history.pending is not None:  # another host's swap, left alone by reconcile
        raise journal.SwapInProgressError(f"another swap of {opts.model_name} is in progress "
                                          f"({history.pending.describe()}): " + "; ".join(repaired))
    previous = history.serving
    old_live = [v for v in history.confirmed if v != previous]
    old_live = [*old_live, previous] if previous else []
    vocab_size = len(repo_mod.ctc_info(model_dir)["tokens"])
    swap = _Swap(root, artifact, model_dir, canary, opts, keyed, source,
                 {"vocab_size": vocab_size, **(artifact_manifest or {})}, history=history,
                 live_before=sorted(old_live))
    decision = SwapDecision(model_name=opts.model_name, pipeline_name=opts.pipeline_name, action="refused",
                            previous_version=previous, candidate_version=None, serving_version=previous,
                            live_versions=sorted(old_live), reconciled=repaired, input_policy=input_policy(model_dir))
    serving_manifest = repo_mod.read_manifest(root, opts.model_name, previous) if previous else None
    retained = retained_versions(old_live, previous, opts.keep_versions)
    dropped = [v for v in old_live if v not in retained]
    if artifact.exists() and (reason := check_gpu_memory(artifact, kind, opts, serving_manifest, len(retained))):
        decision.reasons.append(reason)
        return decision
    ctc = repo_mod.pipeline_ctc(root, opts.pipeline_name)
    if previous and ctc is not None and ctc["tokens"] != repo_mod.ctc_info(model_dir)["tokens"]:
        decision.reasons.append("the new model's vocabulary differs from the serving pipeline's; "
                                "deploy under a new model and pipeline name")
        return decision

    new = max([*repo_mod.version_dirs(root, opts.model_name), *history.confirmed, 0]) + 1
    decision.candidate_version = new
    start = time.perf_counter()
    swap.saved = snapshot.take(root, opts.model_name, opts.pipeline_name)  # before the swap's first write
    swap.history = journal.begin(root, history, new)  # before any byte of N+1 exists
    try:
        manifest = repo_mod.write_acoustic_version(root, opts.model_name, new, artifact, kind, source,
                                                   swap.artifact_manifest, decision.input_policy)
    except RepositoryError as exc:
        swap.settle(previous, old_live)
        decision.reasons.append(str(exc))
        return decision
    except BaseException:
        swap.settle(previous, old_live)
        raise
    reason = _incompatible(serving_manifest, manifest, opts.batching)
    if reason is None:
        try:  # the copy Triton is about to load is byte for byte the one written (and hashed)
            repo_mod.verify_version(root, opts.model_name, new)
        except RepositoryError as exc:
            reason = f"v{new} refused before loading: {exc}"
    if reason:
        shutil.rmtree(repo_path(root, opts.model_name, new), ignore_errors=True)
        swap.settle(previous, old_live)
        decision.reasons.append(reason)
        return decision
    swap.timed("write", start)

    # load N+1 beside N (N keeps serving during the reload, and stays if the reload fails); versions past
    # keep_versions leave in the same reload; their folders stay until N+1 is promoted (a rollback lists them again)
    start = time.perf_counter()
    if dropped:
        decision.live_versions = retained
    used_before = gpu_used_mb(kind, opts)
    try:
        swap.write_acoustic_config([*retained, new], manifest)
        swap.client.load_model(opts.model_name)
        if not wait_ready(client, opts.model_name, new, opts.load_timeout_s):
            raise RuntimeError(f"version {new} not ready after {opts.load_timeout_s:.0f} s")
        _record_load_footprint(swap, manifest, used_before, serving_manifest if dropped else None)
        if previous is None:
            repo_mod.write_pipeline(root, opts.pipeline_name, model_dir, opts.model_name, new,
                                    "attention_mask" in manifest.inputs, opts.batching.max_batch_size, opts.batching,
                                    pad_batches=manifest.pads_batches)
            swap.client.load_model(opts.pipeline_name)
    except Exception as exc:
        return _rollback(swap, decision, manifest, f"loading v{new} failed: {_error(exc)}")
    swap.timed("load", start)

    # canary through the pipeline, pinned to N+1
    start = time.perf_counter()
    try:
        texts = pipeline_transcribe(client, opts.pipeline_name, canary.waves, acoustic_version=new)
        gate = canary_gate(canary, texts, opts.thresholds, f"triton:{opts.model_name}/v{new}")
    except Exception as exc:
        return _rollback(swap, decision, manifest, f"canary on v{new} failed: {_error(exc)}")
    swap.timed("canary", start)
    decision.gate = gate
    decision.canary = [CanaryRow(id=i, reference=r, triton=t)
                       for i, r, t in zip(canary.ids, canary.reference_transcripts, texts, strict=True)]
    if not gate.passed:
        return _rollback(swap, decision, manifest, "canary " + gate.summary())

    # promote: the pipeline now names N+1 (it reloads; the old pipeline instance serves until then)
    start = time.perf_counter()
    try:
        if previous is not None:
            repo_mod.set_serving_version(root, opts.pipeline_name, new)
            swap.client.load_model(opts.pipeline_name)
        if not wait_ready(client, opts.pipeline_name, None, opts.load_timeout_s):
            raise RuntimeError(f"{opts.pipeline_name} not ready after promotion")
        check = pipeline_transcribe(client, opts.pipeline_name, canary.waves[:1])
        if check != texts[:1]:
            raise RuntimeError(f"{opts.pipeline_name} answers {check!r} after promotion, expected {texts[:1]!r}")
    except Exception as exc:  # the rollback restores the pipeline's config (pointing at N) and reloads it first
        return _rollback(swap, decision, manifest, f"promoting v{new} failed: {_error(exc)}")
    swap.timed("promote", start)
    decision.action, decision.serving_version = "promoted", new
    decision.live_versions = sorted([*retained, new])
    swap.settle(new, decision.live_versions)  # confirmed: from now on N+1 is the good version
    _delete_unloaded(swap, decision, dropped)  # unloaded by N+1's load; no longer confirmed
    _retire(swap, decision, manifest)
    decision.timings = swap.timings
    return decision


def _try(fn: Any) -> str | None:
    try:
        fn()
        return None
    except Exception as exc:
        return _error(exc)


def _rollback(swap: _Swap, decision: SwapDecision, manifest: repo_mod.VersionManifest, reason: str) -> SwapDecision:
    """Put back every file the swap rewrote exactly as it was before (``snapshot``: the acoustic config, the
    pipeline's config and files), reload (the pipeline first, so it names N again before N+1 leaves), delete N+1's
    folder. N never stopped serving; versions the failed load unloaded are listed, and load, again."""
    new = manifest.version
    old_live = swap.live_before
    decision.action = "rolled_back"
    decision.reasons.append(reason)
    start = time.perf_counter()
    restored = _restore(swap, decision)
    if old_live:
        if restored is None:  # no usable backup: repair the live list and the serving version in place
            repo_mod.set_live_versions(swap.root, swap.name, old_live)
            if decision.previous_version is not None:
                repo_mod.set_serving_version(swap.root, swap.pipeline, decision.previous_version)
        pipeline_restored = restored is None or any(r.startswith(f"{swap.pipeline}/") for r in restored)
        if pipeline_restored and (err := _try(lambda: swap.client.load_model(swap.pipeline))):
            decision.reasons.append(f"reloading {swap.pipeline} after rollback failed ({err})")
        if err := _try(lambda: swap.client.load_model(swap.name)):
            decision.reasons.append(f"reload after rollback failed ({err}); the config on disk is the one from "
                                    f"before the swap (versions {old_live}), so a restart or the next load serves it")
        elif _failed_record(swap.client, swap.name, new) and (err := _clear_failed_record(swap, old_live, new)):
            decision.reasons.append(f"could not clear Triton's failed-load record of v{new} ({err}); "
                                    "the server reports not ready until a good version of the model loads")
    else:  # first deployment: nothing to keep (the restore removed the pipeline and the acoustic config)
        for name in (swap.pipeline, swap.name):
            _try(lambda n=name: swap.client.unload_model(n))
        if restored is None:
            shutil.rmtree(repo_path(swap.root, swap.pipeline), ignore_errors=True)
            repo_path(swap.root, swap.name, "config.pbtxt").unlink(missing_ok=True)
    folder = repo_path(swap.root, swap.name)
    if not _wait_unloaded(swap.client, swap.name, [new]) and _ready(swap.client, swap.name, new):
        decision.reasons.append(f"v{new} still loaded in Triton; its folder was kept")
    else:
        shutil.rmtree(repo_path(swap.root, swap.name, new), ignore_errors=True)
        if not old_live:  # first deployment rolled back: no history to keep
            journal.journal_path(swap.root, swap.name).unlink(missing_ok=True)
            snapshot.discard(swap.root, swap.name)
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
    swap.timed("rollback", start)
    decision.timings = swap.timings
    decision.live_versions = sorted(old_live)
    if folder.is_dir():
        swap.settle(decision.previous_version, old_live)
    return decision


def _restore(swap: _Swap, decision: SwapDecision) -> list[str] | None:
    """The files put back from the swap's backup (``name/file``), or None when there is no usable backup."""
    if swap.saved is None:
        return None
    try:
        return snapshot.restore(swap.root, swap.saved)
    except (OSError, ValueError) as exc:
        decision.reasons.append(f"the files saved before the swap could not be restored ({type(exc).__name__}: "
                                f"{exc}); only the live versions and the serving version were reset")
        return None


def _failed_record(client: Any, name: str, version: int) -> bool:
    """Triton remembers a failed load (and reports the server not ready, strict readiness) until it succeeds."""
    try:
        index = client.get_model_repository_index()
    except Exception:
        return False
    return any(e.get("name") == name and e.get("version") == str(version) and e.get("state") == "UNAVAILABLE"
               and e.get("reason", "unloaded") != "unloaded" for e in index)


def _clear_failed_record(swap: _Swap, old_live: list[int], new: int) -> str | None:
    """Load a copy of a live version under the failed number, then unload it: readiness is restored.

    The copy is listed in the config from before the swap (only its version list changes, then the saved bytes
    are put back). The pipeline never routes to it, and a direct unversioned client would get the same answers
    as the copy's source, so nobody sees a difference.
    """
    target = repo_path(swap.root, swap.name, new)
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(repo_path(swap.root, swap.name, max(old_live)), target, copy_function=_link_or_copy)
    repo_mod.set_live_versions(swap.root, swap.name, [*old_live, new])
    err = _try(lambda: swap.client.load_model(swap.name))
    if swap.saved is None or _try(lambda: snapshot.restore(swap.root, swap.saved)):
        repo_mod.set_live_versions(swap.root, swap.name, old_live)
    err = _try(lambda: swap.client.load_model(swap.name)) or err
    _wait_unloaded(swap.client, swap.name, [new])
    return err


def retained_versions(live: list[int], serving: int | None, keep_versions: int) -> list[int]:
    """The live versions that stay loaded beside a candidate: the serving one and the newest ``keep_versions`` - 2
    others, so that after promotion exactly ``keep_versions`` are live and retiring needs no second reload."""
    others = sorted(v for v in live if v != serving)
    kept = others[-(keep_versions - 2):] if keep_versions > 2 else []
    return sorted({*kept, *([serving] if serving is not None else [])})


def _delete_unloaded(swap: _Swap, decision: SwapDecision, versions: list[int]) -> None:
    """Delete the folders of versions the config no longer lists, once Triton has unloaded them."""
    if not versions:
        return
    _wait_unloaded(swap.client, swap.name, versions)
    for v in versions:
        if _ready(swap.client, swap.name, v):
            decision.reasons.append(f"v{v} still loaded; folder kept")
            continue
        shutil.rmtree(repo_path(swap.root, swap.name, v), ignore_errors=True)
        decision.retired_versions.append(v)


def _record_load_footprint(swap: _Swap, manifest: repo_mod.VersionManifest, used_before: float | None,
                           carried: repo_mod.VersionManifest | None) -> None:
    """Store what loading N+1 took on the GPUs (``gpu_load_mb``: the next swap's memory check).

    Measured as used memory after the load (settled: the old copies of reloaded versions are freed) minus before.
    When the same load also dropped versions, that difference nets their release against N+1, so the serving
    version's measurement (same kind) is carried over instead."""
    kind = manifest.kind
    if used_before is None or repo_mod.instance_kind(kind, swap.opts.batching) != "KIND_GPU":
        return
    if carried is not None:
        if carried.kind == kind and carried.gpu_load_mb:
            manifest.gpu_load_mb = carried.gpu_load_mb
            repo_mod.write_manifest(swap.root, manifest)
        return
    used_after = _settled_gpu_used_mb(kind, swap.opts)
    if used_after is not None:
        manifest.gpu_load_mb = round(max(used_after - used_before, 0.0), 1)
        repo_mod.write_manifest(swap.root, manifest)


def _settled_gpu_used_mb(kind: ModelKind, opts: SwapOptions, timeout_s: float = 10.0) -> float | None:
    """GPU memory in use once two readings 0.5 s apart agree within 64 MiB (old copies still being freed)."""
    last = gpu_used_mb(kind, opts)
    deadline = time.monotonic() + timeout_s
    while last is not None and time.monotonic() < deadline:
        time.sleep(0.5)
        now = gpu_used_mb(kind, opts)
        if now is None or abs(now - last) < 64:
            return now
        last = now
    return last


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _wait_unloaded(client: Any, name: str, versions: list[int], timeout_s: float = 60.0) -> bool:
    """Wait until Triton has finished unloading ``versions`` (in-flight requests on them complete first)."""
    wanted = {str(v) for v in versions}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            index = client.get_model_repository_index()
        except Exception:
            return False
        if not any(e.get("name") == name and e.get("version") in wanted and e.get("state") != "UNAVAILABLE"
                   for e in index):
            return True
        time.sleep(0.1)
    return False


def _ready(client: Any, name: str, version: int) -> bool:
    try:
        return bool(client.is_model_ready(name, str(version)))
    except Exception:
        return False


def _retire(swap: _Swap, decision: SwapDecision, manifest: repo_mod.VersionManifest) -> None:
    """After the grace period keep the newest K versions live; delete folders Triton no longer serves."""
    live = decision.live_versions
    keep = sorted(live)[-swap.opts.keep_versions :]
    if decision.serving_version not in keep:
        keep.append(decision.serving_version)  # type: ignore[arg-type]
    drop = [v for v in live if v not in keep]
    if not drop:
        return
    time.sleep(swap.opts.grace_s)
    start = time.perf_counter()
    swap.settle(decision.serving_version, keep)  # dropped versions leave the history before their folders go
    swap.write_acoustic_config(keep, manifest)
    if err := _try(lambda: swap.client.load_model(swap.name)):
        decision.reasons.append(f"retiring {drop} failed ({err}); they stay on disk")
        return
    _delete_unloaded(swap, decision, drop)
    decision.live_versions = sorted(keep)
    swap.timed("retire", start)


def revert_promotion(root: Path, url: str, promoted: SwapDecision, opts: SwapOptions | None = None) -> list[str]:
    """Undo a promotion that completed: the pipeline names the previous version again, the promoted version leaves
    the live list and its folder is deleted (a first deployment: both models leave). Used when a rolling swap fails
    on a later replica. Returns what was done.

    Holds the model's swap lock, and marks the promoted version pending in the journal before changing anything, so
    a revert that dies mid-way is finished by the next swap's journal repair like any unfinished swap. The pipeline
    is pointed back and reloaded before the promoted version unloads, so no request lands on a missing version.
    Raises ``RepositoryError`` when the model no longer serves ``promoted``'s version (another swap came since)."""
    opts = opts or SwapOptions()
    check_swap_names(opts.model_name, opts.pipeline_name)
    root = Path(root)
    new, previous = promoted.serving_version, promoted.previous_version
    if not promoted.promoted or new is None:
        raise RepositoryError(f"{opts.model_name}: nothing to revert ({promoted.summary()})")
    client = http_client(url, opts.load_timeout_s)
    with journal.swap_lock(root, opts.model_name, opts.lock_timeout_s):
        history = journal.current(root, opts.model_name, opts.pipeline_name)
        if history.serving != new or history.pending is not None:
            raise RepositoryError(f"{opts.model_name} in {root} serves v{history.serving}, not v{new}: it changed "
                                  "after the swap; nothing was reverted")
        keep = sorted(v for v in history.confirmed if v != new)
        marked = journal.begin(root, history.model_copy(update={"serving": previous, "confirmed": keep}), new)
        done: list[str] = []
        if previous is None:
            for name in (opts.pipeline_name, opts.model_name):
                _try(lambda n=name: client.unload_model(n))
            _wait_unloaded(client, opts.model_name, [new])
            shutil.rmtree(repo_path(root, opts.pipeline_name), ignore_errors=True)
            shutil.rmtree(repo_path(root, opts.model_name), ignore_errors=True)
            return [f"v{new} (first deployment) unloaded and removed with {opts.pipeline_name}"]
        repo_mod.set_serving_version(root, opts.pipeline_name, previous)
        if err := _try(lambda: client.load_model(opts.pipeline_name)):
            raise RepositoryError(f"{opts.pipeline_name} did not reload on v{previous} ({err}); the journal marks "
                                  f"v{new} pending, so the next swap finishes the revert")
        done.append(f"{opts.pipeline_name} serves v{previous} again")
        repo_mod.set_live_versions(root, opts.model_name, keep)
        if err := _try(lambda: client.load_model(opts.model_name)):
            done.append(f"reloading {opts.model_name} without v{new} failed ({err}); its folder was kept")
        elif _wait_unloaded(client, opts.model_name, [new]):
            shutil.rmtree(repo_path(root, opts.model_name, new), ignore_errors=True)
            done.append(f"v{new} unloaded and removed")
        journal.settle(root, marked, previous, keep)
        return done
