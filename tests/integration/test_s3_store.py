"""S3ArtifactStore against a real S3 endpoint on loopback (moto_server with IAM auth on)."""

from __future__ import annotations

import base64
import hashlib
import logging
import os
from pathlib import Path
from typing import IO, Any

import pytest

from asr_optimize.errors import StoreError
from asr_optimize.model.source import ResolvedModel
from asr_optimize.store.local import ArtifactRef, LocalArtifactStore, Manifest
from asr_optimize.store.s3 import MiB, S3ArtifactStore
from blocks.model_store import open_store
from tests.support.s3_server import MotoServer

SMALL = b"config for a tiny model\n"
BIG_SIZE = 6 * MiB + 123  # above the 5 MiB multipart threshold used below: two parts


@pytest.fixture()
def bucket(moto_s3: MotoServer) -> str:
    return moto_s3.new_bucket()


def make_store(server: MotoServer, bucket: str, cache: Path, cls: type[S3ArtifactStore] = S3ArtifactStore,
               **kwargs: Any) -> S3ArtifactStore:
    opts: dict[str, Any] = {"multipart_threshold": 5 * MiB, "multipart_chunksize": 5 * MiB, **server.credentials}
    return cls(bucket, "team/asr", endpoint_url=server.url, cache_dir=cache, **{**opts, **kwargs})


