"""MQTT 3.1.1 packets as the embedded broker's front reads them (:mod:`.broker`): whole packets
framed by their announced length before a body is read, the CONNECT's client id and Will, the
retain flag the rules allow, and the reader that serves amqtt one framed packet at a time."""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

from protos.topics import retain_allowed

__all__ = ["Connect", "PacketReader", "PacketTooLargeError", "parse_connect", "read_packet"]

log = logging.getLogger(__name__)


class PacketTooLargeError(Exception):
    """A client announced a packet above the broker's limit."""


async def read_packet(reader: asyncio.StreamReader, max_packet: int) -> bytes:
    """One whole MQTT packet (fixed header and body). The body is read only once its announced
    length is known to be within ``max_packet``.

    Raises:
        asyncio.IncompleteReadError: the connection ended.
        PacketTooLargeError: the announced length is above the limit.
        ValueError: a malformed length.
    """
    header = await reader.readexactly(1)
    length, multiplier, encoded = 0, 1, b""
    for _ in range(4):
        byte = await reader.readexactly(1)
        encoded += byte
        length += (byte[0] & 0x7F) * multiplier
        if not byte[0] & 0x80:
            break
        multiplier *= 128
    else:
        raise ValueError("malformed remaining length")
    if length > max_packet:
        raise PacketTooLargeError(f"{length}-byte packet (limit {max_packet})")
    return header + encoded + await reader.readexactly(length)


def _body(packet: bytes) -> bytes:
    index = 1
    while packet[index] & 0x80:
        index += 1
    return packet[index + 1 :]


@dataclass(frozen=True)
class Connect:
    """What the front needs of a CONNECT packet."""

    level: int
    client_id: str
    will_topic: str | None  # None: no Will


def parse_connect(packet: bytes) -> Connect | None:
    """The protocol level, client id and Will topic of a CONNECT packet, or None when it is
    not a well-formed one."""
    if not packet or packet[0] != 0x10:
        return None
    body = _body(packet)
    try:
        (name_len,) = struct.unpack_from("!H", body, 0)
        offset = 2 + name_len
        level, flags = body[offset], body[offset + 1]
        offset += 4  # level, flags, keep-alive
        fields: list[str] = []
        for _ in range(2 if flags & 0x04 else 1):  # the client id, then the Will topic
            (size,) = struct.unpack_from("!H", body, offset)
            raw = body[offset + 2 : offset + 2 + size]
            if len(raw) != size:
                return None
            fields.append(raw.decode("utf-8"))
            offset += 2 + size
        return Connect(level, fields[0], fields[1] if len(fields) > 1 else None)
    except (struct.error, IndexError, UnicodeDecodeError):
        return None


def _unretained(packet: bytes) -> bytes:
    """A PUBLISH whose retain flag the rules do not allow, with the flag cleared."""
    if packet[0] & 0xF0 != 0x30 or not packet[0] & 0x01:
        return packet
    body = _body(packet)
    (size,) = struct.unpack_from("!H", body, 0) if len(body) >= 2 else (0,)
    topic = body[2 : 2 + size].decode("utf-8", "replace")
    if retain_allowed(topic):
        return packet
    return bytes((packet[0] & 0xFE,)) + packet[1:]


class PacketReader:
    """amqtt's reader for a vetted connection: serves amqtt's reads from whole packets read
    with :func:`read_packet`, starting with the CONNECT already read. A device's retain flag
    is cleared where the rules do not allow it; a device that sends more bytes than its budget
    (``rate`` bytes a second after a ``burst``) is read more slowly, and nobody's packets are
    read while amqtt has more than ``backlog`` messages waiting to go out: back-pressure, so a
    flood waits in the sender's socket, not in the server's memory."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        first: bytes,
        *,
        max_packet: int,
        identity: str,
        busy: Callable[[], bool],
        budget: tuple[float, float] | None,
    ) -> None:
        self._reader = reader
        self._buffer = bytearray(first)
        self._max = max_packet
        self._identity = identity
        self._busy = busy
        self._budget = budget  # (bytes a second, burst); None: unbounded (a server)
        self._tokens = budget[1] if budget else 0.0
        self._refilled = time.monotonic()
        self.said_goodbye = False  # a DISCONNECT packet came: a clean end, no "offline"

    async def _wait_for_room(self, size: int) -> None:
        while self._busy():
            await asyncio.sleep(0.05)
        if self._budget is None:
            return
        rate, burst = self._budget
        now = time.monotonic()
        self._tokens = min(burst, self._tokens + (now - self._refilled) * rate)
        self._refilled = now
        self._tokens -= size
        if self._tokens < 0:
            await asyncio.sleep(-self._tokens / rate)

    async def read(self, n: int = -1) -> bytes:
        """The next ``n`` bytes of the current packet (all of it with -1). A read that would
        run past the packet the front framed ends the connection: amqtt trusts the lengths
        inside a packet (a topic length), and a packet whose inner lengths overrun it would
        otherwise make amqtt frame the following bytes differently from the front, past every
        check made here (measured: a 2 MiB message accepted under the 320 KiB limit)."""
        if not self._buffer:
            try:
                packet = await read_packet(self._reader, self._max)
            except (PacketTooLargeError, ValueError) as exc:
                log.warning("closing MQTT connection of %s: %s", self._identity, exc)
                raise asyncio.IncompleteReadError(b"", n) from exc
            await self._wait_for_room(len(packet))
            if self._budget is not None:
                packet = _unretained(packet)
            self._buffer += packet
            if packet[0] & 0xF0 == 0xE0:
                self.said_goodbye = True
        if n > len(self._buffer):
            log.warning("closing MQTT connection of %s: a packet's inner lengths overrun it",
                        self._identity)  # fmt: skip
            self._buffer.clear()
            raise asyncio.IncompleteReadError(b"", n)
        size = len(self._buffer) if n < 0 else n
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def feed_eof(self) -> None:
        self._reader.feed_eof()
