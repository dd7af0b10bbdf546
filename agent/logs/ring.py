"""The agent's recent log: a logging handler that keeps the last records of this run in memory,
bounded by count and by bytes, and appends them to the tail file (:mod:`agent.logs.tail`).

Each record is kept as a :class:`Kept`: its message cut to ``MAX_MESSAGE_CHARS``, a traceback's
first lines and its end within ``MAX_TRACEBACK_CHARS``, and secrets taken out
(:mod:`agent.logs.redact`) before it is kept anywhere. The oldest records go first when a bound
is reached; how many went is counted (``dropped``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from agent.logs.redact import redact
from protos.logs import MAX_MESSAGE_CHARS, MAX_TRACEBACK_CHARS, RING_BYTES, RING_RECORDS

__all__ = ["Kept", "RecentLog", "cut"]

_LOGGER_CHARS = 128
_OVERHEAD = 24  # bytes a record costs beyond its text (time, level), for the byte bound


@dataclass(frozen=True, slots=True)
class Kept:
    """One record as the agent keeps and uploads it."""

    unix_ms: int
    level: int
    logger: str
    message: str
    previous_run: bool = False

    @property
    def size(self) -> int:
        """What it counts against a byte bound."""
        return len(self.message.encode("utf-8", "replace")) + len(self.logger) + _OVERHEAD


def cut(text: str, limit: int, *, keep_end: bool = False) -> str:
    """``text`` within ``limit`` characters, saying how much was cut; with ``keep_end``, its
    first quarter and its end (a traceback's last frames and its error line matter most)."""
    if len(text) <= limit:
        return text
    note = f" ... [{len(text) - limit} characters cut] ... "
    if not keep_end:
        return text[:limit] + note.rstrip(" .")
    head = limit // 4
    return text[:head] + "\n" + note.strip() + "\n" + text[len(text) - (limit - head) :]


class RecentLog(logging.Handler):
    """The last ``records`` records of this run within ``max_bytes`` (see the module docstring).

    ``secrets()`` returns the secrets the agent holds now; it is called for every record, from
    the thread that logs, so it must only read memory. ``sink``, when given, is called with
    every kept record at INFO or above (the tail file), under the handler's lock.
    """

    def __init__(
        self,
        *,
        records: int = RING_RECORDS,
        max_bytes: int = RING_BYTES,
        secrets: Callable[[], Iterable[str]] = tuple,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(logging.NOTSET)
        self._records = records
        self._max_bytes = max_bytes
        self._secrets = secrets
        self._clock = clock
        self._ring: deque[Kept] = deque()
        self._bytes = 0
        self._dropped = 0
        self._formatter = logging.Formatter()
        self.sink: Callable[[Kept], None] | None = None
        self.started_ms = int(clock() * 1000)
        # The run before this one (agent.logs.tail), uploaded ahead of this run's records.
        self.previous: tuple[Kept, ...] = ()
        self.previous_started_ms = 0
        self._local = threading.local()  # a record logged while one is being kept

    def keep(self, record: logging.LogRecord) -> Kept:
        """The record as it is kept: bounded, secrets out."""
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a bad %-format in someone's log call: keep what it said
            message = f"{record.msg!s} (arguments that do not fit: {record.args!r})"
        message = cut(message, MAX_MESSAGE_CHARS)
        trace = ""
        if record.exc_info:
            trace = self._formatter.formatException(record.exc_info)
        elif record.exc_text:
            trace = record.exc_text
        if record.stack_info:
            trace = f"{trace}\n{record.stack_info}".strip("\n")
        if trace:
            message = f"{message}\n{cut(trace, MAX_TRACEBACK_CHARS, keep_end=True)}"
        return Kept(
            unix_ms=int(record.created * 1000),
            level=record.levelno,
            logger=record.name[:_LOGGER_CHARS],
            message=redact(message, self._secrets()),
        )

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(self._local, "busy", False):
            return  # logged by the keeping itself (a sink's library): not kept, no loop
        self._local.busy = True
        try:
            self.add(self.keep(record))
        except Exception:  # noqa: BLE001 - as logging's own handlers: never into the caller
            self.handleError(record)
        finally:
            self._local.busy = False

    def add(self, kept: Kept) -> None:
        """Keep a record (the caller holds the handler's lock, as ``emit`` does)."""
        self._ring.append(kept)
        self._bytes += kept.size
        while self._ring and (len(self._ring) > self._records or self._bytes > self._max_bytes):
            self._bytes -= self._ring.popleft().size
            self._dropped += 1
        if self.sink is not None and kept.level >= logging.INFO:
            self.sink(kept)

    def note(self, level: int, logger: str, message: str) -> None:
        """Keep a record that goes to no other handler: how the run ended, which the command
        line prints itself."""
        kept = Kept(int(self._clock() * 1000), level, logger, redact(message, self._secrets()))
        self.acquire()
        try:
            self.add(kept)
        finally:
            self.release()

    def snapshot(self) -> tuple[list[Kept], int]:
        """The run before (marked) and this run's records, oldest first, and how many records
        of this run the bounds let go."""
        self.acquire()
        try:
            return [*self.previous, *self._ring], self._dropped
        finally:
            self.release()
