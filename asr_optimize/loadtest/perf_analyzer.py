"""Triton's own load generator, ``perf_analyzer``, run against a served model with real speech of fixed lengths.

``serve-bench`` (``loadgen.py``) is the project's load generator; ``perf_analyzer`` is the one Triton's users know,
so running both on the same endpoint cross-checks the numbers. This module finds the binary (``make perf-analyzer``
installs the 2.51 build of the bundled tritonserver's release into the venv), writes its ``--input-data`` JSON from
the demo test set (every request exactly ``duration`` seconds), runs one perf_analyzer process per (request length,
concurrency) in concurrency mode, and reads its CSV into a ``PerfAnalyzerResult``: inferences/s, x real time,
p50/p90/p95/p99 and average client latency, and Triton's server-side split (queue, compute input / infer / output)
that perf_analyzer reads from the statistics API. A level that never reaches a stable measurement is recorded as
unstable, with perf_analyzer's reason, and the sweep goes on.

``asr-optimize perf-analyzer --url 127.0.0.1:8001 --model asr --concurrency 1,4,16,64 --durations 1,10 --out DIR``

The binary needs ``libcudart.so.12`` (pip ``nvidia-cuda-runtime-cu12``: its folder is put on ``LD_LIBRARY_PATH``
for the run) and ``libb64.so.0d`` (apt ``libb64-0d``), also on hosts without a GPU.
"""

from __future__ import annotations

import csv
import glob
import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from asr_optimize import defaults
from asr_optimize.errors import AsrOptimizeError
from asr_optimize.loadtest.charts import markdown_table, write_tables
from asr_optimize.loadtest.loadgen import demo_audio, fit_duration, pcm16
from asr_optimize.model.io_spec import SAMPLE_RATE
from asr_optimize.options import Options
from asr_optimize.triton.names import TritonModelName

BINARY_ENV = "ASR_OPTIMIZE_PERF_ANALYZER"
"""Path of the perf_analyzer binary to run; unset: ``perf_analyzer`` on PATH, then the venv's bin folder."""
BINARY_NAME = "perf_analyzer"
INSTALL_HINT = ("install it with `make perf-analyzer` (Triton's perf_analyzer 2.51, from the tritonclient 2.51.0 "
                f"wheel, into the venv), or set {BINARY_ENV} to a perf_analyzer binary")
INPUT_NAMES = {"float32": ("audio", "FP32"), "int16": ("audio_pcm16", "INT16")}
"""The ``asr`` pipeline's input per ``input_dtype``: float samples in [-1, 1], or 16-bit PCM (round(x * 32767))."""

InputDtype = Literal["float32", "int16"]
Level = Annotated[int, Field(ge=1)]
Seconds = Annotated[float, Field(gt=0)]


class PerfAnalyzerError(AsrOptimizeError):
    """perf_analyzer is missing, cannot start, or failed for a reason other than an unstable measurement."""


def _numbers(text: str, kind: type = int) -> list[Any]:
    return [kind(v) for v in text.split(",") if v.strip()]


class PerfAnalyzerOptions(Options):
    """One perf_analyzer sweep: every concurrency level at every request length, batch size 1."""

    model_name: TritonModelName = defaults.TRITON_PIPELINE_NAME
    """The model perf_analyzer calls (``asr``: audio in, text out)."""
    model_version: str = ""
    """'' = Triton's default (the highest loaded version)."""
    protocol: Literal["grpc", "http"] = "grpc"
    concurrency: list[Level] = Field(default_factory=lambda: _numbers(defaults.PERF_CONCURRENCY), min_length=1)
    """Requests kept in flight; one perf_analyzer run per level."""
    durations_s: list[Seconds] = Field(default_factory=lambda: _numbers(defaults.PERF_DURATIONS, float), min_length=1)
    """Request lengths: every utterance is tiled or cropped to exactly this many seconds."""
    measurement_interval_ms: int = Field(defaults.PERF_MEASUREMENT_INTERVAL_MS, ge=10)
    stability_percentage: float = Field(defaults.PERF_STABILITY_PERCENTAGE, gt=0)
    max_trials: int = Field(defaults.PERF_MAX_TRIALS, ge=1)
    input_dtype: InputDtype = "float32"
    """float32: input ``audio`` (FP32); int16: input ``audio_pcm16`` (INT16, samples round(x * 32767))."""
    utterances: int = Field(defaults.PERF_UTTERANCES, ge=1)
    """Demo test-set utterances in the input data (perf_analyzer sends them round-robin)."""
    level_timeout_s: float = Field(defaults.PERF_LEVEL_TIMEOUT_S, gt=0)
    extra_args: list[str] = Field(default_factory=list)
    """More perf_analyzer arguments, appended as given."""
    label: str = ""

    @property
    def input_name(self) -> str:
        return INPUT_NAMES[self.input_dtype][0]


