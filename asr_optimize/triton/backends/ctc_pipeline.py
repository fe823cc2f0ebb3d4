"""Triton python-backend (BLS) model ``asr``: 16 kHz float audio in, Hindi text out.

Normalizes each utterance (as the wav2vec2 feature extractor does), calls the acoustic model version named
in the config parameter ``acoustic_version`` (a request parameter ``acoustic_version`` overrides it: the
canary uses that), then CTC greedy decoding with the vocabulary in ``ctc.json``. Inputs: ``audio`` FP32
[batch, samples], optional ``audio_length`` INT64 [batch, 1] for right-padded batches. Output: ``text`` BYTES
[batch, 1], UTF-8. Same arithmetic as ``asr_optimize.audio.make_batch`` and ``asr_optimize.ctc.greedy_decode``.
"""

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

MIN_SAMPLES = 400
SPECIAL_TOKENS = {"<s>", "</s>", "<unk>", "<pad>"}


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        self.acoustic = params["acoustic_model"]
        self.version = int(params["acoustic_version"])
        self.with_mask = params.get("acoustic_has_mask", "true") == "true"
        ctc = json.loads((Path(args["model_repository"]) / args["model_version"] / "ctc.json").read_text("utf-8"))
        self.tokens = ctc["tokens"]
        self.blank_id = int(ctc["blank_id"])
        self.delimiter = ctc.get("word_delimiter", "|")
        self.kernels = ctc["conv_kernel"]
        self.strides = ctc["conv_stride"]
        self.normalize = bool(ctc.get("do_normalize", True))

    def _frames(self, lengths):
        out = np.asarray(lengths, dtype=np.int64)
        for kernel, stride in zip(self.kernels, self.strides, strict=True):
            out = (out - kernel) // stride + 1
        return np.maximum(out, 0)

    def _decode(self, logits, frames):
        texts = []
        for row, length in zip(logits.argmax(axis=-1), frames, strict=True):
            path = row[: int(length)]
            if path.size:
                path = path[np.concatenate(([True], path[1:] != path[:-1]))]
            pieces = [self.tokens[i] for i in path if i != self.blank_id]
            text = "".join(" " if t == self.delimiter else t for t in pieces if t not in SPECIAL_TOKENS)
            texts.append(" ".join(text.split()))
        return texts

    def _transcribe(self, request):
        audio = pb_utils.get_input_tensor_by_name(request, "audio").as_numpy().astype(np.float32, copy=False)
        if audio.ndim != 2:
            raise ValueError(f"audio must be [batch, samples], got shape {audio.shape}")
        length_tensor = pb_utils.get_input_tensor_by_name(request, "audio_length")
        lengths = (
            np.full(audio.shape[0], audio.shape[1], dtype=np.int64)
            if length_tensor is None
            else length_tensor.as_numpy().reshape(-1).astype(np.int64)
        )
        if lengths.size != audio.shape[0] or (lengths > audio.shape[1]).any():
            raise ValueError(f"audio_length {lengths.tolist()} does not fit audio of shape {audio.shape}")
        if (lengths < MIN_SAMPLES).any():
            raise ValueError(f"utterances need at least {MIN_SAMPLES} samples (25 ms), got {lengths.tolist()}")
        values = np.zeros(audio.shape, dtype=np.float32)
        mask = np.zeros(audio.shape, dtype=np.int64)
        for i, n in enumerate(lengths):
            wave = audio[i, :n]
            if not np.isfinite(wave).all():
                raise ValueError(f"utterance {i} contains NaN or infinite samples")
            if self.normalize:
                wave = (wave - wave.mean()) / np.sqrt(wave.var() + 1e-7)
            values[i, :n] = wave
            mask[i, :n] = 1
        version = self.version
        raw = request.parameters()
        if raw:
            version = int(json.loads(raw).get("acoustic_version", version))
        inputs = [pb_utils.Tensor("input_values", values)]
        if self.with_mask:
            inputs.append(pb_utils.Tensor("attention_mask", mask))
        response = pb_utils.InferenceRequest(
            model_name=self.acoustic, model_version=version, requested_output_names=["logits"], inputs=inputs
        ).exec()
        if response.has_error():
            raise RuntimeError(f"{self.acoustic} version {version}: {response.error().message()}")
        logits = pb_utils.get_output_tensor_by_name(response, "logits").as_numpy()
        texts = self._decode(logits, self._frames(lengths))
        return np.array([[t.encode("utf-8")] for t in texts], dtype=np.object_)

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                text = self._transcribe(request)
                responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("text", text)]))
            except Exception as exc:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))))
        return responses
