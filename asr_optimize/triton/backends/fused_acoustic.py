"""Triton python-backend model: the project's fused wav2vec2 CTC engine (``FusedRunner``), fp16/fp8 on a GPU, fp32
on a CPU instance.

Same contract as ``ort_acoustic.py``: inputs ``input_values`` FP32 [batch, samples] + ``attention_mask`` INT64,
output ``logits`` FP32 [batch, frames, vocab]; requests of one shape in a scheduler batch run as one call.

The engine folder lies in ``<version>/engine/``; the engine code is this package's, imported from the stub's
environment (torch + ``asr_optimize`` must be importable there: the bundled server's stub sees the worker's venv).
Why warm-up: the runner captures one CUDA graph per (batch, samples, masked) shape on first use; capturing every
shape the ``asr`` pipeline sends (its length buckets, plus the long-form window, x batch 1, 2, 4, ... up to
``max_batch_size``, padded) in ``initialize`` means a hot swap pays capture before the canary, not on live traffic.
Logits go back as CPU numpy: the pipeline is numpy-only (``as_numpy()`` fails on GPU tensors in BLS responses).

Parameters: ``max_batch_seconds`` (audio per engine call: bigger scheduler batches are split, bounding activation
and graph-pool memory), ``precision`` (auto = the version manifest's | fp16 | fp8; GPU only, CPU runs fp32), ``warmup``
(auto = on for GPU instances | true | false), ``bucket_samples`` (the pipeline's buckets), ``long_form_chunk_s``
(the pipeline's long-form window), ``intra_op_threads`` (torch threads on a CPU instance), ``profile_every`` (N > 0:
log the mean time of execute's phases, inputs / engine / responses, every N executes; Triton's statistics cannot
tell the stub's own time from the time Triton spends handing tensors to it).
"""

import json
import time
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

ENGINE_DIR = "engine"
PROFILE_PHASES = ("inputs", "stack", "gpu", "fetch", "responses")
"""execute's phases (``profile_every``): request tensors read, rows stacked on the device, the engine run (CUDA
synchronized), logits copied to the host, responses built."""
MANIFEST = "manifest.json"


def _pow2_upto(n):
    """1, 2, 4, ... up to the power of two that holds n (the runner pads a batch to a power of two)."""
    sizes = [1]
    while sizes[-1] < n:
        sizes.append(sizes[-1] * 2)
    return sizes


def window_samples(chunk_s, kernels, strides, sample_rate=16000):
    """Widest long-form window the pipeline sends (``chunking.plan_windows``): C frames plus the up to S - 1
    trailing samples a single-window recording keeps."""
    from asr_optimize.model.ctc import conv_geometry_from

    frame, receptive = conv_geometry_from(kernels, strides)
    chunk = round(chunk_s * sample_rate / frame)
    return (chunk - 1) * frame + receptive + frame - 1


def rows_per_call(samples, max_batch, budget_samples):
    """Rows of ``samples`` each that one engine call takes: a power of two within ``budget_samples`` (at least 1),
    at most the power of two that holds ``max_batch``."""
    rows = 1
    while rows < max_batch and rows * 2 * samples <= budget_samples:
        rows *= 2
    return rows


