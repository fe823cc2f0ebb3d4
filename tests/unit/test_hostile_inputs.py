"""Hostile and broken inputs, caused for real: model sources that read alike, a production artifact corrupted on disk,
vocabularies that do not match the CTC head, configs and WAV headers that claim absurd sizes, a full disk.

Each test checks that nothing was lost and that the error names the problem. (S3 cases:
``tests/integration/test_hostile_store.py``.)
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from asr_optimize.errors import ModelResolutionError, NoSpaceError, StoreError, UnsafePathError
from asr_optimize.store.local import (
    MANIFEST_NAME,
    LocalArtifactStore,
    model_identity,
    production_pointer,
    slugify_model,
)

runner = CliRunner()


def flat(text: str) -> str:
    """CLI output with rich's line wrapping undone."""
    return " ".join(text.split())


# ------------------------------------------------------------------------------------------ 1. one slug per model


def test_distinct_model_sources_never_share_a_slug(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("m+1", "m 1", "m"):
        (tmp_path / name).mkdir()
    long_path = "/".join(["team", "speech", "wav2vec2", "hindi"] * 8) + "/final-model"
    pairs = [
        (f"s3://prod/{long_path}", f"s3://staging/{long_path}"),  # the old slug kept only the last 80 characters
        ("m+1", "m 1"),  # the old slug folded both to 'm-1'
        ("a/b", "/a/b"),  # a hub id and a folder: both were 'a--b'
        ("s3://bucket/a/b", "a/b"),
    ]
    for one, other in pairs:
        assert model_identity(one) != model_identity(other)
        assert slugify_model(one) != slugify_model(other), (one, other)
        assert production_pointer(slugify_model(one)) != production_pointer(slugify_model(other))
    # one folder, however it is spelled, is one model (one cache folder, one pointer)
    assert len({slugify_model(s) for s in ("./m", "m", str(tmp_path / "m"), f"{tmp_path}/m/", "m/../m")}) == 1
    assert slugify_model("s3://bucket/a/b/") == slugify_model("s3://bucket/a/b")
    assert model_identity("a/b") == "hub:a/b" and model_identity("/a/b") == "dir:/a/b"
    for source in (f"s3://prod/{long_path}", "m+1", "/a/b", "..", "/", "....//"):
        slug = slugify_model(source)
        assert "/" not in slug and not slug.startswith(".") and len(slug) <= 64, slug
    assert slugify_model("ai4bharat/indicwav2vec-hindi") == "ai4bharat--indicwav2vec-hindi"  # hub ids: readable


def test_production_pointers_of_lookalike_models_stay_apart(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path / "store")
    long_path = "x/" * 50 + "model"
    prod, staging = f"s3://prod/{long_path}", f"s3://staging/{long_path}"
    store.write_pointer(production_pointer(slugify_model(prod)), {"model": prod, "artifact_id": "export:k/model.onnx"})
    assert store.read_pointer(production_pointer(slugify_model(staging))) is None  # staging never runs prod's model
    store.write_pointer(production_pointer(slugify_model(staging)), {"model": staging, "artifact_id": "export:s/x"})
    assert store.read_pointer(production_pointer(slugify_model(prod)))["model"] == prod  # nothing overwritten


# ------------------------------------------------------------------------------ 2. a corrupted production artifact


def _promote_exported(store: LocalArtifactStore, model: Path) -> Path:
    """Export the model for real (the flow's export stage) and point ``production`` at it as promote would."""
    from asr_optimize.audio.load import synthetic_audio
    from asr_optimize.model.source import resolve_model
    from asr_optimize.runners.registry import RunnerSpec
    from tasks.export import ONNX_NAME, ExportOptions, export_stage
    from tasks.promote import PromotionDecision, move_production_pointer

    resolved = resolve_model(str(model))
    export = export_stage(store, resolved, ExportOptions(), synthetic_audio(1, 1.0))
    spec = RunnerSpec(kind="onnxruntime", variant="exported", device="cpu", path=export.file(ONNX_NAME),
                      artifact=f"export:{export.key}/{ONNX_NAME}")
    decision = PromotionDecision(promoted=True, candidate=spec.label, artifact=str(spec.path),
                                 artifact_id=spec.artifact, spec=spec, case="1x1", latency_ms=1.0, reason="test")
    move_production_pointer(store, decision, "cpu", resolved.source, resolved.revision)
    assert export.artifact_dir is not None
    return export.artifact_dir


def test_release_refuses_to_deploy_an_artifact_damaged_after_promotion(tiny_model: Path, tmp_path: Path) -> None:
    """The check right before the copy into Triton: a file changed between the stages and the deploy is refused."""
    from asr_optimize.model.source import resolve_model
    from flows.release import damaged_artifact
    from tasks.promote import PromotionDecision

    store = LocalArtifactStore(tmp_path / "store")
    folder = _promote_exported(store, tiny_model)
    pointer = store.read_pointer(production_pointer(slugify_model(str(tiny_model))))
    decision = PromotionDecision(promoted=True, reason="the promote stage's pick", artifact_id=pointer["artifact_id"],
                                 artifact=pointer["artifact"], spec=pointer["spec"], candidate=pointer["candidate"])
    resolved = resolve_model(str(tiny_model))
    assert decision.promoted and damaged_artifact(store, decision, resolved) is None

    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    name = max(manifest["files"], key=lambda f: manifest["files"][f]["size"])
    data = bytearray((folder / name).read_bytes())
    data[len(data) // 3] ^= 0x01
    (folder / name).write_bytes(bytes(data))
    problem = damaged_artifact(store, decision, resolved)
    assert problem is not None and "refusing to run it" in problem and name in problem


def test_transcribe_production_refuses_a_corrupted_artifact(tiny_model: Path, tmp_path: Path) -> None:
    from flows.cli import app

    store = LocalArtifactStore(tmp_path / "store")
    folder = _promote_exported(store, tiny_model)
    audio = tmp_path / "clip.wav"
    sf.write(audio, (0.1 * np.sin(np.arange(16000) / 5)).astype(np.float32), 16000)
    args = ["transcribe", str(audio), "--model", str(tiny_model), "--production", "--store", str(store.root)]
    healthy = runner.invoke(app, args)
    assert healthy.exit_code == 0, healthy.output

    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    name = max(manifest["files"], key=lambda f: manifest["files"][f]["size"])  # the weights
    target = folder / name
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit, same size: only the sha256 can tell
    target.write_bytes(bytes(data))
    pointer_before = store.read_pointer(production_pointer(slugify_model(str(tiny_model))))

    refused = runner.invoke(app, args)
    out = flat(refused.output)
    assert refused.exit_code == 2, out
    assert f"{name} does not match its manifest sha256" in out and "refusing to run it" in out
    assert "Rerun `asr-optimize run`" in out
    # nothing was lost: the damaged file stays for inspection, the pointer and its history are untouched
    assert target.stat().st_size == manifest["files"][name]["size"]
    assert store.read_pointer(production_pointer(slugify_model(str(tiny_model)))) == pointer_before


# ---------------------------------------------------------------------------- 3. vocabulary vs head, absurd sizes


def _copy(tiny_model: Path, tmp_path: Path, name: str) -> Path:
    return Path(shutil.copytree(tiny_model, tmp_path / name))


def _edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


def test_vocabulary_shorter_than_the_head_is_refused_with_both_sizes(tiny_model: Path, tmp_path: Path) -> None:
    from asr_optimize.model.ctc import CtcVocabulary
    from asr_optimize.model.source import load_model, resolve_model

    short = _copy(tiny_model, tmp_path, "short-vocab")
    vocab = json.loads((short / "vocab.json").read_text(encoding="utf-8"))
    head = len(vocab)
    kept = {t: i for t, i in vocab.items() if i < head - 3}  # still dense 0..N-4, three outputs without a token
    (short / "vocab.json").write_text(json.dumps(kept, ensure_ascii=False), encoding="utf-8")
    for attempt in (lambda: resolve_model(str(short)), lambda: load_model(short),
                    lambda: CtcVocabulary.from_model_dir(short)):
        with pytest.raises(ModelResolutionError, match=rf"vocab\.json has {head - 3} tokens but config\.json "
                                                       rf"vocab_size .* is {head}"):
            attempt()
    # config agreeing with the short vocabulary: the head itself (safetensors header) still disagrees
    _edit_json(short / "config.json", lambda c: c.update(vocab_size=head - 3))
    with pytest.raises(ModelResolutionError, match=rf"lm_head\.weight\) has {head} outputs, but .* {head - 3} tokens"):
        resolve_model(str(short))
    assert json.loads((tiny_model / "vocab.json").read_text(encoding="utf-8")) == vocab  # the original is untouched


def test_sparse_or_duplicate_token_ids_are_refused(tiny_model: Path, tmp_path: Path) -> None:
    from asr_optimize.model.ctc import CtcVocabulary
    from asr_optimize.model.source import resolve_model

    sparse = _copy(tiny_model, tmp_path, "sparse")
    vocab = json.loads((sparse / "vocab.json").read_text(encoding="utf-8"))
    last = max(vocab, key=vocab.get)
    _edit_json(sparse / "vocab.json", lambda v: v.update({last: 10**9}))  # a bare MemoryError before
    start = time.monotonic()
    with pytest.raises(ModelResolutionError, match=r"token ids are not dense: they run from 0 to 1000000000"):
        resolve_model(str(sparse))
    with pytest.raises(ModelResolutionError, match="not dense"):
        CtcVocabulary.from_model_dir(sparse)
    assert time.monotonic() - start < 1

    twice = _copy(tiny_model, tmp_path, "twice")
    first = min(vocab, key=vocab.get)
    _edit_json(twice / "vocab.json", lambda v: v.update({last: v[first]}))
    with pytest.raises(ModelResolutionError, match="share id 0"):
        resolve_model(str(twice))

    blankless = _copy(tiny_model, tmp_path, "no-blank")
    _edit_json(blankless / "config.json", lambda c: c.update(pad_token_id=None))
    _edit_json(blankless / "vocab.json", lambda v: v.update({"[PAD]": v.pop("<pad>")}))
    with pytest.raises(ModelResolutionError, match="no CTC blank token"):
        resolve_model(str(blankless))


@pytest.mark.parametrize(("key", "value"), [
    ("num_hidden_layers", 100_000), ("hidden_size", 10**6), ("vocab_size", 10**9), ("intermediate_size", -4),
    ("conv_dim", [512] * 100_000), ("num_hidden_layers", True),
])
def test_absurd_config_sizes_are_refused_in_well_under_a_second(tiny_model: Path, tmp_path: Path, key: str,
                                                               value: object) -> None:
    from asr_optimize.model.source import init_random_model, load_model, resolve_model

    huge = _copy(tiny_model, tmp_path, "huge")
    _edit_json(huge / "config.json", lambda c: c.update({key: value}))
    start = time.monotonic()
    for attempt in (lambda: resolve_model(str(huge)), lambda: load_model(huge),
                    lambda: init_random_model(huge, tmp_path / "out")):
        with pytest.raises(ModelResolutionError, match=rf"config\.json {key}"):
            attempt()
    assert time.monotonic() - start < 1  # num_hidden_layers=100000 used to build for 15 minutes at 6.4 GB
    assert not (tmp_path / "out").exists()


def test_gate_refuses_a_backend_above_the_absolute_wer_ceiling() -> None:
    from asr_optimize.quality.gate import BackendScore, GateThresholds, evaluate_gate

    # a reference broken like its copies (mismatched vocabulary): every delta is zero, every transcript identical
    reference = BackendScore(name="pytorch-eager-fp32", wer=0.98, cer=0.91, n_utterances=20, identical_fraction=1.0)
    copy = reference.model_copy(update={"name": "onnxruntime-exported-fp32"})
    decision = evaluate_gate(reference, copy)
    assert not decision.passed
    [reason] = decision.reasons
    assert "WER 98.00% on the evaluation set (20 utterances) exceeds the absolute ceiling max_wer 50%" in reason
    assert "whatever pytorch-eager-fp32 scored (98.00%)" in reason
    assert evaluate_gate(reference, copy, GateThresholds(max_wer=None)).passed  # explicitly off: deltas only
    good = reference.model_copy(update={"wer": 0.12, "cer": 0.03})
    assert evaluate_gate(good, good.model_copy(update={"name": "x"})).passed


def test_random_weight_models_are_marked_speed_only(tiny_model: Path) -> None:
    from asr_optimize.model.source import is_speed_only
    from tests.support.assets import DEMO_MODEL

    assert is_speed_only(tiny_model)  # init-random's output: its transcripts mean nothing, max_wer does not apply
    assert not is_speed_only(DEMO_MODEL)  # a trained model: the ceiling applies


# -------------------------------------------------------------------------------------- 4. a 4 KB sparse WAV file


def sparse_wav(path: Path, rate: int, seconds: float, subtype: str = "PCM_U8") -> Path:
    """A real WAV header (written by soundfile) whose RIFF and data sizes claim ``seconds`` of audio, the data a
    sparse hole: a few KB on disk."""
    sf.write(path, np.zeros(1000, dtype=np.float32), rate, subtype=subtype)
    header = bytearray(path.read_bytes())
    at = header.index(b"data")
    data = int(seconds * rate) * (1 if subtype == "PCM_U8" else 2)
    struct.pack_into("<I", header, 4, at + data)  # RIFF size: everything after its first 8 bytes
    struct.pack_into("<I", header, at + 4, data)
    with open(path, "wb") as handle:
        handle.write(header[: at + 8])
        handle.truncate(at + 8 + data)
    return path


def test_sparse_wav_claiming_hours_at_384k_is_refused_from_its_header(tmp_path: Path) -> None:
    import resource

    from asr_optimize.audio.decode import AudioDecodeError, read_audio
    from asr_optimize.audio.load import load_audio_file
    from asr_optimize.errors import AudioInputError

    path = sparse_wav(tmp_path / "hours.wav", 384_000, 2.9 * 3600)
    assert path.stat().st_blocks * 512 < 64 * 1024 < path.stat().st_size  # really sparse: ~4 KB on disk, 4 GB long
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.monotonic()
    with pytest.raises(AudioDecodeError, match=r"claims 2\.90 h \(10440 s\) of audio at 384000 Hz x 1 channel"):
        read_audio(path)
    with pytest.raises(AudioInputError, match=r"hours\.wav: its header claims 2\.90 h .* at 384000 Hz"):
        load_audio_file(path, max_duration_s=4 * 3600)  # within the 4 h duration limit: the rate is what is absurd
    assert time.monotonic() - start < 1
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss) * 1024 < 500 * 2**20

    from flows.cli import app

    result = runner.invoke(app, ["transcribe", str(path)])
    out = flat(result.output)
    assert result.exit_code == 2, out
    assert "2.90 h" in out and "384000 Hz" in out and "corrupt" not in out


RSS_PROBE = """
import resource, sys
import numpy as np, scipy.signal, soundfile
from asr_optimize.audio.decode import AudioDecodeError, read_audio
headroom_mb = sys.argv[2]
if headroom_mb != "none":  # address space: what the process maps now (libraries imported) plus a little
    with open("/proc/self/status") as status:
        mapped = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
    hard = resource.getrlimit(resource.RLIMIT_AS)[1]
    resource.setrlimit(resource.RLIMIT_AS, (mapped + int(headroom_mb) * 2**20, hard))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    wave = read_audio(sys.argv[1])
    print("samples", wave.size)
except AudioDecodeError as exc:
    print("refused", exc)
print("grew_mb", (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
"""


def _probe(path: Path, headroom_mb: str = "none") -> dict[str, str]:
    result = subprocess.run([sys.executable, "-c", RSS_PROBE, str(path), headroom_mb], capture_output=True,
                            text=True, timeout=300, cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 0, result.stderr[-3000:]
    return {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in result.stdout.splitlines()}


def test_long_high_rate_wav_decodes_block_by_block_in_bounded_memory(tmp_path: Path) -> None:
    path = sparse_wav(tmp_path / "five-minutes.wav", 192_000, 300.0, subtype="PCM_16")
    found = _probe(path)  # a fresh process: its peak RSS is this decode's alone
    assert int(found["samples"]) == 300 * 16_000
    # reading it whole at 192 kHz as float32 is 230 MB before resampling even starts; block by block: the 19 MB output
    assert float(found["grew_mb"]) < 150, found


def test_running_out_of_memory_is_reported_as_that(tmp_path: Path) -> None:
    if not Path("/proc/self/status").is_file():
        pytest.skip("needs /proc to size the address-space limit")
    path = sparse_wav(tmp_path / "hour.wav", 16_000, 3600.0, subtype="PCM_16")  # 230 MB of output samples
    found = _probe(path, "100")  # a process allowed 100 MB more than it maps: the output cannot fit
    assert "refused" in found, found
    assert found["refused"].startswith("not enough memory to decode") and "1.00 h" in found["refused"], found
    assert "16000 Hz" in found["refused"] and "corrupt" not in found["refused"]


# --------------------------------------------------------------------------------------------- 5. minor items


def test_s3_key_that_is_both_a_file_and_a_folder_is_a_clear_error(tmp_path: Path) -> None:
    from asr_optimize.store.s3_download import plan_download

    objects = [{"Key": "m/config.json", "Size": 10}, {"Key": "m/vocab.json", "Size": 5},
               {"Key": "m/config.json/extra", "Size": 3}]
    with pytest.raises(ModelResolutionError, match=r"object 'm/config\.json' is a file, but 'm/config\.json/extra' "
                                                   r"treats it as a folder.*delete or rename one"):
        plan_download("s3://b/m", "m/", objects, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


def _stage_artifact(store: LocalArtifactStore, tmp_path: Path, key: str):
    from asr_optimize.store.local import ArtifactRef, Manifest

    stage = tmp_path / f"stage-{key}"
    stage.mkdir(parents=True)
    (stage / "model.onnx").write_bytes(os.urandom(1000))
    ref = ArtifactRef(model_slug="m..0123456789ab", revision="sha256:abcdef", stage="export", key=key)
    return store.put(stage, Manifest(ref=ref, source_model="m", source_revision="sha256:abcdef"))


def test_manifest_naming_an_unsafe_path_says_which_folder_to_delete(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path / "store")
    hostile = _stage_artifact(store, tmp_path, "k1")
    neighbour = _stage_artifact(store, tmp_path, "k2")
    manifest = json.loads((hostile.local_dir / MANIFEST_NAME).read_text())
    manifest["files"]["../../k2/model.onnx"] = manifest["files"]["model.onnx"]
    (hostile.local_dir / MANIFEST_NAME).write_text(json.dumps(manifest))
    ref = hostile.manifest.ref
    for attempt in (lambda: store.get(ref), lambda: store.verify_artifact(ref)):
        with pytest.raises(UnsafePathError, match=rf"delete the folder {re.escape(str(hostile.local_dir))} to rebuild"):
            attempt()
    assert store.get(neighbour.manifest.ref) is not None  # the key it pointed at is untouched
    shutil.rmtree(hostile.local_dir)  # following the advice unwedges the key
    assert store.get(ref) is None
    assert _stage_artifact(store, tmp_path / "again", "k1").local_dir == hostile.local_dir


def test_disk_full_while_a_stage_builds_is_a_store_error_naming_the_folder(tiny_model: Path, tmp_path: Path) -> None:
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    from asr_optimize.model.source import resolve_model
    from tasks.common import run_cached_stage

    store = LocalArtifactStore(tmp_path / "store")
    model = resolve_model(str(tiny_model))

    def build(out: Path) -> dict:
        (out / "model.onnx").symlink_to("/dev/full")  # every write into it fails with ENOSPC, like a full disk
        with open(out / "model.onnx", "wb") as handle:
            handle.write(b"x" * 1_000_000)
        return {}

    with pytest.raises(NoSpaceError, match=r"export: no space left on the disk holding .*\.staging while building"):
        run_cached_stage(store, model, "export", {"p": 1}, {}, build)
    assert isinstance(NoSpaceError("x"), StoreError)  # exit code 2 in the CLI, not a traceback
    assert not list((store.root / "artifacts").rglob(MANIFEST_NAME))  # nothing half-written was published
    assert not list((store.root / ".staging").iterdir())  # and the scratch folder is gone
