"""Blocks without a Prefect API: the Triton target's repository URI as tritonserver is given it.
(Saved, loaded and used against a real Prefect API and S3 endpoint: ``tests/integration/test_blocks.py``.)"""

from __future__ import annotations

from blocks import TritonTarget


def test_triton_target_s3_repository_uri() -> None:
    target = TritonTarget(repository="s3://models/triton/", repository_endpoint_url="http://minio:9000")
    assert target.server_repository_uri() == "s3://http://minio:9000/models/triton"
    assert TritonTarget(repository="s3://models/triton").server_repository_uri() == "s3://models/triton"
    assert TritonTarget(repository="/srv/repo").server_repository_uri() == "/srv/repo"