def shape_buckets(bucket_samples, window, max_batch, budget_samples=None):
    """(batch, samples) buckets: every width x batch sizes 1, 2, 4, ... within the per-call budget; sorted as the
    runner searches them."""
    widths = sorted(set(bucket_samples) | ({window} if window and (not bucket_samples or window > max(bucket_samples))
                                           else set()))
    budget = budget_samples or float("inf")
    return sorted((b, s) for s in widths for b in _pow2_upto(rows_per_call(s, max_batch, budget)))


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        version_dir = Path(args["model_repository"]) / args["model_version"]
        self.engine_dir = version_dir / ENGINE_DIR
        self.max_batch = max(1, int(config.get("max_batch_size") or 1))
        self.on_gpu = args.get("model_instance_kind") == "GPU"
        self.device_id = int(args.get("model_instance_device_id", 0) or 0)
        manifest_path = version_dir / MANIFEST
        manifest = json.loads(manifest_path.read_text("utf-8")) if manifest_path.is_file() else {}
        try:
            import torch

            from asr_optimize.engine.fused import ENGINE_FORMAT
            from asr_optimize.runners.base import RunnerUnavailable
            from asr_optimize.runners.fused_engine import FusedRunner
        except Exception as exc:  # ImportError, or a broken torch install
            raise pb_utils.TritonModelException(
                f"{self.engine_dir}: the fused engine model needs torch and the asr_optimize package in the python "
                f"stub's environment (the python3 first on tritonserver's PATH): {type(exc).__name__}: {exc}"
            ) from exc
        self.torch = torch
        meta_path = self.engine_dir / "engine.json"
        if not meta_path.is_file():
            raise pb_utils.TritonModelException(f"{self.engine_dir}: no engine.json (not a fused engine folder)")
        meta = json.loads(meta_path.read_text("utf-8"))
        needed = {manifest.get("engine_format"), meta.get("format")} - {None}
        if needed != {ENGINE_FORMAT}:
            shown = " / ".join(repr(f) for f in sorted(needed - {ENGINE_FORMAT}, key=str)) or "None"
            raise pb_utils.TritonModelException(
                f"{self.engine_dir}: engine format {shown} is unknown to the asr_optimize installed in the stub's "
                f"environment (it reads format {ENGINE_FORMAT}); install the asr_optimize that built it, or rebuild"
            )
        precision = params.get("precision") or "auto"
        if precision == "auto":
            precision = manifest.get("precision") or meta.get("precision") or "fp16"
        if precision not in ("fp16", "fp8", "fp8-mixed", "fp32"):
            raise pb_utils.TritonModelException(
                f"parameter precision={precision!r}: expected auto, fp16, fp8, fp8-mixed or fp32")
        if self.on_gpu:
            if not torch.cuda.is_available():
                raise pb_utils.TritonModelException(
                    f"a GPU instance needs a CUDA build of torch in the stub's environment; torch {torch.__version__} "
                    "sees no CUDA device"
                )
            torch.cuda.set_device(self.device_id)
            device = "cuda"
        else:
            precision, device = "fp32", "cpu"  # fp16/fp8 kernels are CUDA-only
            threads = int(params.get("intra_op_threads") or 0)
            if threads > 0:
                torch.set_num_threads(threads)
        self.precision = precision
        bucket_samples = [int(b) for b in params.get("bucket_samples", "").split(",") if b.strip()]
        chunk_s = float(params.get("long_form_chunk_s") or 0)
        arch = meta.get("architecture", {})
        window = (window_samples(chunk_s, arch["conv_kernel"], arch["conv_stride"])
                  if chunk_s > 0 and "conv_kernel" in arch else 0)
        self.budget_samples = int(float(params.get("max_batch_seconds") or 640) * 16000)
        self.buckets = (shape_buckets(bucket_samples, window, self.max_batch, self.budget_samples)
                        if bucket_samples else [])
        try:
            self.runner = FusedRunner(self.engine_dir, device=device, precision=precision, cuda_graphs=self.on_gpu,
                                      buckets=self.buckets, max_graphs=max(64, 2 * len(self.buckets) + 16))
        except (RunnerUnavailable, ValueError, OSError) as exc:
            raise pb_utils.TritonModelException(f"{self.engine_dir}: cannot load the fused engine: {exc}") from exc
        except Exception as exc:  # ModelResolutionError (corrupt weights) and friends
            raise pb_utils.TritonModelException(
                f"{self.engine_dir}: cannot load the fused engine: {type(exc).__name__}: {exc}"
            ) from exc
        self.profile_every = int(params.get("profile_every") or 0)
        self.profile = dict.fromkeys(PROFILE_PHASES, 0.0) | {"executes": 0, "rows": 0}
        warmup = params.get("warmup") or "auto"
        if warmup == "true" or (warmup == "auto" and self.on_gpu):
            self._warmup()

    def _warmup(self):
        """Run (on a GPU: capture the CUDA graph of) every bucket shape with a padding mask: the pipeline pads each
        utterance to a bucket, so its batches are masked; the rarer unmasked batch (every row exactly a bucket long) is
        captured on first use instead of doubling the load time."""
        start = time.perf_counter()
        rng = np.random.default_rng(0)
        for batch, samples in self.buckets:
            values = (rng.standard_normal((batch, samples)) * 0.1).astype(np.float32)
            mask = np.ones((batch, samples), dtype=np.int64)
            mask[-1, samples // 2 :] = 0
            self.runner.infer(values, mask)
        seconds = time.perf_counter() - start
        where = f"cuda:{self.device_id}" if self.on_gpu else "cpu"
        pb_utils.Logger.log_info(
            f"{self.engine_dir}: warm-up of {len(self.buckets)} shapes ({self.precision} on {where}) took "
            f"{seconds:.2f} s"
        )
        self.warmup_s = seconds

    # ------------------------------------------------------------------ inputs

    def _rows(self, tensor):
        """A request tensor as rows the runner stacks: host numpy (zero-copy view of Triton's shared memory), or a
        torch CUDA tensor through DLPack when Triton placed it on the GPU (FORCE_CPU_ONLY_INPUT_TENSORS: no): GPU
        inputs stay on the GPU."""
        if tensor.is_cpu():
            return tensor.as_numpy()
        torch = self.torch
        try:
            return torch.from_dlpack(tensor)
        except (TypeError, AttributeError):
            return torch.utils.dlpack.from_dlpack(tensor.to_dlpack())

    def _inputs(self, request):
        """(rows, per-row valid lengths or None when every row is full) of one request."""
        values = self._rows(pb_utils.get_input_tensor_by_name(request, "input_values"))
        float32 = np.float32 if isinstance(values, np.ndarray) else self.torch.float32
        if values.ndim != 2 or values.dtype != float32:
            raise ValueError(f"input_values must be FP32 [batch, samples], got {values.dtype} {tuple(values.shape)}")
        mask_tensor = pb_utils.get_input_tensor_by_name(request, "attention_mask")
        if mask_tensor is None:
            return values, None
        mask = self._rows(mask_tensor)
        if tuple(mask.shape) != tuple(values.shape):
            raise ValueError(f"attention_mask shape {tuple(mask.shape)} differs from input_values "
                             f"{tuple(values.shape)}")
        if isinstance(mask, np.ndarray):
            return values, mask.sum(axis=1, dtype=np.int64)
        return values, mask.sum(dim=1, dtype=self.torch.int64).cpu().numpy()

    # ------------------------------------------------------------------ running

    def execute(self, requests):
        """Requests of one width run as one engine call (split at ``max_batch_seconds``); their rows are stacked
        once inside the runner, and the logits come back to the host in one copy per call."""
        if self.on_gpu:
            self.torch.cuda.set_device(self.device_id)  # the current device is per thread
        responses = [None] * len(requests)
        groups = {}
        t0 = time.perf_counter()
        for index, request in enumerate(requests):
            try:
                values, lengths = self._inputs(request)
            except Exception as exc:  # a malformed request fails alone
                responses[index] = pb_utils.InferenceResponse(error=pb_utils.TritonError(f"bad input: {exc}"))
                continue
            groups.setdefault(int(values.shape[1]), []).append((index, values, lengths))
        self._tick("inputs", t0)
        for members in groups.values():
            try:
                logits = self._run_group(members)
                t1 = time.perf_counter()
                start = 0
                for index, rows, _ in members:
                    part = logits[start : start + rows.shape[0]]  # whole rows of a C-contiguous array: no copy
                    responses[index] = pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("logits", part)])
                    start += rows.shape[0]
                self._tick("responses", t1)
            except Exception as exc:
                for index, _, _ in members:
                    responses[index] = pb_utils.InferenceResponse(
                        error=pb_utils.TritonError(f"fused engine failed: {type(exc).__name__}: {exc}")
                    )
        if self.profile_every:
            self._report(len(requests))
        return responses

    def _tick(self, phase, since):
        """Add the time since ``since`` to ``phase`` (profiling only; the GPU is synchronized first so that each
        phase holds its own device work)."""
        if not self.profile_every:
            return time.perf_counter()
        if self.on_gpu:
            self.torch.cuda.synchronize()
        now = time.perf_counter()
        self.profile[phase] += now - since
        return now

    def _report(self, requests):
        p = self.profile
        p["executes"] += 1
        p["rows"] += requests
        n = p["executes"]
        if n % self.profile_every == 0:
            phases = ", ".join(f"{k} {1e3 * p[k] / n:.2f}" for k in PROFILE_PHASES)
            pb_utils.Logger.log_info(f"{self.engine_dir}: execute phases over {n} executes ({p['rows'] / n:.1f} "
                                     f"requests each), mean ms: {phases}")

    def _run_group(self, members):
        """float32 host logits of every row of ``members`` (index, rows, lengths), in order."""
        samples = int(members[0][1].shape[1])
        step = rows_per_call(samples, self.max_batch, self.budget_samples)
        # engine calls of at most ``step`` rows, each a list of (rows, lengths) slices of the requests, in order
        calls, current, taken = [], [], 0
        for _, rows, lengths in members:
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
        outputs = []
        for call in calls:
            blocks = [rows for rows, _ in call]
            if all(lengths is None for _, lengths in call):
                lengths = None
            else:
                lengths = np.concatenate([np.full(rows.shape[0], samples, dtype=np.int64) if lens is None else lens
                                          for rows, lens in call])
            t = time.perf_counter()
            prepared = self.runner.prepare_blocks(blocks, lengths)
            t = self._tick("stack", t)
            out = self.runner.run_prepared(prepared)
            t = self._tick("gpu", t)
            # one device-to-host copy per call (the graph's output is reused); C order, so request rows need no copy
            outputs.append(np.ascontiguousarray(out.cpu().float().numpy()))
            self._tick("fetch", t)
        return outputs[0] if len(outputs) == 1 else np.concatenate(outputs)

    def finalize(self):
        runner, self.runner = getattr(self, "runner", None), None
        if runner is not None:
            runner.close()
