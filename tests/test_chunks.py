"""ArtifactChunk's hand-written wire codec against protobuf's own, both ways."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.updates.sink import DurableSink
from protos import device_pb2 as pb
from protos.chunks import encode_chunk, parse_chunk

U64 = st.integers(min_value=0, max_value=2**64 - 1)


@given(U64, st.binary(max_size=4096), U64)
def test_protobuf_reads_what_encode_chunk_writes(offset: int, data: bytes, total: int) -> None:
    raw = encode_chunk(offset, data, total)
    message = pb.ArtifactChunk.FromString(raw)
    assert (message.offset, message.data, message.total_size) == (offset, data, total)
    assert raw == pb.ArtifactChunk(offset=offset, data=data, total_size=total).SerializeToString()


@given(U64, st.binary(max_size=4096), U64, st.binary(max_size=64))
def test_parse_chunk_reads_what_protobuf_writes_with_unknown_fields(
    offset: int, data: bytes, total: int, unknown: bytes
) -> None:
    message = pb.ArtifactChunk(offset=offset, data=data, total_size=total)
    # Unknown fields of every wire type a newer server might add, before and after.
    extra = (
        b"\x20\x05"  # field 4, varint
        + b"\x29" + b"\x01" * 8  # field 5, 64-bit
        + b"\x32" + bytes([len(unknown)]) + unknown  # field 6, length-delimited
        + b"\x3d" + b"\x02" * 4  # field 7, 32-bit
        + b"\x0a\x00"  # field 1 with the wrong wire type: unknown to protobuf too
    )  # fmt: skip
    raw = extra + message.SerializeToString() + extra
    assert pb.ArtifactChunk.FromString(raw).data == data  # the same message to protobuf
    at, view, size = parse_chunk(raw)
    assert (at, bytes(view), size) == (offset, data, total)


@pytest.mark.parametrize(
    "raw",
    [
        b"\x08",  # a varint cut short
        b"\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",  # an overlong varint
        b"\x12\x05abc",  # data shorter than its length
        b"\x29\x01\x02",  # a 64-bit field cut short
        b"\x0b",  # wire type 3 (groups)
        b"\x00\x01",  # field number 0
    ],
)
def test_parse_chunk_refuses_malformed_messages(raw: bytes) -> None:
    with pytest.raises(ValueError):
        parse_chunk(raw)


def test_the_sink_writes_hashes_and_syncs_before_close_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    chunks = [os.urandom(1 << 20) for _ in range(20)]
    path = tmp_path / "artifact"
    with path.open("wb") as handle:
        sink = DurableSink(handle, hashlib.sha256())
        for chunk in chunks:
            sink.write(memoryview(chunk))
        sink.close()
        assert synced == [handle.fileno()]  # the data is on the disk before it is used
    assert path.read_bytes() == b"".join(chunks)
    assert sink.hasher.hexdigest() == hashlib.sha256(b"".join(chunks)).hexdigest()


def test_a_failing_disk_surfaces_on_the_receiving_thread() -> None:
    class Full(io.BytesIO):
        def write(self, data: object) -> int:
            raise OSError(28, "No space left on device")

    sink = DurableSink(Full(), hashlib.sha256())
    with pytest.raises(OSError, match="No space left"):
        for _ in range(100):  # the writer fails on the first; a later write or close says so
            sink.write(b"x" * 1024)
        sink.close()
