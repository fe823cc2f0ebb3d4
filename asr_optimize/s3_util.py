"""Minimal S3 helpers used to read model folders from s3:// URIs (boto3; endpoint from AWS_ENDPOINT_URL)."""

from __future__ import annotations

import os
from pathlib import Path

from asr_optimize.errors import ModelResolutionError


def split_s3_uri(uri: str) -> tuple[str, str]:
    """('bucket', 'prefix/') from 's3://bucket/prefix'."""
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri}")
    bucket, _, prefix = uri[5:].partition("/")
    return bucket, prefix.rstrip("/") + "/" if prefix else ""


def download_prefix(uri: str, dest: Path) -> Path:
    """Download every object under an S3 prefix into ``dest`` (kept as a cache)."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, prefix = split_s3_uri(uri)
    client = boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None)
    try:
        paginator = client.get_paginator("list_objects_v2")
        pages = paginator.paginate(Bucket=bucket, Prefix=prefix)
        keys = [obj["Key"] for page in pages for obj in page.get("Contents", [])]
        if not keys:
            raise ModelResolutionError(f"{uri} holds no objects")
        for key in keys:
            target = dest / key[len(prefix):]
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + ".part")
            client.download_file(bucket, key, str(tmp))
            tmp.replace(target)
    except (ClientError, BotoCoreError) as exc:
        raise ModelResolutionError(f"cannot read model from {uri}: {exc}") from exc
    return dest
