"""The bundled fp8 calibration set: speech from the demo model's dev texts, never its test texts.

fp8 activation scales and the fp8-mixed plan are chosen on this audio, so the test set that judges the engines
stays unseen by them. ``python -m tools.demo_model.make_calibration`` writes
``asr_optimize/assets/demo-calibration/`` (FLAC + ``manifest.jsonl``); the same espeak-ng gives the same files.
"""

from __future__ import annotations

import gzip
import json
import random
import tempfile
from pathlib import Path

from asr_optimize.paths import ASSETS, DEMO_TESTSET
from tools.demo_model.make_data import HELD_OUT_VOICES, PITCH_RANGE, SPEED_RANGE, TRAIN_VOICES, synthesize_manifest

OUT = ASSETS / "demo-calibration"
COUNT = 32
DEV_TEXTS = 200  # the last lines of train_dev_texts.txt.gz are the dev split


def calibration_rows(count: int = COUNT, seed: int = 7) -> list[dict[str, object]]:
    """``count`` dev texts (none of them a test text) with voices, speeds and pitches like the test set's."""
    with gzip.open(DEMO_TESTSET / "train_dev_texts.txt.gz", "rt", encoding="utf-8") as fh:
        dev = [line.strip() for line in fh if line.strip()][-DEV_TEXTS:]
    test = {json.loads(line)["text"] for line in (DEMO_TESTSET / "manifest.jsonl").read_text().splitlines() if line}
    rng = random.Random(seed)
    texts = [t for t in dev if t not in test and len(t.split()) >= 3]
    rng.shuffle(texts)
    voices = TRAIN_VOICES + HELD_OUT_VOICES
    return [{"id": f"calib-{i:03d}", "text": text, "kind": "dev", "voice": voices[i % len(voices)],
             "speed": rng.randint(*SPEED_RANGE), "pitch": rng.randint(*PITCH_RANGE)}
            for i, text in enumerate(texts[:count])]


def main() -> None:
    rows = calibration_rows()
    with tempfile.TemporaryDirectory() as tmp:
        texts = Path(tmp) / "calibration.text.jsonl"
        texts.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        manifest = synthesize_manifest(texts, OUT, fmt="flac", jobs=2)
    print(f"{len(rows)} utterances -> {manifest}")


if __name__ == "__main__":
    main()
