"""Store and forward: every MQTT message the agent sends goes through a bounded on-disk spool.

Messages are appended to a SQLite file in the state dir before they are published and deleted
only once the broker acknowledged them (QoS 1 PUBACK), so a broker outage, a network cut or an
agent restart loses nothing: the spool is replayed in order on reconnect. The spool is bounded;
past the bound the oldest *telemetry* is dropped first, and counted; events (update state
changes) are never dropped.

Sequence numbers live here too: they grow across restarts, and the spool's random epoch tells
the server when a device lost its state dir and started counting again.
"""

from __future__ import annotations

import secrets
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Spool", "SpooledMessage"]

TELEMETRY = "telemetry"
EVENT = "event"


@dataclass(frozen=True)
class SpooledMessage:
    id: int
    topic: str
    payload: bytes
    kind: str


class Spool:
    """A bounded, durable FIFO of messages (thread-safe)."""

    def __init__(self, path: Path, *, max_messages: int = 10_000) -> None:
        self.path = path
        self.max_messages = max_messages
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across crashes
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS messages (id INTEGER PRIMARY KEY AUTOINCREMENT, "
            "topic TEXT NOT NULL, payload BLOB NOT NULL, kind TEXT NOT NULL)"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
        )
        self._db.execute("INSERT OR IGNORE INTO meta VALUES ('epoch', ?)", (secrets.token_hex(8),))
        self._db.execute("INSERT OR IGNORE INTO meta VALUES ('seq', '0')")
        self._db.execute("INSERT OR IGNORE INTO meta VALUES ('dropped', '0')")
        self.epoch = self._meta("epoch")

    def _meta(self, key: str) -> str:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return str(row[0])

    def next_seq(self) -> int:
        """The next sequence number (persisted: it never goes back, even across restarts)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                seq = int(self._meta("seq")) + 1
                self._db.execute("UPDATE meta SET value = ? WHERE key = 'seq'", (str(seq),))
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # SQLite already rolled back after SQLITE_FULL
                    self._db.execute("ROLLBACK")
                raise
        return seq

    def append(self, topic: str, payload: bytes, kind: str = TELEMETRY) -> None:
        """Store a message; past the bound, drop the oldest telemetry (never events)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "INSERT INTO messages (topic, payload, kind) VALUES (?, ?, ?)",
                    (topic, payload, kind),
                )
                (count,) = self._db.execute("SELECT COUNT(*) FROM messages").fetchone()
                excess = int(count) - self.max_messages
                if excess > 0:
                    cursor = self._db.execute(
                        "DELETE FROM messages WHERE id IN (SELECT id FROM messages "
                        "WHERE kind = ? ORDER BY id LIMIT ?)",
                        (TELEMETRY, excess),
                    )
                    self._db.execute(
                        "UPDATE meta SET value = CAST(value AS INTEGER) + ? WHERE key = 'dropped'",
                        (cursor.rowcount,),
                    )
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # SQLite already rolled back after SQLITE_FULL
                    self._db.execute("ROLLBACK")
                raise

    def oldest(self, limit: int) -> list[SpooledMessage]:
        """Up to ``limit`` messages, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, topic, payload, kind FROM messages ORDER BY id LIMIT ?", (limit,)
            ).fetchall()
        return [SpooledMessage(int(i), str(t), bytes(p), str(k)) for i, t, p, k in rows]

    def remove(self, ids: list[int]) -> None:
        """Forget messages the broker acknowledged."""
        if not ids:
            return
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany("DELETE FROM messages WHERE id = ?", [(i,) for i in ids])
            self._db.execute("COMMIT")

    def __len__(self) -> int:
        with self._lock:
            (count,) = self._db.execute("SELECT COUNT(*) FROM messages").fetchone()
        return int(count)

    @property
    def dropped(self) -> int:
        """Telemetry messages dropped to keep the bound, over the spool's life."""
        with self._lock:
            return int(self._meta("dropped"))

    def close(self) -> None:
        with self._lock:
            self._db.close()
