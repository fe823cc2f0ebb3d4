"""Triton python-backend model: a wav2vec2 CTC ONNX graph run with ONNX Runtime (CPU, or CUDA on a GPU instance).

Inputs ``input_values`` FP32 [batch, samples] (+ ``attention_mask`` INT64 when the graph has one), output
``logits`` FP32 [batch, frames, vocab]. Requests of the same shape in one scheduler batch run as one call.

On a GPU instance (``instance_group { kind: KIND_GPU }``) the session uses the CUDA execution provider with I/O
binding: the batch is copied to the device once, logits stay on the device until one copy back per batch (the
``asr`` pipeline decodes on the CPU). Inputs that Triton already holds in GPU memory (``FORCE_CPU_ONLY_INPUT_TENSORS:
no``, e.g. a client using CUDA shared memory) are bound through DLPack without a host round trip. With
``cuda_graphs: true`` each (batch, samples) shape gets a fixed-shape session whose whole run is one CUDA graph
(the in-process benchmark's fastest setting); batches are padded up to a power of two to bound the shape count.

This file runs inside the stub: it imports only numpy, onnxruntime (and onnx for fixed-shape graphs).
"""

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


def _next_pow2(n, cap):
    size = 1
    while size < n:
        size *= 2
    return min(size, cap)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        self.path = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        self.max_batch = max(1, int(config.get("max_batch_size") or 1))
        self.threads = int(params.get("intra_op_threads") or 0)
        self.device_id = int(args.get("model_instance_device_id", 0) or 0)
        wants_gpu = args.get("model_instance_kind") == "GPU"
        has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
        if wants_gpu and not has_cuda:
            raise pb_utils.TritonModelException(
                f"{self.path}: a GPU instance needs onnxruntime-gpu (CUDAExecutionProvider) in the python stub's "
                f"environment; this onnxruntime {ort.__version__} offers {ort.get_available_providers()}"
            )
        self.on_gpu = wants_gpu
        self.device_type = "cuda"  # OrtValue / binding device of a GPU instance
        if self.on_gpu and hasattr(ort, "preload_dlls"):
            ort.preload_dlls()  # CUDA/cuDNN from the nvidia-* wheels when not on the library path
        self.io_binding = self.on_gpu and params.get("io_binding", "true") == "true"
        self.cuda_graphs = self.on_gpu and params.get("cuda_graphs", "false") == "true"
        self.max_graphs = int(params.get("cuda_graph_max_shapes") or 8)
        self.graphs = {}  # (batch, samples) -> (session, binding, {name: OrtValue}, output OrtValue)
        self.session = self._session()
        self.input_names = [i.name for i in self.session.get_inputs()]
        if "input_values" not in self.input_names:
            raise pb_utils.TritonModelException(f"{self.path}: graph inputs {self.input_names} lack 'input_values'")

    def _session(self, fixed_shape=None):
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.threads:
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        if self.on_gpu and self.device_type == "cuda":
            cuda = {"device_id": self.device_id}
            if fixed_shape is not None:
                cuda["enable_cuda_graph"] = "1"
            providers.insert(0, ("CUDAExecutionProvider", cuda))
        model = str(self.path)
        if fixed_shape is not None:
            import onnx
            from onnxruntime.tools.onnx_model_utils import make_input_shape_fixed

            graph = onnx.load(str(self.path))
            for graph_input in graph.graph.input:
                make_input_shape_fixed(graph.graph, graph_input.name, list(fixed_shape))
            model = graph.SerializeToString()
        return ort.InferenceSession(model, sess_options=options, providers=providers)

    # ------------------------------------------------------------------ inputs

    def _feeds(self, request):
        """{name: numpy array or OrtValue on the GPU (from DLPack)} for one request."""
        tensor = pb_utils.get_input_tensor_by_name(request, "input_values")
        feeds = {"input_values": self._array(tensor, np.float32)}
        if "attention_mask" in self.input_names:
            mask = pb_utils.get_input_tensor_by_name(request, "attention_mask")
            shape = feeds["input_values"].shape()
            ones = _Host(np.ones(shape, dtype=np.int64))
            feeds["attention_mask"] = ones if mask is None else self._array(mask, np.int64)
        return feeds

    def _array(self, tensor, dtype):
        if self.io_binding and not tensor.is_cpu() and hasattr(ort.OrtValue, "from_dlpack"):
            try:
                return _Gpu(ort.OrtValue.from_dlpack(tensor))  # onnxruntime >= 1.2x: any __dlpack__ object
            except TypeError:
                return _Gpu(ort.OrtValue.from_dlpack(tensor.to_dlpack(), False))  # older: capsule + bool flag
        return _Host(tensor.as_numpy().astype(dtype, copy=False))

    # ------------------------------------------------------------------ running

    def _run(self, batch):
        """batch: {name: numpy array} -> logits numpy [batch, frames, vocab]."""
        if not self.on_gpu:
            return self.session.run(["logits"], batch)[0]
        shape = batch["input_values"].shape
        if self.cuda_graphs and (shape in self.graphs or len(self.graphs) < self.max_graphs):
            try:
                return self._run_graph(batch)
            except Exception as exc:  # a node outside CUDA cannot be captured: plain CUDA from now on
                self.cuda_graphs = False
                pb_utils.Logger.log_warn(f"{self.path}: CUDA graph capture failed, using plain CUDA: {exc}")
        if not self.io_binding:
            return self.session.run(["logits"], batch)[0]
        binding = self.session.io_binding()
        for name, array in batch.items():
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(array, self.device_type, self.device_id))
        binding.bind_output("logits", self.device_type, self.device_id)
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    def _run_graph(self, batch):
        """Pad the batch to a power of two, replay (or capture) the CUDA graph of that shape."""
        rows, samples = batch["input_values"].shape
        padded = _next_pow2(rows, self.max_batch)
        if padded != rows:
            batch = {n: np.concatenate([a, np.repeat(a[:1], padded - rows, axis=0)]) for n, a in batch.items()}
        key = (padded, samples)
        if key not in self.graphs:
            logits_shape = self.session.run(["logits"], batch)[0].shape  # output size of this shape
            session = self._session(fixed_shape=key)
            binding = session.io_binding()
            inputs = {}
            for name, array in batch.items():
                inputs[name] = ort.OrtValue.ortvalue_from_numpy(array, self.device_type, self.device_id)
                binding.bind_ortvalue_input(name, inputs[name])
            output = ort.OrtValue.ortvalue_from_shape_and_type(logits_shape, np.float32, self.device_type,
                                                               self.device_id)
            binding.bind_ortvalue_output("logits", output)
            session.run_with_iobinding(binding)  # the first run captures the graph
            self.graphs[key] = (session, binding, inputs, output)
        else:
            session, binding, inputs, output = self.graphs[key]
            for name, array in batch.items():
                inputs[name].update_inplace(np.ascontiguousarray(array))
            session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0][:rows]

    def _run_device(self, feeds):
        """One request whose inputs are already on the GPU: bind them as they are (no host copy)."""
        binding = self.session.io_binding()
        for name, value in feeds.items():
            if isinstance(value, _Gpu):
                binding.bind_ortvalue_input(name, value.value)
            else:
                device_value = ort.OrtValue.ortvalue_from_numpy(value.array, self.device_type, self.device_id)
                binding.bind_ortvalue_input(name, device_value)
        binding.bind_output("logits", self.device_type, self.device_id)
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    def execute(self, requests):
        responses = [None] * len(requests)
        groups = {}
        for index, request in enumerate(requests):
            try:
                feeds = self._feeds(request)
            except Exception as exc:  # a malformed request fails alone
                responses[index] = pb_utils.InferenceResponse(error=pb_utils.TritonError(f"bad input: {exc}"))
                continue
            on_device = any(isinstance(v, _Gpu) for v in feeds.values())
            key = ("device", index) if on_device else tuple(feeds["input_values"].shape()[1:])
            groups.setdefault(key, []).append((index, feeds))
        for key, members in groups.items():
            try:
                if key[0] == "device":
                    outputs = [self._run_device(members[0][1])]
                else:
                    batch = {n: np.concatenate([f[n].array for _, f in members]) for n in members[0][1]}
                    outputs = [self._run(batch).astype(np.float32, copy=False)]
                logits = outputs[0]
                start = 0
                for index, feeds in members:
                    size = feeds["input_values"].shape()[0]
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
        self.graphs.clear()
        self.session = None


class _Host:
    """A numpy input."""

    def __init__(self, array):
        self.array = array

    def shape(self):
        return self.array.shape


class _Gpu:
    """An input already in GPU memory (an OrtValue viewing Triton's buffer through DLPack)."""

    def __init__(self, value):
        self.value = value

    def shape(self):
        return tuple(self.value.shape())
