"""The long-form evaluation set (built at test time), chunked WER on a 1-minute recording, recordings of other
conditions (``longform_data.join_clips``) and the checking set's builder (``tools.longform_check``)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pytest

from asr_optimize.audio.longform_data import join_clips
from asr_optimize.quality.eval_sets import EvalSource, load_eval_set
from asr_optimize.quality.longform import GAP_S, build_recording
from tests.support.assets import DEMO_MODEL


@pytest.fixture(scope="module")
def base():
    return load_eval_set()


def test_recordings_are_exact_length_deterministic_and_repeat_utterances(base) -> None:
    one = build_recording(base.utterances, 1)
    assert one.audio.size == 60 * 16000 and one.id == "longform-1min"
    again = build_recording(base.utterances, 1)
    assert again.utterance_ids == one.utterance_ids and np.array_equal(again.audio, one.audio)
    refs = dict(zip(base.ids, base.texts, strict=True))
    assert one.text == " ".join(refs[i] for i in one.utterance_ids)
    speech = sum(u.audio.size for u in base.utterances if u.id in set(one.utterance_ids))
    assert speech + GAP_S * 16000 * (len(one.utterance_ids) - 1) <= one.audio.size
    by_id = {u.id: u.audio for u in base.utterances}
    assert len(one.spans) == len(one.utterance_ids) and one.spans[0][0] == 0
    for (start, end), uid in zip(one.spans, one.utterance_ids, strict=True):  # spans locate each utterance
        assert np.array_equal(one.audio[start:end], by_id[uid])
    assert all(b[0] - a[1] == round(GAP_S * 16000) for a, b in zip(one.spans, one.spans[1:], strict=False))
    ten = build_recording(base.utterances, 10)  # > 215 s of distinct utterances: repeats, reshuffled
    assert len(ten.utterance_ids) > len(base) and len(set(ten.utterance_ids)) == len(base)
    assert ten.utterance_ids[: len(base)] != ten.utterance_ids[len(base) : 2 * len(base)]


def test_longform_is_an_eval_source() -> None:
    source = EvalSource(kind="longform", minutes=[0.5, 1])
    eval_set = load_eval_set(source)
    assert [u.duration_s for u in eval_set] == [30.0, 60.0]
    assert eval_set.source.describe().startswith("longform:0.5+1min")


def test_one_minute_chunked_wer_is_near_the_per_utterance_wer(base) -> None:
    """Measured (demo model, CPU fp32, default chunking, runs starting on their onset sample): 16.78% vs 17.48% per
    utterance on the same audio (16.08% with a 0.2 s minimum silence), 17 of 25 utterances transcribed exactly as
    alone; one pass 39.2%, fixed 20 s / 2 s windows 35.0%."""
    from asr_optimize.model.ctc import CtcVocabulary
    from asr_optimize.quality.longform import utterance_hypotheses
    from asr_optimize.quality.metrics import wer_cer
    from asr_optimize.runners.torch_runner import TorchRunner
    from asr_optimize.transcribe import ChunkingOptions, transcribe

    recording = build_recording(base.utterances, 1)
    runner = TorchRunner(DEMO_MODEL)
    result = transcribe(runner, [recording.audio], DEMO_MODEL, chunking=ChunkingOptions(), timestamps=True)
    by_id = {u.id: u.audio for u in base.utterances}
    per_utt = transcribe(runner, [by_id[i] for i in recording.utterance_ids], DEMO_MODEL).texts
    chunked = wer_cer([recording.text], result.texts).wer
    reference = wer_cer([recording.text], [" ".join(per_utt)]).wer
    assert chunked <= reference + 0.01, (chunked, reference)
    assert result.windows[0] >= len(recording.utterance_ids) - 2  # one window per utterance, cut at the gaps
    assert result.words[0][-1].end_s <= 60.0
    pieces = utterance_hypotheses(result.logits[0], recording.spans, CtcVocabulary.from_model_dir(DEMO_MODEL))
    assert " ".join(pieces).split() == result.texts[0].split()  # cut in the gaps: no word is split or lost
    assert sum(p == q for p, q in zip(pieces, per_utt, strict=True)) >= 15  # mostly exactly as alone (17 of 25)


# ---------------------------------------------------------------- recordings of other conditions, the checking set


@dataclass(frozen=True)
class _Clip:
    id: str
    audio: np.ndarray
    text: str


def _measured_snr_db(audio: np.ndarray, spans: list[tuple[int, int]]) -> float:
    """SNR from the audio alone: noise power outside the spans, speech power = power inside less the noise."""
    inside = np.zeros(audio.size, bool)
    for a, b in spans:
        inside[a:b] = True
    noise = float(np.mean(audio[~inside].astype(np.float64) ** 2))
    return 10 * np.log10((float(np.mean(audio[inside].astype(np.float64) ** 2)) - noise) / noise)


def test_join_clips_places_pauses_silences_level_and_noise_as_asked() -> None:
    rng = np.random.default_rng(2)
    clips = [_Clip(f"c{i}", (0.3 * rng.standard_normal(n)).astype(np.float32), f"t{i}")
             for i, n in enumerate((16000, 24000, 8000, 20000))]
    pauses = [0.1, 0.55, 1.0]
    rec = join_clips(clips, pauses, 4.0, 6.5, "x")
    assert rec.audio.size == round((4.0 + sum(pauses) + 6.5) * 16000) + sum(c.audio.size for c in clips)
    assert rec.spans[0][0] == 64000 and rec.audio.size - rec.spans[-1][1] == 6.5 * 16000
    assert [b[0] - a[1] for a, b in itertools.pairwise(rec.spans)] == [1600, 8800, 16000]
    for (a, b), clip in zip(rec.spans, clips, strict=True):
        assert np.array_equal(rec.audio[a:b], clip.audio)
    assert rec.text == "t0 t1 t2 t3" and rec.utterance_ids == ("c0", "c1", "c2", "c3")
    assert np.count_nonzero(rec.audio) == sum(c.audio.size for c in clips)  # silence is digital silence
    noisy = join_clips(clips, pauses, 4.0, 6.5, "x", snr_db=20.0, seed=1)
    assert abs(_measured_snr_db(noisy.audio, list(noisy.spans)) - 20.0) < 0.5
    for peak in (-30.0, -1.0):
        scaled = join_clips(clips, pauses, 4.0, 6.5, "x", peak_dbfs=peak)
        assert 20 * np.log10(np.abs(scaled.audio).max()) == pytest.approx(peak, abs=1e-3)
    hiss = join_clips(clips, pauses, 4.0, 6.5, "x", noise_floor_dbfs=-65.0, seed=3)
    assert 10 * np.log10(np.mean(hiss.audio[: 64000].astype(np.float64) ** 2)) == pytest.approx(-65.0, abs=0.2)
    with pytest.raises(ValueError, match="one pause fewer"):
        join_clips(clips, pauses[:2], 1.0, 1.0, "x")


def test_checking_sentences_are_in_no_demo_text() -> None:
    """Neither the demo test set nor the demo training text (regenerated: seed 0, as the model card says) holds a
    checking sentence, or contains one, or is contained in one."""
    import json
    import unicodedata

    from asr_optimize.paths import DEMO_TESTSET
    from tools.demo_model.texts import HAND_SENTENCES, normalize_text
    from tools.longform_check import CHECK_SENTENCES

    demo = {json.loads(line)["text"] for line in (DEMO_TESTSET / "manifest.jsonl").read_text("utf-8").splitlines()
            if line.strip()}
    demo |= {normalize_text(s) for s in HAND_SENTENCES}
    try:
        from tools.demo_model.texts import generate_texts

        splits = generate_texts(10_000, 200, 110, seed=0)
        assert {t for _, t in splits["test"]} >= demo - {normalize_text(s) for s in HAND_SENTENCES}  # regenerated
        demo |= {t for rows in splits.values() for _, t in rows}
    except ImportError:  # wordfreq absent: the hand-written and test texts are still checked
        pass
    assert len(set(CHECK_SENTENCES)) == len(CHECK_SENTENCES) >= 30
    for sentence in CHECK_SENTENCES:
        assert normalize_text(sentence) == unicodedata.normalize("NFC", sentence)  # in the model's vocabulary
        assert not any(sentence in text or text in sentence for text in demo), sentence


@pytest.mark.requires("espeak-ng")
def test_checking_set_builder_makes_what_it_claims(tmp_path) -> None:
    import json

    import soundfile as sf

    from tools.demo_model.make_data import HELD_OUT_VOICES, SPEED_RANGE, TRAIN_VOICES
    from tools.longform_check import CHECK_SENTENCES, CHECK_VOICES, CLIPS_PER_RECORDING, write_check_set

    manifest = write_check_set(tmp_path / "set", cache=tmp_path / "cache",
                               conditions=["pause-0.1", "pause-1.0", "mixed-hiss", "noise-20db", "quiet", "loud"])
    rows = {row["condition"]: row for row in map(json.loads, manifest.read_text("utf-8").splitlines())}
    assert len(list((tmp_path / "cache" / "clips").glob("*.npy"))) == len(CHECK_SENTENCES) * len(CHECK_VOICES)
    assert not set(CHECK_VOICES) & set(TRAIN_VOICES + HELD_OUT_VOICES)
    for cond, row in rows.items():
        audio, rate = sf.read(manifest.parent / row["audio"], dtype="float32")
        spans = [tuple(s) for s in row["spans"]]
        assert rate == 16000 and audio.size / 16000 == pytest.approx(row["duration_s"], abs=1e-3)
        assert 180 <= row["duration_s"] <= 330  # 3-5.5 minutes
        assert len(spans) == len(row["utterance_ids"]) == len(set(row["utterance_ids"])) == CLIPS_PER_RECORDING
        assert row["text"] == " ".join(row["utterance_texts"]) and set(row["utterance_texts"]) <= set(CHECK_SENTENCES)
        gaps = [(b[0] - a[1]) / 16000 for a, b in itertools.pairwise(spans)]
        assert gaps == pytest.approx(row["pauses_s"], abs=1 / 16000)
        assert spans[0][0] / 16000 == pytest.approx(row["lead_s"], abs=1e-4) and row["lead_s"] >= 2.0
        assert (audio.size - spans[-1][1]) / 16000 == pytest.approx(row["trail_s"], abs=1e-4) and row["trail_s"] >= 2
        assert not any(SPEED_RANGE[0] <= s <= SPEED_RANGE[1] for s in row["speeds"])
        if cond.startswith("pause-"):
            assert gaps == pytest.approx([float(cond[6:])] * len(gaps), abs=1 / 16000)
        else:
            assert 0.1 <= min(gaps) < 0.3 and 0.8 < max(gaps) <= 1.0  # mixed pauses over 0.1-1.0 s
    assert _measured_snr_db(*(sf.read(manifest.parent / rows["noise-20db"]["audio"], dtype="float32")[0],
                              [tuple(s) for s in rows["noise-20db"]["spans"]])) == pytest.approx(20.0, abs=0.5)
    for cond, peak in (("quiet", -30.0), ("loud", -1.0)):
        audio, _ = sf.read(manifest.parent / rows[cond]["audio"], dtype="float32")
        assert 20 * np.log10(np.abs(audio).max()) == pytest.approx(peak, abs=0.01)


def test_demo_model_on_quiet_loud_noisy_recordings_with_long_silences(base) -> None:
    """Demo utterances joined as the checking set's conditions (5 s of silence before, 7 s after, pauses of
    0.1-1.0 s, -30 / -1 dBFS peaks, pink noise at 20 dB SNR), default chunking: one window per utterance, no word in
    the long silences, the same text at any level, and pauses found in noise only through the noise floor."""
    from asr_optimize.quality.metrics import wer_cer
    from asr_optimize.runners.torch_runner import TorchRunner
    from asr_optimize.transcribe import ChunkingOptions, transcribe

    utts = base.utterances[:12]
    pauses = np.random.default_rng(0).uniform(0.1, 1.0, len(utts) - 1).round(3).tolist()
    quiet, loud, noisy = (join_clips(utts, pauses, 5.0, 7.0, name, peak_dbfs=peak, snr_db=snr, seed=1)
                          for name, peak, snr in (("quiet", -30.0, None), ("loud", -1.0, None), ("noisy", None, 20.0)))
    runner = TorchRunner(DEMO_MODEL)
    result = transcribe(runner, [quiet.audio, loud.audio, noisy.audio], DEMO_MODEL, timestamps=True)
    assert result.texts[0] == result.texts[1] and result.windows[:2] == [len(utts)] * 2
    for words, rec in zip(result.words, (quiet, loud, noisy), strict=True):
        assert rec.spans[0][0] / 16000 - 0.02 <= words[0].start_s and words[-1].end_s <= rec.spans[-1][1] / 16000 + 0.12
    alone = transcribe(runner, [quiet.audio[a:b] for a, b in quiet.spans], DEMO_MODEL, batch_size=1).texts
    assert wer_cer([quiet.text], result.texts[:1]).wer <= wer_cer([quiet.text], [" ".join(alone)]).wer + 0.03
    assert result.windows[2] >= len(utts)  # pauses found in the noise
    off = transcribe(runner, [noisy.audio], DEMO_MODEL, chunking=ChunkingOptions(noise_margin_db=None))
    assert off.windows[0] <= 3  # 40 dB under the loud level is still noise: no pause found
