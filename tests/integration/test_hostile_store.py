"""Hostile stores and model prefixes on a real S3 endpoint (moto_server on loopback): lookalike model prefixes, a key
that is a file and a folder at once, a manifest naming an unsafe path, a production artifact damaged in the cache or in
the bucket. Each test checks that nothing was lost and that the error names the problem and the way out."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from asr_optimize.errors import ModelResolutionError, UnsafePathError
from asr_optimize.model.source import resolve_model
from asr_optimize.settings import get_settings
from asr_optimize.store.local import MANIFEST_NAME, ArtifactRef, Manifest, production_pointer, slugify_model
from asr_optimize.store.s3 import S3ArtifactStore
from tests.support.s3_server import MotoServer

runner = CliRunner()


@pytest.fixture()
def s3_env(moto_s3: MotoServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[MotoServer]:
    """The S3 endpoint and credentials in the environment, as a worker (and the CLI) would see them."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_s3.url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", moto_s3.credentials["aws_access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", moto_s3.credentials["aws_secret_access_key"])
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("ASR_OPTIMIZE_S3_CACHE", str(tmp_path / "s3-cache"))
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    get_settings.cache_clear()
    yield moto_s3
    get_settings.cache_clear()


def upload(server: MotoServer, bucket: str, folder: Path, prefix: str) -> None:
    client = server.client()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        client.put_object(Bucket=bucket, Key=f"{prefix}/{path.relative_to(folder).as_posix()}", Body=path.read_bytes())


def flat(text: str) -> str:
    return " ".join(text.split())


def test_lookalike_s3_model_prefixes_get_their_own_cache_folders(s3_env: MotoServer, tiny_model: Path,
                                                                 tmp_path: Path) -> None:
    bucket = s3_env.new_bucket()
    tail = "/".join(["asr", "hindi", "wav2vec2"] * 6) + "/release"  # the old slug kept the last 80 characters only
    upload(s3_env, bucket, tiny_model, f"prod/{tail}")
    staging = Path(shutil.copytree(tiny_model, tmp_path / "staging-model"))
    (staging / "README.md").write_text("staging build\n")
    upload(s3_env, bucket, staging, f"staging/{tail}")
    cache = tmp_path / "cache"

    prod = resolve_model(f"s3://{bucket}/prod/{tail}", cache_dir=cache)
    stag = resolve_model(f"s3://{bucket}/staging/{tail}", cache_dir=cache)
    assert prod.local_dir != stag.local_dir and prod.slug != stag.slug
    assert prod.revision != stag.revision
    again = resolve_model(f"s3://{bucket}/prod/{tail}", cache_dir=cache)  # staging's download replaced nothing
    assert again.local_dir == prod.local_dir and again.revision == prod.revision
    assert not (prod.local_dir / "README.md").exists() and (stag.local_dir / "README.md").is_file()
    assert production_pointer(prod.slug) != production_pointer(stag.slug)


def test_s3_model_key_that_is_a_file_and_a_folder_is_a_clear_error(s3_env: MotoServer, tiny_model: Path,
                                                                  tmp_path: Path) -> None:
    bucket = s3_env.new_bucket()
    upload(s3_env, bucket, tiny_model, "models/tiny")
    s3_env.client().put_object(Bucket=bucket, Key="models/tiny/config.json/backup", Body=b"{}")
    with pytest.raises(ModelResolutionError) as info:
        resolve_model(f"s3://{bucket}/models/tiny", cache_dir=tmp_path / "cache")
    message = str(info.value)
    assert "'models/tiny/config.json' is a file, but 'models/tiny/config.json/backup' treats it as a folder" in message
    assert "delete or rename one of the two objects" in message
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]  # nothing half-downloaded
    assert "models/tiny/config.json" in s3_env.keys(bucket, "models/")  # and nothing deleted in the bucket


