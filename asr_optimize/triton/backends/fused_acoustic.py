"""Triton python-backend model: the project's fused wav2vec2 CTC engine, fp16/fp8 on a GPU, fp32 on a CPU instance.

Same contract as ``ort_acoustic.py``: inputs ``input_values`` FP32 [batch, samples] + ``attention_mask`` INT64,
output ``logits`` FP32 [batch, frames, vocab]; requests of one shape in a scheduler batch run as one call. With a
fused engine the ``asr`` model runs the engine itself (one hop); this model serves the canary (a candidate version
is checked here before the ``asr`` model loads it) and clients that want logits.

The engine folder lies in ``<version>/engine/``; loading, warm-up (every CUDA graph the ``asr`` model's shapes need,
captured in ``initialize``, so a hot swap pays capture before the canary) and batch splitting are
``asr_optimize.runners.fused_serving``'s, imported from the stub's environment (torch + ``asr_optimize`` must be
importable there: the bundled server's stub sees the worker's venv); its docstring lists the parameters.
Logits go back as CPU numpy: BLS callers are numpy-only (``as_numpy()`` fails on GPU tensors in BLS responses).
"""

import json
import time
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        version_dir = Path(args["model_repository"]) / args["model_version"]
        self.on_gpu = args.get("model_instance_kind") == "GPU"
        try:
            from asr_optimize.runners.fused_serving import FusedServing, ServingError
        except Exception as exc:  # ImportError, or a broken install
            raise pb_utils.TritonModelException(
                f"{version_dir}: the fused engine model needs the asr_optimize package (and torch) in the python "
                f"stub's environment (the python3 first on tritonserver's PATH): {type(exc).__name__}: {exc}"
            ) from exc
        try:
            self.serving = FusedServing(version_dir, params, int(config.get("max_batch_size") or 1), self.on_gpu,
                                        int(args.get("model_instance_device_id", 0) or 0), pb_utils.Logger.log_info)
        except ServingError as exc:
            raise pb_utils.TritonModelException(str(exc)) from exc
        self.torch = self.serving.torch

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
        serving = self.serving
        serving.enter()
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
        serving.tick("inputs", t0)
        for members in groups.values():
            try:
                logits = serving.logits([(rows, lengths) for _, rows, lengths in members])
                t1 = time.perf_counter()
                start = 0
                for index, rows, _ in members:
                    part = logits[start : start + rows.shape[0]]  # whole rows of a C-contiguous array: no copy
                    responses[index] = pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("logits", part)])
                    start += rows.shape[0]
                serving.tick("responses", t1)
            except Exception as exc:
                for index, _, _ in members:
                    responses[index] = pb_utils.InferenceResponse(
                        error=pb_utils.TritonError(f"fused engine failed: {type(exc).__name__}: {exc}")
                    )
        serving.executed(len(requests))
        return responses

    def finalize(self):
        serving, self.serving = getattr(self, "serving", None), None
        if serving is not None:
            serving.close()
