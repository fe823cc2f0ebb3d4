"""Faults caused for real on the S3 artifact store (a real moto_server): two concurrent writers, a truncated manifest
and a corrupted worker cache, hostile names in a manifest and in a store URI. Each test asserts that nothing was lost
or escaped and that the error or warning names the problem."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

import asr_optimize.store.s3 as s3_store_module
from asr_optimize.errors import StoreError, UnsafePathError
from asr_optimize.store.s3 import S3ArtifactStore
from tests.support.s3_server import MotoServer
from tests.support.store_faults import REF, SIZE, assert_whole, fill, manifest, race


def test_two_concurrent_s3_writers_one_artifact_loser_reuses(moto_s3: MotoServer, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    bucket = moto_s3.new_bucket()
    stores = [S3ArtifactStore(bucket, "p", endpoint_url=moto_s3.url, cache_dir=tmp_path / f"worker-{i}",
                              **moto_s3.credentials) for i in range(2)]
    stages = [fill(tmp_path / "stage-a", b"A"), fill(tmp_path / "stage-b", b"B")]
    results = race(monkeypatch, s3_store_module, [lambda: stores[0].put(stages[0], manifest()),
                                                  lambda: stores[1].put(stages[1], manifest())])
    assert sorted(r.reused for r in results) == [False, True]
    winner = next(r for r in results if not r.reused)
    loser = next(r for r in results if r.reused)
    assert loser.manifest == winner.manifest
    assert_whole(winner.local_dir, winner.manifest)
    assert_whole(loser.local_dir, winner.manifest)  # the loser's cache holds the winner's bytes
    client = moto_s3.client()
    committed = json.loads(client.get_object(Bucket=bucket, Key=f"p/artifacts/{REF.path}/manifest.json")["Body"]
                           .read())
    assert committed["upload_id"] == winner.manifest.upload_id
    for rel, entry in winner.manifest.files.items():  # the winner's objects were never overwritten
        body = client.get_object(Bucket=bucket, Key=f"p/artifacts/{REF.path}/data/{committed['upload_id']}/{rel}")
        assert __import__("hashlib").sha256(body["Body"].read()).hexdigest() == entry.sha256
    data_keys = moto_s3.keys(bucket, f"p/artifacts/{REF.path}/data/")
    assert {k.split("/data/")[1].split("/")[0] for k in data_keys} == {committed["upload_id"]}  # loser cleaned up
    fresh = S3ArtifactStore(bucket, "p", endpoint_url=moto_s3.url, cache_dir=tmp_path / "fresh", **moto_s3.credentials)
    got = fresh.get(REF)
    assert got is not None and got.manifest == winner.manifest


def test_s3_truncated_manifest_and_corrupt_cache(moto_s3: MotoServer, tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    bucket = moto_s3.new_bucket()
    store = S3ArtifactStore(bucket, "p", endpoint_url=moto_s3.url, cache_dir=tmp_path / "cache", **moto_s3.credentials)
    stored = store.put(fill(tmp_path / "stage", b"A"), manifest())
    cached = stored.local_dir / "model.onnx"  # the worker's cache: corrupt it, same size
    cached.write_bytes(b"Z" * SIZE)
    caplog.set_level(logging.WARNING)
    again = store.get(REF)
    assert again is not None and (again.local_dir / "model.onnx").read_bytes() == b"A" * SIZE  # downloaded again
    assert "cached copy" in caplog.text and "damaged" in caplog.text

    key = f"p/artifacts/{REF.path}/manifest.json"
    client = moto_s3.client()
    body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    client.put_object(Bucket=bucket, Key=key, Body=body[: len(body) // 2])  # a truncated manifest
    caplog.clear()
    other = S3ArtifactStore(bucket, "p", endpoint_url=moto_s3.url, cache_dir=tmp_path / "c2", **moto_s3.credentials)
    assert other.get(REF) is None and "unreadable" in caplog.text
    repaired = other.put(fill(tmp_path / "stage2", b"A"), manifest())
    assert not repaired.reused and other.get(REF) is not None


def test_hostile_s3_manifest_names_are_refused(moto_s3: MotoServer, tmp_path: Path) -> None:
    bucket = moto_s3.new_bucket()
    evil = manifest().model_dump(mode="json")
    evil["files"] = {"../../../escaped.txt": {"sha256": "0" * 64, "size": 1}}
    moto_s3.client().put_object(Bucket=bucket, Key=f"p/artifacts/{REF.path}/manifest.json", Body=json.dumps(evil))
    moto_s3.client().put_object(Bucket=bucket, Key=f"p/artifacts/{REF.path}/../../../escaped.txt", Body=b"x")
    cache = tmp_path / "deep" / "er" / "cache"
    store = S3ArtifactStore(bucket, "p", endpoint_url=moto_s3.url, cache_dir=cache, **moto_s3.credentials)
    with pytest.raises(UnsafePathError, match=r"'\.\./\.\./\.\./escaped\.txt'"):
        store.get(REF)
    assert not [p for p in tmp_path.rglob("escaped.txt")]


def test_s3_store_prefix_with_dotdot_is_refused(moto_s3: MotoServer, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASR_OPTIMIZE_S3_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_s3.url)
    for uri in ("s3://models/../../etc", "s3://models/a/../b", "s3://models/a//b", "s3://../x"):
        with pytest.raises(StoreError, match="refused"):
            S3ArtifactStore.from_uri(uri, cache_dir=tmp_path / "cache", **moto_s3.credentials)
    assert not (tmp_path / "etc").exists() and not any(tmp_path.rglob("*etc*"))
