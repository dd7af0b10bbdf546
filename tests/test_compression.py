"""Bounded decompression: a compressed artifact can never expand past its signed size."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import zstandard

from agent.errors import ManifestError
from agent.updates.compression import decompress_bounded


def test_round_trip(tmp_path: Path) -> None:
    data = b"edgefleet " * 10_000
    packed = tmp_path / "a.zst"
    packed.write_bytes(zstandard.ZstdCompressor().compress(data))
    out = tmp_path / "a"
    decompress_bounded(packed, out, size=len(data), sha256=hashlib.sha256(data).hexdigest())
    assert out.read_bytes() == data


def test_a_decompression_bomb_stops_at_the_signed_size(tmp_path: Path) -> None:
    packed = tmp_path / "bomb.zst"
    packed.write_bytes(zstandard.ZstdCompressor().compress(b"\0" * (64 * 1024 * 1024)))
    assert packed.stat().st_size < 10_000  # 64 MiB of zeros in a few KB
    out = tmp_path / "bomb"
    with pytest.raises(ManifestError, match="expands past the 1000 bytes"):
        decompress_bounded(packed, out, size=1000, sha256="0" * 64)
    assert not out.exists()


def test_garbage_and_wrong_content_are_refused(tmp_path: Path) -> None:
    garbage = tmp_path / "g.zst"
    garbage.write_bytes(b"not zstd at all")
    with pytest.raises(ManifestError, match="does not decompress"):
        decompress_bounded(garbage, tmp_path / "g", size=10, sha256="0" * 64)
    packed = tmp_path / "w.zst"
    packed.write_bytes(zstandard.ZstdCompressor().compress(b"x" * 10))
    with pytest.raises(ManifestError, match="the manifest names 10 bytes"):
        decompress_bounded(packed, tmp_path / "w", size=10, sha256="0" * 64)
    assert not (tmp_path / "w").exists()
