"""Triton runner (tritonclient HTTP): the acoustic model as served, for benchmarks, WER and parity.

Batches larger than the model's ``max_batch_size`` are split into several requests and concatenated.
Pin ``version`` to measure a specific deployed version (unversioned requests go to the highest loaded one).
It uses only APIs the bundled server leaves open (metadata, config, inference): no restricted-API key needed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from asr_optimize import defaults
from asr_optimize.model.io_spec import WAV2VEC2_CTC as IO
from asr_optimize.runners.base import Runner, RunnerUnavailable
from asr_optimize.triton.endpoint import http_client


class TritonRunner(Runner):
    """Sends padded batches to ``model_name`` on a Triton server and returns its ``logits``."""

    backend = "triton"

    def __init__(
        self, url: str, model_name: str = defaults.TRITON_MODEL_NAME, version: int | str | None = None,
        timeout_s: float = 60.0,
        device: str = "server", precision: str = "fp32",
    ) -> None:
        try:
            import tritonclient.http as httpclient
        except ImportError as exc:
            raise RunnerUnavailable("tritonclient is not installed (pip install 'tritonclient[http]')") from exc
        self.http = httpclient
        self.url = url.removeprefix("http://")
        self.model_name = model_name
        self.version = "" if version is None else str(version)
        self.device, self.precision = device, precision
        self.client = http_client(self.url, timeout_s)
        try:
            metadata = self.client.get_model_metadata(model_name, self.version)
            config = self.client.get_model_config(model_name, self.version)
        except Exception as exc:
            raise RunnerUnavailable(f"Triton at {self.url} has no ready model {model_name!r} "
                                    f"(version {self.version or 'default'}): {exc}") from exc
        self.input_names = [t["name"] for t in metadata["inputs"]]
        self.uses_attention_mask = IO.mask_input in self.input_names
        self.max_batch_size = int(config.get("max_batch_size", 0)) or 1

    def prepare(self, input_values: np.ndarray, attention_mask: np.ndarray | None) -> Any:
        values = np.ascontiguousarray(input_values, dtype=np.float32)
        if self.uses_attention_mask and attention_mask is None:
            attention_mask = np.ones(values.shape, dtype=np.int64)
        requests = []
        for start in range(0, values.shape[0], self.max_batch_size):
            feeds = {IO.audio_input: values[start : start + self.max_batch_size]}
            if self.uses_attention_mask:
                assert attention_mask is not None
                feeds[IO.mask_input] = np.ascontiguousarray(attention_mask[start : start + self.max_batch_size],
                                                               dtype=np.int64)
            inputs = []
            for name, array in feeds.items():
                tensor = self.http.InferInput(name, list(array.shape), "FP32" if array.dtype == np.float32 else "INT64")
                tensor.set_data_from_numpy(array)
                inputs.append(tensor)
            requests.append(inputs)
        return requests

    def run_prepared(self, prepared: Any) -> Any:
        outputs = [self.http.InferRequestedOutput(IO.output)]
        return [self.client.infer(self.model_name, inputs, model_version=self.version, outputs=outputs)
                for inputs in prepared]

    def to_numpy(self, output: Any) -> np.ndarray:
        return np.concatenate([r.as_numpy(IO.output) for r in output]).astype(np.float32, copy=False)

    def close(self) -> None:
        self.client.close()
