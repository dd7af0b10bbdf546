"""Artifact stores. The interface (:class:`Artifacts`) and its local-folder backend (the
embedded default): files named by sha256, written atomically, never changed. The object-store
backend is :mod:`fleet_server.artifacts.s3`."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol

from fleet_server.errors import BadRequestError, NotFoundError
from protos.names import is_sha256

__all__ = ["CHUNK_BYTES", "ArtifactStore", "Artifacts"]

CHUNK_BYTES = 1024 * 1024


class Artifacts(Protocol):
    """Where model files, their compressed copies and smoke samples live, by sha256."""

    root: Path  # the local folder (a cache, for an object store)

    def put(self, chunks: Iterable[bytes], *, max_bytes: int) -> tuple[str, int, Path]: ...

    def put_compressed(
        self, source: Path, *, worth: float = 0.85
    ) -> tuple[str, int, Path] | None: ...

    def path(self, artifact_id: str) -> Path: ...

    def entries(self) -> Iterator[tuple[str, int, float]]: ...

    def delete(self, artifact_id: str) -> bool: ...

    def read(self, artifact_id: str, offset: int) -> Iterator[tuple[int, bytes, int]]: ...

    def download_url(self, artifact_id: str) -> tuple[str, int] | None:
        """A URL devices may download the artifact from and its lifetime in seconds; None
        when this store has none (devices use the server's stream)."""
        ...


class ArtifactStore:
    """Model files in one folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def put(self, chunks: Iterable[bytes], *, max_bytes: int) -> tuple[str, int, Path]:
        """Store a stream of bytes; return (sha256, size, path).

        Raises:
            BadRequestError: the stream is larger than ``max_bytes``.
        """
        hasher = hashlib.sha256()
        size = 0
        fd, tmp_name = tempfile.mkstemp(dir=self.root, prefix=".upload-", suffix=".tmp")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as handle:
                for chunk in chunks:
                    size += len(chunk)
                    if size > max_bytes:
                        raise BadRequestError(f"upload exceeds the {max_bytes}-byte limit")
                    hasher.update(chunk)
                    handle.write(chunk)
                handle.flush()
                os.fsync(handle.fileno())
            digest = hasher.hexdigest()
            final = self.root / f"{digest}.tflite"
            tmp.replace(final)
        finally:
            tmp.unlink(missing_ok=True)
        return digest, size, final

    def put_compressed(self, source: Path, *, worth: float = 0.85) -> tuple[str, int, Path] | None:
        """Store a zstd-compressed copy of ``source`` when it is smaller than ``worth`` of it.

        Returns (sha256, size, path) of the compressed artifact, or None when not worth it.
        """
        import zstandard  # noqa: PLC0415 - only the push path needs it

        fd, tmp_name = tempfile.mkstemp(dir=self.root, prefix=".zstd-", suffix=".tmp")
        tmp = Path(tmp_name)
        try:
            with source.open("rb") as src, os.fdopen(fd, "wb") as dst:
                zstandard.ZstdCompressor(level=10).copy_stream(src, dst)
            if tmp.stat().st_size >= worth * source.stat().st_size:
                return None
            with tmp.open("rb") as handle:
                return self.put(
                    iter(lambda: handle.read(CHUNK_BYTES), b""), max_bytes=tmp.stat().st_size
                )
        finally:
            tmp.unlink(missing_ok=True)

    def path(self, artifact_id: str) -> Path:
        """The file of an artifact.

        Raises:
            NotFoundError: no such artifact (or a malformed id).
        """
        if not is_sha256(artifact_id):
            raise NotFoundError(f"artifact id {artifact_id!r} is not a sha256 digest")
        path = self.root / f"{artifact_id}.tflite"
        if not path.is_file():
            raise NotFoundError(f"artifact {artifact_id} does not exist")
        return path

    def entries(self) -> Iterator[tuple[str, int, float]]:
        """(artifact id, size, modification time) of every stored artifact."""
        for path in self.root.glob("*.tflite"):
            try:
                info = path.stat()
            except FileNotFoundError:
                continue
            if is_sha256(path.stem):
                yield path.stem, info.st_size, info.st_mtime

    def delete(self, artifact_id: str) -> bool:
        """Remove an artifact; False when it was not there."""
        if not is_sha256(artifact_id):
            return False
        try:
            (self.root / f"{artifact_id}.tflite").unlink()
        except FileNotFoundError:
            return False
        return True

    def download_url(self, artifact_id: str) -> tuple[str, int] | None:
        """None: a local folder has no URL of its own (devices use the server's stream)."""
        return None

    def read(self, artifact_id: str, offset: int) -> Iterator[tuple[int, bytes, int]]:
        """Yield (offset, bytes, total size) chunks from ``offset`` to the end.

        Raises:
            NotFoundError: no such artifact.
            BadRequestError: offset beyond the end.
        """
        path = self.path(artifact_id)
        total = path.stat().st_size
        if offset > total:
            raise BadRequestError(f"offset {offset} is beyond the artifact's {total} bytes")
        with path.open("rb") as handle:
            handle.seek(offset)
            position = offset
            while True:
                block = handle.read(CHUNK_BYTES)
                if not block:
                    return
                yield position, block, total
                position += len(block)
