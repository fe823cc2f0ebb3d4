"""The artifact store on S3 (AWS, MinIO, any S3-compatible endpoint), through boto3.

Layout under ``s3://<bucket>/<prefix>/``::

    artifacts/<model>/<revision>/<stage>/<key>/<files...>   uploaded first, each verified after upload
    artifacts/<model>/<revision>/<stage>/<key>/manifest.json  uploaded last, never overwritten (If-None-Match)
    pointers/<name>.json                                     one PUT, so a pointer move is atomic
    pointers/<name>/history/<timestamp>-<id>.json            one object per move

An artifact exists only once its manifest does, so an upload cut off half way leaves nothing visible. ``get``
downloads a complete artifact into a local cache folder (sha256 verified) because stages only see local folders.
Credentials live only inside the boto3 session: never in messages, logs, manifests or ``describe()``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    PartialCredentialsError,
    ReadTimeoutError,
)
from s3transfer.utils import ChunksizeAdjuster

from asr_optimize.errors import StoreError, TransientError
from asr_optimize.hashing import sha256_file
from asr_optimize.s3_util import split_s3_uri
from asr_optimize.store import (
    MANIFEST_NAME,
    ArtifactRef,
    ArtifactStore,
    Manifest,
    StoredArtifact,
    describe_files,
)

MiB = 1024 * 1024
CREDENTIAL_CODES = {
    "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidClientTokenId", "ExpiredToken", "InvalidToken",
    "AuthorizationHeaderMalformed", "UnrecognizedClientException",
}
DENIED_CODES = {"AccessDenied", "403", "Forbidden", "AllAccessDisabled"}
THROTTLE_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "ServiceUnavailable",
                  "InternalError", "RequestLimitExceeded", "TooManyRequests"}
NETWORK_ERRORS = (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError, ConnectionClosedError)


class S3UnavailableError(StoreError, TransientError):
    """The S3 endpoint is down, overloaded or unreachable even after retries: worth retrying the task later."""


def default_cache_dir() -> Path:
    """Where downloaded artifacts are kept: ``$ASR_OPTIMIZE_S3_CACHE`` or ``~/.cache/asr-optimize/s3``."""
    return Path(os.environ.get("ASR_OPTIMIZE_S3_CACHE") or Path.home() / ".cache" / "asr-optimize" / "s3")


def s3_error_code(exc: BaseException) -> tuple[str, str, int]:
    """(code, message, http status) of a ClientError, also when boto3 wrapped it (S3UploadFailedError)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ClientError):
            err = seen.response.get("Error", {})
            status = int(seen.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            return str(err.get("Code", "")), str(err.get("Message", "")), status
        seen = seen.__cause__ or seen.__context__
    return "", "", 0


def _network_cause(exc: BaseException) -> BaseException | None:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, NETWORK_ERRORS):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


