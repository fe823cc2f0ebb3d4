"""fp8 and fp8-mixed fused engines against fp16 and PyTorch eager fp32, on one GPU, in one process.

``python -m benchmarks.fp8_mixed --out DIR [--fractions 0.125,0.25,0.5]``:

1. accuracy on the demo model: engines fp16, fp8 and fp8-mixed at each fraction, calibrated on the bundled
   calibration set; greedy transcripts identical to PyTorch eager fp32 on the demo test set (what the promotion gate
   asks, >= 98%) and on the calibration set (where the plan was chosen), and WER on the test set;
2. speed on the replica model (the real IndicWav2Vec shape, random weights): p50 of 64 x 10 s and 1 x 1 s with CUDA
   graphs, beside PyTorch eager fp32 measured in the same run (the ratio column).

Writes ``accuracy.csv``, ``timings.csv``, ``plans.json`` and ``results.md`` into DIR.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.engine_probe import log, time_runner, write_csv

SHAPES = [(64, 10.0), (1, 1.0)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--fractions", default="0.125,0.25,0.5", help="fp8-mixed: shares of GEMMs kept in fp16")
    parser.add_argument("--reps", type=int, default=30)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    import torch

    from asr_optimize.model.source import init_random_model
    from asr_optimize.paths import DEFAULT_MODEL, REPLICA_CONFIG
    from asr_optimize.quality.eval_sets import calibration_audio, load_eval_set
    from asr_optimize.quality.metrics import wer_cer
    from asr_optimize.runners.fused_engine import FusedEngineOptions, FusedRunner, build_fused_engine
    from asr_optimize.runners.torch_runner import TorchRunner
    from asr_optimize.transcribe import transcribe

    if not torch.cuda.is_available():
        log("no CUDA GPU: nothing to measure")
        return 2
    props = torch.cuda.get_device_properties(0)
    env = {"gpu": props.name, "capability": f"{props.major}.{props.minor}", "torch": torch.__version__,
           "cuda": torch.version.cuda, "python": sys.version.split()[0]}
    log(f"env {env}")
    fractions = [float(f) for f in args.fractions.split(",") if f]
    variants: list[tuple[str, FusedEngineOptions]] = [
        ("fp16", FusedEngineOptions(precision="fp16")),
        ("fp8", FusedEngineOptions(precision="fp8", calibration_device="cuda")),
        *[(f"fp8-mixed@{f:g}", FusedEngineOptions(precision="fp8-mixed", calibration_device="cuda",
                                                   mixed_fp16_fraction=f)) for f in fractions],
    ]
    calibration = calibration_audio()
    test = load_eval_set()
    test_audio, test_texts = [u.audio for u in test], [u.text for u in test]
    work = Path(tempfile.mkdtemp(prefix="fp8-mixed-"))
    plans: dict[str, Any] = {"env": env}

    # -- 1. accuracy on the demo model -----------------------------------------------------------------------------
    reference = TorchRunner(DEFAULT_MODEL, device="cuda", precision="fp32")
    ref_test, _ = transcribe(reference, test_audio, DEFAULT_MODEL, batch_size=16)
    ref_calib, _ = transcribe(reference, calibration, DEFAULT_MODEL, batch_size=16)
    reference.close()
    accuracy: list[dict[str, Any]] = [{"engine": "PyTorch eager fp32 (reference)", "fp16_gemms": "",
                                       "test_identical": f"{len(test_audio)}/{len(test_audio)}",
                                       "test_identical_pct": 100.0, "calibration_identical_pct": 100.0,
                                       "test_wer_pct": round(100 * wer_cer(test_texts, ref_test).wer, 2)}]
    for label, opts in variants:
        engine = work / f"demo-{label}"
        metrics = build_fused_engine(DEFAULT_MODEL, engine, opts, calibration_audio=calibration)
        runner = FusedRunner(engine, device="cuda", precision=opts.precision)
        got_test, _ = transcribe(runner, test_audio, engine, batch_size=16)
        got_calib, _ = transcribe(runner, calibration, engine, batch_size=16)
        runner.close()
        same = sum(a == b for a, b in zip(got_test, ref_test, strict=True))
        same_calib = sum(a == b for a, b in zip(got_calib, ref_calib, strict=True))
        row = {"engine": f"fused {label}", "fp16_gemms": metrics.get("fp16_gemms", ""),
               "test_identical": f"{same}/{len(test_audio)}",
               "test_identical_pct": round(100 * same / len(ref_test), 2),
               "calibration_identical_pct": round(100 * same_calib / len(ref_calib), 2),
               "test_wer_pct": round(100 * wer_cer(test_texts, got_test).wer, 2)}
        accuracy.append(row)
        log(f"demo {row}")
        if opts.precision == "fp8-mixed":
            plans[f"demo {label}"] = json.loads((engine / "engine.json").read_text())["fp8"]["mixed_plan"]
        write_csv(args.out / "accuracy.csv", accuracy)

    # -- 2. speed on the replica -------------------------------------------------------------------------------------
    replica = init_random_model(REPLICA_CONFIG, work / "replica", seed=0)
    timings: list[dict[str, Any]] = []
    baseline: dict[str, float] = {}

    def timed(label: str, runner: Any) -> None:
        for batch, seconds in SHAPES:
            res = time_runner(runner, batch, seconds, args.reps if batch * seconds <= 160 else 20)
            shape = f"{batch}x{seconds:g}s"
            if label.startswith("PyTorch eager fp32"):
                baseline[shape] = res["p50_ms"]
            row = {"runner": label, "shape": shape, "p50_ms": round(res["p50_ms"], 3),
                   "p90_ms": round(res["p90_ms"], 3), "x_real_time": round(res["x_real_time"], 1),
                   "vs_eager_fp32": round(baseline[shape] / res["p50_ms"], 2) if shape in baseline else ""}
            timings.append(row)
            log(f"{label:34s} {shape:8s} p50 {row['p50_ms']:9.3f} ms {row['x_real_time']:10.1f}x RT")
            write_csv(args.out / "timings.csv", timings)

    eager = TorchRunner(replica, device="cuda", precision="fp32")
    timed("PyTorch eager fp32 (baseline)", eager)
    eager.close()
    for label, opts in variants:
        engine = work / f"replica-{label}"
        started = time.perf_counter()
        metrics = build_fused_engine(replica, engine, opts, calibration_audio=calibration)
        log(f"replica {label} built in {time.perf_counter() - started:.1f} s ({metrics.get('fp16_gemms', 0)} GEMMs "
            "in fp16)")
        if opts.precision == "fp8-mixed":
            plans[f"replica {label}"] = json.loads((engine / "engine.json").read_text())["fp8"]["mixed_plan"]
        runner = FusedRunner(engine, device="cuda", precision=opts.precision)
        timed(f"fused {label}", runner)
        runner.close()
        torch.cuda.empty_cache()
    (args.out / "plans.json").write_text(json.dumps(plans, indent=1))

    lines = [f"# fp8-mixed fused engines on {env['gpu']}", "", f"torch {env['torch']}, CUDA {env['cuda']}", "",
             "| engine | GEMMs in fp16 | demo test set identical to fp32 | calibration set identical | test WER % |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['engine']} | {r['fp16_gemms']} | {r['test_identical']} ({r['test_identical_pct']}%) | "
              f"{r['calibration_identical_pct']}% | {r['test_wer_pct']} |" for r in accuracy]
    lines += ["", "| runner (replica) | shape | p50 ms | x real time | vs eager fp32 |", "|---|---|---|---|---|"]
    lines += [f"| {r['runner']} | {r['shape']} | {r['p50_ms']} | {r['x_real_time']:,.0f} | {r['vs_eager_fp32']} |"
              for r in timings]
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
