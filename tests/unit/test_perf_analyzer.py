"""perf_analyzer support without a server: the ``--input-data`` JSON (float32 and int16 PCM), the command line, the
parsing of a CSV and console output perf_analyzer 2.51 wrote against the bundled tritonserver
(``tests/data/perf_analyzer/``), and a clear error when the binary is missing. (A real sweep:
``tests/integration/test_perf_analyzer.py``.)"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from asr_optimize.loadtest import perf_analyzer as pa
from tests.support.assets import TEST_DATA

DATA = TEST_DATA / "perf_analyzer"


def test_float32_input_data_has_exact_lengths_and_round_trips(tmp_path: Path) -> None:
    """One entry per utterance, each ``{"audio": {"content": [...], "shape": [samples]}}`` of exactly N seconds
    (tiled when shorter, cropped when longer), floats that read back as the same float32 and are JSON doubles."""
    rng = np.random.default_rng(0)
    short, long = rng.uniform(-1, 1, 7000).astype(np.float32), rng.uniform(-1, 1, 40000).astype(np.float32)
    short[3] = 0.0  # a zero must still be written as a double (perf_analyzer refuses an integer 0 for FP32)
    path = pa.write_input_data(tmp_path / "in.json", [short, long], 1.5)
    text = path.read_text()
    data = json.loads(text)
    assert list(data) == ["data"] and len(data["data"]) == 2
    for entry, wave in zip(data["data"], [short, long], strict=True):
        assert list(entry) == ["audio"] and set(entry["audio"]) == {"content", "shape"}
        assert entry["audio"]["shape"] == [24000]
        content = np.array(entry["audio"]["content"], dtype=np.float32)
        assert content.size == 24000
        expected = np.tile(wave, 4)[:24000]
        assert np.array_equal(content, expected)
    assert all(isinstance(v, float) for v in data["data"][0]["audio"]["content"][:100])
    assert ",0.0," in text


def test_int16_input_data_rounds_and_clips(tmp_path: Path) -> None:
    """int16: input ``audio_pcm16``, samples round(x * 32767), clipped to the int16 range, JSON integers."""
    wave = np.array([0.0, 0.5, -0.5, 1.0, -1.0, 1.7, -1.7, 1 / 32767 * 0.49, 1 / 32767 * 0.51, -3e-5], np.float32)
    path = pa.write_input_data(tmp_path / "pcm.json", [wave], wave.size / 16000, "int16")
    (entry,) = json.loads(path.read_text())["data"]
    assert list(entry) == ["audio_pcm16"] and entry["audio_pcm16"]["shape"] == [wave.size]
    content = entry["audio_pcm16"]["content"]
    assert all(isinstance(v, int) for v in content)
    assert content == [0, 16384, -16384, 32767, -32767, 32767, -32768, 0, 1, -1]
    assert content == [max(-32768, min(32767, round(float(x) * 32767))) for x in wave]


def test_options_and_command_line(tmp_path: Path) -> None:
    opts = pa.PerfAnalyzerOptions(concurrency=[1, 4], durations_s=[10], measurement_interval_ms=2000,
                                  stability_percentage=15, max_trials=6, input_dtype="int16", model_version="2",
                                  extra_args=["--percentile", "95"])
    cmd = pa.level_command(Path("/bin/pa"), "127.0.0.1:8001", opts, tmp_path / "in.json", 160000, 4,
                           tmp_path / "out.csv")
    line = " ".join(cmd)
    assert cmd[0] == "/bin/pa"
    for part in ("-m asr", "-u 127.0.0.1:8001", "-i grpc", "--concurrency-range 4:4:1", "-b 1",
                 f"--input-data {tmp_path / 'in.json'}", "--shape audio_pcm16:160000", "--measurement-interval 2000",
                 "--stability-percentage 15", "--max-trials 6", f"-f {tmp_path / 'out.csv'}", "--verbose-csv", "-x 2"):
        assert part in line, part
    assert cmd[-2:] == ["--percentile", "95"]
    assert pa.PerfAnalyzerOptions().input_name == "audio" and pa.PerfAnalyzerOptions().protocol == "grpc"
    for bad in ({"concurrency": [0]}, {"concurrency": []}, {"durations_s": [0]}, {"input_dtype": "int8"},
                {"model_name": "../x"}, {"concurrency_range": "1:4"}):
        with pytest.raises(ValidationError):
            pa.PerfAnalyzerOptions(**bad)


def test_parse_a_real_csv(tmp_path: Path) -> None:
    """The CSV and console output of ``perf_analyzer -m asr --concurrency-range 1:2:1 --verbose-csv`` against the
    demo model on the bundled tritonserver: usec become ms, x real time = inferences/s x request length."""
    text = (DATA / "asr-1s-c1-2.csv").read_text()
    rows = pa.parse_csv(text, "asr", 1.0, (DATA / "asr-1s-c1-2.log").read_text())
    assert [r.concurrency for r in rows] == [1, 2]
    first = rows[0]
    assert first.stable and first.reason == "" and first.model == "asr"
    assert first.inferences_per_s == 11.366 and first.x_real_time == 11.366
    assert (first.p50_ms, first.p90_ms, first.p95_ms, first.p99_ms, first.avg_ms) == (87.246, 95.695, 100.723,
                                                                                      113.629, 86.008)
    assert first.server_queue_ms == 0.72 and first.server_compute_infer_ms == 84.118
    assert first.server_compute_ms == round(0.064 + 84.118 + 0.264, 3)
    assert first.client_send_ms == 0.023 and first.network_server_ms == 0.812 and first.client_recv_ms == 0.005
    assert first.requests == 41 and rows[1].requests == 44
    assert all(r.p50_ms <= r.p90_ms <= r.p95_ms <= r.p99_ms for r in rows)
    ten = pa.parse_csv(text, "asr", 10.0)
    assert ten[1].x_real_time == round(12.2104 * 10, 3) and ten[1].requests is None

    result = pa.PerfAnalyzerResult(url="127.0.0.1:8001", version="2.51.0", label="demo", options=pa.PerfAnalyzerOptions(
        concurrency=[1, 2, 4], durations_s=[1]), rows=[*rows, pa.PerfAnalyzerLevel(
            model="asr", duration_s=1, concurrency=4, stable=False, reason="Failed to obtain stable measurement")])
    files = result.write(tmp_path)
    assert files == ["perf_analyzer.csv", "perf_analyzer.md", "perf_analyzer.json"]
    csv_lines = (tmp_path / "perf_analyzer.csv").read_text().splitlines()
    assert len(csv_lines) == 4 and "p95_ms" in csv_lines[0] and "server_queue_ms" in csv_lines[0]
    markdown = (tmp_path / "perf_analyzer.md").read_text()
    assert "| 1 | 2 | 12.2 |" in markdown and "Unstable levels: 1" in markdown and "| n/a |" in markdown
    assert pa.PerfAnalyzerResult.model_validate_json((tmp_path / "perf_analyzer.json").read_text()) == result


def test_unstable_reason_from_real_output() -> None:
    output = (DATA / "unstable.log").read_text()
    reason = pa.unstable_reason(output)
    assert reason is not None and reason.startswith("Failed to obtain stable measurement within 3 measurement windows")
    assert "concurrency 2" in reason
    assert pa.unstable_reason((DATA / "asr-1s-c1-2.log").read_text()) is None
    # perf_analyzer's InferenceProfiler::SummarizeLatency error when no request finished inside a window
    busy = "Request concurrency: 2\nFailed to retrieve results from inference request.\n" \
           "No valid requests recorded within time interval. Please use a larger time window.\n"
    assert pa.unstable_reason(busy) == busy.splitlines()[-1]


def test_missing_binary_says_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(pa.BINARY_ENV, str(tmp_path / "nowhere" / "perf_analyzer"))
    with pytest.raises(pa.PerfAnalyzerError, match=r"not an executable file.*make perf-analyzer"):
        pa.find_perf_analyzer()
    monkeypatch.delenv(pa.BINARY_ENV)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(pa.sys, "executable", str(tmp_path / "bin" / "python"))
    monkeypatch.setattr(pa.sys, "prefix", str(tmp_path))
    with pytest.raises(pa.PerfAnalyzerError, match=r"perf_analyzer not found.*`make perf-analyzer`"):
        pa.find_perf_analyzer()
    (tmp_path / "bin").mkdir()
    binary = tmp_path / "bin" / "perf_analyzer"
    binary.write_text("#!/bin/sh\necho 'error while loading shared libraries: libb64.so.0d: cannot open shared "
                      "object file: No such file or directory' >&2\nexit 127\n")
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    assert pa.find_perf_analyzer() == binary  # the venv's bin folder, when not on PATH
    with pytest.raises(pa.PerfAnalyzerError, match=r"libb64\.so\.0d is missing \(apt-get install libb64-0d"):
        pa.perf_analyzer_version(binary)


def test_library_path_gets_the_pip_cuda_runtime(tmp_path: Path) -> None:
    """The CUDA runtime folder of the venv a binary sits in is appended to LD_LIBRARY_PATH, after what was there."""
    lib = tmp_path / "venv" / "lib" / "python3.11" / "site-packages" / "nvidia" / "cuda_runtime" / "lib"
    lib.mkdir(parents=True)
    (lib / "libcudart.so.12").write_bytes(b"")
    (tmp_path / "venv" / "bin").mkdir()
    env = pa.perf_analyzer_env(tmp_path / "venv" / "bin" / "perf_analyzer")
    parts = env["LD_LIBRARY_PATH"].split(os.pathsep)
    assert str(lib) in parts
    existing = [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
    assert parts[: len(existing)] == existing
