"""Hostile models on S3, caused for real: an S3 prefix (a real moto_server) holding keys that try to leave the
cache; a clean prefix downloads to the same content revision as the local folder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from asr_optimize.errors import ModelResolutionError
from asr_optimize.model.source import resolve_model
from asr_optimize.settings import get_settings
from tests.support.s3_server import MotoServer


@pytest.fixture()
def s3_env(moto_s3: MotoServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[MotoServer]:
    """The S3 endpoint in the environment, as a worker would see it; settings re-read before and after."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_s3.url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", moto_s3.credentials["aws_access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", moto_s3.credentials["aws_secret_access_key"])
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    get_settings.cache_clear()
    yield moto_s3
    get_settings.cache_clear()  # nothing read under this environment outlives the test


def upload_model(server: MotoServer, bucket: str, folder: Path, prefix: str = "evilmodel") -> None:
    client = server.client()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        client.put_object(Bucket=bucket, Key=f"{prefix}/{path.relative_to(folder).as_posix()}", Body=path.read_bytes())


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize("hostile", ["evilmodel/../../../../tmp/x", "evilmodel//tmp/y", "evilmodel/a\\..\\..\\z"])
def test_hostile_s3_keys_never_leave_the_cache(s3_env: MotoServer, tiny_model: Path, tmp_path: Path,
                                               hostile: str) -> None:
    bucket = s3_env.new_bucket()
    upload_model(s3_env, bucket, tiny_model)
    s3_env.client().put_object(Bucket=bucket, Key=hostile, Body=b"pwned")
    assert hostile in s3_env.keys(bucket, "evilmodel/")  # the server really holds the hostile key
    cache = tmp_path / "a" / "b" / "c" / "d" / "cache"  # deep, so '../../../..' still lands inside tmp_path
    outside = {p: p.stat().st_mtime for p in (Path("/tmp/x"), Path("/tmp/y")) if p.exists()}
    with pytest.raises(ModelResolutionError, match="would be written outside the model cache") as info:
        resolve_model(f"s3://{bucket}/evilmodel", cache_dir=cache)
    assert repr(hostile) in str(info.value) or hostile in str(info.value)  # the error names the key
    assert files_under(tmp_path) == []  # nothing written anywhere: not in the cache, not beside it
    for path in (Path("/tmp/x"), Path("/tmp/y")):
        assert (path.stat().st_mtime if path.exists() else None) == outside.get(path)


def test_clean_s3_model_downloads_and_matches_local_revision(s3_env: MotoServer, tiny_model: Path,
                                                            tmp_path: Path) -> None:
    bucket = s3_env.new_bucket()
    upload_model(s3_env, bucket, tiny_model, "models/tiny")
    s3_env.client().put_object(Bucket=bucket, Key="models/tiny/", Body=b"")  # a console "folder" marker
    resolved = resolve_model(f"s3://{bucket}/models/tiny", cache_dir=tmp_path / "cache")
    assert resolved.kind == "s3" and resolved.local_dir.is_relative_to(tmp_path / "cache")
    assert resolved.revision == resolve_model(str(tiny_model)).revision
    again = resolve_model(f"s3://{bucket}/models/tiny", cache_dir=tmp_path / "cache")  # replaces the cache whole
    assert again.revision == resolved.revision
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [resolved.local_dir.name]  # no leftovers
