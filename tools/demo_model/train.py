"""Train the small demo ``Wav2Vec2ForCTC`` (Hindi characters, CTC) on the synthetic corpus.

    python -m tools.demo_model.train --train DATA/train.jsonl --dev DATA/dev.jsonl \\
        --test asr_optimize/assets/demo-testset/manifest.jsonl --out OUT --max-steps 9000 --time-budget 420

The model keeps IndicWav2Vec's conventions (layer-norm feature encoder, stable layer norm, the same
conv kernels/strides, vocabulary and feature extractor) at about 4.6 M parameters. Training runs in
bf16 autocast on CUDA (fp32 on CPU), AdamW with warmup and cosine decay, length-bucketed batches, and
stops at ``--max-steps`` or after ``--time-budget`` seconds, whichever comes first (the learning-rate
schedule follows whichever is further along). The folder is saved fp32 with ``save_pretrained``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tools.demo_model.evaluate import load_audio, read_manifest, score, transcribe
from tools.demo_model.vocab import HINDI_VOCAB, PAD_TOKEN, UNK_TOKEN, WORD_DELIMITER


def build_processor() -> Any:
    """Wav2Vec2Processor with the IndicWav2Vec Hindi vocabulary and feature-extractor settings."""
    from transformers import Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor, Wav2Vec2Processor

    with tempfile.TemporaryDirectory() as tmp:
        vocab = Path(tmp) / "vocab.json"
        vocab.write_text(json.dumps(HINDI_VOCAB, ensure_ascii=False, indent=1), encoding="utf-8")
        tokenizer = Wav2Vec2CTCTokenizer(
            str(vocab), unk_token=UNK_TOKEN, pad_token=PAD_TOKEN, word_delimiter_token=WORD_DELIMITER
        )
    extractor = Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16_000, padding_value=0.0, do_normalize=True, return_attention_mask=True
    )
    return Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer)


def build_model(hidden: int = 256, layers: int = 4, heads: int = 4, ffn: int = 1024, conv: int = 256) -> Any:
    """A randomly initialised small Wav2Vec2ForCTC with the replica's feature-encoder geometry."""
    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

    config = Wav2Vec2Config(
        vocab_size=len(HINDI_VOCAB),
        pad_token_id=HINDI_VOCAB[PAD_TOKEN],
        bos_token_id=0,
        eos_token_id=2,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=ffn,
        conv_dim=[conv] * 7,
        conv_kernel=[10, 3, 3, 3, 3, 2, 2],
        conv_stride=[5, 2, 2, 2, 2, 2, 2],
        conv_bias=True,
        feat_extract_norm="layer",
        feat_extract_activation="gelu",
        do_stable_layer_norm=True,
        num_conv_pos_embeddings=128,
        num_conv_pos_embedding_groups=16,
        hidden_act="gelu",
        hidden_dropout=0.05,
        attention_dropout=0.05,
        activation_dropout=0.0,
        feat_proj_dropout=0.05,
        final_dropout=0.0,
        layerdrop=0.0,
        mask_time_prob=0.05,
        mask_time_length=5,
        mask_feature_prob=0.0,
        ctc_loss_reduction="mean",
        ctc_zero_infinity=True,
        architectures=["Wav2Vec2ForCTC"],
    )
    return Wav2Vec2ForCTC(config)


def encode_text(text: str) -> list[int]:
    """Label ids by longest vocabulary match, space -> ``|``.

    Not ``tokenizer(text)``: its multi-character (nukta) tokens strip the spaces around them.
    """
    ids, i = [], 0
    while i < len(text):
        if text[i] == " ":
            ids.append(HINDI_VOCAB[WORD_DELIMITER])
            i += 1
            continue
        for size in (2, 1):
            piece = text[i : i + size]
            if len(piece) == size and piece in HINDI_VOCAB:
                ids.append(HINDI_VOCAB[piece])
                i += size
                break
        else:
            raise ValueError(f"character {text[i]!r} of {text!r} is not in the vocabulary")
    return ids


