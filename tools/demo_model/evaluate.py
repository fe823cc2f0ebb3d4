"""Greedy-decode a manifest with a Hugging Face ``Wav2Vec2ForCTC`` folder and report CER/WER (jiwer).

    HF_HUB_OFFLINE=1 python -m tools.demo_model.evaluate \\
        --model asr_optimize/assets/demo-model --manifest asr_optimize/assets/demo-testset/manifest.jsonl

Scoring is plain: references and hypotheses are stripped and runs of spaces collapsed, nothing else.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from asr_optimize.paths import DEFAULT_MODEL, DEMO_TESTSET
from tools.demo_model.make_data import HELD_OUT_VOICES

DEMO_MODEL_DIR = DEFAULT_MODEL
DEMO_TESTSET_MANIFEST = DEMO_TESTSET / "manifest.jsonl"
_SPACES = re.compile(r"\s+")


def read_manifest(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
    """Rows of a JSONL manifest with ``audio`` resolved against the manifest's folder."""
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            row["audio_path"] = str(Path(path).parent / row["audio"])
            rows.append(row)
    return rows[:limit] if limit else rows


def load_audio(path: str) -> np.ndarray:
    """A clip as 16 kHz mono float32 (the project's decoder: downmix and resample as needed)."""
    from asr_optimize.audio.load import load_audio as load_16k

    return load_16k(path)


def plain(text: str) -> str:
    """Strip and collapse whitespace: the only normalization the demo scores with."""
    return _SPACES.sub(" ", text).strip()


def score(refs: Sequence[str], hyps: Sequence[str]) -> dict[str, float]:
    """Corpus CER and WER (jiwer, through ``metrics.wer_cer``) with whitespace collapsed and nothing else."""
    from asr_optimize.quality.metrics import wer_cer

    rates = wer_cer(refs, hyps, normalize=False)
    return {"cer": rates.cer, "wer": rates.wer, "n": rates.n_utterances}


def transcribe(model: Any, processor: Any, audios: Sequence[np.ndarray], batch_size: int = 16) -> list[str]:
    """Greedy CTC transcripts, batched by length; the processor pads and normalizes.

    Each row is decoded only over its own frames, so the result does not depend on the batch size.
    """
    import torch

    device = next(model.parameters()).device
    order = sorted(range(len(audios)), key=lambda i: len(audios[i]))
    out: list[str] = [""] * len(audios)
    model.eval()
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        feats = processor([audios[i] for i in idx], sampling_rate=16_000, return_tensors="pt", padding=True)
        with torch.inference_mode():
            logits = model(feats.input_values.to(device), attention_mask=feats.attention_mask.to(device)).logits
            # frames past a clip's own length are padding: decoding them appends garbage characters
            lengths = model._get_feat_extract_output_lengths(feats.attention_mask.sum(-1)).tolist()
        ids = logits.argmax(dim=-1).cpu()
        texts = [processor.decode(ids[j, : lengths[j]]) for j in range(len(idx))]
        for i, text in zip(idx, texts, strict=True):
            out[i] = plain(text)
    return out


def evaluate(
    model_dir: Path, manifest: Path, limit: int | None = None, device: str = "cpu", batch_size: int = 16
) -> dict[str, Any]:
    """Load a local model folder, decode a manifest, return metrics (overall, per group) and transcripts."""
    from transformers import Wav2Vec2ForCTC, Wav2Vec2Processor

    model = Wav2Vec2ForCTC.from_pretrained(str(model_dir)).to(device)
    processor = Wav2Vec2Processor.from_pretrained(str(model_dir))
    rows = read_manifest(manifest, limit)
    hyps = transcribe(model, processor, [load_audio(r["audio_path"]) for r in rows], batch_size)
    refs = [r["text"] for r in rows]
    result: dict[str, Any] = {"overall": score(refs, hyps)}
    for key in ("kind", "voice_group"):
        groups: dict[str, list[int]] = {}
        for i, r in enumerate(rows):
            held_out = r.get("voice") in HELD_OUT_VOICES
            name = r.get(key) if key == "kind" else ("held-out" if held_out else "seen")
            if name:
                groups.setdefault(str(name), []).append(i)
        result[key] = {g: score([refs[i] for i in ix], [hyps[i] for i in ix]) for g, ix in sorted(groups.items())}
    result["samples"] = [{"ref": r, "hyp": h} for r, h in zip(refs, hyps, strict=True)]
    return result


def main(argv: list[str] | None = None) -> None:
    """CLI entry point (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=DEMO_MODEL_DIR)
    p.add_argument("--manifest", type=Path, default=DEMO_TESTSET_MANIFEST)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--show", type=int, default=5, help="print this many reference/hypothesis pairs")
    p.add_argument("--json", type=Path, help="also write the full result here")
    a = p.parse_args(argv)
    result = evaluate(a.model, a.manifest, a.limit, a.device, a.batch_size)
    for s in result["samples"][: a.show]:
        print(f"REF: {s['ref']}\nHYP: {s['hyp']}\n")
    o = result["overall"]
    print(f"utterances={o['n']}  CER={o['cer']:.2%}  WER={o['wer']:.2%}")
    for key in ("kind", "voice_group"):
        for g, m in result[key].items():
            print(f"  {key}={g:<9} n={m['n']:<4} CER={m['cer']:.2%}  WER={m['wer']:.2%}")
    if a.json:
        a.json.write_text(json.dumps(result, ensure_ascii=False, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
