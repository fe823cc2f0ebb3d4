"""The model-store block: a local folder (the embedded default) or an S3/MinIO bucket, configured once in the UI."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from asr_optimize.errors import StoreError
from asr_optimize.settings import get_settings
from asr_optimize.store.factory import open_store_uri
from asr_optimize.store.local import ArtifactStore, LocalArtifactStore

BLOCK_PREFIX = "block:"

try:  # prefect-aws gives a reusable, UI-editable credentials block
    from prefect_aws import AwsCredentials

    HAVE_PREFECT_AWS = True
except ImportError:  # pragma: no cover - exercised only where prefect-aws is absent
    HAVE_PREFECT_AWS = False

if TYPE_CHECKING:
    from asr_optimize.store.s3 import S3ArtifactStore


class ModelStore(Block):
    """Where every stage reads and writes artifacts and the ``production`` pointer."""

    _block_type_name = "asr-optimize model store"
    _description = "Artifact store for asr-optimize: a local folder or an S3 / MinIO bucket with a prefix."

    kind: Literal["local", "s3"] = Field("local", description="'local' folder or 's3' bucket")
    path: str = Field(default_factory=lambda: get_settings().store, description="Folder for kind=local")
    bucket: str | None = Field(None, description="Bucket for kind=s3")
    prefix: str = Field("asr-optimize", description="Key prefix inside the bucket")
    endpoint_url: str | None = Field(None, description="S3-compatible endpoint (MinIO), e.g. http://minio:9000")
    region: str | None = Field(None, description="AWS region (default: from credentials or us-east-1)")
    cache_dir: str | None = Field(None, description="Local folder for downloaded artifacts (default ~/.cache)")
    if HAVE_PREFECT_AWS:
        credentials: AwsCredentials | None = Field(
            None, description="prefect-aws AwsCredentials block; empty = boto3's default chain (env, profile, role)"
        )
    else:  # pragma: no cover
        aws_access_key_id: str | None = Field(None, description="Access key id; empty = boto3's default chain")
        aws_secret_access_key: SecretStr | None = Field(None, description="Secret access key")

    def get_store(self) -> ArtifactStore:
        """The configured store, ready to use."""
        if self.kind == "local":
            return LocalArtifactStore(self.path)
        return self.get_s3_store()

    def get_s3_store(self) -> S3ArtifactStore:
        """The S3 store (kind=s3)."""
        from asr_optimize.store.s3 import S3ArtifactStore

        if not self.bucket:
            raise StoreError("model store block has kind=s3 but no bucket")
        creds = getattr(self, "credentials", None)
        if creds is not None:
            endpoint = self.endpoint_url or creds.aws_client_parameters.endpoint_url
            return S3ArtifactStore(self.bucket, self.prefix, endpoint_url=endpoint, region=self.region,
                                   session=creds.get_boto3_session(), cache_dir=self.cache_dir)
        secret: SecretStr | None = getattr(self, "aws_secret_access_key", None)
        return S3ArtifactStore(
            self.bucket, self.prefix, endpoint_url=self.endpoint_url, region=self.region, cache_dir=self.cache_dir,
            aws_access_key_id=getattr(self, "aws_access_key_id", None),
            aws_secret_access_key=secret.get_secret_value() if secret else None,
        )


def open_store(spec: str) -> ArtifactStore:
    """The store named by ``spec``: ``block:<name>`` (a saved model-store block), ``s3://bucket/prefix`` or a folder."""
    spec = spec.strip()
    if not spec.startswith(BLOCK_PREFIX):
        return open_store_uri(spec)
    from prefect.exceptions import ObjectNotFound

    name = spec[len(BLOCK_PREFIX):]
    try:
        block = ModelStore.load(name)
    except (ValueError, ObjectNotFound) as exc:
        raise StoreError(f"no model-store block named {name!r}: create it with "
                         "`python -m deploy.register_blocks` or in the Prefect UI") from exc
    return block.get_store()
