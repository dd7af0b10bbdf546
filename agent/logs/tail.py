"""The tail of the agent's log in its state dir, for the run after this one.

A crash-looping agent is the one whose log an operator needs most, and its records die with it.
So each record at INFO or above is appended to ``STATE_DIR/log/current.jsonl`` as it is logged:
one ``write``, no fsync, so a process killed at any instant (SIGKILL, the watchdog, a segfault
in a model runtime) leaves what it logged in the kernel's cache, and only a power cut can lose
its last seconds. The file is bounded: past ``TAIL_BYTES / 2`` it becomes ``current.1.jsonl``
and a new one starts. At the next start the two become ``previous.jsonl``, the last
``TAIL_BYTES`` of their records, written atomically (a kill meanwhile leaves the old files,
read again at the start after); a run that logged nothing leaves the tail before it in place.
Nothing is rewritten but at start: the flash wears as it does under journald.

The files are JSON lines, 0600: a header ``{"format": "edgefleet-agent-log", "version": 1,
"started_unix_ms": ...}``, then one record per line; a damaged line (a power cut mid-write) is
skipped, a file of another format or version is ignored.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agent._fs import atomic_write, read_regular
from agent.logs.ring import Kept
from protos.logs import TAIL_BYTES

__all__ = ["FORMAT", "TailFile", "decode", "encode", "last_within", "open_tail"]

FORMAT = "edgefleet-agent-log"
_VERSION = 1
_CURRENT, _OLDER, _PREVIOUS = "current.jsonl", "current.1.jsonl", "previous.jsonl"
_ROTATE_AT = TAIL_BYTES // 2
_READ_LIMIT = 4 * TAIL_BYTES  # a file of ours is never near this: its last line may be long


def _header(started_ms: int) -> bytes:
    head = {"format": FORMAT, "version": _VERSION, "started_unix_ms": started_ms}
    return json.dumps(head).encode() + b"\n"


def encode(kept: Kept) -> bytes:
    """One record as a line of the tail file."""
    line = {"t": kept.unix_ms, "l": kept.level, "n": kept.logger, "m": kept.message}
    return json.dumps(line, ensure_ascii=False).encode("utf-8", "replace") + b"\n"


def _record(item: Any, previous: bool) -> Kept | None:
    if not isinstance(item, dict):
        return None
    t, level, name, message = item.get("t"), item.get("l"), item.get("n"), item.get("m")
    if not (
        isinstance(t, int) and isinstance(level, int) and isinstance(name, str)
        and isinstance(message, str) and 0 <= level <= 100
    ):  # fmt: skip
        return None
    return Kept(t, level, name, message, previous_run=previous)


def decode(data: bytes, *, previous: bool = True) -> tuple[int, list[Kept]] | None:
    """A tail file's run start (unix ms) and records; None when it is not one of ours (another
    format or version, or no header). Damaged lines are skipped."""
    lines = data.split(b"\n")
    try:
        head = json.loads(lines[0])
    except ValueError:
        return None
    if not isinstance(head, dict) or head.get("format") != FORMAT:
        return None
    if head.get("version") != _VERSION:
        return None
    started = head.get("started_unix_ms")
    records = []
    for line in lines[1:]:
        try:
            kept = _record(json.loads(line), previous)
        except ValueError:
            continue
        if kept is not None:
            records.append(kept)
    return (started if isinstance(started, int) else 0), records


def last_within(records: Sequence[Kept], max_bytes: int) -> list[Kept]:
    """The last records whose sizes add up to at most ``max_bytes``."""
    total, start = 0, len(records)
    while start > 0 and total + records[start - 1].size <= max_bytes:
        start -= 1
        total += records[start].size
    return list(records[start:])


def _read(path: Path) -> tuple[int, list[Kept]] | None:
    try:
        return decode(read_regular(path, _READ_LIMIT))
    except FileNotFoundError:
        return None
    except OSError:
        return None  # too large or not a file: not ours


class TailFile:
    """Appends this run's records to ``current.jsonl`` (see the module docstring)."""

    def __init__(self, folder: Path, started_ms: int) -> None:
        self._folder = folder
        self._started_ms = started_ms
        self._fd = -1
        self._size = 0
        self.error = ""  # why records are not appended any more ("" = they are)
        self._start_file()

    def _start_file(self) -> None:
        path = self._folder / _CURRENT
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
        self._fd = os.open(path, flags, 0o600)
        self._size = 0
        self._write(_header(self._started_ms))

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        self._size += len(data)

    def append(self, kept: Kept) -> None:
        """Append a record; a failure (a full disk) ends the appends of this run, and says why
        in ``error``."""
        if self._fd < 0:
            return
        try:
            self._write(encode(kept))
            if self._size > _ROTATE_AT:
                os.close(self._fd)
                self._fd = -1
                (self._folder / _CURRENT).replace(self._folder / _OLDER)
                self._start_file()
        except OSError as exc:
            self.error = f"{exc.strerror or exc}"
            self.close()

    def close(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1


def open_tail(folder: Path, started_ms: int) -> tuple[TailFile, int, list[Kept]]:
    """Keep the last run's tail as ``previous.jsonl`` and start this run's file; return its
    writer, and the previous run's start (unix ms, 0 = unknown) and records (marked).

    Raises:
        OSError: the folder cannot be made or written.
    """
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    run: list[Kept] = []
    run_started = 0
    for name in (_OLDER, _CURRENT):
        found = _read(folder / name)
        if found is not None:
            run_started = run_started or found[0]
            run += found[1]
    if run:
        kept = last_within(run, TAIL_BYTES)
        body = _header(run_started) + b"".join(encode(k) for k in kept)
        atomic_write(folder / _PREVIOUS, body, mode=0o600)
        previous: tuple[int, list[Kept]] | None = (run_started, kept)
    else:
        previous = _read(folder / _PREVIOUS)
    with contextlib.suppress(FileNotFoundError):
        (folder / _OLDER).unlink()
    started, records = previous if previous is not None else (0, [])
    return TailFile(folder, started_ms), started, records
