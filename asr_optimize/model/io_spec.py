"""The model's input/output contract, written once (in the spirit of optimum's ``OnnxConfig``).

Export, the ONNX Runtime, TensorRT and Triton runners and the Triton repository read tensor names, axes and the
sample rate from here. The Triton python-backend models (``asr_optimize/triton/backends``) run inside the server
without this package and spell the same names out.
"""

from __future__ import annotations

from pydantic import BaseModel

SAMPLE_RATE = 16_000
"""wav2vec2 models are trained on 16 kHz mono audio; everything is resampled to this."""


class ModelIOSpec(BaseModel, frozen=True):
    """Tensor names, dynamic axes, opset and tolerances of an exported wav2vec2 CTC graph."""

    audio_input: str = "input_values"  # float32 [batch, samples], normalized per utterance
    mask_input: str = "attention_mask"  # int64 [batch, samples], 1 = real sample
    output: str = "logits"  # float32 [batch, frames, vocab]
    sample_rate: int = SAMPLE_RATE
    opset: int = 17  # >= 17 keeps LayerNormalization as one node
    fp32_atol: float = 1e-3  # max |logit diff| an fp32 export may differ from PyTorch by
    fp16_atol: float = 0.5  # fp16 logits differ by rounding; the gate judges transcripts

    def input_names(self, with_mask: bool = True) -> list[str]:
        return [self.audio_input, self.mask_input] if with_mask else [self.audio_input]

    def dynamic_axes(self, with_mask: bool = True) -> dict[str, dict[int, str]]:
        axes = {name: {0: "batch", 1: "samples"} for name in self.input_names(with_mask)}
        axes[self.output] = {0: "batch", 1: "frames"}
        return axes


WAV2VEC2_CTC = ModelIOSpec()
ONNX_NAME = "model.onnx"
PROTOBUF_LIMIT = 1_900_000_000
"""Above this many bytes an ONNX model is saved with external data (protobuf's hard limit is 2 GiB)."""
