"""A device's recent log: the requests operators make and the uploads devices answer them with.

An operator's request (``edgefleet devices log``) is kept per device, replacing the one before.
It is pending until the device uploads for it, or for :data:`REQUEST_TTL_S`; every check-in
answer of the device carries it meanwhile (part of the answer's state version: recording a
request and storing its upload both bump the fleet generation). An upload is stored only for
the pending request of the device that sends it (its certificate names it), once: a conditional
write, so two uploads or two replicas cannot both store. The upload replaces the one before and
goes with the device.

Reading an upload (:func:`read_upload`) is pure over the stream's messages: it takes what fits
``MAX_UPLOAD_BYTES`` and ``MAX_UPLOAD_RECORDS``, stops reading there (the rest of the stream is
never read, the log is marked truncated), and keeps each record's text as device text is kept
(``stored_text``, line by line: a traceback keeps its lines, a line cannot hold a control
character).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import sqlalchemy as sa

from fleet_server.errors import BadRequestError
from fleet_server.storage.db import Database, add_rows, bump_generation, stored_text
from fleet_server.storage.schema import device_logs
from protos import device_pb2
from protos.logs import (
    MAX_MESSAGE_CHARS,
    MAX_PART_RECORDS,
    MAX_TRACEBACK_CHARS,
    MAX_UPLOAD_BYTES,
    MAX_UPLOAD_RECORDS,
)

__all__ = [
    "REQUEST_TTL_S",
    "DeviceLogRow",
    "DeviceLogStore",
    "LogRequestRow",
    "ReadUpload",
    "read_upload",
    "waiting",
]

REQUEST_TTL_S = 86400  # a request no upload answered in a day is no longer sent
_RECORD_CHARS = MAX_MESSAGE_CHARS + MAX_TRACEBACK_CHARS + 512  # a record's text, escapes too
_RECORD_LINES = 200
_LOGGER_CHARS = 128
_MAX_LEVEL = 100
_MAX_UNIX_MS = 253_402_300_799_999  # 9999-12-31: a later "time" is a device's nonsense


def _ms(value: int) -> int:
    return min(max(0, value), _MAX_UNIX_MS)


@dataclass(frozen=True)
class LogRequestRow:
    """What an operator asked of a device's log."""

    request_id: str
    requested_by: str
    requested_at: int
    lines: int
    level: int


@dataclass(frozen=True)
class DeviceLogRow:
    """A device's latest request and latest upload (which may answer an older request)."""

    device_id: str
    request: LogRequestRow
    received_for: str  # "" = nothing uploaded yet
    received_at: int
    upload: bytes  # a serialized LogUpload ("" = none)
    truncated: bool

    def pending(self, now: int) -> bool:
        """The latest request waits for its upload (and has not expired)."""
        return waiting(self.request, self.received_for, now)


def waiting(request: LogRequestRow, received_for: str, now: int) -> bool:
    """Whether ``request`` waits for its upload at ``now``, the last upload having answered
    ``received_for``: not answered and not expired."""
    return received_for != request.request_id and now - request.requested_at <= REQUEST_TTL_S


@dataclass(frozen=True)
class ReadUpload:
    """An upload as it is stored: the first part's facts and the records that fit."""

    upload: device_pb2.LogUpload
    truncated: bool


def _text(message: str) -> str:
    lines = message.split("\n")
    kept = [stored_text(line, _RECORD_CHARS) for line in lines[:_RECORD_LINES]]
    if len(lines) > _RECORD_LINES:
        kept.append(f"[{len(lines) - _RECORD_LINES} more lines not kept]")
    text = "\n".join(kept)
    return text if len(text) <= _RECORD_CHARS else stored_text(text[:_RECORD_CHARS], _RECORD_CHARS)


