"""Store and forward: every MQTT message the agent sends goes through a bounded on-disk spool.

A message is numbered and stored in one transaction (:meth:`Spool.append`), whatever thread
produces it, so sequence order is spool order is publish order. It is published when the broker
is there and kept after the broker's PUBACK (:meth:`Spool.sent`) until the *server* says it has
stored it (:meth:`Spool.acknowledge`, from the check-in answer): a broker that restarts without
persistence, or dies with the server, loses nothing the device still holds, and numbers the
server reports missing are published again. Against a server too old to acknowledge, a message
is forgotten at its PUBACK, as before.

The spool is bounded. Past the bound the oldest *telemetry* is dropped first (what the broker
already acknowledged before what it has not), and counted; events (update state changes,
command answers) are never dropped. The device tells the server the lowest number it still
holds (:meth:`Spool.floor`), so numbers dropped here are counted as dropped by the device, not
as lost on the way.

A full disk does not stop the spool for good: a small reserve file beside it is given back,
the oldest telemetry is dropped and the write-ahead log truncated (SQLite needs room even to
delete), then the write is tried again; the reserve is taken again once there is room. A spool
SQLite finds damaged is moved aside (``spool.db.damaged``) and replaced by a new one with a new
epoch, which says so in every report (:attr:`Spool.lost`): what the old one held is lost, and
the server records it as such rather than as nothing.

Sequence numbers grow across restarts; the spool's random epoch tells the server when a device
started counting again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from agent.errors import TransientError

__all__ = ["Delivery", "Spool", "SpoolFullError", "SpooledMessage"]

log = logging.getLogger(__name__)
_T = TypeVar("_T")

TELEMETRY = "telemetry"
EVENT = "event"
_RESERVE_BYTES = 1 << 20  # given back when the disk is full, so that deleting can succeed
_FULL, _IOERR, _CORRUPT, _NOTADB = 13, 10, 11, 26  # SQLite primary result codes
# A message sent this many acknowledgements ago and still above what the server has stored
# was lost on the way (a broker restarted without persistence): it is sent again.
_RESEND_AFTER_ACKS = 2


class SpoolFullError(TransientError):
    """The disk under the spool is full even after the spool made room."""


@dataclass(frozen=True)
class SpooledMessage:
    id: int
    topic: str
    payload: bytes
    kind: str
    seq: int


@dataclass(frozen=True)
class Delivery:
    """What the server has stored of one epoch: every number up to ``highest`` but those in
    the ``missing`` ranges (inclusive pairs)."""

    epoch: str
    highest: int
    missing: tuple[tuple[int, int], ...] = ()

    def stored(self, seq: int) -> bool:
        return seq <= self.highest and not any(lo <= seq <= hi for lo, hi in self.missing)


def _message(row: Any) -> SpooledMessage:
    i, t, p, k, s = row
    return SpooledMessage(int(i), str(t), bytes(p), str(k), int(s or 0))


def _code(exc: sqlite3.Error) -> int:
    return int(getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF


def _damaged(exc: sqlite3.Error) -> bool:
    return _code(exc) in (_CORRUPT, _NOTADB) or "malformed" in str(exc)


def _full(exc: sqlite3.Error) -> bool:
    return _code(exc) in (_FULL, _IOERR) or "disk is full" in str(exc)


def _drop_oldest(db: sqlite3.Connection, count: int) -> int:
    """In the caller's transaction: drop the ``count`` oldest telemetry messages (never events;
    those the broker already has first), count them, and return how many went."""
    cursor = db.execute(
        "DELETE FROM messages WHERE id IN (SELECT id FROM messages WHERE kind = ? "
        "ORDER BY sent = 0, id LIMIT ?)",
        (TELEMETRY, count),
    )
    db.execute(
        "UPDATE meta SET value = CAST(value AS INTEGER) + ? WHERE key = 'dropped'",
        (cursor.rowcount,),
    )
    return int(cursor.rowcount)


class Spool:
    """A bounded, durable, numbered FIFO of messages (thread-safe)."""

    def __init__(self, path: Path, *, max_messages: int = 10_000) -> None:
        self.path = path
        self.max_messages = max_messages
        self._lock = threading.Lock()
        self._reserve = path.with_name(path.name + ".reserve")
        self.lost = ""  # why an earlier spool was replaced ("" = it was not)
        try:
            self._db = self._open()
        except sqlite3.DatabaseError as exc:
            if not _damaged(exc):
                raise
            self._db = self._replace(f"the spool was damaged ({exc})")
        self.epoch = self._meta("epoch")
        self.lost = self._meta("lost")
        self._take_reserve()

    # -- opening, replacing ------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across crashes
            db.execute(
                "CREATE TABLE IF NOT EXISTS messages (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                "topic TEXT NOT NULL, payload BLOB NOT NULL, kind TEXT NOT NULL)"
            )
            columns = {row[1] for row in db.execute("PRAGMA table_info(messages)")}
            if "seq" not in columns:  # a spool of an agent before end-to-end acknowledgements
                db.execute("ALTER TABLE messages ADD COLUMN seq INTEGER")
                db.execute("ALTER TABLE messages ADD COLUMN sent INTEGER NOT NULL DEFAULT 0")
            db.execute(
                "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
            )
            for key, value in (
                ("epoch", secrets.token_hex(8)),
                ("seq", "0"),
                ("dropped", "0"),
                ("acks", "0"),  # "1" once a server acknowledged: keep messages until it does
                ("generation", "0"),  # acknowledgements handled
                ("lost", ""),
            ):
                db.execute("INSERT OR IGNORE INTO meta VALUES (?, ?)", (key, value))
            (check,) = db.execute("PRAGMA quick_check(1)").fetchone()
            if check != "ok":
                raise sqlite3.DatabaseError(f"database disk image is malformed: {check}")
        except BaseException:
            db.close()
            raise
        return db

    def _replace(self, why: str) -> sqlite3.Connection:
        """Move a damaged spool aside and start a new one (a new epoch) that says why."""
        log.error("%s: moved aside to %s.damaged; a new spool starts", why, self.path)
        # The log first: a kill between two renames must not leave the old log beside a new
        # database (SQLite would replay it into the wrong file).
        for suffix in ("-wal", "-shm", ""):
            source = self.path.with_name(self.path.name + suffix)
            with contextlib.suppress(FileNotFoundError):
                source.replace(self.path.with_name(self.path.name + ".damaged" + suffix))
        db = self._open()
        db.execute("UPDATE meta SET value = ? WHERE key = 'lost'", (why[:200],))
        return db

    def _meta(self, key: str) -> str:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return str(row[0])

    # -- the disk reserve ---------------------------------------------------------------------

    def _take_reserve(self) -> None:
        """Hold a small file of zeros to give back when the disk fills (best effort)."""
        if self._reserve.exists():
            return
        try:
            with self._reserve.open("wb") as f:
                f.write(bytes(_RESERVE_BYTES))
                f.flush()
                os.fsync(f.fileno())
        except OSError:
            with contextlib.suppress(OSError):
                self._reserve.unlink()

    def _make_room(self) -> int:
        """The disk is full: give back the reserve, drop the oldest telemetry and truncate the
        write-ahead log; return how many messages were dropped."""
        with contextlib.suppress(FileNotFoundError):
            self._reserve.unlink()
        dropped = 0
        try:
            (count,) = self._db.execute(
                "SELECT COUNT(*) FROM messages WHERE kind = ?", (TELEMETRY,)
            ).fetchone()
            drop = max(min(int(count), 100), int(count) // 4)
            if drop:
                dropped = self._drop_telemetry(drop)
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            log.error("the spool could not make room on a full disk: %s", exc)
        return dropped

    def _drop_telemetry(self, count: int) -> int:
        """Drop the ``count`` oldest telemetry messages in one transaction, and count them."""
        with self._transaction() as db:
            return _drop_oldest(db, count)

    # -- writing ----------------------------------------------------------------------------

    def append(self, topic: str, build: Callable[[int], bytes], kind: str = TELEMETRY) -> int:
        """Number and store one message in one transaction: ``build(seq)`` makes its payload.
        Past the bound, the oldest telemetry is dropped (never events). Returns the number.

        Raises:
            SpoolFullError: the disk stays full even after the spool made room.
        """
        with self._lock:
            seq = self._writing(lambda: self._append(topic, build, kind))
            if not self._reserve.exists():
                self._take_reserve()
            return seq

    def _writing(self, write: Callable[[], _T]) -> _T:
        """Run one write transaction (holding the lock); on a full disk make room and try once
        more; on a damaged spool replace it and try on the new one.

        Raises:
            SpoolFullError: the disk stays full even after the spool made room.
        """
        for attempt in range(3):
            try:
                return write()
            except sqlite3.OperationalError as exc:
                if not _full(exc):
                    raise
                if attempt:
                    raise SpoolFullError(f"the disk under {self.path} is full") from exc
                dropped = self._make_room()
                log.warning("the disk under the spool is full: dropped the %d oldest "
                            "telemetry message(s) to make room", dropped)  # fmt: skip
            except sqlite3.DatabaseError as exc:
                if not _damaged(exc) or attempt:
                    raise
                self._db.close()
                self._db = self._replace(f"the spool was damaged ({exc})")
                self.epoch, self.lost = self._meta("epoch"), self._meta("lost")
        raise SpoolFullError(f"the spool at {self.path} cannot be written")  # pragma: no cover

    def _append(self, topic: str, build: Callable[[int], bytes], kind: str) -> int:
        with self._transaction() as db:
            seq = int(self._meta("seq")) + 1
            db.execute("UPDATE meta SET value = ? WHERE key = 'seq'", (str(seq),))
            db.execute(
                "INSERT INTO messages (topic, payload, kind, seq, sent) VALUES (?, ?, ?, ?, 0)",
                (topic, build(seq), kind, seq),
            )
            (count,) = db.execute("SELECT COUNT(*) FROM messages").fetchone()
            if int(count) > self.max_messages:
                _drop_oldest(db, int(count) - self.max_messages)
        return seq

    # -- forwarding ---------------------------------------------------------------------------

    def unsent(self, limit: int) -> list[SpooledMessage]:
        """Up to ``limit`` messages to publish, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, topic, payload, kind, seq FROM messages WHERE sent = 0 "
                "ORDER BY id LIMIT ?",
                (limit,),
            ).fetchall()
        return [_message(row) for row in rows]

    def held(self, kind: str, limit: int) -> list[SpooledMessage]:
        """Up to ``limit`` messages of ``kind`` the server has not acknowledged, oldest first
        (the update events the device also delivers over gRPC)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, topic, payload, kind, seq FROM messages WHERE kind = ? "
                "ORDER BY id LIMIT ?",
                (kind, limit),
            ).fetchall()
        return [_message(row) for row in rows]

    def sent(self, ids: Sequence[int]) -> None:
        """The broker acknowledged these messages. Against a server that acknowledges what it
        stored they are kept until it does; otherwise (or without a number) they go now."""
        if not ids:
            return
        with self._lock:
            self._writing(lambda: self._sent(ids))

    def _sent(self, ids: Sequence[int]) -> None:
        with self._transaction() as db:
            if self._meta("acks") == "1":
                generation = int(self._meta("generation"))
                db.executemany(
                    "UPDATE messages SET sent = ? WHERE id = ? AND seq IS NOT NULL",
                    [(generation + 1, i) for i in ids],
                )
                db.executemany(
                    "DELETE FROM messages WHERE id = ? AND seq IS NULL", [(i,) for i in ids]
                )
            else:
                db.executemany("DELETE FROM messages WHERE id = ?", [(i,) for i in ids])

    def unacknowledged(self) -> None:
        """The server no longer acknowledges (a server too old for it, after one that did):
        forget what the broker has, as before acknowledgements, so the spool does not fill."""
        with self._lock:
            self._writing(self._unacknowledged)

    def _unacknowledged(self) -> None:
        with self._transaction() as db:
            db.execute("UPDATE meta SET value = '0' WHERE key = 'acks'")
            db.execute("DELETE FROM messages WHERE sent > 0")

    def acknowledge(self, delivery: Delivery) -> int:
        """The server says what it stored: forget that, send again what it misses (and what
        was sent long ago and is still above what it stored); return how many were forgotten.
        An acknowledgement of another epoch changes nothing.

        Raises:
            SpoolFullError: the disk stays full even after the spool made room.
        """
        if delivery.epoch != self.epoch:
            return 0
        with self._lock:
            return self._writing(lambda: self._acknowledge(delivery))

    def _acknowledge(self, delivery: Delivery) -> int:
        with self._transaction() as db:
            db.execute("UPDATE meta SET value = '1' WHERE key = 'acks'")
            generation = int(self._meta("generation")) + 1
            db.execute("UPDATE meta SET value = ? WHERE key = 'generation'", (str(generation),))
            rows = db.execute(
                "SELECT id, seq, sent FROM messages WHERE seq IS NOT NULL AND seq <= ?",
                (delivery.highest,),
            ).fetchall()
            stored = [(i,) for i, s, _ in rows if delivery.stored(int(s))]
            again = [(i,) for i, s, sent in rows if sent and not delivery.stored(int(s))]
            db.executemany("DELETE FROM messages WHERE id = ?", stored)
            db.executemany("UPDATE messages SET sent = 0 WHERE id = ?", again)
            db.execute(
                "UPDATE messages SET sent = 0 WHERE seq > ? AND sent > 0 AND sent <= ?",
                (delivery.highest, generation + 1 - _RESEND_AFTER_ACKS),
            )
        return len(stored)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; rolled back on any error (SQLite may already have)."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    # -- reading ------------------------------------------------------------------------------

    def floor(self) -> int:
        """The lowest number this spool still holds (the next number when it holds none):
        every number below it was stored by the server or dropped here."""
        with self._lock:
            (low,) = self._db.execute(
                "SELECT MIN(seq) FROM messages WHERE seq IS NOT NULL"
            ).fetchone()
            return int(low) if low is not None else int(self._meta("seq")) + 1

    @property
    def acknowledged(self) -> bool:
        """True once a server acknowledged what it stored: from then on the spool forgets only
        what the server stored or what its bound dropped (before, it forgot at each PUBACK)."""
        with self._lock:
            return self._meta("acks") == "1"

    @property
    def last_seq(self) -> int:
        """The last number given out."""
        with self._lock:
            return int(self._meta("seq"))

    def __len__(self) -> int:
        with self._lock:
            (count,) = self._db.execute("SELECT COUNT(*) FROM messages").fetchone()
        return int(count)

    @property
    def dropped(self) -> int:
        """Telemetry messages dropped to keep the bound or make room, over the spool's life."""
        with self._lock:
            return int(self._meta("dropped"))

    def close(self) -> None:
        with self._lock:
            self._db.close()
