"""Triton python-backend model code, copied into the model repository as ``<version>/model.py``.

These files run inside Triton's python backend stub, not in this package: ``ort_acoustic.py`` and
``ctc_pipeline.py`` import only numpy, onnxruntime and ``triton_python_backend_utils`` so they also work in the NGC
tritonserver image; ``fused_acoustic.py`` also imports torch and the installed ``asr_optimize`` (the fused engine
is this package's code), which the stub's environment must provide.
"""

from pathlib import Path

BACKENDS_DIR = Path(__file__).resolve().parent
ORT_ACOUSTIC = BACKENDS_DIR / "ort_acoustic.py"
FUSED_ACOUSTIC = BACKENDS_DIR / "fused_acoustic.py"
CTC_PIPELINE = BACKENDS_DIR / "ctc_pipeline.py"
