"""One way to open the artifact store from a flow parameter: a folder, ``s3://bucket/prefix`` or ``block:<name>``."""

from __future__ import annotations

import os
from pathlib import Path

from asr_optimize.errors import StoreError
from asr_optimize.store import ArtifactStore, LocalArtifactStore

BLOCK_PREFIX = "block:"


def open_store(spec: str) -> ArtifactStore:
    """The store named by ``spec``.

    - ``block:<name>``: the saved ``asr-optimize model store`` block document (configured in the Prefect UI);
    - ``s3://bucket/prefix``: S3, endpoint from ``AWS_ENDPOINT_URL``, credentials from boto3's default chain;
    - anything else: a local folder.
    """
    spec = spec.strip()
    if spec.startswith(BLOCK_PREFIX):
        from prefect.exceptions import ObjectNotFound

        from blocks.model_store import ModelStore

        name = spec[len(BLOCK_PREFIX):]
        try:
            block = ModelStore.load(name)
        except (ValueError, ObjectNotFound) as exc:
            raise StoreError(f"no model-store block named {name!r}: create it with "
                             "`python -m deploy.register_blocks` or in the Prefect UI") from exc
        return block.get_store()
    if spec.startswith("s3://"):
        from asr_optimize.s3_store import S3ArtifactStore

        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        return S3ArtifactStore.from_uri(spec, region=region)
    return LocalArtifactStore(Path(spec))
