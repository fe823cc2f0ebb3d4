"""GPU probe of the fused engine: correctness vs Hugging Face fp32, timings beside HF eager, kernel breakdown.

``python -m benchmarks.engine_probe --out DIR`` on a CUDA machine, in one process:

1. the replica model (real IndicWav2Vec shape, random weights) and fused fp16 / fp8 engines of it;
2. correctness: relative logit error vs HF fp32 on CUDA (padded batch), and on the demo model identical greedy
   transcripts on the demo test set (fused fp16 / fp8 vs HF fp32);
3. timings (p50 of >= 20 after warm-up, synchronised) of HF eager fp32 (the baseline), HF eager fp16, fused fp16,
   fused fp8 at 1 x 1 s, 1 x 10 s, 16 x 10 s, 64 x 10 s, plus a few fused variants;
4. torch.profiler CUDA kernel time per category for fused fp16 at 64 x 10 s and 1 x 1 s.

Why it avoids most of the package: the GPU machine has torch / transformers / numpy / safetensors / pydantic
only, so missing optional modules (pydantic-settings, soundfile) are worked around here, not required.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import tempfile
import time
import traceback
import types
from pathlib import Path
from typing import Any

import numpy as np

SHAPES = [(1, 1.0), (1, 10.0), (16, 10.0), (64, 10.0)]
CATEGORIES = ("gemm", "attention", "conv", "norm", "elementwise", "copies", "other")
DEMO_NPZ = Path(__file__).resolve().parent / "gpu" / "demo_audio.npz"


def _shim_missing_modules() -> None:
    """pydantic-settings may be absent on the GPU image; settings only need BaseSettings' defaults here."""
    try:
        import pydantic_settings  # noqa: F401
    except ImportError:
        import pydantic

        shim = types.ModuleType("pydantic_settings")
        shim.BaseSettings = pydantic.BaseModel  # type: ignore[attr-defined]
        shim.SettingsConfigDict = dict  # type: ignore[attr-defined]
        sys.modules["pydantic_settings"] = shim


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def categorize(name: str) -> str:
    """Kernel name -> category of the breakdown."""
    n = name.lower()
    if any(s in n for s in ("flash", "fmha", "attention", "attn")):
        return "attention"
    if any(s in n for s in ("gemm", "cutlass", "xmma", "nvjet", "cublas", "sm90_", "scaled_mm", "matmul")):
        return "gemm"
    if any(s in n for s in ("conv", "implicit", "winograd", "fft")):
        return "conv"
    if any(s in n for s in ("layer_norm", "layernorm", "_add_ln", "group_norm", "norm")):
        return "norm"
    if any(s in n for s in ("copy", "memcpy", "memset", "cat", "transpose", "fill")):
        return "copies"
    if any(s in n for s in ("elementwise", "gelu", "_quant", "add", "mul", "vectorized", "reduce", "where")):
        return "elementwise"
    return "other"


def demo_audio(limit: int | None = None) -> tuple[list[np.ndarray], str]:
    """The bundled demo test set (soundfile), or the npz made from it where soundfile is missing."""
    try:
        from asr_optimize.quality.eval_sets import load_eval_set

        waves = [u.audio for u in load_eval_set()]
        source = "asr_optimize.quality.eval_sets.load_eval_set()"
    except Exception as exc:
        if not DEMO_NPZ.is_file():
            raise RuntimeError(f"demo test set unreadable ({exc}) and {DEMO_NPZ} missing") from exc
        data = np.load(DEMO_NPZ)
        waves = [data[k].astype(np.float32) for k in sorted(data.files)]
        source = f"{DEMO_NPZ.name} (decoded from the demo test set; {type(exc).__name__} here)"
    return (waves[:limit] if limit else waves), source


def time_runner(runner: Any, batch: int, seconds: float, reps: int, warmup: int = 3) -> dict[str, float]:
    """p50 / p90 wall time of ``run_prepared`` (it synchronises) on synthetic audio of one shape."""
    from asr_optimize.audio.load import make_batch, synthetic_audio

    audio = make_batch(synthetic_audio(batch, seconds, seed=1))
    prepared = runner.prepare(audio.input_values, audio.attention_mask)
    for _ in range(warmup):
        runner.run_prepared(prepared)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        runner.run_prepared(prepared)
        times.append(time.perf_counter() - t0)
    p50 = statistics.median(times)
    return {"p50_ms": p50 * 1e3, "p90_ms": float(np.percentile(times, 90)) * 1e3,
            "x_real_time": batch * seconds / p50, "reps": reps}


