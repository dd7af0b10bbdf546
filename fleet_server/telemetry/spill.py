"""The ingest's spill: a bounded, append-only buffer on disk for what the database cannot take.

An MQTT 3.1.1 broker (the embedded one) has no Receive Maximum: the ingest cannot make it hold
messages back, and what it leaves unacknowledged sits in the broker's memory, inside the server
process, where a kill -9 loses it (the devices still hold it, and publish it again once the
server reports it missing: a round trip later). With a spill, what the ingest cannot store now
(the database is down or slower than the fleet) is committed to ``DATA_DIR/ingest-spill.db``
first and acknowledged to the broker only then; the writer stores it, in arrival order, once
the database takes it again, and deletes each row only after the database committed it. A
crash between the two stores a row twice in the database's eyes, which the devices' ledgers
count as a duplicate (:mod:`fleet_server.telemetry.sequence`): nothing is stored twice or lost.

The file is SQLite (WAL, ``synchronous=FULL``: a commit survives a power cut), mode 0600, one
row per message numbered in arrival order, bounded in messages and in bytes (topic + payload;
the file itself is somewhat larger). Past a bound, or on a full disk, a message is refused: the
caller leaves it unacknowledged, as without a spill; so is a message the file cannot take for
another reason (a lock another program holds, an I/O error). A file SQLite finds damaged (and
only that) is moved to ``ingest-spill.db.damaged`` (replacing an older one) and replaced by an
empty one; what it held is sent again by the devices. Rows stored but not yet deleted (a full
disk refuses the delete too) are not handed out again; they are deleted once the file can be
written (and stored again, as duplicates, if the server stops first).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fleet_server.telemetry.throttle import OncePer

__all__ = ["FORMAT", "Spill", "SpillBounds", "SpillConfig", "room", "spill_wanted"]

log = logging.getLogger(__name__)
FORMAT = 1  # the file's layout (PRAGMA user_version)
_DAMAGED = ".damaged"
_DAMAGE = (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)
_SIZE = ("page_count", "page_size")
# Rows stored from the spill that it cannot delete yet (a full disk): past this many, the
# writer stops storing from it until it can (each would otherwise be stored again and again).
_UNDELETED_MAX = 5_000
# An emptied spill is shrunk (and that logged) only from this size: under a load the writer
# barely keeps up with, it holds a batch or two and empties many times a second.
_SHRINK_FROM = 1 << 20

# (arrival number, topic, payload)
Row = tuple[int, str, bytes]


@dataclass(frozen=True)
class SpillBounds:
    """At most this many messages, and this many bytes of topic and payload, in the spill.

    The defaults hold 49 hours of the soak's rate (5.6 reports a second) and 17 minutes of a
    fleet of 10,000 devices reporting every 10 s (1,000 a second); 512 MiB allows 537 bytes
    a message on average (a report with two models is about 200)."""

    messages: int = 1_000_000
    bytes: int = 512 * 1024 * 1024


@dataclass(frozen=True)
class SpillConfig:
    """Where the spill lives, when it is used (see :func:`spill_wanted`), and its bounds."""

    path: Path
    mode: str = "auto"
    bounds: SpillBounds = SpillBounds()


def room(bounds: SpillBounds, messages: int, size: int, sizes: Sequence[int]) -> int:
    """How many of the messages of ``sizes`` (in order) fit in a spill holding ``messages``
    messages of ``size`` bytes: the first ones that keep both bounds."""
    fits = 0
    for each in sizes:
        if messages + fits + 1 > bounds.messages or size + each > bounds.bytes:
            break
        fits += 1
        size += each
    return fits


def spill_wanted(mode: str, receive_window: bool) -> bool:
    """Whether the ingest spills new messages: ``on``, ``off``, or ``auto``: only when the
    broker gives no back-pressure (no MQTT v5 Receive Maximum: the embedded 3.1.1 broker). A v5
    broker such as mosquitto holds what the ingest leaves unacknowledged, on its own disk."""
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"spill mode must be auto, on or off, not {mode!r}")
    return mode == "on" or (mode == "auto" and not receive_window)


def _full(exc: sqlite3.Error) -> bool:
    """The disk (or the file system's quota) is full: the spill refuses, nothing is damaged."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code == sqlite3.SQLITE_FULL or "full" in str(exc).lower()


def _damaged(exc: sqlite3.Error) -> bool:
    """SQLite finds the file damaged, or it is not ours (our own checks raise without a code).
    A lock another program holds (an operator's sqlite3 shell, a backup tool), an I/O error or
    a read-only file system is no damage: moving the file aside would set aside everything it
    holds, which the broker was told is safe."""
    code = getattr(exc, "sqlite_errorcode", None)
    if _full(exc):
        return False
    if code is None:
        return isinstance(exc, sqlite3.DatabaseError)
    return code & 0xFF in _DAMAGE


class Spill:
    """The spill file (see the module docstring). Thread-safe: the ingest's router appends while
    its writer reads and deletes. No method raises on a full disk or a damaged file."""

    def __init__(self, path: Path, bounds: SpillBounds = SpillBounds()) -> None:
        """Open (or create) the spill at ``path``; a damaged file is moved aside.

        Raises:
            OSError: another process uses it, or the file cannot be created.
            sqlite3.Error: a full disk at the start.
        """
        self.path = path
        self.bounds = bounds
        self._lock = threading.Lock()
        self._complaints = OncePer(60.0)
        self.messages = 0  # held now
        self.bytes = 0
        self.spilled = 0  # messages committed to the spill, ever (this process)
        self.drained = 0  # and deleted once the database stored them
        self.refused = {"bound": 0, "disk": 0}  # messages the spill could not take
        self.quarantined = 0  # damaged files moved aside
        self._next = 1
        self._stored: set[int] = set()  # stored from the spill, not deleted yet (a full disk)
        self._broken = False  # a damaged file was moved aside and no new one could be made
        self._owner = self._claim()
        try:
            self._db = self._open()
        except BaseException:
            os.close(self._owner)
            raise

    def _claim(self) -> int:
        """Hold ``<file>.lock`` for as long as this process uses the spill: two servers on one
        data dir would store and delete each other's rows.

        Raises:
            OSError: another process holds it.
        """
        lock = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            raise OSError(f"{self.path} is in use by another server process ({exc})") from exc
        return fd

    def _open(self) -> sqlite3.Connection:
        """Open (or create) the file; a damaged one is moved aside and replaced."""
        try:
            return self._connect()
        except sqlite3.DatabaseError as exc:
            if not _damaged(exc):
                raise  # a full disk, a lock, an I/O error: a start fails like the database's
            self._quarantine(exc)
            return self._connect()

    def _connect(self) -> sqlite3.Connection:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            fresh = db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0
            if not fresh and version != FORMAT:
                raise sqlite3.DatabaseError(f"spill format {version}, expected {FORMAT}")
            if fresh:  # before the first table: freed pages can be given back
                db.execute("PRAGMA auto_vacuum=INCREMENTAL")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS spill (n INTEGER PRIMARY KEY, topic TEXT NOT NULL,"
                " payload BLOB NOT NULL)"
            )
            if fresh:
                db.execute(f"PRAGMA user_version={FORMAT}")
            check = db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {check}")
            count, size, last = db.execute(
                "SELECT count(*), coalesce(sum(length(CAST(topic AS BLOB)) + length(payload)),"
                " 0), coalesce(max(n), 0) FROM spill"
            ).fetchone()
        except BaseException:
            db.close()
            raise
        self.messages, self.bytes = int(count), int(size)
        self._next = max(self._next, int(last) + 1)  # numbers handed out stay unique
        if count:
            log.warning("the ingest's spill %s holds %d message(s) (%d bytes) from an earlier "
                        "run: storing them first", self.path, count, size)  # fmt: skip
        return db

    def _quarantine(self, exc: BaseException) -> None:
        damaged = self.path.with_name(self.path.name + _DAMAGED)
        log.error("the ingest's spill %s is damaged (%s): moved to %s and replaced; devices "
                  "send again what it held", self.path, exc, damaged)  # fmt: skip
        with contextlib.suppress(FileNotFoundError):
            self.path.replace(damaged)
        for suffix in ("-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                Path(f"{self.path}{suffix}").replace(f"{damaged}{suffix}")
        self.quarantined += 1
        self.messages = self.bytes = 0
        self._stored = set()

    def _replace_damaged(self, exc: sqlite3.Error) -> None:
        """A file damaged under the running server: start an empty one (lock held)."""
        with contextlib.suppress(sqlite3.Error):
            self._db.close()
        self._quarantine(exc)
        self._broken = True
        self._usable()

    def _usable(self) -> bool:
        """Whether the file can be used (lock held): after a damaged one was moved aside, a
        new one is made; while that fails (a full disk), the spill refuses."""
        if not self._broken:
            return True
        try:
            self._db = self._connect()
        except (OSError, sqlite3.Error) as exc:
            if self._complaints.first("new file"):
                log.error("cannot make a new ingest spill %s (%s): it refuses messages until "
                          "it can (not logged again this minute)", self.path, exc)  # fmt: skip
            return False
        self._broken = False
        return True

    def number(self) -> int:
        """The next arrival number: rows are stored in the order of these numbers."""
        with self._lock:
            n = self._next
            self._next += 1
            return n

    def append(self, rows: Sequence[Row], *, counted: bool = True) -> int:
        """Commit the first rows that fit the bounds; return how many. The rest are refused:
        counted (unless ``counted`` is False: already counted once) and logged once a minute;
        the caller keeps them unacknowledged."""
        sizes = [len(t.encode()) + len(p) for _n, t, p in rows]
        with self._lock:
            if not self._usable():
                if counted:
                    self._refuse("disk", len(rows), "no new file can be made for it")
                return 0
            if self._stored:  # the disk may have room again
                self._forget_stored()
            fits = room(self.bounds, self.messages, self.bytes, sizes)
            taken = 0
            if fits:
                try:
                    self._db.execute("BEGIN IMMEDIATE")
                    self._db.executemany(
                        "INSERT INTO spill (n, topic, payload) VALUES (?, ?, ?)",
                        rows[:fits],
                    )
                    self._db.execute("COMMIT")
                    taken = fits
                except sqlite3.Error as exc:
                    with contextlib.suppress(sqlite3.Error):
                        self._db.execute("ROLLBACK")
                    if _damaged(exc):
                        self._replace_damaged(exc)
                    elif counted:
                        why = "the disk is full" if _full(exc) else "it cannot be written"
                        self._refuse("disk", len(rows), f"{why} ({exc})")
                    return 0
                self.messages += taken
                self.bytes += sum(sizes[:taken])
                self.spilled += taken
            if taken < len(rows) and counted:
                held = f"it holds {self.messages} message(s), {self.bytes} bytes"
                bounds = f"(bounds {self.bounds.messages}, {self.bounds.bytes})"
                self._refuse("bound", len(rows) - taken, f"{held} {bounds}")
            return taken

    def _refuse(self, reason: str, count: int, why: str) -> None:
        self.refused[reason] += count
        if self._complaints.first(reason):
            log.warning("the ingest's spill refuses %d message(s): %s; they wait in memory, "
                        "unacknowledged, and past the ingest's queue devices send them again "
                        "(not logged again this minute)", count, why)  # fmt: skip

    def head(self, limit: int) -> list[Row]:
        """The oldest rows not stored yet, at most ``limit``, in arrival order; none while
        too many stored rows wait to be deleted (a full disk) or the file cannot be read."""
        with self._lock:
            if not self._usable():
                return []
            if self._stored:
                self._forget_stored()
                if len(self._stored) >= _UNDELETED_MAX:
                    return []
            try:
                rows = self._db.execute(
                    "SELECT n, topic, payload FROM spill ORDER BY n LIMIT ?",
                    (limit + len(self._stored),),
                ).fetchall()
            except sqlite3.Error as exc:
                if _damaged(exc):
                    self._replace_damaged(exc)
                elif self._complaints.first("read"):
                    log.warning("cannot read the ingest's spill: %s", exc)
                return []
            fresh = [r for r in rows if r[0] not in self._stored][:limit]
        return [(int(n), str(t), bytes(p)) for n, t, p in fresh]

    def delete(self, rows: Sequence[Row]) -> None:
        """Forget rows the database has stored (committed). When the file cannot be written
        (a full disk), they are not handed out again and are deleted later."""
        if not rows:
            return
        size = sum(len(t.encode()) + len(p) for _n, t, p in rows)
        with self._lock:
            self._stored.update(r[0] for r in rows)
            self.messages = max(0, self.messages - len(rows))
            self.bytes = max(0, self.bytes - size)
            self.drained += len(rows)
            self._forget_stored()
            if not self.messages and not self._stored:
                self._shrink()

    def _forget_stored(self) -> None:
        """Delete the stored rows (lock held); on failure they wait for the next try."""
        if not self._usable():
            return
        try:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany("DELETE FROM spill WHERE n = ?", [(n,) for n in self._stored])
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            if _damaged(exc):
                self._replace_damaged(exc)
            elif self._complaints.first("delete"):
                log.warning("cannot delete %d stored message(s) from the ingest's spill (%s): "
                            "deleted once it can be written; a stop before that stores them "
                            "again at the next start, as duplicates", len(self._stored),
                            exc)  # fmt: skip
            return
        self._stored.clear()

    def _shrink(self) -> None:
        """Give the emptied file's pages and write-ahead log back to the disk."""
        started = time.monotonic()
        try:
            pages, page = (self._db.execute(f"PRAGMA {p}").fetchone()[0] for p in _SIZE)
            if pages * page < _SHRINK_FROM:
                return
            self._db.execute("PRAGMA incremental_vacuum")
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            log.warning("cannot shrink the ingest's spill: %s", exc)
            return
        log.info("the ingest's spill is empty again (%d message(s) stored from it; shrunk in "
                 "%.0f ms)", self.drained, (time.monotonic() - started) * 1000)  # fmt: skip

    def close(self) -> None:
        with self._lock:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            with contextlib.suppress(OSError):
                os.close(self._owner)
