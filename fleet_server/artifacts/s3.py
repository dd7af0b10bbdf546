"""Artifacts in S3-compatible object storage (AWS S3, MinIO, Ceph RGW...), through boto3.

The bucket is the source of truth; the local folder of :class:`ArtifactStore` is this server
process's cache (what a push writes, and what the reference cloud and the gRPC download stream
read without a round trip). Every artifact is one object named by its sha256, the compressed
copy of a model beside it under its own hash:

    s3://BUCKET/PREFIX/artifacts/<sha256>      a model file, a zstd copy or a smoke sample

Uploads stream from the cached file in 8 MiB parts (boto3's multipart transfer: memory is
bounded by parts, not by the file). A file taken from the bucket is checked against its name
(the sha256) before it joins the cache. Devices get short-lived SigV4 presigned GET URLs
(:meth:`S3ArtifactStore.download_url`) and verify what they download against the signed
manifest, so the store and any mirror need not be trusted for integrity.
"""

from __future__ import annotations

import configparser
import hashlib
import logging
import os
import tempfile
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fleet_server.artifacts.store import CHUNK_BYTES, ArtifactStore
from fleet_server.errors import DataDirError, NotFoundError, TransientError
from protos.names import is_sha256

__all__ = ["S3ArtifactStore", "S3Settings", "parse_store_url"]

log = logging.getLogger(__name__)
PART_BYTES = 8 << 20


@dataclass(frozen=True)
class S3Settings:
    """Where the bucket is and how to reach it."""

    bucket: str
    prefix: str = ""  # without a trailing slash
    endpoint: str = ""  # "" = AWS S3 of the region
    region: str = "us-east-1"
    credentials_file: Path | None = None  # AWS shared-credentials format; None = boto3's chain
    ca_file: Path | None = None  # the CA of the endpoint's TLS certificate; None = the system's
    public_endpoint: str = ""  # what devices reach the store at, when not ``endpoint``
    url_lifetime_s: int = 900

    def key(self, artifact_id: str) -> str:
        folder = f"{self.prefix}/artifacts" if self.prefix else "artifacts"
        return f"{folder}/{artifact_id}"


def parse_store_url(url: str) -> tuple[str, str]:
    """``s3://BUCKET[/PREFIX]`` -> (bucket, prefix).

    Raises:
        DataDirError: not such a URL.
    """
    parts = urlsplit(url)
    bucket, prefix = parts.netloc, parts.path.strip("/")
    if parts.scheme != "s3" or not bucket or parts.query or parts.fragment:
        raise DataDirError(f"--artifact-store {url!r}: give s3://BUCKET or s3://BUCKET/PREFIX")
    if not 3 <= len(bucket) <= 63 or not all(c.isalnum() or c in ".-" for c in bucket):
        raise DataDirError(f"--artifact-store {url!r}: {bucket!r} is not a bucket name")
    return bucket, prefix


def _credentials(path: Path) -> tuple[str, str]:
    """The ``[default]`` access key and secret of an AWS shared-credentials file.

    Raises:
        DataDirError: unreadable, or without both keys.
    """
    parser = configparser.ConfigParser()
    try:
        parser.read_string(path.read_text(encoding="utf-8"))
    except (OSError, configparser.Error) as exc:
        raise DataDirError(f"cannot read the object store credentials {path}: {exc}") from exc
    section = parser["default"] if parser.has_section("default") else None
    key = section.get("aws_access_key_id", "") if section else ""
    secret = section.get("aws_secret_access_key", "") if section else ""
    if not key or not secret:
        raise DataDirError(
            f"{path}: a [default] section with aws_access_key_id and aws_secret_access_key"
        )
    return key.strip(), secret.strip()


def _missing(exc: Any) -> bool:
    """Whether a botocore ClientError says the bucket or the key does not exist."""
    return str(exc.response.get("Error", {}).get("Code", "")) in (
        "404", "NoSuchKey", "NoSuchBucket",
    )  # fmt: skip


