"""The long-form evaluation set (built at test time) and chunked WER on a 1-minute recording."""

from __future__ import annotations

import numpy as np
import pytest

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
    """Measured (demo model, CPU fp32, default chunking, runs starting on their onset sample): 16.08% vs 17.48% per
    utterance on the same audio, 17 of 25 utterances transcribed exactly as alone; one pass 39.2%, fixed 20 s / 2 s
    windows 35.0%."""
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
