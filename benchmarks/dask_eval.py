"""The evaluate stage sharded over Dask: how much faster it is on N workers than on one, on this host's CPU cores,
and that every worker count gives the same result bit for bit.

    python -m benchmarks.dask_eval --workers 1 4 --threads 4 --variants 10 --out DIR

The set: the demo test set (110 utterances) and variants of it, each variant of every utterance with the same
reference text: speed perturbation (resampled 0.85-1.15x, which moves pitch and tempo together, as sox/Kaldi speed
perturbation does) and white noise at 20 and 30 dB SNR (fixed seed). ``--variants 10`` gives 1,100 utterances.

The backend is the reference one, PyTorch eager fp32 on CPU, with ``--threads`` intra-op threads in every worker and
in the one-process run (the same thread count gives the same CPU logits). Each worker count runs the stage as the
flow does (``tasks.evaluate.evaluate_backends`` with ``options.evaluate.dask``: prefect-dask's ``DaskTaskRunner`` on
a temporary ``LocalCluster`` of single-threaded worker processes, one Prefect task run per shard). Wall time is the
whole call: cluster start, model load in every worker, transcription, merge, scoring. The one-process run (no Dask)
(``--no-reference`` skips it) is the result every sharded run must equal: WER/CER, parity, gate decisions and
transcripts.csv; without it, every run must equal the first one.

Writes ``dask_eval.csv``, ``dask_eval.md`` and ``dask_eval.json`` under ``--out`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from asr_optimize.quality.eval_sets import EvalSet, EvalSource, Utterance, load_eval_set

SPEEDS = (0.85, 0.9, 0.95, 1.05, 1.1, 1.15)
NOISE_SNR_DB = (20.0, 30.0)


def _speed(audio: np.ndarray, factor: float) -> np.ndarray:
    """Play ``audio`` ``factor`` times faster (shorter and higher), by resampling."""
    from fractions import Fraction

    from scipy.signal import resample_poly

    ratio = Fraction(1 / factor).limit_denominator(100)
    return resample_poly(audio, ratio.numerator, ratio.denominator).astype(np.float32)


def _noisy(audio: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    power = float(np.mean(audio.astype(np.float64) ** 2)) or 1e-12
    noise = rng.standard_normal(audio.shape) * np.sqrt(power / 10 ** (snr_db / 10))
    return (audio + noise).astype(np.float32)


def variant_set(n_variants: int, seed: int = 0) -> EvalSet:
    """The demo test set and ``n_variants - 1`` variants of every utterance (see the module docstring)."""
    base = load_eval_set(EvalSource(kind="demo"))
    rng = np.random.default_rng(seed)
    makers = [("orig", lambda a: a)]
    makers += [(f"speed{f:g}", lambda a, f=f: _speed(a, f)) for f in SPEEDS]
    makers += [(f"snr{s:g}", lambda a, s=s: _noisy(a, s, rng)) for s in NOISE_SNR_DB]
    makers += [("speed1.1-snr20", lambda a: _noisy(_speed(a, 1.1), 20.0, rng))]
    if n_variants > len(makers):
        raise SystemExit(f"--variants: at most {len(makers)}")
    utterances = []
    for name, make in makers[:n_variants]:
        for u in base.utterances:
            audio = make(u.audio)
            utterances.append(Utterance(id=f"{u.id}-{name}", audio=audio, text=u.text,
                                        duration_s=len(audio) / base.sample_rate))
    return EvalSet(utterances=utterances, bad_rows=[], n_rows=len(utterances), source=base.source)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--threads", type=int, default=4, help="PyTorch threads per worker and in the reference run")
    parser.add_argument("--variants", type=int, default=10)
    parser.add_argument("--shard-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--reference", action=argparse.BooleanOptionalAction, default=True,
                        help="first run the one-process evaluation (no Dask) that every sharded run must equal")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    import torch

    from asr_optimize.loadtest.charts import write_tables
    from asr_optimize.quality.longform import DEMO_MODEL_DIR
    from asr_optimize.runners.registry import baseline_spec
    from tasks.evaluate import DaskOptions, EvaluateOptions, evaluate_backends

    torch.set_num_threads(args.threads)
    eval_set = variant_set(args.variants)
    audio_s = eval_set.total_duration_s
    print(f"{len(eval_set)} utterances, {audio_s / 60:.1f} min of audio; {os.cpu_count()} CPU cores")
    specs = [baseline_spec(DEMO_MODEL_DIR, "cpu")]
    opts = EvaluateOptions(batch_size=args.batch_size)

    rows: list[dict] = []
    reference: tuple[dict, bytes] | None = None  # the first run's result: every other run must equal it
    runs = ([0] if args.reference else []) + args.workers
    for n in runs:
        run_opts = opts.model_copy(update={"dask": DaskOptions(
            enabled=True, n_workers=n, torch_threads=args.threads, shard_size=args.shard_size)}) if n else opts
        folder = args.out / (f"dask-{n}-workers" if n else "one-process")
        began = time.perf_counter()
        result = evaluate_backends(specs, eval_set, DEMO_MODEL_DIR, run_opts, folder)
        wall = time.perf_counter() - began
        this = (result.model_dump(), (folder / "transcripts.csv").read_bytes())
        reference = reference or this
        score = result.backends[0].score
        rows.append({"run": f"Dask, {n} worker(s)" if n else "one process (no Dask)", "workers": n,
                     "threads_per_worker": args.threads, "utterances": len(eval_set), "audio_s": round(audio_s, 1),
                     "wall_s": round(wall, 2), "x_real_time": round(audio_s / wall, 1), "speedup_vs_1_worker": None,
                     "identical_to_first_run": this == reference, "wer": score.wer if score else None})
        one_worker = next((r["wall_s"] for r in rows if r["workers"] == 1), None)
        for r in rows:
            r["speedup_vs_1_worker"] = round(one_worker / r["wall_s"], 2) if one_worker and r["workers"] else None
        markdown = _table(rows, eval_set, audio_s, torch.__version__)
        write_tables(args.out, "dask_eval", rows, markdown, json.dumps(rows, indent=1))  # after every run
        print(f"{rows[-1]['run']}: {wall:.1f} s, identical to the first run: {this == reference}", flush=True)
    print(markdown)
    if not all(r["identical_to_first_run"] for r in rows):
        raise SystemExit("a run differs from the first one")


def _table(rows: list[dict], eval_set: EvalSet, audio_s: float, torch_version: str) -> str:
    from asr_optimize.loadtest.charts import markdown_table

    return "\n".join([
        f"Dask evaluation on {platform.node()} ({os.cpu_count()} CPU cores, {platform.machine()}), torch "
        f"{torch_version}: {len(eval_set)} utterances, {audio_s / 60:.1f} min, PyTorch eager fp32 on CPU", "",
        markdown_table(rows, [(k, k) for k in rows[0]])])


if __name__ == "__main__":
    main()