class PerfAnalyzerLevel(BaseModel):
    """One (request length, concurrency) run of perf_analyzer. Times in ms; None where it was not measured."""

    model: str
    duration_s: float
    concurrency: int
    stable: bool
    reason: str = ""
    """Why the level has no numbers (unstable measurement, timeout); '' when stable."""
    requests: int | None = None
    """Requests perf_analyzer counted in the windows it reports (its "Request count")."""
    inferences_per_s: float | None = None
    x_real_time: float | None = None
    """Seconds of audio served per second: inferences/s x request length (batch size 1)."""
    p50_ms: float | None = None
    p90_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    avg_ms: float | None = None
    client_send_ms: float | None = None
    network_server_ms: float | None = None
    """perf_analyzer's "Network+Server Send/Recv": the client's time minus send, receive and Triton's own time."""
    server_queue_ms: float | None = None
    server_compute_input_ms: float | None = None
    server_compute_infer_ms: float | None = None
    server_compute_output_ms: float | None = None
    server_compute_ms: float | None = None
    """compute input + infer + output."""
    client_recv_ms: float | None = None


class PerfAnalyzerResult(BaseModel):
    url: str
    binary: str = ""
    version: str = ""
    label: str = ""
    device: str = ""
    started: float = Field(default_factory=time.time)
    options: PerfAnalyzerOptions
    rows: list[PerfAnalyzerLevel] = Field(default_factory=list)

    @property
    def unstable(self) -> list[PerfAnalyzerLevel]:
        return [r for r in self.rows if not r.stable]

    def table_rows(self) -> list[dict[str, Any]]:
        return [{"label": self.label, "device": self.device, "input_dtype": self.options.input_dtype,
                 "protocol": self.options.protocol, **r.model_dump()} for r in self.rows]

    def markdown(self) -> str:
        opts = self.options
        title = f"## Triton perf_analyzer{': ' + self.label if self.label else ''}"
        notes = [f"perf_analyzer {self.version or '(version unknown)'} against `{opts.model_name}` at `{self.url}` "
                 f"({opts.protocol}" + (f", {self.device}" if self.device else "") + f"); concurrency mode, batch "
                 f"size 1, `{opts.input_name}` {INPUT_NAMES[opts.input_dtype][1]} from the demo test set; windows of "
                 f"{opts.measurement_interval_ms} ms until 3 agree within {opts.stability_percentage:g} % (at most "
                 f"{opts.max_trials})."]
        if self.unstable:
            notes.append(f"**Unstable levels: {len(self.unstable)}** (no numbers: " + "; ".join(
                f"{r.duration_s:g} s x {r.concurrency}: {r.reason}" for r in self.unstable) + ").")
        columns = [("duration_s", "audio s"), ("concurrency", "conc."), ("inferences_per_s", "infer/s"),
                   ("x_real_time", "x real time"), ("p50_ms", "p50 ms"), ("p90_ms", "p90 ms"), ("p95_ms", "p95 ms"),
                   ("p99_ms", "p99 ms"), ("server_queue_ms", "queue ms"), ("server_compute_ms", "compute ms"),
                   ("requests", "requests"), ("stable", "stable")]
        return "\n\n".join([title, " ".join(notes), markdown_table([r.model_dump() for r in self.rows], columns)])

    def write(self, out_dir: Path, name: str = "perf_analyzer") -> list[str]:
        """CSV, markdown and JSON under ``out_dir``; returns the file names."""
        return write_tables(out_dir, name, self.table_rows(), self.markdown(), self.model_dump_json(indent=1))


# ---------------------------------------------------------------- the binary


def find_perf_analyzer() -> Path:
    """The perf_analyzer binary: ``$ASR_OPTIMIZE_PERF_ANALYZER``, else on PATH, else in this venv's bin folder.

    Raises ``PerfAnalyzerError`` saying how to install it when none is found."""
    given = os.environ.get(BINARY_ENV, "").strip()
    if given:
        path = Path(given).expanduser()
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise PerfAnalyzerError(f"{BINARY_ENV}={given} is not an executable file: {INSTALL_HINT}")
        return path
    on_path = shutil.which(BINARY_NAME)
    if on_path:
        return Path(on_path)
    for folder in dict.fromkeys([Path(sys.executable).parent, Path(sys.prefix) / "bin"]):
        candidate = folder / BINARY_NAME
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise PerfAnalyzerError(f"perf_analyzer not found ({BINARY_ENV} unset, not on PATH, not in "
                            f"{Path(sys.prefix) / 'bin'}): {INSTALL_HINT}")


