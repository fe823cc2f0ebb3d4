"""The fused engine as the Triton python models serve it: one ``FusedServing`` per model instance and version.

Two models use it, inside tritonserver's python stub: the acoustic model (``fused_acoustic.py``: rows in, logits out,
kept for the canary and for clients that decode themselves) and the ``asr`` model's one-hop path
(``ctc_pipeline.py``: audio in, text out, with CTC greedy decoding's argmax on the device, so only token ids cross
to the host). Both read the same config parameters, load the engine the same way, capture the same CUDA graphs at
load time and split big batches the same way, so both give the same logits for the same rows.

Parameters (string values, as Triton passes them): ``precision`` (auto = the version manifest's | fp16 | fp8 |
fp8-mixed; GPU only, a CPU instance runs fp32), ``warmup`` (auto = on for GPU instances | true | false),
``max_batch_seconds`` (audio per engine call: bigger batches are split, bounding activation and graph-pool memory),
``bucket_samples`` (the ``asr`` model's length buckets), ``long_form_chunk_s`` (its long-form window),
``intra_op_threads`` (torch threads on a CPU instance), ``profile_every`` (N > 0: log the mean time of each
phase every N executes; CUDA-synchronized, a diagnosis aid).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ENGINE_DIR = "engine"
MANIFEST = "manifest.json"
PRECISIONS = ("fp16", "fp8", "fp8-mixed", "fp32")
PROFILE_PHASES = ("inputs", "stack", "gpu", "fetch", "responses")
"""execute's phases (``profile_every``): requests read (and, one hop, normalized), rows stacked into the padded
pinned buffer and copied to the device, the engine run (CUDA synchronized), results copied to the host, responses
built (one hop: CTC decoding included)."""


class ServingError(Exception):
    """The engine cannot be served here: a missing runtime, an unknown engine format, a bad parameter."""


def _pow2_upto(n: int) -> list[int]:
    """1, 2, 4, ... up to the power of two that holds n (the runner pads a batch to a power of two)."""
    sizes = [1]
    while sizes[-1] < n:
        sizes.append(sizes[-1] * 2)
    return sizes


def window_samples(chunk_s: float, kernels: list[int], strides: list[int], sample_rate: int = 16000) -> int:
    """Widest long-form window the ``asr`` model sends (``chunking.plan_windows``): C frames plus the up to S - 1
    trailing samples a single-window recording keeps."""
    from asr_optimize.model.ctc import conv_geometry_from

    frame, receptive = conv_geometry_from(kernels, strides)
    chunk = round(chunk_s * sample_rate / frame)
    return (chunk - 1) * frame + receptive + frame - 1


def rows_per_call(samples: int, max_batch: int, budget_samples: float) -> int:
    """Rows of ``samples`` each that one engine call takes: a power of two within ``budget_samples`` (at least 1),
    at most the power of two that holds ``max_batch``."""
    rows = 1
    while rows < max_batch and rows * 2 * samples <= budget_samples:
        rows *= 2
    return rows


def shape_buckets(bucket_samples: list[int], window: int, max_batch: int,
                  budget_samples: float | None = None) -> list[tuple[int, int]]:
    """(batch, samples) buckets: every width x batch sizes 1, 2, 4, ... within the per-call budget; sorted as the
    runner searches them."""
    widths = sorted(set(bucket_samples) | ({window} if window and (not bucket_samples or window > max(bucket_samples))
                                           else set()))
    budget = budget_samples or float("inf")
    return sorted((b, s) for s in widths for b in _pow2_upto(rows_per_call(s, max_batch, budget)))


def long_form_window(params: dict[str, str], arch: dict[str, Any]) -> int:
    """The long-form window width the ``asr`` model pads windows to (0: no long-form buckets)."""
    chunk_s = float(params.get("long_form_chunk_s") or 0)
    if chunk_s <= 0 or "conv_kernel" not in arch:
        return 0
    return window_samples(chunk_s, arch["conv_kernel"], arch["conv_stride"])


class FusedServing:
    """One version's fused engine in one model instance: loaded, warmed up, and run in calls of bounded size.

    ``log`` receives one-line messages (the models pass Triton's logger)."""

    def __init__(self, version_dir: Path, params: dict[str, str], max_batch: int, on_gpu: bool, device_id: int = 0,
                 log: Callable[[str], None] = print) -> None:
        self.engine_dir = Path(version_dir) / ENGINE_DIR
        self.max_batch = max(1, int(max_batch))
        self.on_gpu = on_gpu
        self.device_id = device_id
        self.log = log
        manifest_path = Path(version_dir) / MANIFEST
        manifest = json.loads(manifest_path.read_text("utf-8")) if manifest_path.is_file() else {}
        try:
            import torch

            from asr_optimize.engine.fused import ENGINE_FORMAT
            from asr_optimize.runners.base import RunnerUnavailable
            from asr_optimize.runners.fused_engine import FusedRunner
        except Exception as exc:  # ImportError, or a broken torch install
            raise ServingError(
                f"{self.engine_dir}: the fused engine needs torch and the asr_optimize package in the python stub's "
                f"environment (the python3 first on tritonserver's PATH): {type(exc).__name__}: {exc}"
            ) from exc
        self.torch = torch
        meta_path = self.engine_dir / "engine.json"
        if not meta_path.is_file():
            raise ServingError(f"{self.engine_dir}: no engine.json (not a fused engine folder)")
        meta = json.loads(meta_path.read_text("utf-8"))
        needed = {manifest.get("engine_format"), meta.get("format")} - {None}
        if needed != {ENGINE_FORMAT}:
            shown = " / ".join(repr(f) for f in sorted(needed - {ENGINE_FORMAT}, key=str)) or "None"
            raise ServingError(
                f"{self.engine_dir}: engine format {shown} is unknown to the asr_optimize installed in the stub's "
                f"environment (it reads format {ENGINE_FORMAT}); install the asr_optimize that built it, or rebuild"
            )
        precision = params.get("precision") or "auto"
        if precision == "auto":
            precision = manifest.get("precision") or meta.get("precision") or "fp16"
        if precision not in PRECISIONS:
            raise ServingError(f"parameter precision={precision!r}: expected auto, fp16, fp8, fp8-mixed or fp32")
        if on_gpu:
            if not torch.cuda.is_available():
                raise ServingError(f"a GPU instance needs a CUDA build of torch in the stub's environment; torch "
                                   f"{torch.__version__} sees no CUDA device")
            torch.cuda.set_device(device_id)
            device = "cuda"
        else:
            precision, device = "fp32", "cpu"  # fp16/fp8 kernels are CUDA-only
            threads = int(params.get("intra_op_threads") or 0)
            if threads > 0:
                torch.set_num_threads(threads)
        self.precision = precision
        bucket_samples = [int(b) for b in params.get("bucket_samples", "").split(",") if b.strip()]
        self.window = long_form_window(params, meta.get("architecture", {}))
        self.budget_samples = int(float(params.get("max_batch_seconds") or 640) * 16000)
        self.buckets = (shape_buckets(bucket_samples, self.window, self.max_batch, self.budget_samples)
                        if bucket_samples else [])
        try:
            self.runner = FusedRunner(self.engine_dir, device=device, precision=precision, cuda_graphs=on_gpu,
                                      buckets=self.buckets, max_graphs=max(64, 2 * len(self.buckets) + 16))
        except (RunnerUnavailable, ValueError, OSError) as exc:
            raise ServingError(f"{self.engine_dir}: cannot load the fused engine: {exc}") from exc
        except Exception as exc:  # ModelResolutionError (corrupt weights) and friends
            raise ServingError(f"{self.engine_dir}: cannot load the fused engine: {type(exc).__name__}: {exc}") from exc
        self.profile_every = int(params.get("profile_every") or 0)
        self.profile = dict.fromkeys(PROFILE_PHASES, 0.0) | {"executes": 0, "requests": 0}
        self.warmup_s = 0.0
        warmup = params.get("warmup") or "auto"
        if warmup == "true" or (warmup == "auto" and on_gpu):
            self.warm_up()

    def warm_up(self) -> float:
        """Run (on a GPU: capture the CUDA graph of) every bucket shape with a padding mask: the ``asr`` model pads
        each utterance to a bucket, so its batches are masked; the rarer unmasked batch (every row exactly a bucket
        long) is captured on first use instead of doubling the load time. Why at load: a hot swap then pays capture
        before the canary, not on live traffic."""
        start = time.perf_counter()
        rng = np.random.default_rng(0)
        for batch, samples in self.buckets:
            values = (rng.standard_normal((batch, samples)) * 0.1).astype(np.float32)
            mask = np.ones((batch, samples), dtype=np.int64)
            mask[-1, samples // 2 :] = 0
            self.runner.infer(values, mask)
        self.warmup_s = time.perf_counter() - start
        where = f"cuda:{self.device_id}" if self.on_gpu else "cpu"
        self.log(f"{self.engine_dir}: warm-up of {len(self.buckets)} shapes ({self.precision} on {where}) took "
                 f"{self.warmup_s:.2f} s")
        return self.warmup_s

    def enter(self) -> None:
        """Call first in every execute: the current CUDA device is per thread."""
        if self.on_gpu:
            self.torch.cuda.set_device(self.device_id)

    # ------------------------------------------------------------------ running

    def _calls(self, blocks: list[tuple[Any, np.ndarray | None]], width: int) -> list[list[tuple[Any, Any]]]:
        """Engine calls of at most ``rows_per_call(width)`` rows, each a list of (rows, lengths) slices of the
        blocks, in order."""
        step = rows_per_call(width, self.max_batch, self.budget_samples)
        calls: list[list[tuple[Any, Any]]] = []
        current: list[tuple[Any, Any]] = []
        taken = 0
        for rows, lengths in blocks:
            offset = 0
            while offset < rows.shape[0]:
                n = min(rows.shape[0] - offset, step - taken)
                current.append((rows[offset : offset + n], None if lengths is None else lengths[offset : offset + n]))
                offset, taken = offset + n, taken + n
                if taken == step:
                    calls.append(current)
                    current, taken = [], 0
        if current:
            calls.append(current)
        return calls

    def _run(self, blocks: list[tuple[Any, np.ndarray | None]], width: int,
             fetch: Callable[[Any], np.ndarray]) -> np.ndarray:
        """``fetch(device logits)`` of every row of ``blocks`` (rows, their lengths or None: full), in order."""
        outputs = []
        for call in self._calls(blocks, width):
            rows = [r for r, _ in call]
            if all(lens is None for _, lens in call):
                lengths = None
            else:
                lengths = np.concatenate([np.full(r.shape[0], r.shape[1], dtype=np.int64) if lens is None else lens
                                          for r, lens in call])
            t = time.perf_counter()
            prepared = self.runner.prepare_blocks(rows, lengths, width)
            t = self.tick("stack", t)
            out = self.runner.run_prepared(prepared)
            t = self.tick("gpu", t)
            outputs.append(fetch(out))  # the graph's output is reused: fetched before the next call
            self.tick("fetch", t)
        return outputs[0] if len(outputs) == 1 else np.concatenate(outputs)

    def logits(self, blocks: list[tuple[Any, np.ndarray | None]]) -> np.ndarray:
        """float32 host logits ``[rows, frames, vocab]`` of equally wide blocks: one device-to-host copy per engine
        call, C order, so a request's rows are a view."""
        width = int(blocks[0][0].shape[1])
        return self._run(blocks, width, lambda out: np.ascontiguousarray(out.cpu().float().numpy()))

    def greedy_ids(self, waves: list[np.ndarray], width: int) -> np.ndarray:
        """CTC greedy path ``[rows, frames of width]`` (int32 token ids) of 1-d float32 waves zero-padded to
        ``width``: the argmax runs on the device, so 4 bytes per frame cross to the host instead of the vocabulary's
        logits (64 x 10 s: 128 KB instead of 9.8 MB). Frames past a row's own length are padding."""
        torch = self.torch
        blocks = [(wave[None, :], np.array([wave.shape[0]], dtype=np.int64)) for wave in waves]
        return self._run(blocks, width, lambda out: out.argmax(dim=-1).to(torch.int32).cpu().numpy())

    # ------------------------------------------------------------------ profiling

    def tick(self, phase: str, since: float) -> float:
        """Add the time since ``since`` to ``phase`` and return now (profiling only; the GPU is synchronized first
        so that each phase holds its own device work)."""
        if not self.profile_every:
            return time.perf_counter()
        if self.on_gpu:
            self.torch.cuda.synchronize()
        now = time.perf_counter()
        self.profile[phase] += now - since
        return now

    def executed(self, requests: int) -> None:
        """Count one execute of ``requests`` requests; every ``profile_every`` executes, log the phase means."""
        if not self.profile_every:
            return
        p = self.profile
        p["executes"] += 1
        p["requests"] += requests
        n = p["executes"]
        if n % self.profile_every == 0:
            phases = ", ".join(f"{k} {1e3 * p[k] / n:.2f}" for k in PROFILE_PHASES)
            self.log(f"{self.engine_dir}: execute phases over {n} executes ({p['requests'] / n:.1f} requests each), "
                     f"mean ms: {phases}")

    def close(self) -> None:
        runner, self.runner = getattr(self, "runner", None), None
        if runner is not None:
            runner.close()