class S3ArtifactStore:
    """The :class:`ArtifactStore` interface over a bucket, with a local cache."""

    def __init__(self, settings: S3Settings, cache: Path) -> None:
        import boto3  # noqa: PLC0415 - the server extra; only this backend needs it
        from botocore.config import Config  # noqa: PLC0415

        self.settings = settings
        self.cache = ArtifactStore(cache)
        self.root = cache  # as ArtifactStore's, for code that shows where files are
        keys: dict[str, Any] = {}
        if settings.credentials_file is not None:
            key, secret = _credentials(settings.credentials_file)
            keys = {"aws_access_key_id": key, "aws_secret_access_key": secret}
        config = Config(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=10,
            read_timeout=60,
        )
        common: dict[str, Any] = {
            "region_name": settings.region,
            "config": config,
            "verify": str(settings.ca_file) if settings.ca_file else None,
            **keys,
        }
        self._s3 = boto3.client("s3", endpoint_url=settings.endpoint or None, **common)
        public = settings.public_endpoint or settings.endpoint
        self._presigner = (
            self._s3
            if public == settings.endpoint
            else boto3.client("s3", endpoint_url=public or None, **common)
        )
        self._lock = threading.Lock()  # one download into the cache at a time per process

    # start ---------------------------------------------------------------------------------

    def check(self, *, create: bool = False) -> None:
        """Reach the bucket now (at the server's start), creating it when asked.

        Raises:
            DataDirError: unreachable, no such bucket, or no access.
        """
        from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415

        bucket = self.settings.bucket
        try:
            self._s3.head_bucket(Bucket=bucket)
        except ClientError as exc:
            if _missing(exc) and create:
                try:
                    self._s3.create_bucket(Bucket=bucket)
                except (ClientError, BotoCoreError) as again:
                    raise DataDirError(f"cannot create bucket {bucket}: {again}") from again
                log.info("created bucket %s", bucket)
                return
            raise DataDirError(f"object store bucket {bucket}: {exc}") from exc
        except BotoCoreError as exc:
            raise DataDirError(
                f"cannot reach the object store at {self.settings.endpoint or 'AWS S3'}: {exc}"
            ) from exc

    # writing -------------------------------------------------------------------------------

    def put(self, chunks: Iterable[bytes], *, max_bytes: int) -> tuple[str, int, Path]:
        """Store a stream: into the cache (hashed), then into the bucket.

        Raises:
            BadRequestError: larger than ``max_bytes``.
            TransientError: the bucket did not take it (the push fails; nothing refers to it).
        """
        digest, size, path = self.cache.put(chunks, max_bytes=max_bytes)
        self._upload_or_forget(digest, size, path)
        return digest, size, path

    def put_compressed(self, source: Path, *, worth: float = 0.85) -> tuple[str, int, Path] | None:
        packed = self.cache.put_compressed(source, worth=worth)
        if packed is not None:
            self._upload_or_forget(*packed)
        return packed

    def _upload_or_forget(self, digest: str, size: int, path: Path) -> None:
        try:
            self._upload(digest, size, path)
        except TransientError:
            # Retention lists the bucket, not the cache: a file left here by a failed push
            # would stay for good. Should the cache have held it for a stored artifact, it is
            # fetched again from the bucket when needed.
            self.cache.delete(digest)
            raise

    def _upload(self, digest: str, size: int, path: Path) -> None:
        from boto3.s3.transfer import TransferConfig  # noqa: PLC0415
        from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415

        key = self.settings.key(digest)
        if self._size_of(key) == size:
            # Content-addressed: the same name is the same bytes. But it may be an orphan of a
            # failed push, old enough for retention to sweep it before this push records its
            # release: its age starts again now, as a file written to the folder store's.
            try:
                self._s3.copy_object(
                    Bucket=self.settings.bucket, Key=key, MetadataDirective="REPLACE",
                    CopySource={"Bucket": self.settings.bucket, "Key": key},
                )  # fmt: skip
            except (ClientError, BotoCoreError) as exc:
                raise TransientError(
                    f"the object store did not take artifact {digest[:12]}: {exc}"
                ) from exc
            return
        transfer = TransferConfig(
            multipart_threshold=PART_BYTES, multipart_chunksize=PART_BYTES, max_concurrency=4
        )
        try:
            self._s3.upload_file(str(path), self.settings.bucket, key, Config=transfer)
        except (ClientError, BotoCoreError, OSError) as exc:
            raise TransientError(
                f"the object store did not take artifact {digest[:12]}: {exc}"
            ) from exc

    def _size_of(self, key: str) -> int | None:
        from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415

        try:
            return int(self._s3.head_object(Bucket=self.settings.bucket, Key=key)["ContentLength"])
        except ClientError as exc:
            if _missing(exc):
                return None
            raise TransientError(f"object store: {exc}") from exc
        except BotoCoreError as exc:
            raise TransientError(f"object store: {exc}") from exc

    # reading -------------------------------------------------------------------------------

    def path(self, artifact_id: str) -> Path:
        """A local file of the artifact: the cache's, fetched from the bucket (and checked
        against its hash) when this process has none.

        Raises:
            NotFoundError: no such artifact.
            TransientError: the bucket is unreachable.
        """
        try:
            return self.cache.path(artifact_id)
        except NotFoundError:
            pass
        with self._lock:
            try:
                return self.cache.path(artifact_id)  # another thread fetched it meanwhile
            except NotFoundError:
                return self._fetch(artifact_id)

    def _fetch(self, artifact_id: str) -> Path:
        from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415

        key = self.settings.key(artifact_id)
        fd, name = tempfile.mkstemp(dir=self.cache.root, prefix=".fetch-", suffix=".tmp")
        tmp = Path(name)
        try:
            hasher = hashlib.sha256()
            with os.fdopen(fd, "wb") as handle:
                body = self._s3.get_object(Bucket=self.settings.bucket, Key=key)["Body"]
                for block in body.iter_chunks(CHUNK_BYTES):
                    hasher.update(block)
                    handle.write(block)
                handle.flush()
                os.fsync(handle.fileno())
            if hasher.hexdigest() != artifact_id:
                raise TransientError(
                    f"the object store's {key} does not match its sha256: refused (damaged?)"
                )
            final = self.cache.root / f"{artifact_id}.tflite"
            tmp.replace(final)
            return final
        except ClientError as exc:
            if _missing(exc):
                raise NotFoundError(f"artifact {artifact_id} does not exist") from exc
            raise TransientError(f"object store: {exc}") from exc
        except BotoCoreError as exc:
            raise TransientError(f"object store: {exc}") from exc
        finally:
            tmp.unlink(missing_ok=True)

    def read(self, artifact_id: str, offset: int) -> Iterator[tuple[int, bytes, int]]:
        """(offset, bytes, total) chunks from ``offset``: the cache's file when this process
        has one, else a ranged GET streamed from the bucket (nothing cached)."""
        if not is_sha256(artifact_id):
            raise NotFoundError(f"artifact id {artifact_id!r} is not a sha256 digest")
        try:
            self.cache.path(artifact_id)
        except NotFoundError:
            return self._read_remote(artifact_id, offset)
        return self.cache.read(artifact_id, offset)

    def _read_remote(self, artifact_id: str, offset: int) -> Iterator[tuple[int, bytes, int]]:
        from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415

        from fleet_server.errors import BadRequestError  # noqa: PLC0415

        key = self.settings.key(artifact_id)
        total = self._size_of(key)
        if total is None:
            raise NotFoundError(f"artifact {artifact_id} does not exist")
        if offset > total:
            raise BadRequestError(f"offset {offset} is beyond the artifact's {total} bytes")

        def chunks() -> Iterator[tuple[int, bytes, int]]:
            if offset == total:
                return
            try:
                body = self._s3.get_object(
                    Bucket=self.settings.bucket, Key=key, Range=f"bytes={offset}-"
                )["Body"]
                position = offset
                for block in body.iter_chunks(CHUNK_BYTES):
                    yield position, block, total
                    position += len(block)
            except (ClientError, BotoCoreError) as exc:
                raise TransientError(f"object store: {exc}") from exc

        return chunks()

    def entries(self) -> Iterator[tuple[str, int, float]]:
        """(artifact id, size, modification time) of every artifact in the bucket.

        Raises:
            TransientError: the bucket is unreachable.
        """
        from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415

        prefix = self.settings.key("")
        pages = self._s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.settings.bucket, Prefix=prefix
        )
        try:
            for page in pages:
                for item in page.get("Contents", []):
                    name = str(item["Key"])[len(prefix) :]
                    if is_sha256(name):
                        yield name, int(item["Size"]), item["LastModified"].timestamp()
        except (ClientError, BotoCoreError) as exc:
            raise TransientError(f"object store: {exc}") from exc

    def delete(self, artifact_id: str) -> bool:
        """Remove the artifact's object and cached file; False when neither was there."""
        if not is_sha256(artifact_id):
            return False
        key = self.settings.key(artifact_id)
        existed = self._size_of(key) is not None
        if existed:
            from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415

            try:
                self._s3.delete_object(Bucket=self.settings.bucket, Key=key)
            except (ClientError, BotoCoreError) as exc:
                raise TransientError(f"object store: {exc}") from exc
        return self.cache.delete(artifact_id) or existed

    def download_url(self, artifact_id: str) -> tuple[str, int]:
        """A presigned GET URL for devices and its lifetime in seconds.

        Raises:
            NotFoundError: no such artifact id.
        """
        if not is_sha256(artifact_id):
            raise NotFoundError(f"artifact id {artifact_id!r} is not a sha256 digest")
        lifetime = self.settings.url_lifetime_s
        url = self._presigner.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.settings.bucket, "Key": self.settings.key(artifact_id)},
            ExpiresIn=lifetime,
        )
        return str(url), lifetime
