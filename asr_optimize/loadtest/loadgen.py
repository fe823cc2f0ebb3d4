"""``serve-bench``: a concurrency sweep against a Triton endpoint, through the ``asr`` pipeline and the acoustic model.

Why a load generator of its own beside Triton's ``perf_analyzer``: it checks transcripts, runs during swaps and reads
the server's statistics per window, which perf_analyzer does not. It follows perf_analyzer's *concurrency mode* with
``tritonclient.grpc.aio``: exactly N requests are kept in flight (each of N workers sends its next request as soon as
the previous one returns); time is cut into measurement windows (``window_s``, perf_analyzer's ``--measurement-
interval``); measuring stops once the last ``stable_windows`` (3) windows agree within ``stability`` (10%) on
throughput and mean latency (``--stability-percentage``), or after ``max_windows`` (``--max-trials``) or
``max_level_s``; the stable windows are reported. Each level also reads Triton's statistics API
(``get_inference_statistics``) at the window edges, so the server-side queue time and compute time (input + infer +
output) per request, and the acoustic model's average batch size (dynamic batching at work), come from the server
itself.

Per (target, request length, concurrency): requests/s, x real time (audio seconds served per second), client p50/p90/
p99, server queue vs compute, failed requests. Output: ``ServeBenchResult`` (pydantic), CSV, altair charts (PNG +
HTML), markdown. Audio: the demo test set (real speech) by default; runs on the replica model's artifact (random
weights) must be labelled ``speed_only``: their transcripts are meaningless, only their timings count.

With ``processes`` > 1 a level's workers run in that many child processes (each with its own gRPC client) that stream
their records to this one, which keeps the windows and the statistics.

``asr-optimize serve-bench --url 127.0.0.1:8001 --concurrency 1,4,16,64 --durations 1,10 --out DIR``
"""

from __future__ import annotations

import asyncio
import multiprocessing
import queue
import statistics
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from asr_optimize import defaults
from asr_optimize.loadtest.charts import markdown_table, save_chart, write_tables
from asr_optimize.model.io_spec import SAMPLE_RATE, WAV2VEC2_CTC
from asr_optimize.options import Options
from asr_optimize.triton.endpoint import grpc_address, grpc_client
from asr_optimize.triton.names import TritonModelName
from asr_optimize.triton.repository import DEFAULT_MODEL_NAME, DEFAULT_PIPELINE_NAME

Target = Literal["pipeline", "acoustic"]


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


class ServeBenchOptions(Options):
    """The sweep and perf_analyzer-style measurement settings."""

    concurrency: list[int] = Field(default_factory=lambda: _ints(defaults.SERVE_CONCURRENCY), min_length=1)
    targets: list[Target] = Field(default_factory=lambda: defaults.SERVE_TARGETS.split(","), min_length=1)
    durations_s: list[float] | None = None
    """Request lengths: each utterance is tiled/cropped to exactly this many seconds. None: utterances as they are."""
    window_s: float = Field(defaults.SERVE_WINDOW_S, gt=0)
    """Measurement window (perf_analyzer's default measurement interval is 5 s)."""
    stability: float = Field(defaults.SERVE_STABILITY, gt=0)
    stable_windows: int = Field(defaults.SERVE_STABLE_WINDOWS, ge=1)
    max_windows: int = Field(defaults.SERVE_MAX_WINDOWS, ge=1)
    min_window_requests: int = Field(defaults.SERVE_MIN_WINDOW_REQUESTS, ge=1)
    """A window is stretched (up to 10 x ``window_s``) until this many requests completed in it."""
    max_level_s: float = Field(defaults.SERVE_MAX_LEVEL_S, gt=0)
    request_timeout_s: float = Field(defaults.SERVE_REQUEST_TIMEOUT_S, gt=0)
    processes: int = Field(defaults.SERVE_PROCESSES, ge=1)
    """Load-generator processes per level; a level's N in-flight requests are split between them. Why: one Python
    process driving gRPC became a limit at high concurrency on the H100 host (two processes at 32 each served 17-33 %
    more than one at 64). Records from every process share the system-wide monotonic clock."""
    model_name: TritonModelName = DEFAULT_MODEL_NAME
    pipeline_name: TritonModelName = DEFAULT_PIPELINE_NAME
    acoustic_version: str = ""
    """Acoustic version for the acoustic-only target ('' = Triton's default, the highest loaded)."""
    label: str = ""
    speed_only: bool = False
    """True for random-weight models (the replica): transcripts are meaningless, timings are what count."""
    pcm16: bool = False
    """Send the pipeline 16-bit PCM (``audio_pcm16``, half the bytes) instead of float32 ``audio``."""


