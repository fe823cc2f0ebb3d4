"""The GPU code paths of the python-backend acoustic model (I/O binding, DLPack inputs, fixed-shape graph sessions),
run in-process with ONNX Runtime's CPU device and a stand-in for ``triton_python_backend_utils``.

What this proves: the batching, binding, padding-to-a-power-of-two and slicing logic of those paths gives the same
logits as a plain session, request by request. What it does not: CUDA itself (that needs a CUDA host).
"""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from asr_optimize.triton.backends import ORT_ACOUSTIC
from tests.support.triton_server import copy_artifact


class _Tensor:
    def __init__(self, name: str, array: np.ndarray, on_gpu: bool = False) -> None:
        self._name, self._array, self._gpu = name, np.asarray(array), on_gpu

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        if self._gpu:
            raise RuntimeError("as_numpy on a GPU tensor")
        return self._array

    def is_cpu(self) -> bool:
        return not self._gpu

    def __dlpack__(self, stream=None):
        return self._array.__dlpack__()

    def to_dlpack(self):
        return self._array.__dlpack__()


class _Request:
    def __init__(self, **tensors: _Tensor) -> None:
        self.tensors = tensors


class _Response:
    def __init__(self, output_tensors=None, error=None) -> None:
        self.outputs, self.error = output_tensors or [], error


def _pb_utils() -> types.ModuleType:
    module = types.ModuleType("triton_python_backend_utils")
    module.Tensor = _Tensor
    module.InferenceResponse = _Response
    module.TritonError = lambda message: message
    module.TritonModelException = RuntimeError
    module.Logger = types.SimpleNamespace(log_warn=lambda message: None)
    module.get_input_tensor_by_name = lambda request, name: request.tensors.get(name)
    return module


@pytest.fixture(scope="module")
def backend(demo_onnx: Path, tmp_path_factory: pytest.TempPathFactory):
    sys.modules["triton_python_backend_utils"] = _pb_utils()
    try:
        spec = importlib.util.spec_from_file_location("ort_acoustic_under_test", ORT_ACOUSTIC)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop("triton_python_backend_utils", None)
    root = tmp_path_factory.mktemp("am")
    copy_artifact(demo_onnx, root / "1" / "model.onnx")  # a model repository version folder
    return module, root


def _model(module, root: Path, **params: str):
    config = {"max_batch_size": 8, "parameters": {k: {"string_value": v} for k, v in params.items()}}
    model = module.TritonPythonModel()
    model.initialize({"model_config": json.dumps(config), "model_repository": str(root), "model_version": "1",
                      "model_instance_kind": "CPU", "model_instance_device_id": "0"})
    return model


def _requests(rows: list[np.ndarray], gpu: bool = False) -> list[_Request]:
    out = []
    for wave in rows:
        values = ((wave - wave.mean()) / np.sqrt(wave.var() + 1e-7)).astype(np.float32)[None]
        out.append(_Request(input_values=_Tensor("input_values", values, gpu),
                            attention_mask=_Tensor("attention_mask", np.ones(values.shape, np.int64), gpu)))
    return out


def _logits(responses: list[_Response]) -> list[np.ndarray]:
    assert all(r.error is None for r in responses), [r.error for r in responses]
    return [r.outputs[0].as_numpy() for r in responses]


def test_device_paths_match_the_plain_session(backend) -> None:
    module, root = backend
    rng = np.random.default_rng(0)
    same = [rng.standard_normal(16000).astype(np.float32) * 0.1 for _ in range(3)]  # one shape: one batch
    other = [rng.standard_normal(24000).astype(np.float32) * 0.1]
    requests = _requests(same + other)
    reference = _logits(_model(module, root).execute(requests))
    assert [x.shape[0] for x in reference] == [1, 1, 1, 1] and reference[0].shape[1] == 49

    bound = _model(module, root)
    bound.on_gpu, bound.device_type, bound.io_binding = True, "cpu", True  # the GPU path on the CPU device
    for got, want in zip(_logits(bound.execute(requests)), reference, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-4)

    graphs = _model(module, root, cuda_graph_max_shapes="1")
    graphs.on_gpu, graphs.device_type, graphs.io_binding, graphs.cuda_graphs = True, "cpu", True, True
    for _ in range(2):  # capture, then replay with new data in the same buffers
        for got, want in zip(_logits(graphs.execute(requests)), reference, strict=True):
            np.testing.assert_allclose(got, want, atol=1e-4)
    assert list(graphs.graphs) == [(4, 16000)]  # 3 rows padded to 4; the 2nd shape exceeded max shapes

    dlpack = _model(module, root)
    dlpack.on_gpu, dlpack.device_type, dlpack.io_binding = True, "cpu", True
    for got, want in zip(_logits(dlpack.execute(_requests(same + other, gpu=True))), reference, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-4)  # inputs bound from DLPack, never through as_numpy


def test_bad_request_fails_alone(backend) -> None:
    module, root = backend
    good = _requests([np.ones(8000, np.float32) * 0.1])
    bad = _Request(attention_mask=_Tensor("attention_mask", np.ones((1, 8000), np.int64)))
    responses = _model(module, root).execute([bad, *good])
    assert "bad input" in str(responses[0].error) and responses[1].error is None
