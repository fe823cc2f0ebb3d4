"""Triton python-backend model code, copied into the model repository as ``<version>/model.py``.

These files run inside Triton's python backend stub, not in this package: they import only numpy,
onnxruntime and ``triton_python_backend_utils`` so they also work in the NGC tritonserver image.
"""

from pathlib import Path

BACKENDS_DIR = Path(__file__).resolve().parent
ORT_ACOUSTIC = BACKENDS_DIR / "ort_acoustic.py"
CTC_PIPELINE = BACKENDS_DIR / "ctc_pipeline.py"
