"""Blocks against a real (ephemeral) Prefect API and a real S3 endpoint: save, load, use; Prefect results on S3."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect import flow, task
from prefect.testing.utilities import prefect_test_harness
from prefect_aws import AwsCredentials
from prefect_aws.client_parameters import AwsClientParameters

from asr_optimize.store.local import ArtifactRef, LocalArtifactStore, Manifest
from asr_optimize.store.s3 import S3ArtifactStore
from blocks import ModelStore, TritonTarget
from blocks.model_store import open_store
from deploy.register_blocks import main as register_blocks
from tests.support.s3_server import MotoServer


@pytest.fixture(scope="module")
def prefect_api() -> Iterator[None]:
    with prefect_test_harness(server_startup_timeout=60):
        yield


def moto_credentials(server: MotoServer) -> AwsCredentials:
    return AwsCredentials(**server.credentials, region_name="us-east-1",
                          aws_client_parameters=AwsClientParameters(endpoint_url=server.url))


def test_model_store_block_s3_round_trip(prefect_api: None, moto_s3: MotoServer, tmp_path: Path) -> None:
    bucket = moto_s3.new_bucket()
    secret = moto_s3.credentials["aws_secret_access_key"]
    block = ModelStore(kind="s3", bucket=bucket, prefix="blocks", credentials=moto_credentials(moto_s3),
                       cache_dir=str(tmp_path / "cache"))
    block.save("s3-store", overwrite=True)

    loaded = ModelStore.load("s3-store")
    assert loaded.credentials is not None and secret not in repr(loaded)  # SecretStr stays masked
    store = loaded.get_store()
    assert isinstance(store, S3ArtifactStore) and store.endpoint_url == moto_s3.url
    assert secret not in store.describe()

    stage = tmp_path / "stage"
    stage.mkdir()
    (stage / "weights.bin").write_bytes(b"\x00" * 1000)
    ref = ArtifactRef(model_slug="m", revision="r" * 40, stage="export", key="k")
    stored = store.put(stage, Manifest(ref=ref, source_model="m", source_revision="r" * 40))
    assert secret not in stored.manifest.model_dump_json()
    again = open_store("block:s3-store").get(ref)
    assert again is not None and again.file("weights.bin").read_bytes() == b"\x00" * 1000


def test_register_blocks_creates_defaults_and_keeps_them(prefect_api: None, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert register_blocks(["--store-path", str(tmp_path / "model_store"), "--overwrite"]) == 0
    store = open_store("block:asr-optimize-store")
    assert isinstance(store, LocalArtifactStore) and store.root == (tmp_path / "model_store").resolve()
    assert register_blocks(["--store-path", str(tmp_path / "elsewhere")]) == 0  # existing documents are kept
    assert "kept     asr-optimize-model-store/asr-optimize-store" in capsys.readouterr().out
    assert ModelStore.load("asr-optimize-store").path == str((tmp_path / "model_store").resolve())
    triton = TritonTarget.load("asr-optimize-triton")
    assert triton.http_url == "http://127.0.0.1:8000" and not triton.is_s3


def test_triton_repository_upload_in_hot_swap_order(moto_s3: MotoServer, tmp_path: Path) -> None:
    bucket = moto_s3.new_bucket()
    root = tmp_path / "repo"
    for rel, text in {"wav2vec2_ctc/config.pbtxt": "acoustic", "wav2vec2_ctc/1/model.onnx": "onnx",
                      "asr/config.pbtxt": "pipeline", "asr/1/model.py": "bls"}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    target = TritonTarget(repository=f"s3://{bucket}/triton", repository_endpoint_url=moto_s3.url,
                          repository_credentials=moto_credentials(moto_s3))
    written = target.upload_repository(root)
    assert [k.split("/", 1)[1] for k in written] == [
        "asr/1/model.py", "wav2vec2_ctc/1/model.onnx", "wav2vec2_ctc/config.pbtxt", "asr/config.pbtxt"]
    again = target.upload_repository(root)  # published versions are not uploaded again; configs always are
    assert [k.split("/", 1)[1] for k in again] == ["wav2vec2_ctc/config.pbtxt", "asr/config.pbtxt"]
    body = moto_s3.client().get_object(Bucket=bucket, Key="triton/asr/config.pbtxt")["Body"].read()
    assert body == b"pipeline"
    assert target.server_repository_uri() == f"s3://{moto_s3.url}/{bucket}/triton"


def test_open_store_unknown_block(prefect_api: None) -> None:
    from asr_optimize.errors import StoreError

    with pytest.raises(StoreError, match="no model-store block named 'nope'"):
        open_store("block:nope")


def test_prefect_results_and_task_cache_on_s3(prefect_api: None, moto_s3: MotoServer, tmp_path: Path) -> None:
    """The registered results block becomes the server default: a rerun reuses the cached task result from S3."""
    bucket = moto_s3.new_bucket()
    moto_credentials(moto_s3).save("moto-creds", overwrite=True)
    assert register_blocks(["--s3-bucket", bucket, "--s3-endpoint", moto_s3.url, "--credentials-block", "moto-creds",
                            "--results-block", "--overwrite", "--store-path", str(tmp_path)]) == 0
    calls: list[int] = []
    token = uuid.uuid4().hex

    @task(cache_key_fn=lambda ctx, params: f"square-{token}-{params['x']}")
    def square(x: int) -> int:
        calls.append(x)
        return x * x

    @flow
    def pipeline() -> int:
        return square(7)

    assert pipeline() == 49 and pipeline() == 49
    assert calls == [7]  # the second run was served from the cache record in S3
    assert any(token in key for key in moto_s3.keys(bucket, "asr-optimize/prefect-results/"))
    assert isinstance(open_store("block:asr-optimize-store"), S3ArtifactStore)


def test_flow_takes_the_triton_target_from_its_block(prefect_api: None, tmp_path: Path) -> None:
    from asr_optimize.errors import AsrOptimizeError
    from flows.asr_optimize import triton_options_from_block
    from tasks.deploy_triton import TritonOptions

    TritonTarget(http_url="http://triton.internal:8000", repository=str(tmp_path / "repo"), model_name="am",
                 pipeline_name="asr_hi").save("prod-triton", overwrite=True)
    opts = triton_options_from_block(TritonOptions(target_block="prod-triton"))
    assert (opts.url, opts.repository) == ("http://triton.internal:8000", tmp_path / "repo")
    assert (opts.swap.model_name, opts.swap.pipeline_name) == ("am", "asr_hi")
    assert triton_options_from_block(TritonOptions()).url is None  # no block named: options as given
    TritonTarget(repository="s3://models/triton").save("s3-triton", overwrite=True)
    with pytest.raises(AsrOptimizeError, match="s3:// repository"):
        triton_options_from_block(TritonOptions(target_block="s3-triton"))