def read_upload(first: device_pb2.LogUpload, rest: Iterator[device_pb2.LogUpload]) -> ReadUpload:
    """Read an upload's parts, ``first`` already read, until the stream ends or the bounds are
    reached (then nothing more is read).

    Raises:
        BadRequestError: a part holds more than ``MAX_PART_RECORDS`` records.
    """
    upload = device_pb2.LogUpload(
        request_id=first.request_id,
        started_unix_ms=_ms(first.started_unix_ms),
        previous_started_unix_ms=_ms(first.previous_started_unix_ms),
        dropped=first.dropped,
        agent_version=stored_text(first.agent_version, 64),
    )
    size, part = 0, first
    while True:
        if len(part.records) > MAX_PART_RECORDS:
            raise BadRequestError(
                f"a log upload part holds {len(part.records)} records; at most {MAX_PART_RECORDS}"
            )
        for record in part.records:
            kept = device_pb2.LogRecord(
                unix_ms=_ms(record.unix_ms),
                level=min(record.level, _MAX_LEVEL),
                logger=stored_text(record.logger, _LOGGER_CHARS),
                message=_text(record.message),
                previous_run=record.previous_run,
            )
            size += kept.ByteSize()
            if size > MAX_UPLOAD_BYTES or len(upload.records) >= MAX_UPLOAD_RECORDS:
                return ReadUpload(upload, truncated=True)
            upload.records.append(kept)
        following = next(rest, None)
        if following is None:
            return ReadUpload(upload, truncated=False)
        part = following


def _newer(_stored: object, new: object) -> object:
    return new


class DeviceLogStore:
    """Requests and uploads of devices' logs (``device_logs``)."""

    def __init__(self, db: Database) -> None:
        self._engine = db.engine

    def request(
        self, device_id: str, *, lines: int, level: int, requested_by: str, now: int
    ) -> LogRequestRow:
        """Ask the device for its log (replacing a request before); its next check-in answer
        carries the request."""
        row = LogRequestRow(uuid.uuid4().hex, requested_by[:128], now, lines, level)
        values = {
            "device_id": device_id,
            "request_id": row.request_id,
            "requested_by": row.requested_by,
            "requested_at": now,
            "lines": lines,
            "level": level,
        }
        with self._engine.begin() as conn:
            add_rows(conn, device_logs, [values], combine=dict.fromkeys(values, _newer))
            bump_generation(conn)  # the device's answer changes
        return row

    def get(self, device_id: str) -> DeviceLogRow | None:
        """The device's latest request and upload; None when its log was never asked for."""
        with self._engine.connect() as conn:
            r = conn.execute(
                sa.select(device_logs).where(device_logs.c.device_id == device_id)
            ).first()
        if r is None:
            return None
        request = LogRequestRow(r.request_id, r.requested_by, r.requested_at, r.lines, r.level)
        return DeviceLogRow(
            device_id,
            request,
            r.received_for or "",
            r.received_at or 0,
            bytes(r.upload or b""),
            bool(r.truncated),
        )

    def pending(self, device_id: str, now: int) -> LogRequestRow | None:
        """The request the device should answer now, if any."""
        c = device_logs.c
        with self._engine.connect() as conn:
            r = conn.execute(
                sa.select(
                    c.request_id, c.requested_by, c.requested_at, c.lines, c.level, c.received_for
                ).where(c.device_id == device_id)  # not the upload: check-ins ask this
            ).first()
        if r is None:
            return None
        request = LogRequestRow(r.request_id, r.requested_by, r.requested_at, r.lines, r.level)
        return request if waiting(request, r.received_for or "", now) else None

    def store(self, device_id: str, request_id: str, read: ReadUpload, now: int) -> bool:
        """Store an upload for the pending request ``request_id`` of the device, replacing the
        one before; False when that request is not pending (answered already, or replaced by a
        newer one meanwhile)."""
        with self._engine.begin() as conn:
            done = conn.execute(
                device_logs.update()
                .where(
                    (device_logs.c.device_id == device_id)
                    & (device_logs.c.request_id == request_id)
                    & device_logs.c.received_for.is_distinct_from(request_id)
                )
                .values(
                    received_for=request_id,
                    received_at=now,
                    upload=read.upload.SerializeToString(),
                    truncated=read.truncated,
                )
            )
            if done.rowcount != 1:
                return False
            bump_generation(conn)  # the device's answer stops carrying the request
        return True
