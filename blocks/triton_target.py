"""The Triton target block: which server to hot-swap and where its model repository lives (folder or S3)."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from prefect.blocks.core import Block
from pydantic import Field, model_validator

from asr_optimize.defaults import TRITON_MODEL_NAME, TRITON_PIPELINE_NAME
from asr_optimize.errors import StoreError
from asr_optimize.settings import get_settings, s3_endpoint_url
from asr_optimize.store.s3_download import split_s3_uri
from asr_optimize.triton.names import TritonModelName
from blocks.model_store import HAVE_PREFECT_AWS

if HAVE_PREFECT_AWS:
    from prefect_aws import AwsCredentials


class TritonTarget(Block):
    """A Triton Inference Server and its model repository."""

    _block_type_name = "asr-optimize triton target"
    _description = "Triton Inference Server endpoints and model repository (local path or s3://) for asr-optimize."

    http_url: str = Field("http://127.0.0.1:8000", description="Triton HTTP endpoint")
    grpc_url: str = Field("127.0.0.1:8001", description="Triton gRPC endpoint (host:port)")
    repository: str = Field(default_factory=lambda: str(get_settings().triton_repository),
                            description="Model repository: a folder or s3://bucket/prefix")
    repository_endpoint_url: str | None = Field(None, description="S3-compatible endpoint of an s3:// repository")
    model_name: TritonModelName = Field(TRITON_MODEL_NAME, description="The acoustic model's name in the repository "
                                        "(a folder name: letters, digits, '_', '.', '-')")
    pipeline_name: TritonModelName = Field(TRITON_PIPELINE_NAME, description="The end-to-end (audio -> text) "
                                           "pipeline model (a folder name, not the acoustic model's)")
    if HAVE_PREFECT_AWS:
        repository_credentials: AwsCredentials | None = Field(
            None, description="Credentials for an s3:// repository; empty = boto3's default chain"
        )

    @model_validator(mode="after")
    def _distinct_names(self) -> TritonTarget:
        if self.model_name == self.pipeline_name:
            raise ValueError(f"model_name and pipeline_name are both {self.model_name!r}: they are two folders of the "
                             "repository and need two names")
        return self

    @property
    def is_s3(self) -> bool:
        return self.repository.startswith("s3://")

    def server_repository_uri(self) -> str:
        """The ``--model-repository`` value for tritonserver.

        Triton names a non-AWS endpoint inside the URI: ``s3://http://host:port/bucket/path``; AWS is ``s3://bucket/path``.
        """
        if not self.is_s3 or not self.repository_endpoint_url:
            return self.repository
        endpoint = urlparse(self.repository_endpoint_url)
        return f"s3://{endpoint.scheme or 'http'}://{endpoint.netloc}/{self.repository[5:].strip('/')}"

    def _s3_client(self) -> Any:
        import boto3

        creds = getattr(self, "repository_credentials", None)
        session = creds.get_boto3_session() if creds is not None else boto3.session.Session()
        endpoint = self.repository_endpoint_url or s3_endpoint_url()
        return session.client("s3", endpoint_url=endpoint, region_name=session.region_name or "us-east-1")

    def upload_repository(self, local_root: Path) -> list[str]:
        """Mirror a locally built repository to the s3:// repository in hot-swap order; the keys written.

        Version folders (model files, manifests) go first, then each model's ``config.pbtxt``, the pipeline's last:
        a Triton that reloads at any moment sees either the old config or a new one whose files are all there.
        Versions already present in the bucket are not uploaded again.
        """
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        from asr_optimize.store.s3 import s3_error_code

        if not self.is_s3:
            raise StoreError(f"Triton repository {self.repository} is not an s3:// URI")
        bucket, prefix = split_s3_uri(self.repository)
        files = sorted(p for p in Path(local_root).rglob("*") if p.is_file())
        configs = [p for p in files if p.name == "config.pbtxt"]
        pipeline = [p for p in configs if p.parent.name == self.pipeline_name]
        order = [p for p in files if p not in configs] + [p for p in configs if p not in pipeline] + pipeline
        client = self._s3_client()
        written = []
        try:
            existing = {obj["Key"]: obj["Size"] for page in client.get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix=prefix) for obj in page.get("Contents", [])}
            for path in order:
                key = prefix + path.relative_to(local_root).as_posix()
                if path.name != "config.pbtxt" and existing.get(key) == path.stat().st_size:
                    continue  # a version folder already published
                client.upload_file(str(path), bucket, key)
                written.append(key)
        except (BotoCoreError, ClientError, S3UploadFailedError) as exc:
            code = s3_error_code(exc)[0] or type(exc).__name__
            raise StoreError(f"cannot publish the Triton repository to {self.repository} ({code})") from None
        return written