class LevelResult(BaseModel):
    """One (target, request length, concurrency) measurement."""

    target: Target
    model: str
    audio_s: float
    concurrency: int
    requests: int
    """Successful requests in the reported (stable) windows."""
    failed: int
    """Failed requests during the whole level (all windows, ramp-up and drain included)."""
    windows: int
    stable: bool
    seconds: float
    throughput_rps: float
    x_real_time: float
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    mean_ms: float | None = None
    server_queue_ms: float | None = None
    server_compute_ms: float | None = None
    acoustic_queue_ms: float | None = None
    acoustic_compute_ms: float | None = None
    acoustic_batch: float | None = None
    """Average rows per acoustic model execution (dynamic batching); > 1 means requests were merged."""
    acoustic_input_ms: float | None = None
    """The acoustic compute split per request (Triton's compute_input / compute_infer / compute_output): inputs
    copied to where the backend wants them, the backend's execute, outputs copied back."""
    acoustic_infer_ms: float | None = None
    acoustic_output_ms: float | None = None
    errors: list[str] = Field(default_factory=list)


class ServeBenchResult(BaseModel):
    url: str
    label: str = ""
    speed_only: bool = False
    device: str = ""
    started: float = Field(default_factory=time.time)
    options: ServeBenchOptions
    rows: list[LevelResult] = Field(default_factory=list)

    @property
    def failed(self) -> int:
        return sum(r.failed for r in self.rows)

    def table_rows(self) -> list[dict[str, Any]]:
        return [{"label": self.label, "speed_only": self.speed_only, "device": self.device,
                 **r.model_dump(exclude={"errors"}), "errors": "; ".join(r.errors)} for r in self.rows]

    def markdown(self) -> str:
        title = f"## Triton serving benchmark{': ' + self.label if self.label else ''}"
        notes = [f"Endpoint `{self.url}`" + (f" on {self.device}" if self.device else "") + "; concurrency mode "
                 f"(N requests in flight), windows of {self.options.window_s:g} s until throughput and latency are "
                 f"stable within {self.options.stability:.0%} over {self.options.stable_windows} windows."]
        if self.speed_only:
            notes.append("**Speed only**: random-weight model; transcripts are meaningless, timings are real.")
        notes.append(f"Failed requests: **{self.failed}**.")
        columns = [("target", "target"), ("audio_s", "audio s"), ("concurrency", "conc."),
                   ("throughput_rps", "req/s"), ("x_real_time", "x real time"), ("p50_ms", "p50 ms"),
                   ("p90_ms", "p90 ms"), ("p99_ms", "p99 ms"), ("server_queue_ms", "queue ms"),
                   ("server_compute_ms", "compute ms"), ("acoustic_batch", "acoustic batch"),
                   ("failed", "failed"), ("stable", "stable")]
        return "\n\n".join([title, " ".join(notes), markdown_table([r.model_dump() for r in self.rows], columns)])

    def charts(self, out_dir: Path, name: str = "serve_bench") -> list[str]:
        import altair as alt
        import pandas as pd

        if not self.rows:
            return []
        frame = pd.DataFrame([r.model_dump(exclude={"errors"}) for r in self.rows])
        frame["series"] = frame["target"] + " " + frame["audio_s"].round(1).astype(str) + " s"
        base = alt.Chart(frame).encode(x=alt.X("concurrency:O", title="concurrent requests"),
                                       color=alt.Color("series:N", title="target, request length"))
        speed = base.mark_line(point=True).encode(
            y=alt.Y("x_real_time:Q", title="x real time"), tooltip=["series", "concurrency", "x_real_time",
                                                                     "throughput_rps"]
        ).properties(width=320, height=240, title="Throughput")
        p99 = base.mark_line(point=True).encode(
            y=alt.Y("p99_ms:Q", title="p99 latency (ms)", scale=alt.Scale(type="log")),
            tooltip=["series", "concurrency", "p50_ms", "p90_ms", "p99_ms"],
        ).properties(width=320, height=240, title="Tail latency")
        split = frame.melt(id_vars=["series", "concurrency"], value_vars=["server_queue_ms", "server_compute_ms"],
                           var_name="part", value_name="ms").dropna()
        parts = alt.Chart(split).mark_bar().encode(
            x=alt.X("concurrency:O", title="concurrent requests"), y=alt.Y("ms:Q", title="server ms per request"),
            color=alt.Color("part:N", title="server time"), column=alt.Column("series:N", title=None),
        ).properties(width=120, height=200, title="Queue vs compute (Triton statistics)")
        title = "Triton serve-bench" + (f": {self.label}" if self.label else "")
        if self.speed_only and "speed only" not in title:
            title += " (speed only)"
        chart = alt.vconcat(alt.hconcat(speed, p99), parts).properties(title=title)
        return save_chart(chart, out_dir, name)

    def write(self, out_dir: Path, name: str = "serve_bench") -> list[str]:
        """CSV, markdown, JSON and charts under ``out_dir``; returns the file names."""
        files = write_tables(out_dir, name, self.table_rows(), self.markdown(), self.model_dump_json(indent=1))
        return [*files, *self.charts(out_dir, name)]


