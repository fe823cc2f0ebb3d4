"""Measure chunked transcription of long recordings (1, 5, 30 minutes of the demo test set joined with pauses):
WER against the same utterances transcribed one at a time, speed and peak memory, each length in a fresh process.

``python -m benchmarks.long_form --minutes 1 5 30 --out DIR`` prints a markdown table and writes ``longform.csv``.

``python -m benchmarks.long_form --recordings DIR/recordings.jsonl`` measures a folder of recordings instead (the
checking set, ``python -m tools.longform_check --out DIR``): each recording transcribed whole against each of its
utterances (``spans``) cut from the same file and transcribed alone, one at a time, as files; in one process.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from asr_optimize.audio.longform_data import GAP_S, build_recording
from asr_optimize.model.ctc import CtcVocabulary, conv_geometry
from asr_optimize.quality.eval_sets import load_eval_set
from asr_optimize.quality.longform import DEMO_MODEL_DIR, utterance_hypotheses

if TYPE_CHECKING:
    from asr_optimize.transcribe import ChunkingOptions


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _measure_one(args: argparse.Namespace) -> dict[str, object]:
    """Child process: build one recording, transcribe it (chunked or one pass), report WER/CER, time, peak RSS."""
    from asr_optimize.quality.metrics import wer_cer
    from asr_optimize.runners.registry import baseline_spec, build_runner
    from asr_optimize.transcribe import transcribe

    base = load_eval_set()
    recording = build_recording(base.utterances, args.minutes[0], gap_s=args.gap_s)
    del base
    runner = build_runner(baseline_spec(args.model, args.device))
    opts = _options(args)
    began, cpu_began = time.perf_counter(), time.process_time()
    result = transcribe(runner, [recording.audio], args.model, chunking=opts)
    elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu_began
    rates = wer_cer([recording.text], result.texts)
    hop, _ = conv_geometry(args.model)
    pieces = utterance_hypotheses(result.logits[0], recording.spans, CtcVocabulary.from_model_dir(args.model), hop)
    return {
        "minutes": args.minutes[0], "gap_s": args.gap_s, "mode": _mode(args), "chunk_s": args.chunk_s,
        "stride_s": args.stride_s, "batch_size": args.batch_size, "normalization": args.normalization,
        "wer": rates.wer, "cer": rates.cer, "ref_words": rates.ref_words, "windows": result.windows[0],
        "time_s": elapsed, "cpu_s": cpu, "audio_s": recording.duration_s, "peak_rss_mb": peak_rss_mb(),
        "hypothesis": result.texts[0], "utterance_ids": list(recording.utterance_ids),
        "utterance_hypotheses": pieces,
    }


def _options(args: argparse.Namespace) -> ChunkingOptions:
    from asr_optimize.transcribe import ChunkingOptions

    return ChunkingOptions(chunk_s=args.chunk_s, stride_s=args.stride_s, batch_size=args.batch_size,
                           normalization=args.normalization, enabled=not args.one_pass,
                           split_on_silence=not args.no_split_on_silence, pad_after_s=args.pad_after_s,
                           pad_before_s=args.pad_before_s, min_silence_s=args.min_silence_s,
                           silence_db=args.silence_db, context_before_s=args.context_before_s,
                           context_after_s=args.context_after_s,
                           noise_margin_db=args.noise_margin_db if (args.noise_margin_db or -1) > 0 else None)


def _mode(args: argparse.Namespace) -> str:
    if args.one_pass:
        return "one pass"
    if args.no_split_on_silence:
        return "fixed windows"
    return (f"silence-split (min {args.min_silence_s:g} s, {args.silence_db:g} dB, pad {args.pad_before_s:g}/"
            f"{args.pad_after_s:g} s, context {args.context_before_s:g}/{args.context_after_s:g} s, noise margin "
            f"{args.noise_margin_db if args.noise_margin_db is not None else 'off'}) + windows")


def _measure_recordings(args: argparse.Namespace) -> list[dict[str, object]]:
    """Each recording of a ``recordings.jsonl`` transcribed whole and its utterances (``spans``) one at a time."""
    from asr_optimize.audio.load import load_audio_file
    from asr_optimize.hashing import sha256_file, stable_hash
    from asr_optimize.quality.metrics import wer_cer
    from asr_optimize.runners.registry import baseline_spec, build_runner
    from asr_optimize.transcribe import transcribe

    manifest = Path(args.recordings)
    rows = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines() if line.strip()]
    runner = build_runner(baseline_spec(args.model, args.device))
    opts = _options(args)
    vocab = CtcVocabulary.from_model_dir(args.model)
    hop, _ = conv_geometry(args.model)
    weights = sha256_file(next(Path(args.model).glob("*.safetensors"), Path(args.model) / "config.json"))
    out = []
    for row in rows:
        path = manifest.parent / row["audio"]
        wave = load_audio_file(path)
        spans = [tuple(span) for span in row["spans"]]
        cache = manifest.parent / f"alone-{stable_hash([weights, args.device, sha256_file(path)])}.json"
        if cache.is_file():  # the utterances alone do not depend on the chunking options
            alone = json.loads(cache.read_text(encoding="utf-8"))
        else:
            alone = [transcribe(runner, [wave[a:b]], args.model, batch_size=1).texts[0] for a, b in spans]
            cache.write_text(json.dumps(alone, ensure_ascii=False), encoding="utf-8")
        began = time.perf_counter()
        result = transcribe(runner, [wave], args.model, chunking=opts)
        elapsed = time.perf_counter() - began
        whole = wer_cer([row["text"]], result.texts)
        single = wer_cer([row["text"]], [" ".join(alone)])
        pieces = utterance_hypotheses(result.logits[0], spans, vocab, hop)
        ids = row["utterance_ids"]
        refs = dict(zip(ids, row["utterance_texts"], strict=True))
        result_row: dict[str, object] = {
            "recording": row["id"], "mode": _mode(args), "normalization": args.normalization,
            "utterances": len(ids), "ref_words": whole.ref_words, "windows": result.windows[0],
            "wer": whole.wer, "per_utterance_wer": single.wer,
            "word_errors": round(whole.wer * whole.ref_words), "per_utterance_word_errors":
            round(single.wer * single.ref_words), "cer": whole.cer, "time_s": elapsed, "audio_s": wave.size / 16000,
            "hypothesis": result.texts[0], "utterance_hypotheses": pieces, "alone": alone,
        }
        result_row.update(_compare_utterances(ids, pieces, refs, dict(zip(ids, alone, strict=True))))
        out.append(result_row)
        print(f"{row['id']}: WER {100 * whole.wer:.2f}% (utterances alone {100 * single.wer:.2f}%), "
              f"{result.windows[0]} windows, as alone {result_row['utterances_same']} of {len(ids)}",
              file=sys.stderr)
    return out


def _recordings_table(rows: list[dict[str, object]]) -> str:
    head = ("| recording | utterances | words | windows | per-utterance WER | long-form WER | difference | "
            "utterances as alone / worse / better |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lines.append(f"| {r['recording']} | {r['utterances']} | {r['ref_words']} | {r['windows']} "
                     f"| {100 * r['per_utterance_wer']:.2f}% | {100 * r['wer']:.2f}% "
                     f"| {100 * (r['wer'] - r['per_utterance_wer']):+.2f} "
                     f"| {r['utterances_same']} / {r['utterances_worse']} / {r['utterances_better']} |")
    words = sum(int(r["ref_words"]) for r in rows)
    alone = sum(int(r["per_utterance_word_errors"]) for r in rows) / words
    whole = sum(int(r["word_errors"]) for r in rows) / words
    same, worse, better = (sum(int(r[k]) for r in rows) for k in ("utterances_same", "utterances_worse",
                                                                     "utterances_better"))
    lines.append(f"| **all (pooled)** | {sum(int(r['utterances']) for r in rows)} | {words} "
                 f"| {sum(int(r['windows']) for r in rows)} | {100 * alone:.2f}% | {100 * whole:.2f}% "
                 f"| {100 * (whole - alone):+.2f} | {same} / {worse} / {better} |")
    return "\n".join(lines)


def _per_utterance_reference(model: Path, device: str) -> dict[str, str]:
    """Per-utterance hypotheses of the demo test set: the yardstick each long recording is compared with."""
    from asr_optimize.runners.registry import baseline_spec, build_runner
    from asr_optimize.transcribe import transcribe

    base = load_eval_set()
    runner = build_runner(baseline_spec(model, device))
    texts = transcribe(runner, [u.audio for u in base.utterances], model).texts
    return dict(zip(base.ids, texts, strict=True))


def _compare_utterances(ids: Sequence[str], pieces: Sequence[str], refs: dict[str, str],
                        alone: dict[str, str]) -> dict[str, object]:
    """Each utterance's piece of the recording's transcript against the same utterance transcribed alone."""
    from asr_optimize.quality.metrics import wer_cer

    chunked = wer_cer([refs[i] for i in ids], list(pieces), ids=list(ids)).utterances
    single = wer_cer([refs[i] for i in ids], [alone[i] for i in ids], ids=list(ids)).utterances
    delta = [c.word_errors - s.word_errors for c, s in zip(chunked, single, strict=True)]
    return {
        "utterances_same": sum(c.hypothesis == s.hypothesis for c, s in zip(chunked, single, strict=True)),
        "utterances_worse": sum(d > 0 for d in delta), "words_worse": sum(d for d in delta if d > 0),
        "utterances_better": sum(d < 0 for d in delta), "words_better": -sum(d for d in delta if d < 0),
    }


def _table(rows: list[dict[str, object]]) -> str:
    head = ("| minutes | mode | chunk/stride s | norm | WER | per-utt WER, same audio | utterances as alone / worse / "
            "better | CER | windows | time s | x real time | s per audio min | CPU s per audio min | peak RSS MB |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lines.append(
            f"| {r['minutes']:g} | {r['mode']} | {r['chunk_s']:g}/{r['stride_s']:g} | {r['normalization']} "
            f"| {100 * r['wer']:.2f}% | {100 * r['per_utterance_wer']:.2f}% "
            f"| {r['utterances_same']} / {r['utterances_worse']} / {r['utterances_better']} "
            f"| {100 * r['cer']:.2f}% | {r['windows']} "
            f"| {r['time_s']:.1f} | {r['audio_s'] / r['time_s']:.0f} | {60 * r['time_s'] / r['audio_s']:.2f} "
            f"| {60 * r['cpu_s'] / r['audio_s']:.2f} "
            f"| {r['peak_rss_mb']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Measure chunked transcription of 1/5/30-minute recordings, each length in a fresh process."""
    from asr_optimize.audio.chunking import NORMALIZATIONS
    from asr_optimize.transcribe import DEFAULT_CHUNK_S, DEFAULT_STRIDE_S, DEFAULT_WINDOW_BATCH, ChunkingOptions

    parser = argparse.ArgumentParser(prog="python -m benchmarks.long_form", description=main.__doc__)
    parser.add_argument("--minutes", type=float, nargs="+", default=[1.0, 5.0, 30.0])
    parser.add_argument("--out", type=Path, default=None, help="folder for longform.csv (and per-length JSON)")
    parser.add_argument("--model", type=Path, default=DEMO_MODEL_DIR)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--chunk-s", type=float, default=DEFAULT_CHUNK_S)
    parser.add_argument("--stride-s", type=float, default=DEFAULT_STRIDE_S)
    parser.add_argument("--batch-size", type=int, default=DEFAULT_WINDOW_BATCH, help="windows per runner call")
    parser.add_argument("--normalization", choices=list(NORMALIZATIONS), default=ChunkingOptions().normalization)
    parser.add_argument("--one-pass", action="store_true", help="no chunking (the old behaviour), for comparison")
    parser.add_argument("--no-split-on-silence", action="store_true", help="fixed overlapping windows only")
    parser.add_argument("--gap-s", type=float, default=GAP_S, help="silence between the joined utterances")
    parser.add_argument("--min-silence-s", type=float, default=ChunkingOptions().min_silence_s)
    parser.add_argument("--pad-after-s", type=float, default=ChunkingOptions().pad_after_s)
    parser.add_argument("--pad-before-s", type=float, default=ChunkingOptions().pad_before_s)
    parser.add_argument("--silence-db", type=float, default=ChunkingOptions().silence_db)
    parser.add_argument("--context-before-s", type=float, default=ChunkingOptions().context_before_s)
    parser.add_argument("--context-after-s", type=float, default=ChunkingOptions().context_after_s)
    parser.add_argument("--noise-margin-db", type=float, default=ChunkingOptions().noise_margin_db,
                        help="a negative value: off")
    parser.add_argument("--recordings", type=Path, default=None,
                        help="a recordings.jsonl (python -m tools.longform_check) instead of the demo test set")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_measure_one(args), ensure_ascii=False))
        return 0
    if args.recordings:
        measured = _measure_recordings(args)
        print(_recordings_table(measured))
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "recordings.json").write_text(json.dumps(measured, ensure_ascii=False, indent=1))
        return 0

    from asr_optimize.quality.metrics import wer_cer

    reference = _per_utterance_reference(args.model, args.device)
    rows = []
    for minutes in args.minutes:
        cmd = [sys.executable, "-m", "benchmarks.long_form", "--child", "--minutes", f"{minutes:g}",
               "--model", str(args.model), "--device", args.device, "--chunk-s", f"{args.chunk_s:g}",
               "--stride-s", f"{args.stride_s:g}", "--batch-size", str(args.batch_size),
               "--normalization", args.normalization, "--min-silence-s", f"{args.min_silence_s:g}",
               "--pad-after-s", f"{args.pad_after_s:g}", "--gap-s", f"{args.gap_s:g}"]
        cmd += ["--pad-before-s", f"{args.pad_before_s:g}", "--silence-db", f"{args.silence_db:g}",
                "--context-before-s", f"{args.context_before_s:g}", "--context-after-s", f"{args.context_after_s:g}"]
        cmd += ["--noise-margin-db", f"{args.noise_margin_db:g}"] if args.noise_margin_db is not None else []
        cmd += ["--one-pass"] if args.one_pass else []
        cmd += ["--no-split-on-silence"] if args.no_split_on_silence else []
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(done.stderr, file=sys.stderr)
            return done.returncode
        row = json.loads(done.stdout.strip().splitlines()[-1])
        base = load_eval_set()
        refs = dict(zip(base.ids, base.texts, strict=True))
        ids = row["utterance_ids"]
        joined_ref = " ".join(refs[i] for i in ids)
        row["per_utterance_wer"] = wer_cer([joined_ref], [" ".join(reference[i] for i in ids)]).wer
        row["utterances"] = len(ids)
        row.update(_compare_utterances(ids, row["utterance_hypotheses"], refs, reference))
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / f"longform-{minutes:g}min.json").write_text(json.dumps(row, ensure_ascii=False, indent=1))
        row.pop("hypothesis")
        row.pop("utterance_ids")
        row.pop("utterance_hypotheses")
        rows.append(row)
        print(f"{minutes:g} min: WER {100 * row['wer']:.2f}% (same audio one utterance at a time "
              f"{100 * row['per_utterance_wer']:.2f}%)  {row['time_s']:.1f} s  {row['peak_rss_mb']:.0f} MB; utterances "
              f"as alone {row['utterances_same']}, worse {row['utterances_worse']} (+{row['words_worse']} errors), "
              f"better {row['utterances_better']} (-{row['words_better']})", file=sys.stderr)
    print(_table(rows))
    if args.out:
        with (args.out / "longform.csv").open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return 0 if all(math.isfinite(float(r["wer"])) for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