def _cudart_dirs(binary: Path) -> list[str]:
    """Folders holding ``libcudart.so.12`` from pip's ``nvidia-cuda-runtime-cu12``: this interpreter's, and the one
    of the venv the binary sits in."""
    found: list[str] = []
    try:
        spec = importlib.util.find_spec("nvidia.cuda_runtime")
    except (ImportError, ValueError):
        spec = None
    for root in (spec.submodule_search_locations or []) if spec else []:
        found.append(str(Path(root) / "lib"))
    venv = binary.resolve().parent.parent
    found += sorted(glob.glob(str(venv / "lib" / "python3*" / "site-packages" / "nvidia" / "cuda_runtime" / "lib")))
    return [d for d in dict.fromkeys(found) if (Path(d) / "libcudart.so.12").exists()]


def perf_analyzer_env(binary: Path) -> dict[str, str]:
    """This process's environment with the pip CUDA runtime's folder appended to ``LD_LIBRARY_PATH``."""
    env = dict(os.environ)
    parts = [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
    parts += [d for d in _cudart_dirs(binary) if d not in parts]
    if parts:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(parts)
    return env


def _cannot_start(binary: Path, output: str) -> PerfAnalyzerError:
    missing = re.search(r"(lib[\w.+-]+\.so[\w.]*): cannot open shared object file", output)
    fix = {"libcudart.so.12": "pip install nvidia-cuda-runtime-cu12 into this environment",
           "libb64.so.0d": "apt-get install libb64-0d"}
    if missing:
        lib = missing.group(1)
        return PerfAnalyzerError(f"{binary} cannot start: {lib} is missing ({fix.get(lib, 'install it')}; "
                                 "`make perf-analyzer` installs the pip part)")
    last = output.strip().splitlines()[-1] if output.strip() else "no output"
    return PerfAnalyzerError(f"{binary} cannot start: {last}")


def perf_analyzer_version(binary: Path | None = None) -> str:
    """The version ``perf_analyzer --version`` prints (e.g. ``2.51.0``)."""
    binary = binary or find_perf_analyzer()
    try:
        done = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=60,
                              env=perf_analyzer_env(binary), check=False)
    except OSError as exc:
        raise PerfAnalyzerError(f"{binary} cannot start: {exc}") from None
    output = done.stdout + done.stderr
    match = re.search(r"Perf Analyzer Version (\S+)", output)
    if done.returncode != 0 or not match:
        raise _cannot_start(binary, output)
    return match.group(1)


# ---------------------------------------------------------------- input data


def input_tensors(waves: Sequence[np.ndarray], seconds: float, input_dtype: InputDtype = "float32") -> list[np.ndarray]:
    """Each utterance tiled or cropped to exactly ``seconds``; as float32, or as int16 PCM (round(x * 32767),
    clipped to the int16 range)."""
    clips = [fit_duration(w, seconds) for w in waves]
    if input_dtype == "float32":
        return clips
    return [pcm16(c) for c in clips]


def _json_float(value: float) -> str:
    """9 significant digits (enough to round-trip a float32), always with a fraction or an exponent: perf_analyzer
    reads an FP32 input only from JSON numbers that parse as doubles (``0`` is refused, ``0.0`` is not)."""
    text = f"{value:.9g}"
    return text if "." in text or "e" in text or "n" in text else text + ".0"


def write_input_data(path: Path, waves: Sequence[np.ndarray], seconds: float,
                     input_dtype: InputDtype = "float32") -> Path:
    """perf_analyzer's ``--input-data`` JSON: ``{"data": [{"<input>": {"content": [...], "shape": [samples]}}, ...]}``,
    one entry per utterance (sent round-robin), each request exactly ``seconds`` long (batch size 1: the shape has no
    batch dimension)."""
    if not waves:
        raise ValueError("perf_analyzer input data needs at least one utterance")
    name = INPUT_NAMES[input_dtype][0]
    fmt = _json_float if input_dtype == "float32" else str
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        fh.write('{"data": [')
        for i, tensor in enumerate(input_tensors(waves, seconds, input_dtype)):
            fh.write(("," if i else "") + f'\n{{{json.dumps(name)}: {{"content": [')
            fh.write(",".join(map(fmt, tensor.tolist())))
            fh.write(f'], "shape": [{tensor.size}]}}}}')
        fh.write("\n]}\n")
    return path


# ---------------------------------------------------------------- output


