"""Open the artifact store a URI names: ``s3://bucket/prefix`` or a local folder (``block:`` names live in blocks/)."""

from __future__ import annotations

import os
from pathlib import Path

from asr_optimize.store.local import ArtifactStore, LocalArtifactStore


def open_store_uri(spec: str) -> ArtifactStore:
    """``s3://bucket/prefix``: S3 (endpoint from ``AWS_ENDPOINT_URL[_S3]``, credentials from boto3's default chain);
    anything else: a local folder."""
    spec = spec.strip()
    if spec.startswith("s3://"):
        from asr_optimize.store.s3 import S3ArtifactStore

        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        return S3ArtifactStore.from_uri(spec, region=region)
    return LocalArtifactStore(Path(spec))