def normalize_audio(audio: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance: what Wav2Vec2FeatureExtractor(do_normalize=True) does per clip."""
    return ((audio - audio.mean()) / np.sqrt(audio.var() + 1e-7)).astype(np.float32)


def load_split(manifest: Path, limit: int | None = None) -> tuple[list[np.ndarray], list[str]]:
    """All clips (raw float32) and texts of a manifest, read in parallel."""
    rows = read_manifest(manifest, limit)
    with ThreadPoolExecutor(16) as pool:
        audios = list(pool.map(load_audio, [r["audio_path"] for r in rows]))
    return audios, [r["text"] for r in rows]


def batches(lengths: list[int], batch_size: int, rng: random.Random) -> Iterator[list[int]]:
    """Endless length-bucketed batches: sort by jittered length, cut, shuffle the batch order."""
    while True:
        order = sorted(range(len(lengths)), key=lambda i: lengths[i] * (1 + 0.1 * rng.random()))
        chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        rng.shuffle(chunks)
        yield from chunks


def collate(audios: list[np.ndarray], labels: list[list[int]]) -> dict[str, torch.Tensor]:
    """Pad normalized audio with zeros (+ attention mask) and labels with -100."""
    n, t = len(audios), max(len(a) for a in audios)
    x = np.zeros((n, t), np.float32)
    mask = np.zeros((n, t), np.int64)
    y = np.full((n, max(len(lab) for lab in labels)), -100, np.int64)
    for i, (a, lab) in enumerate(zip(audios, labels, strict=True)):
        x[i, : len(a)] = a
        mask[i, : len(a)] = 1
        y[i, : len(lab)] = lab
    return {
        "input_values": torch.from_numpy(x),
        "attention_mask": torch.from_numpy(mask),
        "labels": torch.from_numpy(y),
    }


def lr_at(progress: float, step: int, peak: float, warmup: int) -> float:
    """Linear warmup, then cosine decay to 5% of the peak as ``progress`` goes 0 -> 1."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Run training, evaluate on dev/test, save the model folder; return the metrics."""
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = (out / "train_log.txt").open("a", encoding="utf-8")

    def say(msg: str) -> None:
        print(msg, flush=True)
        log.write(msg + "\n")
        log.flush()

    t0 = time.time()
    raw, texts = load_split(Path(args.train), args.limit)
    audios = [normalize_audio(a) for a in raw]
    labels = [encode_text(t) for t in texts]
    dev_audio, dev_texts = load_split(Path(args.dev)) if args.dev else ([], [])
    hours = sum(len(a) for a in audios) / 16_000 / 3600
    say(f"loaded {len(audios)} train clips ({hours:.2f} h), {len(dev_audio)} dev in {time.time() - t0:.1f}s")

    processor = build_processor()
    model = build_model().to(device)
    n_params = sum(p.numel() for p in model.parameters())
    say(f"model: {n_params / 1e6:.2f} M parameters on {device}")
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)
    feed = batches([len(a) for a in audios], args.batch_size, rng)
    start, step, running = time.time(), 0, torch.zeros((), device=device)
    history: list[dict[str, float]] = []
    model.train()
    while step < args.max_steps:
        elapsed = time.time() - start
        if args.time_budget and elapsed > args.time_budget:
            say(f"time budget reached at step {step}")
            break
        progress = max(step / args.max_steps, elapsed / args.time_budget if args.time_budget else 0.0)
        for group in opt.param_groups:
            group["lr"] = lr_at(progress, step, args.lr, args.warmup)
        idx = next(feed)
        batch = {
            k: v.to(device, non_blocking=True)
            for k, v in collate([audios[i] for i in idx], [labels[i] for i in idx]).items()
        }
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        running += loss.detach()
        step += 1
        if step % args.log_every == 0:
            say(
                f"step {step} loss {running.item() / args.log_every:.4f} lr {opt.param_groups[0]['lr']:.2e} "
                f"{time.time() - start:.0f}s"
            )
            running.zero_()
        if dev_audio and (step % args.eval_every == 0):
            m = score(dev_texts, transcribe(model, processor, dev_audio, batch_size=64))
            history.append({"step": step, **m})
            say(f"  dev @ {step}: CER {m['cer']:.2%} WER {m['wer']:.2%}")
            model.train()
    train_seconds = time.time() - start
    model = model.float().eval()
    model.save_pretrained(out / "model", safe_serialization=True)
    processor.save_pretrained(out / "model")
    processor.feature_extractor.save_pretrained(out / "model")  # preprocessor_config.json for older readers
    metrics: dict[str, Any] = {
        "steps": step,
        "train_seconds": round(train_seconds, 1),
        "parameters": n_params,
        "train_clips": len(audios),
        "train_hours": round(hours, 3),
        "dev_history": history,
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    for name, path in (("dev", args.dev), ("test", args.test)):
        if path:
            a, t = load_split(Path(path))
            metrics[name] = score(t, transcribe(model, processor, a, batch_size=64))
            say(f"{name}: CER {metrics[name]['cer']:.2%} WER {metrics[name]['wer']:.2%} (n={len(t)})")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1), encoding="utf-8")
    return metrics


def main(argv: list[str] | None = None) -> None:
    """CLI entry point (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", required=True, help="train manifest (JSONL with audio, text)")
    p.add_argument("--dev", help="dev manifest, decoded every --eval-every steps")
    p.add_argument("--test", help="test manifest, decoded once at the end")
    p.add_argument("--out", required=True, help="writes OUT/model, OUT/metrics.json, OUT/train_log.txt")
    p.add_argument("--max-steps", type=int, default=9000)
    p.add_argument("--time-budget", type=float, default=0.0, help="seconds of training; 0 = no limit")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=600)
    p.add_argument("--log-every", type=int, default=200)
    p.add_argument("--eval-every", type=int, default=1000)
    p.add_argument("--limit", type=int, default=None, help="use only the first N training clips")
    p.add_argument("--seed", type=int, default=0)
    train(p.parse_args(argv))


if __name__ == "__main__":
    main()
