"""The long-form checking set: new Hindi sentences, other espeak-ng voices and speeds, hard recording conditions.

Why: the long-form settings (``ChunkingOptions``) are chosen on the demo test set joined into recordings
(``asr_optimize.audio.longform_data.build_recording``, the *tuning* set). This set is only for *checking* that
choice on speech it was not made on: 36 everyday sentences that are in neither the demo test set nor the demo
training text (``tools.demo_model.texts``), five espeak-ng voices that the demo data never used, speeds and pitches
outside the demo ranges, and eight recordings of 3-4 minutes: pauses of 0.1, 0.25, 0.5 and 1.0 s and mixed 0.1-1.0 s,
2-8 s of silence before and after the speech, a recorder's hiss, pink background noise at 20 dB SNR, a quiet
(-30 dBFS peak) and a loud (-1 dBFS peak) recording. Never tune on it.

    python -m tools.longform_check --out DIR     # DIR/recordings.jsonl + DIR/<id>.flac (default: the cache)

Clips are synthesized once (``tools.demo_model.make_data.speak``: espeak-ng, 16 kHz, trimmed to the speech with
0.1 s on each side, the same as the demo set's files) and cached as float32 ``.npy`` under
``<cache root>/longform-check/clips``; recordings are joined by ``longform_data.join_clips``. Everything is
deterministic in the seed. Measure with ``python -m benchmarks.long_form --recordings DIR``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import random
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from asr_optimize.audio.longform_data import SAMPLE_RATE, LongformRecording, join_clips
from asr_optimize.paths import DEMO_TESTSET

DEMO_MANIFEST = DEMO_TESTSET / "manifest.jsonl"

CHECK_SENTENCES: tuple[str, ...] = (
    "मेरी गाड़ी का टायर पंचर हो गया",
    "आज दफ़्तर में बहुत काम था",
    "बच्चों को रात में जल्दी सोना चाहिए",
    "क्या तुमने दरवाज़े पर ताला लगाया",
    "सुबह सुबह पक्षी चहचहाते हैं",
    "मुझे बाज़ार से आलू और प्याज़ लाने हैं",
    "हमारे पड़ोसी बहुत अच्छे लोग हैं",
    "उसने अपनी माँ को फूल दिए",
    "इस होटल का खाना महँगा है",
    "कल सुबह हम पहाड़ पर चढ़ेंगे",
    "मेरी चाबी कहीं खो गई है",
    "बारिश के बाद सड़क पर पानी भर गया",
    "टीचर ने बच्चों को गृहकार्य दिया",
    "मैं हर रविवार अपने दादा से मिलने जाता हूँ",
    "यह कपड़ा बहुत मुलायम है",
    "रसोई में दूध उबल रहा है",
    "हमें बिजली का बिल भरना है",
    "उसके जूते बहुत पुराने हो गए हैं",
    "ट्रैफ़िक की वजह से मैं देर से पहुँचा",
    "बगीचे में गुलाब के फूल खिले हैं",
    "क्या आप मुझे सही समय बता सकते हैं",
    "मेरा बेटा साइकिल चलाना सीख रहा है",
    "दुकानदार ने पैसे वापस नहीं किए",
    "आज रात चाँद बहुत सुंदर दिख रहा है",
    "डाकिया रोज़ दोपहर को चिट्ठियाँ लाता है",
    "मेरे सिर में हल्का दर्द है",
    "छत पर कपड़े सूख रहे हैं",
    "हम लोग ट्रेन से मुंबई जाएँगे",
    "यह रास्ता रात में सुनसान रहता है",
    "उसने मेज़ पर किताबें सजा दीं",
    "सर्दियों में रज़ाई ओढ़कर सोना अच्छा लगता है",
    "बच्ची ने अपना खिलौना तोड़ दिया",
    "मंडी में टमाटर सस्ते मिल रहे हैं",
    "हमारी कक्षा में चालीस छात्र हैं",
    "कुत्ता दरवाज़े के बाहर भौंक रहा है",
    "नानी ने हमारे लिए लड्डू बनाए",
)
"""Everyday sentences, NFC, in the demo model's vocabulary; none is in the demo test set or the demo training
text, nor a substring of one (tested)."""

CHECK_VOICES: tuple[str, ...] = ("aunty", "john", "grandpa", "max", "pablo")
"""espeak-ng voice variants the demo data never used (it used m1-m7, f1-f5): the five on which the demo model
reads 12 of these sentences at speed 160 with under 30 % WER (others: 30-115 %)."""
SPEEDS: tuple[int, ...] = (*range(120, 129), *range(202, 211))
"""Words per minute, outside the demo data's 130-200."""
PITCHES: tuple[int, ...] = (*range(22, 30), *range(71, 79))
"""Outside the demo data's 30-70."""
CLIPS_PER_RECORDING = 90


