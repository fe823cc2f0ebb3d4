"""Synthetic Hindi speech corpus: deterministic texts + espeak-ng voices, 16 kHz mono, JSONL manifests.

Two steps, usable separately so that synthesis can run on a machine that only has an ``espeak-ng``
binary (no ``wordfreq``, no network)::

    # texts, voices, speeds, pitches for every split -> DIR/{train,dev,test}.text.jsonl
    python -m tools.demo_model.make_data --out DIR --n-train 10000 --n-dev 200 --n-test 110 --texts-only
    # audio for one text manifest -> OUT/audio/*.wav|flac + OUT/<name>
    python -m tools.demo_model.make_data --synthesize DIR/train.text.jsonl --out OUT --name train.jsonl

Without ``--texts-only`` / ``--synthesize`` both steps run for every split (audio in DIR/<split>/).
Manifests hold one JSON object a line: ``audio`` (path relative to the manifest), ``text`` and the
synthesis parameters (``voice``, ``speed``, ``pitch``, ``kind``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import tempfile
from multiprocessing import Pool
from pathlib import Path
from typing import Any

import numpy as np

SAMPLE_RATE = 16_000
ESPEAK_RATE = 22_050
#: espeak-ng voice variants for train/dev; the test split also uses the held-out ones.
TRAIN_VOICES = ("m1", "m2", "m3", "m4", "m5", "m6", "f1", "f2", "f3", "f5")
HELD_OUT_VOICES = ("m7", "f4")
SPEED_RANGE = (130, 200)
PITCH_RANGE = (30, 70)


def make_text_manifests(out: Path, n_train: int, n_dev: int, n_test: int, seed: int) -> dict[str, Path]:
    """Write ``{split}.text.jsonl`` with text and voice/speed/pitch per utterance; return their paths."""
    from tools.demo_model.texts import generate_texts

    out.mkdir(parents=True, exist_ok=True)
    splits = generate_texts(n_train, n_dev, n_test, seed=seed)
    rng = random.Random(seed + 1)
    paths = {}
    for split, rows in splits.items():
        path = out / f"{split}.text.jsonl"
        with path.open("w", encoding="utf-8") as f:
            for i, (kind, text) in enumerate(rows):
                # every second test utterance is spoken by a voice variant never heard in training
                voices = HELD_OUT_VOICES if split == "test" and i % 2 else TRAIN_VOICES
                row = {
                    "id": f"{split}-{i:05d}",
                    "text": text,
                    "kind": kind,
                    "voice": rng.choice(voices),
                    "speed": rng.randint(*SPEED_RANGE),
                    "pitch": rng.randint(*PITCH_RANGE),
                }
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        paths[split] = path
    return paths


def find_espeak(explicit: str | None = None) -> str:
    """Resolve the espeak-ng binary: an explicit path, $ESPEAK_NG, or the PATH."""
    candidate = explicit or os.environ.get("ESPEAK_NG") or shutil.which("espeak-ng")
    if not candidate or (not Path(candidate).exists() and not shutil.which(candidate)):
        raise FileNotFoundError("espeak-ng not found: install it (apt-get install espeak-ng) or pass --espeak")
    return candidate


def speak(espeak: str, text: str, voice: str, speed: int, pitch: int) -> np.ndarray:
    """Synthesize one utterance and return it as float32 16 kHz mono, leading/trailing silence trimmed."""
    from scipy.io import wavfile
    from scipy.signal import resample_poly

    with tempfile.TemporaryDirectory() as tmp:
        wav_path = Path(tmp) / "u.wav"
        cmd = [espeak, "-v", f"hi+{voice}", "-s", str(speed), "-p", str(pitch), "-w", str(wav_path)]
        subprocess.run(cmd, input=text.encode("utf-8"), check=True, capture_output=True)
        rate, data = wavfile.read(wav_path)
    if rate != ESPEAK_RATE:
        raise ValueError(f"espeak-ng wrote {rate} Hz, expected {ESPEAK_RATE}")
    audio = resample_poly(data.astype(np.float32) / 32768.0, 320, 441).astype(np.float32)
    loud = np.flatnonzero(np.abs(audio) > 0.02 * max(float(np.abs(audio).max()), 1e-6))
    if loud.size == 0:
        raise ValueError(f"espeak-ng produced silence for {text!r}")
    pad = int(0.1 * SAMPLE_RATE)
    return audio[max(0, loud[0] - pad) : loud[-1] + pad]


def _synth_job(job: tuple[str, dict[str, Any], str, str]) -> dict[str, Any]:
    import soundfile as sf

    espeak, row, audio_path, rel = job
    audio = speak(espeak, row["text"], row["voice"], row["speed"], row["pitch"])
    sf.write(audio_path, audio, SAMPLE_RATE, subtype="PCM_16")
    out = {"audio": rel, "text": row["text"]}
    out.update({k: row[k] for k in ("id", "kind", "voice", "speed", "pitch") if k in row})
    out["duration"] = round(len(audio) / SAMPLE_RATE, 3)
    return out


def synthesize_manifest(
    text_manifest: Path,
    out: Path,
    name: str = "manifest.jsonl",
    fmt: str = "wav",
    espeak: str | None = None,
    jobs: int | None = None,
) -> Path:
    """Speak every row of a text manifest into ``out/audio/<id>.<fmt>`` and write ``out/<name>``."""
    binary = find_espeak(espeak)
    lines = text_manifest.read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines if line.strip()]
    (out / "audio").mkdir(parents=True, exist_ok=True)
    work = []
    for i, row in enumerate(rows):
        rel = f"audio/{row.get('id', f'{i:05d}')}.{fmt}"
        work.append((binary, row, str(out / rel), rel))
    jobs = jobs or os.cpu_count() or 1
    with Pool(jobs) as pool:
        results = pool.map(_synth_job, work, chunksize=16)
    manifest = out / name
    tmp = manifest.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in results), encoding="utf-8")
    tmp.replace(manifest)
    return manifest


def main(argv: list[str] | None = None) -> None:
    """CLI entry point (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--n-train", type=int, default=10_000)
    p.add_argument("--n-dev", type=int, default=200)
    p.add_argument("--n-test", type=int, default=110)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--texts-only", action="store_true", help="write the text manifests and stop")
    p.add_argument("--synthesize", type=Path, help="speak this text manifest into --out")
    p.add_argument("--name", default="manifest.jsonl", help="manifest file name for --synthesize")
    p.add_argument("--format", choices=["wav", "flac"], default="wav")
    p.add_argument("--espeak", help="espeak-ng binary (default: $ESPEAK_NG or PATH)")
    p.add_argument("--jobs", type=int, default=None)
    a = p.parse_args(argv)
    if a.synthesize:
        print(synthesize_manifest(a.synthesize, a.out, a.name, a.format, a.espeak, a.jobs))
        return
    paths = make_text_manifests(a.out, a.n_train, a.n_dev, a.n_test, a.seed)
    if a.texts_only:
        print("\n".join(str(p) for p in paths.values()))
        return
    for split, path in paths.items():
        print(synthesize_manifest(path, a.out / split, "manifest.jsonl", a.format, a.espeak, a.jobs))


if __name__ == "__main__":
    main()
