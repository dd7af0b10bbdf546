"""ArtifactChunk on the wire without protobuf's copies.

A download moves ~100 chunks of 1 MiB. protobuf copies each chunk's data into the message when
it is built or parsed, again when it is serialized, and on every read of ``.data``. These two
functions write and read the same wire format (``device.proto``'s ``ArtifactChunk``: field 1
offset, 2 data, 3 total_size) with one copy on the server and none on the device; any protobuf
implementation reads what :func:`encode_chunk` writes, and :func:`parse_chunk` reads what any
of them writes (``tests/test_chunks.py`` checks both ways).
"""

from __future__ import annotations

__all__ = ["encode_chunk", "parse_chunk"]


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_chunk(offset: int, data: bytes, total_size: int) -> bytes:
    """An encoded ``ArtifactChunk`` (proto3: zero fields left out, as protobuf does)."""
    parts = []
    if offset:
        parts.append(b"\x08" + _encode_varint(offset))
    if data:
        parts.append(b"\x12" + _encode_varint(len(data)))
        parts.append(data)
    if total_size:
        parts.append(b"\x18" + _encode_varint(total_size))
    return b"".join(parts)


def _varint(view: memoryview, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(view) or shift > 63:
            raise ValueError("truncated or overlong varint")
        byte = view[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i
        shift += 7


def parse_chunk(raw: bytes) -> tuple[int, memoryview, int]:
    """(offset, data, total_size) of an encoded ``ArtifactChunk``, the data a view into
    ``raw``: protobuf's parser copies each 1 MiB chunk into the message and again on every
    read of ``.data``. Follows protobuf's rules: fields in any order, the last occurrence
    wins, unknown fields (and known numbers with another wire type) skipped.

    Raises:
        ValueError: not a well-formed message.
    """
    view = memoryview(raw)
    offset = total = 0
    data = view[0:0]
    i, end = 0, len(view)
    while i < end:
        key, i = _varint(view, i)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ValueError("field number 0")
        if wire == 0:
            value, i = _varint(view, i)
            if number == 1:
                offset = value
            elif number == 3:
                total = value
        elif wire == 2:
            length, i = _varint(view, i)
            if i + length > end:
                raise ValueError("truncated length-delimited field")
            if number == 2:
                data = view[i : i + length]
            i += length
        elif wire in (1, 5):
            i += 8 if wire == 1 else 4
            if i > end:
                raise ValueError("truncated fixed-width field")
        else:
            raise ValueError(f"wire type {wire} not expected here")
    return offset, data, total