@dataclass(frozen=True)
class Condition:
    """One recording of the set: how its clips are joined and what is done to the audio."""

    id: str
    pause_s: float | tuple[float, float]
    """A fixed pause between clips, or (low, high) for pauses drawn uniformly."""
    peak_dbfs: float | None = None
    snr_db: float | None = None
    noise_floor_dbfs: float | None = None


CONDITIONS: tuple[Condition, ...] = (
    Condition("pause-0.1", 0.1),
    Condition("pause-0.25", 0.25),
    Condition("pause-0.5", 0.5),
    Condition("pause-1.0", 1.0),
    Condition("mixed-hiss", (0.1, 1.0), noise_floor_dbfs=-65.0),
    Condition("noise-20db", (0.1, 1.0), snr_db=20.0),
    Condition("quiet", (0.1, 1.0), peak_dbfs=-30.0),
    Condition("loud", (0.1, 1.0), peak_dbfs=-1.0),
)
LEAD_TRAIL_S = (2.0, 8.0)
"""Silence before the first and after the last clip, drawn uniformly per recording."""


@dataclass(frozen=True)
class CheckClip:
    """One synthesized sentence (``longform_data.Clip``)."""

    id: str
    text: str
    voice: str
    speed: int
    pitch: int
    audio: np.ndarray


def clip_specs(seed: int = 0) -> list[dict[str, object]]:
    """Every sentence in every voice, each with its own speed and pitch (deterministic in ``seed``)."""
    rng = random.Random(seed)
    specs = []
    for v, voice in enumerate(CHECK_VOICES):
        for s, text in enumerate(CHECK_SENTENCES):
            specs.append({"id": f"check-{v}{s:02d}", "text": text, "voice": voice,
                          "speed": rng.choice(SPEEDS), "pitch": rng.choice(PITCHES)})
    return specs


def default_cache() -> Path:
    from asr_optimize.settings import get_settings

    return get_settings().cache_root / "longform-check"


def synthesize_clips(cache: Path | None = None, espeak: str | None = None, seed: int = 0) -> list[CheckClip]:
    """All clips, synthesized once and cached by (espeak-ng version, text, voice, speed, pitch)."""
    from tools.demo_model.make_data import find_espeak, speak

    binary = find_espeak(espeak)
    version = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    folder = (cache or default_cache()) / "clips"
    folder.mkdir(parents=True, exist_ok=True)
    clips = []
    for spec in clip_specs(seed):
        key = hashlib.sha256(json.dumps([version, spec["text"], spec["voice"], spec["speed"], spec["pitch"]],
                                        ensure_ascii=False).encode("utf-8")).hexdigest()[:20]
        path = folder / f"{key}.npy"
        if path.is_file():
            audio = np.load(path)
        else:
            audio = speak(binary, str(spec["text"]), str(spec["voice"]), int(spec["speed"]), int(spec["pitch"]))
            tmp = path.with_suffix(".tmp.npy")
            np.save(tmp, audio)
            tmp.replace(path)
        clips.append(CheckClip(audio=audio, **spec))  # type: ignore[arg-type]
    return clips


