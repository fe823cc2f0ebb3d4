"""Helpers for tests against the real bundled tritonserver: ONNX artifacts, canary sets, a concurrent client.

Tests that start the server are marked ``@pytest.mark.requires("tritonserver")`` (see ``tests/conftest.py``)."""

from __future__ import annotations

import shutil
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np


def export(model_dir: Path, out_dir: Path) -> Path:
    """ONNX export (with parity check against PyTorch) of a model folder; returns the .onnx path."""
    from asr_optimize.audio.load import synthetic_audio
    from tasks.export import ONNX_NAME, ExportOptions, export_onnx

    out_dir.mkdir(parents=True, exist_ok=True)
    export_onnx(model_dir, out_dir, ExportOptions(), synthetic_audio(2, 1.0, seed=3))
    return out_dir / ONNX_NAME


def corrupt_weights(onnx_path: Path, out: Path) -> Path:
    """A graph that parses but whose largest weight has the wrong byte length: ONNX Runtime refuses it."""
    import onnx

    model = onnx.load(str(onnx_path))
    biggest = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    biggest.raw_data = biggest.raw_data[: len(biggest.raw_data) // 2]
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out))
    return out


def copy_artifact(src: Path, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, out)
    return out


class ClientLoop:
    """Sends ``asr`` requests back to back from a thread and records every outcome."""

    def __init__(self, url: str, pipeline: str, wave: np.ndarray) -> None:
        self.url, self.pipeline, self.wave = url, pipeline, wave
        self.texts: list[str] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from asr_optimize.triton.endpoint import http_client
        from asr_optimize.triton.hotswap import pipeline_transcribe

        client = http_client(self.url, 30)
        while not self._stop.is_set():
            try:
                self.texts.extend(pipeline_transcribe(client, self.pipeline, [self.wave]))
            except Exception as exc:
                self.errors.append(f"{type(exc).__name__}: {exc}")

    def __enter__(self) -> ClientLoop:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self.texts and not self.errors and time.monotonic() < deadline:
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.3)  # a few requests after the swap finished
        self._stop.set()
        self._thread.join(timeout=30)

    @property
    def outcomes(self) -> Counter[str]:
        return Counter(self.texts)


def demo_canary(model_dir: Path, n: int = 6):
    """The first ``n`` demo test utterances with PyTorch fp32 reference transcripts."""
    from asr_optimize.quality.eval_sets import EvalSource, load_eval_set
    from asr_optimize.runners.torch_runner import TorchRunner
    from asr_optimize.transcribe import transcribe
    from asr_optimize.triton.hotswap import CanarySet

    utts = load_eval_set(EvalSource(max_samples=n)).utterances
    waves = [u.audio for u in utts]
    reference, _ = transcribe(TorchRunner(model_dir), waves, model_dir)
    return CanarySet([u.id for u in utts], waves, reference, [u.text for u in utts])


def wait_until(predicate, timeout_s: float = 20.0, step_s: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step_s)
    return bool(predicate())


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
