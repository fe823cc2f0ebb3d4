"""Minimal S3 helpers used to read model folders from s3:// URIs (boto3; endpoint from the settings).

Object keys come from a bucket someone else may control, so each is mapped to a local path with ``safe_join``:
a key with ``..``, a leading or doubled ``/`` or a backslash is refused (naming the key) before anything is written,
and the download lands in a fresh folder that replaces the cache folder only when complete.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

from asr_optimize.errors import ModelResolutionError, UnsafePathError
from asr_optimize.fileio import disk_full_errors, new_dir, safe_join
from asr_optimize.settings import s3_endpoint_url


def split_s3_uri(uri: str) -> tuple[str, str]:
    """('bucket', 'prefix/') from 's3://bucket/prefix'."""
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri}")
    bucket, _, prefix = uri[5:].partition("/")
    return bucket, prefix.rstrip("/") + "/" if prefix else ""


def plan_download(uri: str, prefix: str, objects: list[dict], dest: Path) -> list[tuple[str, Path]]:
    """(key, local path) for every object, each confined to ``dest``; folder markers (``dir/``, empty) skipped."""
    plan = []
    for obj in objects:
        key = str(obj["Key"])
        relative = key[len(prefix):]
        if (relative == "" or relative.endswith("/")) and int(obj.get("Size", 0)) == 0:
            continue  # a "folder" created by a console or sync tool: nothing to write
        try:
            plan.append((key, safe_join(dest, relative)))
        except UnsafePathError as exc:
            raise ModelResolutionError(
                f"refusing to download {uri}: object key {key!r} would be written outside the model cache "
                f"({exc}); remove or rename that object"
            ) from None
    files = {target.relative_to(dest).as_posix(): key for key, target in plan}
    for relative, key in files.items():
        parts = relative.split("/")
        for depth in range(1, len(parts)):
            if (parent := "/".join(parts[:depth])) in files:  # a key that is a file and a folder at once
                raise ModelResolutionError(
                    f"refusing to download {uri}: object {files[parent]!r} is a file, but {key!r} treats it as a "
                    f"folder; a local model folder cannot hold both: delete or rename one of the two objects"
                )
    return plan


def download_prefix(uri: str, dest: Path) -> Path:
    """Download every object under an S3 prefix into ``dest`` (kept as a cache; replaced whole when complete)."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, prefix = split_s3_uri(uri)
    client = boto3.client("s3", endpoint_url=s3_endpoint_url())
    dest = Path(dest)
    try:
        paginator = client.get_paginator("list_objects_v2")
        objects = [obj for page in paginator.paginate(Bucket=bucket, Prefix=prefix) for obj in page.get("Contents", [])]
        if not objects:
            raise ModelResolutionError(f"{uri} holds no objects")
        tmp = new_dir(dest.parent, f".{dest.name}.download-")
        try:
            with disk_full_errors(dest):
                for key, target in plan_download(uri, prefix, objects, tmp):
                    target.parent.mkdir(parents=True, exist_ok=True)
                    client.download_file(bucket, key, str(target))
            _replace_dir(tmp, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    except (ClientError, BotoCoreError) as exc:
        raise ModelResolutionError(f"cannot read model from {uri}: {exc}") from exc
    return dest


def _replace_dir(new: Path, dest: Path) -> None:
    """Put the complete folder ``new`` at ``dest``; an older copy is renamed away first, then removed."""
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{new.name[-16:]}")
        with contextlib.suppress(FileNotFoundError):
            dest.rename(old)
    try:
        new.rename(dest)
    except OSError:
        if old is not None and not dest.exists():
            old.rename(dest)  # someone else's concurrent download did not land either: keep the old copy
        elif dest.exists():
            pass  # a concurrent download of the same prefix landed first: use it
        else:
            raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