def kernel_breakdown(runner: Any, batch: int, seconds: float, iters: int = 3) -> tuple[dict[str, float], list]:
    """CUDA kernel time per category (ms per forward) and the top kernels, via torch.profiler."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from asr_optimize.audio.load import make_batch, synthetic_audio

    audio = make_batch(synthetic_audio(batch, seconds, seed=1))
    prepared = runner.prepare(audio.input_values, audio.attention_mask)
    runner.run_prepared(prepared)
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        for _ in range(iters):
            runner.run_prepared(prepared)
    torch.cuda.synchronize()
    per_kernel: dict[str, list[float]] = {}
    for evt in prof.events():
        if evt.device_type == torch.autograd.DeviceType.CUDA:
            per_kernel.setdefault(evt.name, []).append(evt.device_time)
    cats = dict.fromkeys(CATEGORIES, 0.0)
    rows = []
    for name, times in per_kernel.items():
        ms = sum(times) / 1e3 / iters
        cats[categorize(name)] += ms
        rows.append((name[:110], categorize(name), len(times) // iters, ms))
    rows.sort(key=lambda r: -r[3])
    return cats, rows


def relative_error(out: np.ndarray, ref: np.ndarray, frames: np.ndarray) -> dict[str, float]:
    diffs, refs, agree, total = [], [], 0, 0
    for i, n in enumerate(frames):
        a, b = out[i, :n], ref[i, :n]
        diffs.append(np.abs(a - b).max())
        refs.append(np.abs(b).max())
        agree += int((a.argmax(-1) == b.argmax(-1)).sum())
        total += int(n)
    return {"max_abs_diff": float(max(diffs)), "rel_max": float(max(diffs) / max(refs)),
            "argmax_agree": agree / max(total, 1)}


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def longform_probe(args: argparse.Namespace, env: dict[str, str]) -> int:
    """Long recordings end to end (``asr_optimize.transcribe``: silence cuts, windows, stitching, decoding, host copies
    included) on the replica: how the window batch moves x real time. One warm-up call, then the median of 3."""
    import torch

    from asr_optimize.audio.load import synthetic_audio
    from asr_optimize.model.source import init_random_model
    from asr_optimize.paths import REPLICA_CONFIG
    from asr_optimize.runners.fused_engine import FusedEngineOptions, FusedRunner, build_fused_engine
    from asr_optimize.runners.torch_runner import TorchRunner
    from asr_optimize.transcribe import ChunkingOptions, transcribe

    batch, seconds = (float(v) for v in args.longform.lower().split("x"))
    work = Path(tempfile.mkdtemp(prefix="fused-longform-"))
    replica = init_random_model(REPLICA_CONFIG, work / "replica", seed=0)
    build_fused_engine(replica, work / "fp16", FusedEngineOptions(precision="fp16"))
    waves = synthetic_audio(int(batch), seconds, seed=11)
    audio_s = batch * seconds
    rows: list[dict[str, Any]] = []

    def measure(label: str, runner: Any, model_dir: Path, window_batch: int, reps: int = 3) -> None:
        opts = ChunkingOptions(batch_size=window_batch, split_on_silence=not args.fixed_windows)
        transcribe(runner, waves, model_dir, chunking=opts)  # warm-up: graphs captured, allocator grown
        times = []
        for _ in range(reps):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            transcribe(runner, waves, model_dir, chunking=opts)
            times.append(time.perf_counter() - t0)
        p50 = float(np.median(times))
        rows.append({"runner": label, "recordings": int(batch), "seconds": seconds, "window_batch": window_batch,
                     "fixed_windows": args.fixed_windows,
                     "p50_s": round(p50, 3), "x_real_time": round(audio_s / p50, 1), **env})
        log(f"{label:<28} window batch {window_batch:>3}: {p50:8.3f} s  {audio_s / p50:9.1f} x real time")

    hf32 = TorchRunner(replica, device="cuda")
    measure("HF eager fp32 (baseline)", hf32, replica, 16, reps=1)
    hf32.close()
    fused = FusedRunner(work / "fp16", device="cuda", precision="fp16")
    for window_batch in (int(v) for v in args.window_batches.split(",")):
        measure("fused fp16 + graphs", fused, work / "fp16", window_batch)
    if args.profile:
        longform_profile(args, fused, work / "fp16", waves, env)
    fused.close()

    with open(args.out / "longform.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print("\n| runner | window batch | p50 s | x real time |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['runner']} | {r['window_batch']} | {r['p50_s']} | {r['x_real_time']:,} |")
    return 0


def longform_profile(args: argparse.Namespace, runner: Any, model_dir: Path, waves: list[np.ndarray],
                     env: dict[str, str]) -> None:
    """Where long-form time goes: the runner's own speed at the window shape, wall time inside ``infer`` vs the
    host around it, the host's top functions (cProfile) and CUDA kernel time per category (torch.profiler)."""
    import cProfile
    import io
    import pstats

    import torch
    from torch.profiler import ProfilerActivity, profile

    from asr_optimize.transcribe import ChunkingOptions, transcribe

    window_batch = int(args.window_batches.split(",")[-1])
    opts = ChunkingOptions(batch_size=window_batch, split_on_silence=not args.fixed_windows)
    lines = [f"env {env}", f"window batch {window_batch}, chunk {opts.chunk_s} s, stride {opts.stride_s} s"]
    for batch in sorted({1, window_batch}):
        t = time_runner(runner, batch, opts.chunk_s, reps=10)
        lines.append(f"runner alone at {batch} x {opts.chunk_s:g} s: p50 {t['p50_ms']:.2f} ms = "
                     f"{t['x_real_time']:,.0f} x real time")

    class Timed:
        """The runner, with the wall time and shapes of every ``infer`` call recorded."""

        def __init__(self) -> None:
            self.seconds, self.shapes = 0.0, []

        def infer(self, values: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
            t0 = time.perf_counter()
            out = runner.infer(values, mask)
            self.seconds += time.perf_counter() - t0
            self.shapes.append((values.shape, bool(mask is not None and not mask.all())))
            return out

    timed = Timed()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    transcribe(timed, waves, model_dir, chunking=opts)
    total = time.perf_counter() - t0
    shapes = sorted({s for s in timed.shapes})
    lines.append(f"transcribe: {total:.3f} s, inside infer {timed.seconds:.3f} s over {len(timed.shapes)} calls, "
                 f"{len(shapes)} distinct (shape, padded) keys: {shapes[:12]}")
    prof = cProfile.Profile()
    prof.enable()
    transcribe(runner, waves, model_dir, chunking=opts)
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(25)
    lines.append(buf.getvalue())
    with profile(activities=[ProfilerActivity.CUDA]) as kprof:
        transcribe(runner, waves, model_dir, chunking=opts)
    torch.cuda.synchronize()
    cats = dict.fromkeys(CATEGORIES, 0.0)
    per_kernel: dict[str, float] = {}
    for evt in kprof.events():
        if evt.device_type == torch.autograd.DeviceType.CUDA:
            cats[categorize(evt.name)] += evt.device_time / 1e3
            per_kernel[evt.name[:100]] = per_kernel.get(evt.name[:100], 0.0) + evt.device_time / 1e3
    lines.append("CUDA kernel ms per transcribe: " + ", ".join(f"{k} {v:.1f}" for k, v in cats.items())
                 + f", total {sum(cats.values()):.1f}")
    lines += [f"  {ms:9.1f} ms  {name}" for name, ms in sorted(per_kernel.items(), key=lambda kv: -kv[1])[:15]]
    text = "\n".join(lines)
    (args.out / "longform_profile.txt").write_text(text + "\n", encoding="utf-8")
    log(text[:3000])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="results folder (required unless --make-demo-npz)")
    parser.add_argument("--make-demo-npz", action="store_true",
                        help=f"on a dev machine: decode the demo test set into {DEMO_NPZ.name} for GPU hosts without "
                        "soundfile (it travels beside the working tree; not committed) and exit")
    parser.add_argument("--reps", type=int, default=25)
    parser.add_argument("--budget-s", type=float, default=480.0, help="skip optional sections past this")
    parser.add_argument("--skip-hf32-big", action="store_true", help="skip HF fp32 at 16/64 x 10 s")
    parser.add_argument("--variants", default="exactgelu,fp8exactgelu",
                        help="extra fused variants: nograph, noepilogue, notriton, flash, efficient, cudnn, fp8rows, "
                        "exactgelu, fp8exactgelu, cublaslt, fp8cublaslt, noresidual")
    parser.add_argument("--compile", action="store_true", help="also try torch.compile(freezing) of the forward")
    parser.add_argument("--longform", metavar="BxS", default="",
                        help="only time long-form transcription of B recordings of S seconds (e.g. 16x600) through "
                        "chunked windows, fused fp16 at several window batches vs HF eager fp32")
    parser.add_argument("--window-batches", default="4,16,32,64", help="window batch sizes for --longform")
    parser.add_argument("--profile", action="store_true",
                        help="--longform: also write longform_profile.txt (runner alone at the window shape, time "
                        "inside infer vs host, cProfile, CUDA kernels per category)")
    parser.add_argument("--fixed-windows", action="store_true",
                        help="--longform without silence splitting: every window chunk_s long (one shape, no padding)")
    args = parser.parse_args(argv)
    if args.make_demo_npz:
        from asr_optimize.quality.eval_sets import load_eval_set

        DEMO_NPZ.parent.mkdir(parents=True, exist_ok=True)
        arrays = {f"u{i:03d}": u.audio.astype(np.float16) for i, u in enumerate(load_eval_set())}
        np.savez_compressed(DEMO_NPZ, **arrays)
        log(f"wrote {DEMO_NPZ}")
        return 0
    if args.out is None:
        parser.error("--out is required")
    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    _shim_missing_modules()
    import torch

    from asr_optimize.model.ctc import conv_output_length
    from asr_optimize.model.source import init_random_model
    from asr_optimize.paths import DEFAULT_MODEL, REPLICA_CONFIG
    from asr_optimize.runners.fused_engine import FusedEngineOptions, FusedRunner, build_fused_engine
    from asr_optimize.runners.torch_runner import TorchRunner
    from asr_optimize.transcribe import transcribe

    if not torch.cuda.is_available():
        log("no CUDA: nothing to probe")
        return 2
    props = torch.cuda.get_device_properties(0)
    env = {"gpu": props.name, "capability": f"{props.major}.{props.minor}", "torch": torch.__version__,
           "cuda": torch.version.cuda, "python": sys.version.split()[0]}
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = "missing"
    try:
        import transformers

        env["transformers"] = transformers.__version__
    except ImportError:
        pass
    log(f"env {env}")
    if args.longform:
        return longform_probe(args, env)
    results: dict[str, Any] = {"env": env}
    timing_rows: list[dict[str, Any]] = []
    check_rows: list[dict[str, Any]] = []
    work = Path(tempfile.mkdtemp(prefix="fused-probe-"))

    def left() -> float:
        return args.budget_s - (time.perf_counter() - started)

    waves, source = demo_audio()
    log(f"demo audio: {len(waves)} utterances from {source}")

    # -- 1. replica + engines ----------------------------------------------------------------------------------
    t0 = time.perf_counter()
    replica = init_random_model(REPLICA_CONFIG, work / "replica", seed=0)
    log(f"replica model written in {time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    eng = work / "replica-fp8"
    metrics = build_fused_engine(replica, eng, FusedEngineOptions(precision="fp8", calibration_device="cuda"),
                                 calibration_audio=waves)
    log(f"replica fp8 engine (holds the fp16 weights too) built in {time.perf_counter() - t0:.1f} s: "
        f"{ {k: v for k, v in metrics.items() if k != 'folded'} }")
    results["replica_build"] = metrics

    # -- 2. correctness on the replica -------------------------------------------------------------------------
    from asr_optimize.audio.load import make_batch, synthetic_audio

    probe = synthetic_audio(3, 10.0, seed=7)
    probe[1] = probe[1][: 7 * 16000]
    probe[2] = probe[2][: 3 * 16000 + 123]
    batch = make_batch(probe)
    frames = conv_output_length(batch.lengths, [10, 3, 3, 3, 3, 2, 2], [5, 2, 2, 2, 2, 2, 2])
    hf32 = TorchRunner(replica, device="cuda", precision="fp32")
    ref = hf32.infer(batch.input_values, batch.attention_mask)
    runners: dict[str, Any] = {}
    for precision in ("fp16", "fp8"):
        try:
            runners[precision] = FusedRunner(eng, device="cuda", precision=precision)
            out = runners[precision].infer(batch.input_values, batch.attention_mask)
            err = relative_error(out, ref, frames)
            alone = [runners[precision].infer(batch.input_values[i: i + 1, : batch.lengths[i]], None)
                     for i in range(3)]
            err["batched_vs_alone_max"] = float(max(np.abs(alone[i][0, : frames[i]] - out[i, : frames[i]]).max()
                                                    for i in range(3)))
            if precision == "fp8":
                err["fp8_mode"] = runners[precision].fp8_mode
            log(f"replica fused {precision} vs HF fp32 (padded batch 10/7/3 s): {err}")
            check_rows.append({"model": "replica", "runner": f"fused {precision}", **err})
        except Exception as exc:
            log(f"fused {precision} failed: {type(exc).__name__}: {exc}\n{traceback.format_exc()}")
            check_rows.append({"model": "replica", "runner": f"fused {precision}", "error": repr(exc)[:300]})
    hf16 = TorchRunner(replica, device="cuda", precision="fp16")
    err = relative_error(hf16.infer(batch.input_values, batch.attention_mask), ref, frames)
    check_rows.append({"model": "replica", "runner": "HF eager fp16", **err})
    log(f"replica HF fp16 vs HF fp32: {err}")

    # -- 3. demo model transcripts -----------------------------------------------------------------------------
    try:
        demo_eng = work / "demo-fp8"
        build_fused_engine(DEFAULT_MODEL, demo_eng, FusedEngineOptions(precision="fp8", calibration_device="cuda"),
                           calibration_audio=waves)
        ref_texts, _ = transcribe(TorchRunner(DEFAULT_MODEL, device="cuda", precision="fp32"), waves, DEFAULT_MODEL,
                                  batch_size=16)
        for precision in ("fp32", "fp16", "fp8"):
            runner = FusedRunner(demo_eng, device="cuda", precision=precision)
            texts, _ = transcribe(runner, waves, demo_eng, batch_size=16)
            same = sum(a == b for a, b in zip(texts, ref_texts, strict=True))
            texts1, _ = transcribe(runner, waves[:24], demo_eng, batch_size=1)
            same_alone = sum(a == b for a, b in zip(texts1, texts[:24], strict=True))
            row = {"model": "demo", "runner": f"fused {precision}", "identical_transcripts": f"{same}/{len(waves)}",
                   "batched_vs_alone_identical": f"{same_alone}/24"}
            check_rows.append(row)
            log(f"demo: {row}")
            runner.close()
    except Exception as exc:
        log(f"demo transcripts failed: {type(exc).__name__}: {exc}\n{traceback.format_exc()}")
    write_csv(args.out / "correctness.csv", check_rows)

    # -- 4. timings ----------------------------------------------------------------------------------------------
    def timed(label: str, runner: Any, shapes: list[tuple[int, float]]) -> None:
        for b, s in shapes:
            if left() < 30:
                log(f"budget: skipping {label} {b}x{s:g}s")
                continue
            reps = args.reps if b * s <= 160 else max(20, args.reps // 2 + 8)
            try:
                runner.reset_peak_memory()
                res = time_runner(runner, b, s, reps)
                res["peak_mb"] = runner.peak_memory_mb()
            except Exception as exc:
                log(f"{label} {b}x{s:g}s failed: {type(exc).__name__}: {exc}")
                res = {"error": repr(exc)[:200]}
            row = {"runner": label, "shape": f"{b}x{s:g}s", **res}
            timing_rows.append(row)
            log(f"{label:34s} {b:3d} x {s:4.1f} s  " + (
                f"p50 {res['p50_ms']:8.2f} ms  {res['x_real_time']:9.0f} x RT" if "p50_ms" in res else res["error"]))
            write_csv(args.out / "timings.csv", timing_rows)

    for precision in ("fp16", "fp8"):
        if precision in runners:
            timed(f"fused {precision} (graphs)", runners[precision], SHAPES)
    timed("HF eager fp16", hf16, SHAPES)
    timed("HF eager fp32 (baseline)", hf32, SHAPES[:2] if args.skip_hf32_big else SHAPES)
    hf16.close()
    hf32.close()
    variants = [v for v in args.variants.split(",") if v]
    for variant in variants:
        if left() < 60:
            break
        opts = {"nograph": {"cuda_graphs": False}, "noepilogue": {"gelu_epilogue": False},
                "notriton": {"use_triton": False}, "flash": {"sdpa_backend": "flash"},
                "efficient": {"sdpa_backend": "efficient"}, "cudnn": {"sdpa_backend": "cudnn"},
                "fp8rows": {"fp8_min_rows": 1024}, "exactgelu": {"fast_gelu": False, "gelu_epilogue": False},
                "fp8exactgelu": {"fast_gelu": False}, "cublaslt": {}, "fp8cublaslt": {},
                "noresidual": {"residual_epilogue": False}}[variant]
        precision = "fp8" if variant.startswith("fp8") else "fp16"
        blas = torch.backends.cuda.preferred_blas_library()
        if variant.endswith("cublaslt"):  # every GEMM through cuBLASLt (its heuristics pick other small-M kernels)
            torch.backends.cuda.preferred_blas_library("cublaslt")
        try:
            runner = FusedRunner(eng, device="cuda", precision=precision, **opts)
            timed(f"fused {precision} {variant}", runner, [(1, 1.0), (64, 10.0)])
            out = runner.infer(batch.input_values, batch.attention_mask)
            err = relative_error(out, ref, frames)
            check_rows.append({"model": "replica", "runner": f"fused {precision} {variant}", **err})
            runner.close()
        except Exception as exc:
            log(f"variant {variant} failed: {type(exc).__name__}: {exc}")
        finally:
            torch.backends.cuda.preferred_blas_library(blas)
    write_csv(args.out / "correctness.csv", check_rows)

    # -- 5. kernel breakdown ---------------------------------------------------------------------------------
    if "fp16" in runners and left() > 20:
        for precision in ("fp16", "fp8"):
            if precision not in runners:
                continue
            prof_runner = FusedRunner(eng, device="cuda", precision=precision, cuda_graphs=False)
            for b, s in ((64, 10.0), (1, 1.0)):
                try:
                    cats, rows = kernel_breakdown(prof_runner, b, s)
                    total = sum(cats.values())
                    log(f"kernels fused {precision} {b}x{s:g}s: total {total:.2f} ms " +
                        " ".join(f"{k} {v:.2f}" for k, v in cats.items()))
                    for r in rows[:14]:
                        log(f"    {r[3]:8.3f} ms  x{r[2]:<4d} {r[1]:11s} {r[0]}")
                    write_csv(args.out / f"kernels_{precision}_{b}x{int(s)}s.csv",
                              [{"kernel": r[0], "category": r[1], "calls_per_forward": r[2], "ms_per_forward": r[3]}
                               for r in rows])
                    results[f"breakdown_{precision}_{b}x{int(s)}s"] = {"total_ms": total, **cats}
                except Exception as exc:
                    log(f"profile {precision} {b}x{s:g}s failed: {type(exc).__name__}: {exc}")
            prof_runner.close()

    # -- 6. torch.compile alternative (optional) -----------------------------------------------------------
    if args.compile and "fp16" in runners and left() > 150:
        try:
            import torch._inductor.config as inductor_config

            inductor_config.freezing = True
            r = runners["fp16"]
            r._graphs.clear()
            model = r.model
            eager_forward = model.forward
            model.forward = torch.compile(eager_forward, dynamic=False)
            t0 = time.perf_counter()
            timed("fused fp16 + torch.compile", r, [(64, 10.0)])
            log(f"compile + timing took {time.perf_counter() - t0:.1f} s")
            model.forward = eager_forward
        except Exception as exc:
            log(f"torch.compile failed: {type(exc).__name__}: {exc}")

    results["timings"] = timing_rows
    results["correctness"] = check_rows
    (args.out / "results.json").write_text(json.dumps(results, indent=1, default=str), encoding="utf-8")
    log(f"done in {time.perf_counter() - started:.0f} s")
    print("\nshape      " + "".join(f"{r:>28s}" for r in dict.fromkeys(x["runner"] for x in timing_rows)))
    for b, s in SHAPES:
        cells = []
        for label in dict.fromkeys(x["runner"] for x in timing_rows):
            hit = [x for x in timing_rows if x["runner"] == label and x["shape"] == f"{b}x{s:g}s" and "p50_ms" in x]
            cells.append(f"{hit[0]['p50_ms']:9.2f} ms {hit[0]['x_real_time']:8.0f}x" if hit else " " * 28)
        print(f"{b:3d} x {s:4.1f} s" + "".join(f"{c:>28s}" for c in cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
