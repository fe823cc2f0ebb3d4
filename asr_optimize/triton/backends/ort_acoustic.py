"""Triton python-backend model: a wav2vec2 CTC ONNX graph run with ONNX Runtime (the portable fallback).

Inputs ``input_values`` FP32 [batch, samples] (+ ``attention_mask`` INT64 when the graph has one), output
``logits`` FP32 [batch, frames, vocab]. Requests of the same shape in one scheduler batch run as one call.
"""

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        path = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        options = ort.SessionOptions()
        options.log_severity_level = 3
        threads = int(params.get("intra_op_threads") or 0)
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        if args.get("model_instance_kind") == "GPU" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": int(args.get("model_instance_device_id", 0))}))
        self.session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        self.input_names = [i.name for i in self.session.get_inputs()]
        if "input_values" not in self.input_names:
            raise pb_utils.TritonModelException(f"{path}: graph inputs {self.input_names} lack 'input_values'")

    def _feeds(self, request):
        values = pb_utils.get_input_tensor_by_name(request, "input_values").as_numpy().astype(np.float32, copy=False)
        feeds = {"input_values": values}
        if "attention_mask" in self.input_names:
            mask = pb_utils.get_input_tensor_by_name(request, "attention_mask")
            feeds["attention_mask"] = (
                np.ones(values.shape, dtype=np.int64) if mask is None else mask.as_numpy().astype(np.int64, copy=False)
            )
        return feeds

    def execute(self, requests):
        responses = [None] * len(requests)
        groups = {}
        for index, request in enumerate(requests):
            try:
                feeds = self._feeds(request)
            except Exception as exc:  # a malformed request fails alone
                responses[index] = pb_utils.InferenceResponse(error=pb_utils.TritonError(f"bad input: {exc}"))
                continue
            groups.setdefault(tuple(feeds["input_values"].shape[1:]), []).append((index, feeds))
        for members in groups.values():
            try:
                batch = {n: np.concatenate([f[n] for _, f in members]) for n in members[0][1]}
                logits = self.session.run(["logits"], batch)[0].astype(np.float32, copy=False)
                start = 0
                for index, feeds in members:
                    size = feeds["input_values"].shape[0]
                    part = np.ascontiguousarray(logits[start : start + size])
                    responses[index] = pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("logits", part)])
                    start += size
            except Exception as exc:
                for index, _ in members:
                    responses[index] = pb_utils.InferenceResponse(
                        error=pb_utils.TritonError(f"onnxruntime failed: {exc}")
                    )
        return responses

    def finalize(self):
        self.session = None