CSV_COLUMNS = {
    "Inferences/Second": "inferences_per_s", "Client Send": "client_send_ms",
    "Network+Server Send/Recv": "network_server_ms", "Server Queue": "server_queue_ms",
    "Server Compute Input": "server_compute_input_ms", "Server Compute Infer": "server_compute_infer_ms",
    "Server Compute Output": "server_compute_output_ms", "Client Recv": "client_recv_ms", "p50 latency": "p50_ms",
    "p90 latency": "p90_ms", "p95 latency": "p95_ms", "p99 latency": "p99_ms", "Avg latency": "avg_ms",
}
"""perf_analyzer's CSV header (``-f``, ``--verbose-csv``) -> ``PerfAnalyzerLevel`` field; times there are in usec."""


def parse_csv(text: str, model: str, duration_s: float, stdout: str = "") -> list[PerfAnalyzerLevel]:
    """``PerfAnalyzerLevel`` rows from a perf_analyzer ``-f`` CSV (one row per concurrency level it measured).

    ``stdout``: perf_analyzer's console output, for the request count of each level (not in the CSV)."""
    lines = []
    for line in text.splitlines():  # --collect-metrics appends other tables after a blank line
        if not line.strip():
            if lines:
                break
            continue
        lines.append(line)
    counts = {int(c): int(n) for c, n in re.findall(r"Request concurrency: (\d+)\s+Client:\s+Request count: (\d+)",
                                                    stdout)}
    rows = []
    for record in csv.DictReader(io.StringIO("\n".join(lines))):
        if "Concurrency" not in record:
            raise PerfAnalyzerError(f"perf_analyzer CSV without a Concurrency column: {list(record)}")
        concurrency = int(record["Concurrency"])
        row = PerfAnalyzerLevel(model=model, duration_s=duration_s, concurrency=concurrency, stable=True,
                                requests=counts.get(concurrency))
        for column, field in CSV_COLUMNS.items():
            raw = (record.get(column) or "").strip()
            if not raw:
                continue
            value = float(raw)
            if field == "inferences_per_s":
                row.x_real_time = round(value * duration_s, 3)
            setattr(row, field, round(value if field == "inferences_per_s" else value / 1000, 3))
        parts = [row.server_compute_input_ms, row.server_compute_infer_ms, row.server_compute_output_ms]
        if all(p is not None for p in parts):
            row.server_compute_ms = round(sum(parts), 3)  # type: ignore[arg-type]
        rows.append(row)
    return rows


UNSTABLE_MARKS = ("Failed to obtain stable measurement", "No valid requests recorded")
"""perf_analyzer's words for a level it could not measure: no 3 agreeing windows, or a window in which no request
finished (requests longer than ``--measurement-interval`` on a busy host)."""


def unstable_reason(output: str) -> str | None:
    """perf_analyzer's own words when it gave up on measuring a level (``UNSTABLE_MARKS``), else None."""
    lines = [line.strip() for line in output.splitlines() if any(mark in line for mark in UNSTABLE_MARKS)]
    if not lines:
        return None
    return max(lines, key=len)  # "... within N measurement windows for concurrency C. Please try to increase ..."


def _error_line(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines or ["no output"])[-1][:500]


# ---------------------------------------------------------------- the sweep


def _address(url: str, protocol: str) -> str:
    from asr_optimize.triton.endpoint import grpc_address, parse_address, resolve

    if protocol == "grpc":
        return grpc_address(url)
    return resolve(url, "http").http or parse_address(url, "http")


def level_command(binary: Path, address: str, opts: PerfAnalyzerOptions, input_json: Path, samples: int,
                  concurrency: int, csv_path: Path) -> list[str]:
    """The perf_analyzer command line of one (request length, concurrency) level."""
    cmd = [str(binary), "-m", opts.model_name, "-u", address, "-i", opts.protocol,
           "--concurrency-range", f"{concurrency}:{concurrency}:1", "-b", "1",
           "--input-data", str(input_json), "--shape", f"{opts.input_name}:{samples}",
           "--measurement-interval", str(opts.measurement_interval_ms),
           "--stability-percentage", f"{opts.stability_percentage:g}", "--max-trials", str(opts.max_trials),
           "-f", str(csv_path), "--verbose-csv"]
    if opts.model_version:
        cmd += ["-x", opts.model_version]
    return cmd + list(opts.extra_args)


