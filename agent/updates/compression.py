"""Decompress a downloaded artifact with a hard bound on its output (no decompression bombs)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from agent._fs import open_own
from agent.errors import ManifestError

__all__ = ["available", "decompress_bounded"]

_BLOCK = 1 << 20


def available() -> bool:
    """True when zstd can be decompressed here."""
    try:
        import zstandard  # noqa: F401, PLC0415
    except ImportError:
        return False
    return True


def decompress_bounded(source: Path, target: Path, *, size: int, sha256: str) -> None:
    """Decompress zstd ``source`` into ``target``; it must be exactly ``size`` bytes with hash
    ``sha256``. ``target`` is removed on any failure.

    Raises:
        ManifestError: the output would exceed ``size``, falls short, or has another hash.
    """
    import zstandard  # noqa: PLC0415

    hasher = hashlib.sha256()
    written = 0
    try:
        with source.open("rb") as src, open_own(target, append=False) as dst:
            reader = zstandard.ZstdDecompressor().stream_reader(src)
            while True:
                block = reader.read(_BLOCK)
                if not block:
                    break
                written += len(block)
                if written > size:
                    raise ManifestError(
                        f"compressed artifact expands past the {size} bytes the manifest names"
                    )
                hasher.update(block)
                dst.write(block)
            dst.flush()
            os.fsync(dst.fileno())  # on the disk before the store can point at it
        if written != size or hasher.hexdigest() != sha256:
            raise ManifestError(
                f"decompressed artifact is {written} bytes with sha256 {hasher.hexdigest()}; "
                f"the manifest names {size} bytes, {sha256}"
            )
    except zstandard.ZstdError as exc:
        target.unlink(missing_ok=True)
        raise ManifestError(f"compressed artifact does not decompress: {exc}") from exc
    except BaseException:
        target.unlink(missing_ok=True)
        raise