def test_s3_manifest_naming_an_unsafe_path_says_which_key_to_delete(s3_env: MotoServer, tmp_path: Path) -> None:
    bucket = s3_env.new_bucket()
    store = S3ArtifactStore(bucket, "team", endpoint_url=s3_env.url, cache_dir=tmp_path / "cache",
                            **s3_env.credentials)
    stage = tmp_path / "stage"
    stage.mkdir()
    (stage / "model.onnx").write_bytes(b"onnx" * 100)
    ref = ArtifactRef(model_slug="m..0123456789ab", revision="sha256:abcdef", stage="export", key="k1")
    store.put(stage, Manifest(ref=ref, source_model="m", source_revision="sha256:abcdef"))
    manifest_key = f"team/artifacts/{ref.path}/{MANIFEST_NAME}"
    body = json.loads(s3_env.client().get_object(Bucket=bucket, Key=manifest_key)["Body"].read())
    body["files"]["../../../escape"] = body["files"]["model.onnx"]
    s3_env.client().put_object(Bucket=bucket, Key=manifest_key, Body=json.dumps(body).encode())

    with pytest.raises(UnsafePathError, match=rf"delete s3://{bucket}/{manifest_key} \(the artifact's manifest\)"):
        store.get(ref)
    assert not list((tmp_path / "cache").rglob("escape"))
    s3_env.client().delete_object(Bucket=bucket, Key=manifest_key)  # following the advice unwedges the key
    assert store.get(ref) is None
    assert store.put(stage, Manifest(ref=ref, source_model="m", source_revision="sha256:abcdef")).local_dir.is_dir()


def test_production_from_s3_is_verified_before_it_runs(s3_env: MotoServer, tiny_model: Path, tmp_path: Path) -> None:
    from asr_optimize.audio.load import synthetic_audio
    from asr_optimize.runners.registry import RunnerSpec
    from flows.cli import app
    from tasks.export import ONNX_NAME, ExportOptions, export_stage
    from tasks.promote import PromotionDecision, move_production_pointer

    bucket = s3_env.new_bucket()
    store = S3ArtifactStore.from_uri(f"s3://{bucket}/asr", cache_dir=tmp_path / "s3-cache", **s3_env.credentials)
    resolved = resolve_model(str(tiny_model))
    export = export_stage(store, resolved, ExportOptions(), synthetic_audio(1, 1.0))
    spec = RunnerSpec(kind="onnxruntime", variant="exported", device="cpu", path=export.file(ONNX_NAME),
                      artifact=f"export:{export.key}/{ONNX_NAME}")
    move_production_pointer(store, PromotionDecision(
        promoted=True, candidate=spec.label, artifact=str(spec.path), artifact_id=spec.artifact, spec=spec,
        case="1x1", latency_ms=1.0, reason="test"), "cpu", resolved.source, resolved.revision)
    audio = tmp_path / "clip.wav"
    sf.write(audio, (0.1 * np.sin(np.arange(16000) / 5)).astype(np.float32), 16000)
    args = ["transcribe", str(audio), "--model", str(tiny_model), "--production", "--store", f"s3://{bucket}/asr"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output

    # damaged in this worker's cache only: the store downloads a verified copy again and runs that
    assert export.artifact_dir is not None
    name = max((p for p in export.artifact_dir.iterdir() if p.name != MANIFEST_NAME), key=lambda p: p.stat().st_size)
    good = name.read_bytes()
    name.write_bytes(good[:100] + bytes([good[100] ^ 1]) + good[101:])
    healed = runner.invoke(app, args)
    assert healed.exit_code == 0, healed.output
    assert healed.output.splitlines()[-1] == first.output.splitlines()[-1]
    assert name.read_bytes() == good

    # damaged in the bucket: refused, with the way to rebuild it; the pointer is left alone
    manifest = json.loads((export.artifact_dir / MANIFEST_NAME).read_text())
    data_key = (f"asr/artifacts/{export_ref_path(resolved, export.key)}/data/{manifest['upload_id']}/{name.name}")
    s3_env.client().put_object(Bucket=bucket, Key=data_key, Body=good[:100] + bytes([good[100] ^ 1]) + good[101:])
    shutil.rmtree(tmp_path / "s3-cache" / bucket)  # a fresh worker: nothing cached
    pointer = store.read_pointer(production_pointer(slugify_model(str(tiny_model))))
    refused = runner.invoke(app, args)
    out = flat(refused.output)
    assert refused.exit_code == 2, out
    assert "is missing or damaged" in out and "refusing to run it" in out and "Rerun `asr-optimize run`" in out
    assert store.read_pointer(production_pointer(slugify_model(str(tiny_model)))) == pointer


def export_ref_path(resolved, key: str) -> str:
    return ArtifactRef(model_slug=resolved.slug, revision=resolved.revision, stage="export", key=key).path