# ---------------------------------------------------------------- audio


def fit_duration(wave: np.ndarray, seconds: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Tile (repeat) or crop ``wave`` to exactly ``seconds`` of audio."""
    n = round(seconds * sample_rate)
    wave = np.asarray(wave, dtype=np.float32)
    if wave.size == 0:
        raise ValueError("empty utterance")
    reps = -(-n // wave.size)
    return np.ascontiguousarray(np.tile(wave, reps)[:n])


def demo_audio(limit: int = 16) -> list[np.ndarray]:
    """Real speech: the first ``limit`` utterances of the bundled demo test set."""
    from asr_optimize.quality.eval_sets import EvalSource, load_eval_set

    return [u.audio for u in load_eval_set(EvalSource(max_samples=limit)).utterances]


def _normalize(wave: np.ndarray) -> np.ndarray:
    return ((wave - wave.mean()) / np.sqrt(wave.var() + 1e-7)).astype(np.float32)


# ---------------------------------------------------------------- statistics


def _count(stats: dict[str, Any], key: str, field: str) -> int:
    return int(stats.get("inference_stats", {}).get(key, {}).get(field, 0) or 0)


COMPUTE_PHASES = ("compute_input", "compute_infer", "compute_output")


def _snapshot(raw: dict[str, Any], names: Sequence[str]) -> dict[str, dict[str, int]]:
    """Per model name: success count, queue ns, compute ns, inferences, executions (all versions summed)."""
    out = {n: {"success": 0, "queue_ns": 0, "compute_ns": 0, "inferences": 0, "executions": 0, **{
        f"{k}_ns": 0 for k in COMPUTE_PHASES}} for n in names}
    for entry in raw.get("model_stats", []):
        name = entry.get("name")
        if name not in out:
            continue
        acc = out[name]
        acc["success"] += _count(entry, "success", "count")
        acc["queue_ns"] += _count(entry, "queue", "ns")
        for k in COMPUTE_PHASES:
            acc[f"{k}_ns"] += _count(entry, k, "ns")
            acc["compute_ns"] += _count(entry, k, "ns")
        acc["inferences"] += int(entry.get("inference_count", 0) or 0)
        acc["executions"] += int(entry.get("execution_count", 0) or 0)
    return out


def _phases_ms(before: dict[str, int], after: dict[str, int]) -> list[float | None]:
    """compute_input / compute_infer / compute_output ms per successful request between two snapshots."""
    n = after["success"] - before["success"]
    return [(after[f"{k}_ns"] - before[f"{k}_ns"]) / n / 1e6 if n > 0 else None for k in COMPUTE_PHASES]


def _split(before: dict[str, int], after: dict[str, int]) -> tuple[float | None, float | None, float | None]:
    """(queue ms, compute ms) per successful request and rows per execution between two snapshots."""
    n = after["success"] - before["success"]
    executions = after["executions"] - before["executions"]
    batch = (after["inferences"] - before["inferences"]) / executions if executions > 0 else None
    if n <= 0:
        return None, None, batch
    return ((after["queue_ns"] - before["queue_ns"]) / n / 1e6, (after["compute_ns"] - before["compute_ns"]) / n / 1e6,
            batch)


# ---------------------------------------------------------------- the measurement


class _Payload:
    def __init__(self, inputs: list[Any], outputs: list[Any], audio_s: float) -> None:
        self.inputs, self.outputs, self.audio_s = inputs, outputs, audio_s


def pcm16(wave: np.ndarray) -> np.ndarray:
    """float audio in [-1, 1] as 16-bit PCM (rounded, clipped)."""
    return np.clip(np.round(np.asarray(wave, dtype=np.float32) * 32767.0), -32768, 32767).astype(np.int16)


def _payloads(target: Target, waves: list[np.ndarray], with_mask: bool, as_pcm16: bool = False) -> list[_Payload]:
    import tritonclient.grpc.aio as grpcclient

    out = []
    spec = WAV2VEC2_CTC
    for wave in waves:
        audio = np.ascontiguousarray(wave, dtype=np.float32)[None]
        if target == "pipeline":
            if as_pcm16:
                audio = pcm16(audio)
            tensor = grpcclient.InferInput("audio_pcm16" if as_pcm16 else "audio", list(audio.shape),
                                           "INT16" if as_pcm16 else "FP32")
            tensor.set_data_from_numpy(audio)
            inputs, outputs = [tensor], [grpcclient.InferRequestedOutput("text")]
        else:
            values = _normalize(audio[0])[None]
            tensor = grpcclient.InferInput(spec.audio_input, list(values.shape), "FP32")
            tensor.set_data_from_numpy(values)
            inputs = [tensor]
            if with_mask:
                mask = grpcclient.InferInput(spec.mask_input, list(values.shape), "INT64")
                mask.set_data_from_numpy(np.ones(values.shape, dtype=np.int64))
                inputs.append(mask)
            outputs = [grpcclient.InferRequestedOutput(spec.output)]
        out.append(_Payload(inputs, outputs, wave.size / SAMPLE_RATE))
    return out


def _stable(windows: list[dict[str, Any]], opts: ServeBenchOptions) -> bool:
    if len(windows) < opts.stable_windows:
        return False
    last = windows[-opts.stable_windows :]
    for key in ("rps", "mean_s"):
        values = [w[key] for w in last]
        if any(v is None or v <= 0 for v in values):
            return False
        mean = statistics.fmean(values)
        if max(abs(v - mean) for v in values) > opts.stability * mean:
            return False
    return True


async def _infer_loop(client: Any, model: str, version: str, payloads: list[_Payload], first: int, stride: int,
                      timeout_s: float, stop: Any, record: Any) -> None:
    """One worker of concurrency mode: its next request as soon as the previous one returns, until ``stop`` is set;
    ``record(end, latency_s, error or None)`` per request (monotonic clock)."""
    k = first
    while not stop.is_set():
        payload = payloads[k % len(payloads)]
        k += stride
        start = time.monotonic()
        error = None
        try:
            await client.infer(model, payload.inputs, model_version=version, outputs=payload.outputs,
                               client_timeout=timeout_s)
        except Exception as exc:
            error = f"{type(exc).__name__}: {str(exc)[:200]}"
        end = time.monotonic()
        record(end, end - start, error)
        if error is not None:
            await asyncio.sleep(0.01)


def _child_load(url: str, target: Target, model: str, version: str, clips: list[np.ndarray], with_mask: bool,
                as_pcm16: bool, workers: list[int], stride: int, timeout_s: float, out: Any, stop: Any) -> None:
    """A load-generator process (``processes`` > 1): ``workers`` (their first payload indices) keep requests in
    flight until ``stop`` is set; records go to ``out`` every 0.2 s, after a ("ready",) message."""

    async def main() -> None:
        client = grpc_client(url)
        payloads = _payloads(target, clips, with_mask, as_pcm16)
        batch: list[tuple[float, float, str | None]] = []
        out.put(("ready",))

        async def flush() -> None:
            while not stop.is_set():
                await asyncio.sleep(0.2)
                if batch:
                    out.put(("records", batch[:]))
                    batch.clear()

        flusher = asyncio.create_task(flush())
        try:
            await asyncio.gather(*[_infer_loop(client, model, version, payloads, first, stride, timeout_s, stop,
                                               lambda *r: batch.append(r)) for first in workers])
        finally:
            flusher.cancel()
            out.put(("records", batch[:]))
            out.put(("done",))
            await client.close()

    asyncio.run(main())


class _ProcessLoad:
    """``processes`` child load generators for one level (see ``ServeBenchOptions.processes``)."""

    def __init__(self, url: str, target: Target, model: str, version: str, clips: list[np.ndarray], with_mask: bool,
                 as_pcm16: bool, concurrency: int, processes: int, timeout_s: float) -> None:
        ctx = multiprocessing.get_context("spawn")  # no forked gRPC or asyncio state
        self.out, self.stop = ctx.Queue(), ctx.Event()
        self.procs = [ctx.Process(target=_child_load, daemon=True,
                                  args=(url, target, model, version, clips, with_mask, as_pcm16,
                                        list(range(i, concurrency, processes)), concurrency, timeout_s, self.out,
                                        self.stop))
                      for i in range(processes)]

    async def start(self, timeout_s: float = 120.0) -> None:
        for proc in self.procs:
            proc.start()
        ready, deadline = 0, time.monotonic() + timeout_s
        while ready < len(self.procs):
            if time.monotonic() > deadline or not any(p.is_alive() for p in self.procs):
                self.close()
                raise RuntimeError(f"load-generator processes did not start ({ready} of {len(self.procs)} ready)")
            try:
                ready += self.out.get(timeout=0.1)[0] == "ready"
            except queue.Empty:
                await asyncio.sleep(0)

    def drain(self, record: Any) -> int:
        """Pass the records that arrived to ``record(end, latency_s, error)``; returns how many children said they
        are done."""
        done = 0
        while True:
            try:
                message = self.out.get_nowait()
            except queue.Empty:
                return done
            if message[0] == "records":
                for item in message[1]:
                    record(*item)
            done += message[0] == "done"

    async def finish(self, record: Any, timeout_s: float = 120.0) -> None:
        """Stop the children, pass on their last records, join them."""
        self.stop.set()
        done, deadline = 0, time.monotonic() + timeout_s
        while done < len(self.procs) and time.monotonic() < deadline:
            done += self.drain(record)
            await asyncio.sleep(0.05)
        self.close()

    def close(self) -> None:
        self.stop.set()
        for proc in self.procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()


async def _level(client: Any, target: Target, model: str, version: str, payloads: list[_Payload], concurrency: int,
                 opts: ServeBenchOptions, stat_models: list[str],
                 spawn: tuple[str, list[np.ndarray], bool, bool] | None = None) -> LevelResult:
    """One concurrency level. ``spawn`` (url, clips, with_mask, as_pcm16): run the workers in ``opts.processes`` child
    processes instead of this event loop."""
    records: list[tuple[float, float, bool]] = []  # (end time, latency s, ok)
    errors: Counter[str] = Counter()
    stop = asyncio.Event()
    pool: _ProcessLoad | None = None

    def record(end: float, latency: float, error: str | None) -> None:
        records.append((end, latency, error is None))
        if error is not None:
            errors[error] += 1

    async def snapshot() -> dict[str, dict[str, int]]:
        try:
            return _snapshot(await client.get_inference_statistics(as_json=True), stat_models)
        except Exception:
            return _snapshot({}, stat_models)

    tasks: list[Any] = []
    if spawn is not None and min(opts.processes, concurrency) > 1:
        pool = _ProcessLoad(spawn[0], target, model, version, spawn[1], spawn[2], spawn[3], concurrency,
                            min(opts.processes, concurrency), opts.request_timeout_s)
        await pool.start()
    else:
        tasks = [asyncio.create_task(_infer_loop(client, model, version, payloads, i, concurrency,
                                                 opts.request_timeout_s, stop, record)) for i in range(concurrency)]

    def pull() -> int:
        if pool is not None:
            pool.drain(record)
        return len(records)

    windows: list[dict[str, Any]] = []
    level_start = time.monotonic()
    edge, index, snap = level_start, 0, await snapshot()
    try:
        while len(windows) < opts.max_windows and time.monotonic() - level_start < opts.max_level_s:
            await asyncio.sleep(opts.window_s)
            while (pull() - index < opts.min_window_requests
                   and time.monotonic() - edge < 10 * opts.window_s
                   and time.monotonic() - level_start < opts.max_level_s):
                await asyncio.sleep(opts.window_s / 4)
            now = time.monotonic()
            pull()
            records[index:] = sorted(records[index:])  # children deliver in batches: order by end time
            count = index + sum(1 for r in records[index:] if r[0] <= now)
            new_snap = await snapshot()
            chunk = [r for r in records[index:count] if r[0] >= edge]  # children may finish some before the start
            good = [lat for _, lat, ok in chunk if ok]
            windows.append({"start": edge, "end": now, "records": chunk, "rps": len(good) / (now - edge),
                            "mean_s": statistics.fmean(good) if good else None, "before": snap, "after": new_snap})
            edge, index, snap = now, count, new_snap
            if _stable(windows, opts):
                break
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        if pool is not None:
            await pool.finish(record)

    stable = _stable(windows, opts)
    used = windows[-opts.stable_windows :] if windows else []
    chunk = [r for w in used for r in w["records"]]
    seconds = (used[-1]["end"] - used[0]["start"]) if used else 0.0
    good = np.array([lat for _, lat, ok in chunk if ok]) * 1000
    failed = sum(1 for *_, ok in records if not ok)  # every failure of the level, measured window or not
    audio_s = statistics.fmean(p.audio_s for p in payloads)
    rps = good.size / seconds if seconds > 0 else 0.0
    result = LevelResult(target=target, model=model, audio_s=round(audio_s, 3), concurrency=concurrency,
                         requests=int(good.size), failed=failed, windows=len(windows), stable=stable,
                         seconds=round(seconds, 3), throughput_rps=round(rps, 3), x_real_time=round(rps * audio_s, 2),
                         errors=[f"{n} x {msg}" for msg, n in errors.most_common(5)])
    if good.size:
        p50, p90, p99 = np.percentile(good, [50, 90, 99])
        result.p50_ms, result.p90_ms, result.p99_ms = round(float(p50), 3), round(float(p90), 3), round(float(p99), 3)
        result.mean_ms = round(float(good.mean()), 3)
    if used:
        before, after = used[0]["before"], used[-1]["after"]
        result.server_queue_ms, result.server_compute_ms, batch = _split(before[model], after[model])
        acoustic = opts.model_name
        if target == "pipeline" and acoustic in before:
            result.acoustic_queue_ms, result.acoustic_compute_ms, result.acoustic_batch = _split(before[acoustic],
                                                                                                   after[acoustic])
        elif target == "acoustic":
            result.acoustic_queue_ms, result.acoustic_compute_ms = result.server_queue_ms, result.server_compute_ms
            result.acoustic_batch = batch
        if acoustic in before:
            result.acoustic_input_ms, result.acoustic_infer_ms, result.acoustic_output_ms = _phases_ms(
                before[acoustic], after[acoustic])
        for key in ("server_queue_ms", "server_compute_ms", "acoustic_queue_ms", "acoustic_compute_ms",
                    "acoustic_batch", "acoustic_input_ms", "acoustic_infer_ms", "acoustic_output_ms"):
            value = getattr(result, key)
            if value is not None:
                setattr(result, key, round(value, 3))
    return result


async def _sweep(url: str, waves: list[np.ndarray], opts: ServeBenchOptions, progress: Any | None) -> list[LevelResult]:
    client = grpc_client(url)
    rows: list[LevelResult] = []
    try:
        if not await client.is_server_live():
            raise ConnectionError(f"Triton at {url} is not live")
        with_mask = True
        if "acoustic" in opts.targets:
            meta = await client.get_model_metadata(opts.model_name, opts.acoustic_version, as_json=True)
            with_mask = WAV2VEC2_CTC.mask_input in [t["name"] for t in meta.get("inputs", [])]
        stat_models = [opts.pipeline_name, opts.model_name]
        lengths: list[float | None] = list(opts.durations_s) if opts.durations_s else [None]
        for target in opts.targets:
            model = opts.pipeline_name if target == "pipeline" else opts.model_name
            version = "" if target == "pipeline" else opts.acoustic_version
            for seconds in lengths:
                clips = [fit_duration(w, seconds) for w in waves] if seconds else list(waves)
                payloads = _payloads(target, clips, with_mask, opts.pcm16)
                spawn = (url, clips, with_mask, opts.pcm16) if opts.processes > 1 else None
                for concurrency in opts.concurrency:
                    row = await _level(client, target, model, version, payloads, concurrency, opts, stat_models,
                                       spawn)
                    rows.append(row)
                    if progress is not None:
                        progress(row)
    finally:
        await client.close()
    return rows


def _run(coro: Any) -> Any:
    """asyncio.run, also from inside a running loop (a Prefect task or a notebook): then in a thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def serve_bench(
    url: str,
    waves: list[np.ndarray] | None = None,
    opts: ServeBenchOptions | None = None,
    out_dir: Path | None = None,
    device: str = "",
    progress: Any | None = None,
) -> ServeBenchResult:
    """Sweep ``opts.concurrency`` x ``opts.targets`` x ``opts.durations_s`` against Triton's gRPC ``url``.

    The HTTP URL of a bundled server started in this process is accepted too (mapped to its gRPC port).

    ``waves``: 16 kHz utterances (default: the demo test set). ``out_dir``: also write CSV, markdown, JSON, charts.
    ``progress``: called with each ``LevelResult`` as it completes. Raises ``ConnectionError`` if Triton is down.
    """
    opts = opts or ServeBenchOptions()
    url = grpc_address(url)
    waves = waves if waves is not None else demo_audio()
    if not waves:
        raise ValueError("serve_bench needs at least one utterance")
    result = ServeBenchResult(url=url, label=opts.label, speed_only=opts.speed_only, device=device, options=opts)
    result.rows = _run(_sweep(url, waves, opts, progress))
    if out_dir is not None:
        result.write(Path(out_dir))
    return result


class RequestRecord(BaseModel):
    wave: int
    """Index of the utterance sent."""
    start: float
    end: float
    ok: bool
    error: str = ""
    text: str = ""


class BackgroundLoad:
    """Keeps ``concurrency`` pipeline requests in flight from a background thread until ``stop()`` (the soak).

    Every request is recorded with its start/end (``time.perf_counter``), outcome and text, so a caller can split
    latencies by what happened meanwhile (a swap) and check that answers never changed.
    """

    def __init__(self, url: str, waves: list[np.ndarray], concurrency: int = 4, pipeline: str = DEFAULT_PIPELINE_NAME,
                 timeout_s: float = 60.0) -> None:
        self.url, self.waves, self.concurrency = url, waves, concurrency
        self.pipeline, self.timeout_s = pipeline, timeout_s
        self.records: list[RequestRecord] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        client = grpc_client(self.url)
        payloads = _payloads("pipeline", self.waves, True)

        async def worker(first: int) -> None:
            k = first
            while not self._stop.is_set():
                wave = k % len(payloads)
                payload = payloads[wave]
                k += self.concurrency
                start = time.perf_counter()
                try:
                    result = await client.infer(self.pipeline, payload.inputs, outputs=payload.outputs,
                                                client_timeout=self.timeout_s)
                    text = result.as_numpy("text").reshape(-1)[0].decode("utf-8")
                    self.records.append(RequestRecord(wave=wave, start=start, end=time.perf_counter(), ok=True,
                                                      text=text))
                except Exception as exc:
                    self.records.append(RequestRecord(wave=wave, start=start, end=time.perf_counter(), ok=False,
                                                      error=f"{type(exc).__name__}: {str(exc)[:200]}"))
                    await asyncio.sleep(0.01)

        try:
            await asyncio.gather(*(worker(i) for i in range(self.concurrency)))
        finally:
            await client.close()

    def start(self) -> BackgroundLoad:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self.records and time.monotonic() < deadline:
            time.sleep(0.02)
        return self

    def stop(self) -> list[RequestRecord]:
        self._stop.set()
        self._thread.join(timeout=max(60.0, self.timeout_s + 5))
        return self.records

    def __enter__(self) -> BackgroundLoad:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