def run_level(binary: Path, address: str, opts: PerfAnalyzerOptions, input_json: Path, duration_s: float,
              concurrency: int, raw_dir: Path) -> PerfAnalyzerLevel:
    """One perf_analyzer run; its CSV and console output are kept in ``raw_dir``. An unstable measurement or a
    timeout gives an unstable row; any other failure raises ``PerfAnalyzerError``."""
    stem = f"{duration_s:g}s-c{concurrency}"
    csv_path, log_path = raw_dir / f"{stem}.csv", raw_dir / f"{stem}.log"
    csv_path.unlink(missing_ok=True)
    samples = round(duration_s * SAMPLE_RATE)
    cmd = level_command(binary, address, opts, input_json, samples, concurrency, csv_path)
    unstable = PerfAnalyzerLevel(model=opts.model_name, duration_s=duration_s, concurrency=concurrency, stable=False)
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=opts.level_timeout_s,
                              env=perf_analyzer_env(binary), check=False)
    except subprocess.TimeoutExpired as exc:
        log_path.write_text(_text(exc.stdout) + _text(exc.stderr), encoding="utf-8")
        unstable.reason = f"perf_analyzer did not finish within {opts.level_timeout_s:g} s"
        return unstable
    except OSError as exc:
        raise PerfAnalyzerError(f"{binary} cannot start: {exc}") from None
    output = done.stdout + done.stderr
    log_path.write_text(" ".join(cmd) + "\n\n" + output, encoding="utf-8")
    reason = unstable_reason(output)
    if reason is not None:
        unstable.reason = reason
        return unstable
    if "cannot open shared object file" in output:
        raise _cannot_start(binary, output)
    if done.returncode != 0 or not csv_path.is_file():
        raise PerfAnalyzerError(f"perf_analyzer failed at {duration_s:g} s x concurrency {concurrency} (exit "
                                f"{done.returncode}): {_error_line(output)}")
    rows = [r for r in parse_csv(csv_path.read_text(encoding="utf-8"), opts.model_name, duration_s, output)
            if r.concurrency == concurrency]
    if len(rows) != 1:
        raise PerfAnalyzerError(f"perf_analyzer's CSV {csv_path} has no row for concurrency {concurrency}")
    return rows[0]


def _text(value: str | bytes | None) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value or ""


def run_perf_analyzer(
    url: str,
    opts: PerfAnalyzerOptions | None = None,
    waves: list[np.ndarray] | None = None,
    out_dir: Path | None = None,
    device: str = "",
    binary: Path | None = None,
    progress: Callable[[PerfAnalyzerLevel], Any] | None = None,
) -> PerfAnalyzerResult:
    """Sweep ``opts.durations_s`` x ``opts.concurrency`` with perf_analyzer against Triton at ``url``.

    ``url``: ``host:port`` of the gRPC (or, with ``protocol: http``, HTTP) endpoint; the HTTP URL of a bundled server
    started in this process is accepted too. ``waves``: 16 kHz utterances (default: the demo test set).
    ``out_dir``: also write CSV, markdown, JSON, and perf_analyzer's own CSV and console output per level under
    ``raw/``. ``progress``: called with each level as it completes. Raises ``PerfAnalyzerError`` when perf_analyzer is
    missing or fails (server unreachable, unknown model, bad input), not for an unstable level."""
    opts = opts or PerfAnalyzerOptions()
    binary = binary or find_perf_analyzer()
    version = perf_analyzer_version(binary)
    address = _address(url, opts.protocol)
    waves = waves if waves is not None else demo_audio(opts.utterances)
    if not waves:
        raise ValueError("perf_analyzer needs at least one utterance")
    result = PerfAnalyzerResult(url=address, binary=str(binary), version=version, label=opts.label, device=device,
                                options=opts)
    with tempfile.TemporaryDirectory(prefix="asr-perf-analyzer-") as tmp:
        raw_dir = Path(out_dir) / "raw" if out_dir is not None else Path(tmp) / "raw"
        raw_dir.mkdir(parents=True, exist_ok=True)
        for seconds in opts.durations_s:
            input_json = write_input_data(Path(tmp) / f"input-{seconds:g}s.json", waves, seconds, opts.input_dtype)
            for concurrency in opts.concurrency:
                row = run_level(binary, address, opts, input_json, seconds, concurrency, raw_dir)
                result.rows.append(row)
                if progress is not None:
                    progress(row)
            input_json.unlink()
    if out_dir is not None:
        result.write(Path(out_dir))
    return result


def main(argv: list[str] | None = None) -> int:
    """``python -m asr_optimize.loadtest.perf_analyzer [BINARY]``: check that perf_analyzer starts, print its version
    (``make perf-analyzer`` runs this on the binary it installed)."""
    args = sys.argv[1:] if argv is None else argv
    try:
        binary = Path(args[0]) if args else find_perf_analyzer()
        print(f"perf_analyzer {perf_analyzer_version(binary)} ({binary})")
    except PerfAnalyzerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