class S3ArtifactStore(ArtifactStore):
    """Artifacts in an S3 bucket under a prefix; see the module docstring for the layout."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        aws_access_key_id: str | None = None,
        aws_secret_access_key: str | None = None,
        aws_session_token: str | None = None,
        session: boto3.session.Session | None = None,
        cache_dir: Path | str | None = None,
        max_attempts: int = 5,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        multipart_threshold: int = 64 * MiB,
        multipart_chunksize: int = 16 * MiB,
        checksums: bool = True,
    ) -> None:
        if not bucket:
            raise StoreError("S3 model store needs a bucket name")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url or None
        if session is None:
            session = boto3.session.Session(
                aws_access_key_id=aws_access_key_id, aws_secret_access_key=aws_secret_access_key,
                aws_session_token=aws_session_token, region_name=region,
            )
        self.region = region or session.region_name or "us-east-1"
        self.max_attempts = max_attempts
        self._config = Config(
            region_name=self.region,
            retries={"mode": "standard", "max_attempts": max_attempts},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            s3={"addressing_style": "path"} if self.endpoint_url else None,
        )
        self._client = session.client("s3", endpoint_url=self.endpoint_url, config=self._config)
        self._transfer = TransferConfig(multipart_threshold=multipart_threshold,
                                        multipart_chunksize=multipart_chunksize)
        self.checksums = checksums
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self._public = {  # everything but credentials: what pickling (and Prefect's input hashing) sees
            "bucket": bucket, "prefix": self.prefix, "endpoint_url": self.endpoint_url, "region": self.region,
            "cache_dir": str(self.cache_dir), "max_attempts": max_attempts, "connect_timeout": connect_timeout,
            "read_timeout": read_timeout, "multipart_threshold": multipart_threshold,
            "multipart_chunksize": multipart_chunksize, "checksums": checksums,
        }

    def __getstate__(self) -> dict[str, Any]:
        """Credentials are never serialized; an unpickled copy authenticates through boto3's default chain."""
        return dict(self._public)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"S3ArtifactStore({self.uri()!r}, endpoint={self.endpoint!r})"

    @classmethod
    def from_uri(cls, uri: str, **kwargs: Any) -> S3ArtifactStore:
        """``s3://bucket/prefix``; endpoint from ``AWS_ENDPOINT_URL``, credentials from boto3's default chain."""
        bucket, prefix = split_s3_uri(uri)
        kwargs.setdefault("endpoint_url", os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"))
        return cls(bucket, prefix, **kwargs)

    # -- naming ------------------------------------------------------------------------------------------------
    def _key(self, *parts: str) -> str:
        return "/".join(p.strip("/") for p in (self.prefix, *parts) if p)

    def _artifact_key(self, ref: ArtifactRef, name: str = "") -> str:
        return self._key("artifacts", ref.path, name)

    def uri(self, key: str = "") -> str:
        return f"s3://{self.bucket}/{key}" if key else f"s3://{self.bucket}/{self.prefix}"

    @property
    def endpoint(self) -> str:
        return self.endpoint_url or f"AWS S3 ({self.region})"

    def describe(self) -> str:
        return f"S3 {self.uri()} at {self.endpoint}"

    # -- errors ------------------------------------------------------------------------------------------------
    def _translate(self, exc: BaseException, action: str) -> StoreError:
        """A clear StoreError for a boto3 failure; endpoint trouble becomes the retryable S3UnavailableError."""
        if (net := _network_cause(exc)) is not None:
            return S3UnavailableError(
                f"S3 endpoint {self.endpoint} is unreachable while {action} "
                f"(gave up after {self.max_attempts} attempts: {type(net).__name__})"
            )
        if isinstance(exc, NoCredentialsError | PartialCredentialsError):
            return StoreError(f"no S3 credentials found for {self.endpoint} while {action}: set them in the "
                              "model-store block or the AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY environment")
        code, message, status = s3_error_code(exc)
        if code in CREDENTIAL_CODES:
            return StoreError(f"S3 credentials rejected by {self.endpoint} ({code}) while {action}: "
                              "check the access key and secret of the model store")
        if code in DENIED_CODES or status == 403:
            return StoreError(f"S3 access denied by {self.endpoint} while {action} in bucket {self.bucket!r}: "
                              "the credentials are wrong or lack permission for this bucket/prefix")
        if code == "NoSuchBucket":
            return StoreError(f"S3 bucket {self.bucket!r} does not exist at {self.endpoint} ({action}): "
                              "create it or fix the model store's bucket name")
        if code in THROTTLE_CODES or status >= 500:
            return S3UnavailableError(f"S3 endpoint {self.endpoint} kept failing while {action} ({code or status}) "
                                      f"after {self.max_attempts} attempts")
        detail = f"{code}: {message}" if code else f"{type(exc).__name__}: {exc}"
        return StoreError(f"S3 error while {action} at {self.endpoint}: {detail}")

    @contextlib.contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except (ClientError, BotoCoreError) as exc:
            raise self._translate(exc, action) from None
        except Exception as exc:
            if s3_error_code(exc)[0] or _network_cause(exc) is not None:  # boto3 wrappers (S3UploadFailedError)
                raise self._translate(exc, action) from None
            raise

    def _get_json(self, key: str, action: str) -> dict[str, Any] | None:
        """The JSON object at ``key``, or None if there is no such key (a missing bucket is an error)."""
        try:
            body = self._client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except ClientError as exc:
            if s3_error_code(exc)[0] in {"NoSuchKey", "404"}:
                return None
            raise self._translate(exc, action) from None
        except BotoCoreError as exc:
            raise self._translate(exc, action) from None
        return json.loads(body)

    def _put_json(self, key: str, data: Any, only_if_absent: bool = False) -> bool:
        """PUT a small JSON object in one request; with ``only_if_absent``, False when it already existed."""
        body = json.dumps(data, indent=2, ensure_ascii=False, default=str).encode()
        extra: dict[str, Any] = {"ChecksumAlgorithm": "SHA256"} if self.checksums else {}
        if only_if_absent:
            extra["IfNoneMatch"] = "*"
        try:
            self._client.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType="application/json", **extra)
        except ClientError as exc:
            code = s3_error_code(exc)[0]
            if only_if_absent and code in {"PreconditionFailed", "ConditionalRequestConflict"}:
                return False
            if only_if_absent and code == "NotImplemented":  # an endpoint without conditional writes
                if self._get_json(key, f"reading {self.uri(key)}") is not None:
                    return False
                return self._put_json(key, data)
            raise self._translate(exc, f"writing {self.uri(key)}") from None
        except BotoCoreError as exc:
            raise self._translate(exc, f"writing {self.uri(key)}") from None
        return True

    # -- artifacts ---------------------------------------------------------------------------------------------
    def _cache_path(self, ref: ArtifactRef) -> Path:
        return self.cache_dir / self.bucket / (self.prefix or "_") / ref.path

    def _cached(self, ref: ArtifactRef, manifest: Manifest) -> StoredArtifact | None:
        folder = self._cache_path(ref)
        path = folder / MANIFEST_NAME
        if not path.is_file() or Manifest.model_validate_json(path.read_text(encoding="utf-8")) != manifest:
            return None
        for rel, entry in manifest.files.items():
            if not (folder / rel).is_file() or (folder / rel).stat().st_size != entry.size:
                return None
        return StoredArtifact(manifest=manifest, local_dir=folder, location=self.uri(self._artifact_key(ref)))

    def _install(self, ref: ArtifactRef, source: Path, manifest: Manifest) -> Path:
        """Move a complete folder into the local cache (rename, so the cache never holds half a folder)."""
        final = self._cache_path(ref)
        final.parent.mkdir(parents=True, exist_ok=True)
        (source / MANIFEST_NAME).write_text(manifest.model_dump_json(indent=2), encoding="utf-8")
        if final.exists():
            shutil.rmtree(final)
        os.replace(source, final)
        return final

    def get(self, ref: ArtifactRef) -> StoredArtifact | None:
        location = self.uri(self._artifact_key(ref))
        data = self._get_json(self._artifact_key(ref, MANIFEST_NAME), f"reading {location}")
        if data is None:
            return None
        manifest = Manifest.model_validate(data)
        if (hit := self._cached(ref, manifest)) is not None:
            return hit
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=self.cache_dir))
        try:
            for rel, entry in manifest.files.items():
                target = tmp / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                key = self._artifact_key(ref, rel)
                try:
                    self._client.download_file(self.bucket, key, str(target), Config=self._transfer)
                except (ClientError, BotoCoreError) as exc:
                    if s3_error_code(exc)[0] in {"NoSuchKey", "404"}:
                        raise StoreError(f"artifact {location} is damaged: {rel} is missing; "
                                         "delete it to rebuild") from None
                    raise self._translate(exc, f"downloading {self.uri(key)}") from None
                if target.stat().st_size != entry.size or sha256_file(target) != entry.sha256:
                    raise StoreError(f"artifact {location} is damaged: {rel} does not match its manifest sha256; "
                                     "delete it to rebuild")
            folder = self._install(ref, tmp, manifest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return StoredArtifact(manifest=manifest, local_dir=folder, location=location)

    def _open_for_upload(self, path: Path) -> IO[bytes]:
        """The file object an upload reads from (a seam for tests that cut an upload off)."""
        return open(path, "rb")

    def _expected_checksum(self, path: Path, size: int) -> str:
        """The base64 ChecksumSHA256 S3 reports: the object's sha256, or for multipart the sha256 of part sha256s."""
        if size < self._transfer.multipart_threshold:
            return base64.b64encode(bytes.fromhex(sha256_file(path))).decode()
        chunk = ChunksizeAdjuster().adjust_chunksize(self._transfer.multipart_chunksize, size)
        digests = hashlib.sha256()
        with open(path, "rb") as handle:
            while part := handle.read(chunk):
                digests.update(hashlib.sha256(part).digest())
        return base64.b64encode(digests.digest()).decode()

    def _upload_file(self, path: Path, key: str, sha256: str, size: int) -> None:
        """Upload one file (multipart when large), then verify size, stored sha256 and S3's own checksum."""
        extra: dict[str, Any] = {"Metadata": {"sha256": sha256}}
        if self.checksums:
            extra["ChecksumAlgorithm"] = "SHA256"
        action = f"uploading {self.uri(key)}"
        try:
            with self._errors(action), self._open_for_upload(path) as handle:
                self._client.upload_fileobj(handle, self.bucket, key, ExtraArgs=extra, Config=self._transfer)
            with self._errors(f"verifying {self.uri(key)}"):
                head = self._client.head_object(Bucket=self.bucket, Key=key,
                                                **({"ChecksumMode": "ENABLED"} if self.checksums else {}))
        except OSError as exc:
            raise StoreError(f"upload of {path.name} to {self.uri(key)} was cut off: {exc}") from None
        problems = []
        if int(head.get("ContentLength", -1)) != size:
            problems.append(f"size {head.get('ContentLength')} != {size}")
        if head.get("Metadata", {}).get("sha256") != sha256:
            problems.append("stored sha256 metadata differs")
        reported = str(head.get("ChecksumSHA256") or "").split("-")[0]
        if reported and reported != self._expected_checksum(path, size):
            problems.append("S3's SHA256 checksum differs from the local file")
        if problems:
            raise StoreError(f"upload of {self.uri(key)} failed verification: {'; '.join(problems)}")

    def put(self, staging_dir: Path, manifest: Manifest) -> StoredArtifact:
        ref = manifest.ref
        if (existing := self.get(ref)) is not None:
            return existing  # content-addressed: same key, same content; never overwrite
        manifest.files = describe_files(staging_dir)
        for rel, entry in manifest.files.items():
            self._upload_file(staging_dir / rel, self._artifact_key(ref, rel), entry.sha256, entry.size)
        if not self._put_json(self._artifact_key(ref, MANIFEST_NAME), manifest.model_dump(mode="json"),
                              only_if_absent=True):
            found = self.get(ref)  # another worker published the same artifact first
            if found is not None:
                return found
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".publish-", dir=self.cache_dir))
        try:
            shutil.copytree(staging_dir, tmp, dirs_exist_ok=True)
            folder = self._install(ref, tmp, manifest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return StoredArtifact(manifest=manifest, local_dir=folder, location=self.uri(self._artifact_key(ref)))

    # -- pointers ----------------------------------------------------------------------------------------------
    def _pointer_key(self, name: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
            raise StoreError(f"invalid pointer name {name!r}")
        return self._key("pointers", f"{name}.json")

    def read_pointer(self, name: str) -> dict[str, Any] | None:
        key = self._pointer_key(name)
        return self._get_json(key, f"reading pointer {self.uri(key)}")

    def write_pointer(self, name: str, value: dict[str, Any]) -> None:
        key = self._pointer_key(name)
        now = datetime.now(UTC)
        record = {**value, "updated_at": now.isoformat(timespec="seconds")}
        stamp = now.strftime("%Y%m%dT%H%M%S.%fZ")
        self._put_json(self._key("pointers", name, "history", f"{stamp}-{uuid.uuid4().hex[:8]}.json"), record)
        self._put_json(key, record)

    def pointer_history(self, name: str) -> list[dict[str, Any]]:
        """Every move of a pointer, oldest first."""
        self._pointer_key(name)
        prefix = self._key("pointers", name, "history") + "/"
        with self._errors(f"listing {self.uri(prefix)}"):
            pages = self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
            keys = sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))
        return [rec for key in keys if (rec := self._get_json(key, f"reading {self.uri(key)}")) is not None]