def staged(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_bytes(SMALL)
    (folder / "sub").mkdir(exist_ok=True)
    (folder / "sub" / "model.onnx").write_bytes(os.urandom(BIG_SIZE))
    return folder


def manifest_for(key: str = "k1") -> Manifest:
    ref = ArtifactRef(model_slug="tiny", revision="sha256:abcdef0123456789", stage="export", key=key)
    return Manifest(ref=ref, source_model="tiny", source_revision="sha256:abcdef0123456789", params={"opset": 17})


def test_round_trip_with_checksums(moto_s3: MotoServer, bucket: str, tmp_path: Path) -> None:
    store = make_store(moto_s3, bucket, tmp_path / "cache-a")
    stage = staged(tmp_path / "stage")
    manifest = manifest_for()
    stored = store.put(stage, manifest)
    assert stored.location == f"s3://{bucket}/team/asr/artifacts/{manifest.ref.path}"
    assert (stored.local_dir / "sub" / "model.onnx").read_bytes() == (stage / "sub" / "model.onnx").read_bytes()

    keys = moto_s3.keys(bucket, "team/asr/artifacts/")
    assert sorted(k.rsplit("/", 1)[-1] for k in keys) == ["config.json", "manifest.json", "model.onnx"]
    big_key = f"team/asr/artifacts/{manifest.ref.path}/data/{stored.manifest.upload_id}/sub/model.onnx"
    head = moto_s3.client().head_object(Bucket=bucket, Key=big_key, ChecksumMode="ENABLED")
    big_sha = hashlib.sha256((stage / "sub" / "model.onnx").read_bytes()).hexdigest()
    assert head["Metadata"]["sha256"] == big_sha == stored.manifest.files["sub/model.onnx"].sha256
    assert head["ETag"].endswith('-2"')  # really a multipart upload
    assert head["ChecksumSHA256"]  # the server verified and kept a SHA256 checksum

    other = make_store(moto_s3, bucket, tmp_path / "cache-b")  # a fresh worker: downloads and verifies
    got = other.get(manifest.ref)
    assert got is not None and got.local_dir.is_relative_to(tmp_path / "cache-b")
    assert got.manifest.files == stored.manifest.files
    assert hashlib.sha256(got.file("sub/model.onnx").read_bytes()).hexdigest() == big_sha
    assert got.file("config.json").read_bytes() == SMALL

    again = other.put(staged(tmp_path / "stage2"), manifest_for())  # never overwrites a complete version
    assert again.manifest.created_at == stored.manifest.created_at
    assert again.manifest.files == stored.manifest.files


def test_small_file_checksum_matches_s3(moto_s3: MotoServer, bucket: str, tmp_path: Path) -> None:
    store = make_store(moto_s3, bucket, tmp_path / "cache")
    stored = store.put(staged(tmp_path / "stage"), manifest_for("small"))
    key = f"team/asr/artifacts/{stored.manifest.ref.path}/data/{stored.manifest.upload_id}/config.json"
    head = moto_s3.client().head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    assert head["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(SMALL).digest()).decode()


class _CutOff:
    """A file that fails (or, with ``truncate``, ends early) after ``limit`` bytes, like a disk dying mid-upload."""

    def __init__(self, path: Path, limit: int, truncate: bool = False) -> None:
        self._handle = open(path, "rb")  # noqa: SIM115
        self._left = limit
        self._truncate = truncate

    def read(self, size: int = -1) -> bytes:
        if (size < 0 or size > self._left) and not self._truncate:
            raise OSError("simulated I/O failure half way through the upload")
        data = self._handle.read(self._left if size < 0 else min(size, self._left))
        self._left -= len(data)
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)

    def __enter__(self) -> _CutOff:
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.close()


class CutOffStore(S3ArtifactStore):
    truncate = False

    def _open_for_upload(self, path: Path) -> IO[bytes]:
        if path.name == "model.onnx":
            return _CutOff(path, 5 * MiB + 10, self.truncate)  # type: ignore[return-value]
        return open(path, "rb")


class TruncatingStore(CutOffStore):
    truncate = True


@pytest.mark.parametrize(("cls", "error"), [(CutOffStore, "was cut off"), (TruncatingStore, "failed verification")])
def test_cut_off_upload_leaves_nothing_visible(moto_s3: MotoServer, bucket: str, tmp_path: Path,
                                               cls: type[S3ArtifactStore], error: str) -> None:
    stage = staged(tmp_path / "stage")
    manifest = manifest_for("cut")
    broken = make_store(moto_s3, bucket, tmp_path / "cache", cls=cls)
    with pytest.raises(StoreError, match=error):
        broken.put(stage, manifest)
    keys = moto_s3.keys(bucket)
    assert any(k.endswith("config.json") for k in keys)  # the first file really reached the server...
    assert not any(k.endswith("manifest.json") for k in keys)  # ...but no manifest, so no artifact
    assert not moto_s3.client().list_multipart_uploads(Bucket=bucket).get("Uploads")  # the multipart was aborted
    fresh = make_store(moto_s3, bucket, tmp_path / "cache2")
    assert fresh.get(manifest.ref) is None

    done = fresh.put(stage, manifest_for("cut"))  # a retry completes it
    assert fresh.get(done.manifest.ref) is not None


def test_wrong_credentials_clear_error_without_secret(moto_s3: MotoServer, bucket: str, tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    secret = "wRoNgSeCrEt/ThisMustNeverBeLogged0123456789"
    caplog.set_level(logging.DEBUG)
    cases = {
        "bad secret": {"aws_secret_access_key": secret},
        "bad key id": {"aws_access_key_id": "AKIAUNKNOWNKEY000000", "aws_secret_access_key": secret},
    }
    for overrides in cases.values():
        store = make_store(moto_s3, bucket, tmp_path / "cache", max_attempts=1, **overrides)
        for call in (lambda s=store: s.get(manifest_for().ref),
                     lambda s=store: s.put(staged(tmp_path / "stage"), manifest_for()),
                     lambda s=store: s.write_pointer("production", {"key": "k1"})):
            with pytest.raises(StoreError, match=r"credentials rejected by http://127\.0\.0\.1") as info:
                call()
            assert secret not in str(info.value) and secret not in repr(info.value)
        assert secret not in store.describe() and secret not in repr(store)
    out, err = capsys.readouterr()
    assert secret not in caplog.text and secret not in out and secret not in err


def test_missing_bucket_names_it(moto_s3: MotoServer, tmp_path: Path) -> None:
    store = make_store(moto_s3, "no-such-bucket-xyz", tmp_path / "cache", max_attempts=1)
    with pytest.raises(StoreError, match="bucket 'no-such-bucket-xyz' does not exist"):
        store.get(manifest_for().ref)
    with pytest.raises(StoreError, match="bucket 'no-such-bucket-xyz' does not exist"):
        store.put(staged(tmp_path / "stage"), manifest_for())
    with pytest.raises(StoreError, match="bucket 'no-such-bucket-xyz' does not exist"):
        store.read_pointer("production")


def test_pointer_moves_atomically_with_history(moto_s3: MotoServer, bucket: str, tmp_path: Path) -> None:
    store = make_store(moto_s3, bucket, tmp_path / "cache")
    assert store.read_pointer("production") is None
    store.write_pointer("production", {"key": "first"})
    store.write_pointer("production", {"key": "second"})
    pointer = store.read_pointer("production")
    assert pointer is not None and pointer["key"] == "second" and "updated_at" in pointer
    assert [h["key"] for h in store.pointer_history("production")] == ["first", "second"]
    assert "team/asr/pointers/production.json" in moto_s3.keys(bucket)
    with pytest.raises(StoreError, match="invalid pointer name"):
        store.write_pointer("../evil", {})


def test_damaged_artifact_is_reported_and_rebuilt(moto_s3: MotoServer, bucket: str, tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    store = make_store(moto_s3, bucket, tmp_path / "cache")
    stored = store.put(staged(tmp_path / "stage"), manifest_for("dmg"))
    key = f"team/asr/artifacts/{stored.manifest.ref.path}/data/{stored.manifest.upload_id}/config.json"
    moto_s3.client().put_object(Bucket=bucket, Key=key, Body=b"tampered")  # same object, different bytes
    other = make_store(moto_s3, bucket, tmp_path / "other")
    with caplog.at_level(logging.WARNING, logger="asr_optimize.store.s3"):
        assert other.get(stored.manifest.ref) is None  # damaged: never reused
    assert "damaged (config.json does not match its manifest sha256)" in caplog.text
    rebuilt = other.put(staged(tmp_path / "stage2"), manifest_for("dmg"))  # replaces the damaged manifest (If-Match)
    assert not rebuilt.reused and rebuilt.manifest.upload_id != stored.manifest.upload_id
    fresh = make_store(moto_s3, bucket, tmp_path / "third").get(stored.manifest.ref)
    assert fresh is not None and fresh.file("config.json").read_bytes() == SMALL


def test_second_run_on_fresh_folder_reuses_stage_from_s3(moto_s3: MotoServer, bucket: str, tmp_path: Path) -> None:
    from tasks.common import run_cached_stage

    model = ResolvedModel(source="tiny-model", kind="local", revision="sha256:" + "ab" * 32,
                          local_dir=tmp_path, architecture="Wav2Vec2ForCTC")
    calls: list[Path] = []

    def build(out_dir: Path) -> dict[str, Any]:
        calls.append(out_dir)
        (out_dir / "model.onnx").write_bytes(b"onnx bytes")
        return {"size": 10}

    first = run_cached_stage(make_store(moto_s3, bucket, tmp_path / "worker-1"), model, "export", {"opset": 17},
                             {"model": "x"}, build)
    assert first.status == "ok" and len(calls) == 1
    second = run_cached_stage(make_store(moto_s3, bucket, tmp_path / "worker-2"), model, "export", {"opset": 17},
                              {"model": "x"}, build)
    assert second.status == "cached" and len(calls) == 1  # build not called again
    assert second.artifact_dir is not None and second.artifact_dir.is_relative_to(tmp_path / "worker-2")
    assert second.file("model.onnx").read_bytes() == b"onnx bytes" and second.metrics == {"size": 10}
    assert second.location == first.location and second.location.startswith(f"s3://{bucket}/")


def test_open_store_specs(moto_s3: MotoServer, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(open_store(str(tmp_path / "local")), LocalArtifactStore)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_s3.url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", moto_s3.credentials["aws_access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", moto_s3.credentials["aws_secret_access_key"])
    monkeypatch.setenv("ASR_OPTIMIZE_S3_CACHE", str(tmp_path / "cache"))
    store = open_store(f"s3://{bucket}/some/prefix")
    assert isinstance(store, S3ArtifactStore) and store.prefix == "some/prefix"
    assert store.describe() == f"S3 s3://{bucket}/some/prefix at {moto_s3.url}"
    store.write_pointer("production", {"key": "k"})
    assert store.read_pointer("production") is not None
    assert moto_s3.credentials["aws_secret_access_key"] not in store.describe()


def test_pickling_and_prefect_hashing_never_carry_credentials(moto_s3: MotoServer, tmp_path: Path) -> None:
    import cloudpickle
    from prefect.utilities.hashing import hash_objects

    store = make_store(moto_s3, "some-bucket", tmp_path)
    blob = cloudpickle.dumps(store)
    assert moto_s3.credentials["aws_secret_access_key"].encode() not in blob
    assert moto_s3.credentials["aws_access_key_id"].encode() not in blob
    assert hash_objects(store) is not None  # Prefect can hash a task input that is the store
    copy = cloudpickle.loads(blob)
    assert copy.describe() == store.describe() and copy.cache_dir == store.cache_dir
