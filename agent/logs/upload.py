"""What the agent uploads when an operator asks for its log (pure): the records the request
wants, in bounded parts."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from agent.logs.ring import Kept
from protos import device_pb2
from protos.logs import DEFAULT_LINES, MAX_LINES, MAX_PART_RECORDS

__all__ = ["parts", "select"]


def select(records: Sequence[Kept], *, lines: int, level: int) -> list[Kept]:
    """The last ``lines`` records (the run before, then this one) at ``level`` or above;
    ``lines`` 0 means the default, and never more than ``MAX_LINES``."""
    wanted = min(lines or DEFAULT_LINES, MAX_LINES)
    chosen = [r for r in records if r.level >= level]
    return chosen[-wanted:]


def parts(
    request_id: str,
    records: Sequence[Kept],
    *,
    started_ms: int,
    previous_started_ms: int,
    dropped: int,
    agent_version: str,
) -> Iterator[device_pb2.LogUpload]:
    """The upload's messages: the first names the request and the runs, each holds at most
    ``MAX_PART_RECORDS`` records (the first one too; none when there are none)."""
    first = device_pb2.LogUpload(
        request_id=request_id,
        started_unix_ms=started_ms,
        previous_started_unix_ms=previous_started_ms,
        dropped=dropped,
        agent_version=agent_version,
    )
    for start in range(0, max(len(records), 1), MAX_PART_RECORDS):
        part = first if start == 0 else device_pb2.LogUpload()
        for r in records[start : start + MAX_PART_RECORDS]:
            part.records.add(
                unix_ms=r.unix_ms,
                level=r.level,
                logger=r.logger,
                message=r.message,
                previous_run=r.previous_run,
            )
        yield part