def build_recordings(clips: Sequence[CheckClip], seed: int = 0,
                     conditions: Sequence[Condition] = CONDITIONS) -> list[tuple[LongformRecording, dict]]:
    """One recording per condition: ``CLIPS_PER_RECORDING`` clips drawn without repeats, pauses, silences, level
    and noise as the condition says; with the recipe (pauses, lead/trail, measured SNR) for each."""
    out = []
    for k, cond in enumerate(conditions):
        rng = np.random.default_rng([seed, k])
        chosen = [clips[int(i)] for i in rng.permutation(len(clips))[:CLIPS_PER_RECORDING]]
        n = len(chosen) - 1
        pauses = ([float(cond.pause_s)] * n if not isinstance(cond.pause_s, tuple)
                  else rng.uniform(*cond.pause_s, size=n).round(3).tolist())
        lead, trail = (float(x) for x in rng.uniform(*LEAD_TRAIL_S, size=2).round(3))
        recording = join_clips(chosen, pauses, lead, trail, f"check-{cond.id}", cond.peak_dbfs, cond.snr_db,
                               cond.noise_floor_dbfs, seed=seed * 1000 + k)
        recipe = {"condition": cond.id, "pauses_s": pauses, "lead_s": lead, "trail_s": trail,
                  "peak_dbfs": cond.peak_dbfs, "snr_db": cond.snr_db, "noise_floor_dbfs": cond.noise_floor_dbfs,
                  "voices": [c.voice for c in chosen], "speeds": [c.speed for c in chosen],
                  "utterance_texts": [c.text for c in chosen]}
        out.append((recording, recipe))
    return out


def demo_clips() -> list[CheckClip]:
    """The demo test set's utterances as clips: the same conditions on the *tuning* speech."""
    from asr_optimize.quality.eval_sets import load_eval_set

    lines = DEMO_MANIFEST.read_text(encoding="utf-8").splitlines()
    rows = {row["id"]: row for row in (json.loads(line) for line in lines if line.strip())}
    return [CheckClip(u.id, u.text, str(rows[u.id]["voice"]), int(rows[u.id]["speed"]), int(rows[u.id]["pitch"]),
                      u.audio) for u in load_eval_set().utterances]


def write_check_set(out: Path, cache: Path | None = None, espeak: str | None = None, seed: int = 0,
                    source: str = "check", conditions: Sequence[str] | None = None) -> Path:
    """Build the set into ``out``: ``<id>.flac`` (24-bit) per recording and ``recordings.jsonl``; return the latter.

    ``source="demo"`` joins the demo test set's utterances instead, under the same conditions: recordings of the
    tuning speech (ids ``tune-<condition>``) to choose settings on, never the checking sentences and voices.
    """
    import soundfile as sf

    out.mkdir(parents=True, exist_ok=True)
    clips = demo_clips() if source == "demo" else synthesize_clips(cache, espeak, seed)
    chosen = [c for c in CONDITIONS if conditions is None or c.id in conditions]
    rows = []
    for recording, recipe in build_recordings(clips, seed, chosen):
        if source == "demo":
            recording = dataclasses.replace(recording, id=recording.id.replace("check-", "tune-", 1))
        name = f"{recording.id}.flac"
        sf.write(out / name, recording.audio, SAMPLE_RATE, subtype="PCM_24")
        rows.append({"id": recording.id, "audio": name, "text": recording.text,
                     "utterance_ids": list(recording.utterance_ids), "spans": [list(s) for s in recording.spans],
                     "duration_s": round(recording.duration_s, 3), **recipe})
    manifest = out / "recordings.jsonl"
    manifest.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    """Build the checking set (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m tools.longform_check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="default: <cache root>/longform-check/set")
    parser.add_argument("--cache", type=Path, default=None, help="clip cache (default: <cache root>/longform-check)")
    parser.add_argument("--espeak", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--source", choices=["check", "demo"], default="check",
                        help="demo: the same conditions on the demo test set's utterances (for tuning)")
    parser.add_argument("--conditions", nargs="+", choices=[c.id for c in CONDITIONS], default=None)
    args = parser.parse_args(argv)
    out = args.out or (args.cache or default_cache()) / ("set" if args.source == "check" else "tune")
    print(write_check_set(out, args.cache, args.espeak, args.seed, args.source, args.conditions))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
