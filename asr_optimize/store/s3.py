"""The artifact store on S3 (AWS, MinIO, any S3-compatible endpoint), through boto3.

Layout under ``s3://<bucket>/<prefix>/``::

    artifacts/<model>/<revision>/<stage>/<key>/data/<upload_id>/<files...>  staged first, each verified after upload
    artifacts/<model>/<revision>/<stage>/<key>/manifest.json  the commit: one conditional PUT (If-None-Match: *)
                                                              that names the upload_id holding the files
    pointers/<name>.json                                     one PUT, so a pointer move is atomic
    pointers/<name>/history/<timestamp>-<id>.json            one object per move

An artifact exists only once its manifest does, so an upload cut off half way leaves nothing visible. Every writer
stages under its own ``upload_id``, so two workers publishing the same artifact at once never touch each other's
objects: the first manifest PUT wins, the loser deletes its staged copy and reuses the winner's. Readers read only
the objects the committed manifest names. (Manifests written before ``upload_id`` existed name files beside the
manifest; they are still read.) A committed artifact whose files no longer match is reported and replaced by a
conditional PUT (If-Match on the damaged manifest's ETag), so two repairers cannot overwrite each other either.

``get`` downloads a complete artifact into a local cache folder because stages only see local folders; the cache is
re-verified (sha256) on every reuse and every name from a manifest is confined to the cache with ``safe_join``.
Credentials live only inside the boto3 session: never in messages, logs, manifests or ``describe()``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import re
import shutil
import time
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

from asr_optimize.errors import StoreError, TransientError, UnsafePathError
from asr_optimize.fileio import check_pointer_name, disk_full_errors, new_dir, safe_join
from asr_optimize.hashing import sha256_file
from asr_optimize.settings import get_settings, s3_endpoint_url
from asr_optimize.store.local import (
    LOCKS_DIR,
    MANIFEST_NAME,
    STAGING_DIR,
    STALE_STAGING_S,
    ArtifactRef,
    ArtifactStore,
    Manifest,
    StoredArtifact,
    copy_tree_shared,
    describe_files,
    publish_folder,
    read_manifest,
    sweep_stale,
    verify_files,
    write_json_atomic,
)
from asr_optimize.store.s3_download import split_s3_uri

logger = logging.getLogger(__name__)
UPLOAD_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")

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
    """Where downloaded artifacts are kept: ``$ASR_OPTIMIZE_S3_CACHE`` or ``<cache_root>/s3`` (settings)."""
    return get_settings().s3_cache


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
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        try:  # the bucket and prefix name a cache folder too: they must stay inside it
            safe_join(self.cache_dir, f"{bucket}/{self.prefix}" if self.prefix else bucket)
        except UnsafePathError as exc:
            raise UnsafePathError(f"S3 model store s3://{bucket}/{prefix} refused: bucket and prefix must be plain "
                                  f"names separated by '/', without '.', '..' or empty parts ({exc})") from None
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
        sweep_stale(self.cache_dir / STAGING_DIR, STALE_STAGING_S)
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
        kwargs.setdefault("endpoint_url", s3_endpoint_url())
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

    def _get_bytes(self, key: str, action: str) -> tuple[bytes, str] | None:
        """(body, ETag) of the object at ``key``, or None if there is no such key (a missing bucket is an error)."""
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=key)
            body = response["Body"].read()
        except ClientError as exc:
            if s3_error_code(exc)[0] in {"NoSuchKey", "404"}:
                return None
            raise self._translate(exc, action) from None
        except BotoCoreError as exc:
            raise self._translate(exc, action) from None
        return body, str(response.get("ETag", ""))

    def _get_json(self, key: str, action: str) -> dict[str, Any] | None:
        """The JSON object at ``key``, or None if there is no such key; an unreadable one is a clear error."""
        found = self._get_bytes(key, action)
        if found is None:
            return None
        try:
            data = json.loads(found[0])
        except ValueError as exc:
            raise StoreError(f"{self.uri(key)} is not valid JSON ({exc}): restore or delete it") from None
        if not isinstance(data, dict):
            raise StoreError(f"{self.uri(key)} is not a JSON object: restore or delete it")
        return data

    def _put_json(self, key: str, data: Any, only_if_absent: bool = False, if_match: str | None = None) -> bool:
        """PUT a small JSON object in one request; conditional writes return False when the condition failed.

        ``only_if_absent``: only if no object exists (If-None-Match: *). ``if_match``: only if the object still has
        this ETag (replaces exactly the version that was read, nothing written since).
        """
        body = json.dumps(data, indent=2, ensure_ascii=False, default=str).encode()
        extra: dict[str, Any] = {"ChecksumAlgorithm": "SHA256"} if self.checksums else {}
        if only_if_absent:
            extra["IfNoneMatch"] = "*"
        if if_match:
            extra["IfMatch"] = if_match
        try:
            self._client.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType="application/json", **extra)
        except ClientError as exc:
            code = s3_error_code(exc)[0]
            conditional = only_if_absent or bool(if_match)
            if conditional and code in {"PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey", "412"}:
                return False
            if if_match and code == "NotImplemented":
                raise StoreError(f"{self.uri(key)} needs replacing, but {self.endpoint} has no conditional writes "
                                 "(If-Match): delete it to rebuild") from None
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
        return safe_join(self.cache_dir, f"{self.bucket}/{self.prefix or '_'}/{ref.path}")

    def _data_key(self, ref: ArtifactRef, manifest: Manifest, rel: str) -> str:
        """The object holding file ``rel``: under the manifest's upload_id, or beside it for older manifests."""
        safe_join(self.cache_dir, rel)  # a name from a manifest (possibly hostile) must be a plain relative path
        if manifest.upload_id is None:
            return self._artifact_key(ref, rel)
        if not UPLOAD_ID.fullmatch(manifest.upload_id):
            raise UnsafePathError(f"manifest of {self.uri(self._artifact_key(ref))} has an invalid upload_id "
                                  f"{manifest.upload_id!r}")
        return self._artifact_key(ref, f"data/{manifest.upload_id}/{rel}")

    def _cached(self, ref: ArtifactRef, manifest: Manifest) -> StoredArtifact | None:
        """The local copy, if it holds exactly this manifest's files (sha256 checked: the cache is not trusted)."""
        folder = self._cache_path(ref)
        if not (folder / MANIFEST_NAME).is_file():
            return None
        if read_manifest(folder / MANIFEST_NAME) != manifest:
            return None
        if (problem := verify_files(folder, manifest)) is not None:
            logger.warning("cached copy %s is damaged (%s): downloading it again", folder, problem)
            return None
        return StoredArtifact(manifest=manifest, local_dir=folder, location=self.uri(self._artifact_key(ref)))

    def _new_tmp(self) -> Path:
        return new_dir(self.cache_dir / STAGING_DIR, "tmp-")

    def _install(self, ref: ArtifactRef, source: Path, manifest: Manifest) -> Path:
        """Rename a complete folder into the local cache; a concurrent identical install wins, a damaged one goes."""
        final = self._cache_path(ref)
        write_json_atomic(source / MANIFEST_NAME, manifest.model_dump(mode="json"))
        lock = self.cache_dir / LOCKS_DIR / (hashlib.sha256(str(final).encode()).hexdigest()[:32] + ".lock")
        found = publish_folder(source, final, lambda: self._cached(ref, manifest), self.cache_dir / STAGING_DIR, lock)
        return found.local_dir if found is not None else final

    def _fetch(self, ref: ArtifactRef) -> tuple[StoredArtifact | None, str | None]:
        """(the verified artifact, None), or (None, ETag of a committed manifest that is damaged), or (None, None)."""
        location = self.uri(self._artifact_key(ref))
        manifest_key = self._artifact_key(ref, MANIFEST_NAME)
        found = self._get_bytes(manifest_key, f"reading {location}")
        if found is None:
            return None, None
        body, etag = found
        try:
            manifest = Manifest.model_validate_json(body)
        except ValueError as exc:
            logger.warning("artifact manifest %s is unreadable (%s): treating the artifact as absent",
                           self.uri(manifest_key), str(exc).splitlines()[0])
            return None, etag
        if manifest.ref.path != ref.path:
            logger.warning("artifact %s is damaged (its manifest describes %s): it will be rebuilt",
                           location, manifest.ref.path)
            return None, etag
        try:
            for rel in manifest.files:
                self._data_key(ref, manifest, rel)
        except UnsafePathError as exc:
            raise UnsafePathError(f"artifact {location} refused: {exc}; delete {self.uri(manifest_key)} (the "
                                  "artifact's manifest) to rebuild it") from None
        if (hit := self._cached(ref, manifest)) is not None:
            return hit, None
        tmp = self._new_tmp()
        try:
            with disk_full_errors(self._cache_path(ref)):
                for rel, entry in manifest.files.items():
                    target = safe_join(tmp, rel)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    key = self._data_key(ref, manifest, rel)
                    try:
                        self._client.download_file(self.bucket, key, str(target), Config=self._transfer)
                    except (ClientError, BotoCoreError) as exc:
                        if s3_error_code(exc)[0] in {"NoSuchKey", "404"}:
                            logger.warning("artifact %s is damaged (%s is missing): it will be rebuilt",
                                           location, self.uri(key))
                            return None, etag
                        raise self._translate(exc, f"downloading {self.uri(key)}") from None
                    if target.stat().st_size != entry.size or sha256_file(target) != entry.sha256:
                        logger.warning("artifact %s is damaged (%s does not match its manifest sha256): it will "
                                       "be rebuilt", location, rel)
                        return None, etag
                folder = self._install(ref, tmp, manifest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return StoredArtifact(manifest=manifest, local_dir=folder, location=location), None

    def get(self, ref: ArtifactRef) -> StoredArtifact | None:
        """The verified artifact (downloaded to the cache), or None if absent, unreadable or damaged (warned)."""
        return self._fetch(ref)[0]

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

    def _delete_keys(self, keys: list[str]) -> None:
        """Best-effort removal of a losing writer's staged objects (orphans are harmless: nothing names them)."""
        for start in range(0, len(keys), 1000):
            chunk = [{"Key": k} for k in keys[start:start + 1000]]
            with contextlib.suppress(ClientError, BotoCoreError):
                self._client.delete_objects(Bucket=self.bucket, Delete={"Objects": chunk, "Quiet": True})

    def put(self, staging_dir: Path, manifest: Manifest) -> StoredArtifact:
        ref = manifest.ref
        existing, damaged_etag = self._fetch(ref)
        if existing is not None:
            return existing.model_copy(update={"reused": True})  # content-addressed: never overwrite
        manifest.files = describe_files(staging_dir)
        manifest.upload_id = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:16]}"
        staged = []
        for rel, entry in manifest.files.items():
            key = self._data_key(ref, manifest, rel)
            staged.append(key)
            self._upload_file(staging_dir / rel, key, entry.sha256, entry.size)
        manifest_key = self._artifact_key(ref, MANIFEST_NAME)
        body = manifest.model_dump(mode="json")
        for _ in range(5):
            if damaged_etag:
                logger.warning("replacing the damaged artifact %s", self.uri(self._artifact_key(ref)))
                committed = self._put_json(manifest_key, body, if_match=damaged_etag)
            else:
                committed = self._put_json(manifest_key, body, only_if_absent=True)
            if committed:
                break
            found, damaged_etag = self._fetch(ref)  # another worker committed (or repaired) it first
            if found is not None:
                logger.info("artifact %s was published by another run meanwhile: reusing it", ref.path)
                self._delete_keys(staged)
                return found.model_copy(update={"reused": True})
        else:
            raise StoreError(f"cannot commit {self.uri(manifest_key)}: it kept changing under concurrent writers")
        tmp = self._new_tmp()
        try:
            with disk_full_errors(self._cache_path(ref)):
                copy_tree_shared(staging_dir, tmp)
                folder = self._install(ref, tmp, manifest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return StoredArtifact(manifest=manifest, local_dir=folder, location=self.uri(self._artifact_key(ref)))

    # -- pointers ----------------------------------------------------------------------------------------------
    def _pointer_key(self, name: str) -> str:
        return self._key("pointers", f"{check_pointer_name(name)}.json")

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
