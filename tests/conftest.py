"""Shared fixtures and the one capability marker.

Fixtures: every default folder under pytest's tmp dir; a tiny random-weight Wav2Vec2ForCTC with the real Hindi
vocabulary (made at test time); ONNX exports of it and of the bundled demo model; a fused engine of the demo model.

``@pytest.mark.requires("name", ...)``: the test runs only where every named requirement is met, else it is skipped
with ``needs <name>: <reason>``. The names and their probes are in ``tests/support/capabilities.py`` (``cuda``,
``tensorrt``, ``tritonserver``, ``espeak-ng``, ``non-root``, ...); an unknown name is a usage error.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

from tests.support import capabilities
from tests.support.assets import DEMO_MODEL, TINY_OVERRIDES, VOCAB_DIR

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Prefect's home (its SQLite database, profiles) under a temporary folder, and no outside API: tests write only to
# temporary folders. Set before anything imports prefect, which reads its settings once.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="asr-optimize-tests-prefect-")
os.environ.pop("PREFECT_API_URL", None)


# ---------------------------------------------------------------------------------------- the requires marker


@pytest.hookimpl(trylast=True)  # after -m / -k deselection: only the selected tests' requirements are probed
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        needs: list[str] = []
        for mark in item.iter_markers("requires"):
            unknown = [name for name in mark.args if name not in capabilities.PROBES]
            if not mark.args or unknown or mark.kwargs:
                raise pytest.UsageError(f"{item.nodeid}: requires() takes names out of {sorted(capabilities.PROBES)}, "
                                        f"got {mark.args!r} {mark.kwargs or ''}")
            needs += mark.args
        for name in dict.fromkeys(needs):
            if (reason := capabilities.missing(name)) is not None:
                item.add_marker(pytest.mark.skip(reason=f"needs {name}: {reason}"))
                break


# ---------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session", autouse=True)
def defaults_in_tmp(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Every default folder (store, reports, Triton repository) under pytest's tmp dir, for this process and the
    CLI subprocesses the tests start: a test run never writes into the working tree."""
    from asr_optimize.settings import get_settings

    root = tmp_path_factory.mktemp("defaults")
    for name in ("store", "reports_dir", "triton_repository"):
        os.environ[f"ASR_OPTIMIZE_{name.upper()}"] = str(root / name)
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer random model with the IndicWav2Vec config conventions and vocabulary (never committed)."""
    from asr_optimize.model.source import init_random_model

    out = tmp_path_factory.mktemp("tiny-model")
    return init_random_model(VOCAB_DIR, out, seed=0, overrides=TINY_OVERRIDES)


@pytest.fixture()
def waves() -> list[np.ndarray]:
    from asr_optimize.audio.load import synthetic_audio

    return synthetic_audio(2, 1.0, seed=1) + synthetic_audio(1, 1.7, seed=2)


@pytest.fixture(scope="session")
def tiny_onnx(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model exported to ONNX (``model.onnx``, parity-checked against PyTorch). Read-only for tests."""
    from asr_optimize.audio.load import synthetic_audio
    from tasks.export import ExportOptions, export_onnx

    out = tmp_path_factory.mktemp("tiny-export")
    export_onnx(tiny_model, out, ExportOptions(), synthetic_audio(2, 1.0))
    return out / "model.onnx"


@pytest.fixture(scope="session")
def group_norm_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random wav2vec2-base-style model (group norm, post-LN, no mask): padding changes its output."""
    from tests.support.tiny_models import group_norm_model

    return group_norm_model(tmp_path_factory.mktemp("group-norm-model"))


@pytest.fixture(scope="session")
def group_norm_onnx(group_norm_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``group_norm_model`` exported to ONNX (its input policy: no attention mask). Read-only."""
    from tests.support.triton_server import export

    return export(group_norm_model, tmp_path_factory.mktemp("group-norm-export"))


@pytest.fixture(scope="session")
def conformer_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Wav2Vec2-Conformer CTC model: its convolution module reads across padding."""
    from tests.support.tiny_models import conformer_model

    return conformer_model(tmp_path_factory.mktemp("conformer-model"))


@pytest.fixture(scope="session")
def conformer_onnx(conformer_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``conformer_model`` exported to ONNX. Read-only."""
    from tests.support.triton_server import export

    return export(conformer_model, tmp_path_factory.mktemp("conformer-export"))


@pytest.fixture(scope="session")
def demo_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled demo model exported to ONNX (~10 s). Read-only: copy it where a test needs its own file."""
    from tests.support.triton_server import export

    return export(DEMO_MODEL, tmp_path_factory.mktemp("demo-export"))


@pytest.fixture(scope="session")
def demo_fused_engine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fused engine folder (fp16 by default, runnable in fp32 on the CPU) of the demo model. Read-only."""
    from asr_optimize.runners.fused_engine import FusedEngineOptions, build_fused_engine

    out = tmp_path_factory.mktemp("fused") / "demo-engine"
    build_fused_engine(DEMO_MODEL, out, FusedEngineOptions(precision="fp16"))
    return out
