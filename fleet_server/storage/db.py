"""The database engine and connections: SQLite by default, PostgreSQL for several replicas.

The schema carries a version in ``schema_meta``. A new database is created by ``create_all`` at
the current version; an older one is brought up to date by the steps in
:mod:`fleet_server.storage.migrations`, each in its own transaction. The queries live with
their concerns (``registry``, ``catalog``, ``rollouts``, ``routing``, ``telemetry``,
``audit``), each a store over this engine; every store method is one short transaction.
"""

from __future__ import annotations

import operator
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine

from agent.terminal import printable
from fleet_server.errors import DataDirError
from fleet_server.storage.migrations import MIGRATIONS
from fleet_server.storage.schema import SCHEMA_VERSION, fleet_state, metadata, schema_meta

__all__ = [
    "PG_SESSION_OPTIONS",
    "SCHEMA_VERSION",
    "Database",
    "add_rows",
    "bump_generation",
    "hold_writes",
    "stored_text",
]


def stored_text(value: str, limit: int) -> str:
    """A device's string as stored: at most ``limit`` characters, every control character shown
    escaped (``\\x1b``; newlines too) and a backslash as two, so an escape the device wrote
    itself cannot pass for one made here. What a device says reaches terminals and pages: it
    must not clear a screen, set a terminal's title or start a forged line. NUL, which
    PostgreSQL refuses in text (one refused row would make every retry of its batch fail), is
    dropped. A cut never ends inside an escape."""
    value = value.replace("\x00", "")[:limit]  # an escape is never shorter than its character
    escaped = str(printable(value.replace("\\", "\\\\")))
    keep = len(value)
    while len(escaped) > limit:  # drop whole characters of the value until its escape fits
        keep -= max(1, (len(escaped) - limit) // 6)
        escaped = str(printable(value[:keep].replace("\\", "\\\\")))
    return escaped


def hold_writes(conn: sa.Connection) -> None:
    """Make the caller's transaction the database's only writer from now until it ends, so
    what it reads next cannot change under it before it writes.

    SQLite ignores ``FOR UPDATE``, and its driver only begins a transaction at the first write,
    so a read-then-write there reads outside the transaction: this write (of nothing new)
    begins it with the write lock. PostgreSQL needs nothing here; lock rows with
    ``FOR UPDATE`` instead.
    """
    if conn.dialect.name == "sqlite":
        conn.execute(
            fleet_state.update()
            .where(fleet_state.c.id == 1)
            .values(generation=fleet_state.c.generation)
        )


def bump_generation(conn: sa.Connection) -> None:
    """Invalidate every server's cached check-in answers (in the caller's transaction)."""
    conn.execute(
        fleet_state.update()
        .where(fleet_state.c.id == 1)
        .values(generation=fleet_state.c.generation + 1)
    )


def add_rows(
    conn: sa.Connection,
    table: sa.Table,
    rows: Sequence[dict[str, Any]],
    *,
    combine: Mapping[str, Callable[[Any, Any], Any]] | None = None,
) -> None:
    """Upsert by adding, in one statement per batch (INSERT ... ON CONFLICT DO UPDATE, which
    SQLite and PostgreSQL both have): a row whose primary key exists gets each column's new
    value added, or for a column in ``combine``, ``combine[name](stored, new)``. Replicas
    writing the same key at once both succeed."""
    if not rows:
        return
    from sqlalchemy.dialects import postgresql, sqlite  # noqa: PLC0415

    inserts: dict[str, Any] = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}
    if conn.dialect.name not in inserts:
        raise DataDirError(f"{conn.dialect.name} is not supported (SQLite or PostgreSQL)")
    statement = inserts[conn.dialect.name](table)
    key = [c.name for c in table.primary_key.columns]
    combine = combine or {}
    values = {
        name: combine.get(name, operator.add)(table.c[name], statement.excluded[name])
        for name in rows[0]
        if name not in key
    }
    conn.execute(statement.on_conflict_do_update(index_elements=key, set_=values), list(rows))


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


# PostgreSQL: give up connecting after 10 s, and notice a dead server on an idle connection
# within about a minute (TCP keepalives), instead of a thread waiting for ever.
#
# And on the database's side (PG_SESSION_OPTIONS): a session left idle inside a transaction is
# ended after 30 s, which releases the rows it locked; a statement waits at most 20 s for a
# lock, then fails (the API answers UNAVAILABLE and the caller retries); the database notices
# a vanished client within about a minute. Without them, a server replica frozen, killed
# behind a silent link or partitioned in the middle of a transaction kept its row locks for
# as long as the database's TCP stack believed in it (2 hours by default): in issue 19's soak
# one such session held a device's row for 4 minutes, and every check-in, telemetry write and
# rollout creation of the fleet queued behind it. A session whose client froze or vanished
# while PostgreSQL was sending it a result is not idle but blocked writing, and no timeout
# above ends it (the frozen client's kernel keeps acknowledging with a zero window):
# tcp_user_timeout closes a connection whose data stays unacknowledged for 60 s. A URL's own
# query parameters win (its ``options`` come after these, so a setting it repeats overrides
# ours); without them, PGOPTIONS from the environment does, as libpq would apply it alone.
PG_SESSION_OPTIONS = (
    "-c idle_in_transaction_session_timeout=30s -c lock_timeout=20s "
    "-c tcp_keepalives_idle=30 -c tcp_keepalives_interval=10 -c tcp_keepalives_count=3 "
    "-c tcp_user_timeout=60000"
)
_PG_CONNECT = {"connect_timeout": 10, "keepalives": 1, "keepalives_idle": 30,
               "keepalives_interval": 10, "keepalives_count": 3,
               "options": PG_SESSION_OPTIONS}  # fmt: skip


def _connect_args(url: sa.engine.URL) -> dict[str, Any]:
    if url.get_backend_name() != "postgresql":
        return {}
    args = {k: v for k, v in _PG_CONNECT.items() if k not in url.query}
    # libpq reads PGOPTIONS only when no options are passed, and ours always are.
    given = url.query.get("options") or os.environ.get("PGOPTIONS")
    if given:
        given = " ".join(given) if isinstance(given, tuple) else given
        args["options"] = f"{PG_SESSION_OPTIONS} {given}"
    return args


class Database:
    """The engine, the schema's creation and migration, and the fleet generation."""

    def __init__(self, url: str) -> None:
        # As many pooled connections as the server has RPC threads: opening a connection per
        # call (the pool's overflow) costs more than most queries.
        try:
            parsed = sa.engine.make_url(url)
            self.engine: Engine = sa.create_engine(
                parsed,
                future=True,
                pool_size=20,
                max_overflow=10,
                connect_args=_connect_args(parsed),
            )
        except sa.exc.ArgumentError as exc:
            raise DataDirError(f"the database URL does not parse: {exc}") from exc
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._generation: tuple[float, int] | None = None
        # A write here may have bumped the generation: read it again next time, so this
        # process never answers from a cache its own change made stale (other replicas notice
        # within the max age their callers allow).
        event.listen(self.engine, "commit", self._forget_generation)

    def _forget_generation(self, _conn: Any) -> None:
        self._generation = None

    def create_schema(self) -> None:
        """Create the tables (idempotent) and record the schema version.

        Raises:
            DataDirError: the database holds a schema of another version, or cannot be
                reached.
        """
        try:
            with self.engine.begin() as conn:
                fresh = not sa.inspect(conn).has_table("schema_meta")
        except sa.exc.OperationalError as exc:
            where = self.engine.url.render_as_string(hide_password=True)
            reason = (str(exc.orig).splitlines() or ["?"])[0]
            raise DataDirError(f"cannot reach the database {where}: {reason}") from exc
        if fresh:
            metadata.create_all(self.engine)
            with self.engine.begin() as conn:
                conn.execute(
                    schema_meta.insert().values(key="schema_version", value=str(SCHEMA_VERSION))
                )
                conn.execute(fleet_state.insert().values(id=1, generation=1))
            return
        with self.engine.begin() as conn:
            row = conn.execute(
                sa.select(schema_meta.c.value).where(schema_meta.c.key == "schema_version")
            ).first()
        version = int(row[0]) if row is not None else 0
        if version > SCHEMA_VERSION:
            raise DataDirError(
                f"database schema version {version} is newer than this server's "
                f"{SCHEMA_VERSION}; upgrade the server"
            )
        while version < SCHEMA_VERSION:
            step = MIGRATIONS.get(version)
            if step is None:
                raise DataDirError(f"no migration from database schema version {version}")
            try:
                with self.engine.begin() as conn:
                    step(conn)
                    conn.execute(
                        schema_meta.update()
                        .where(schema_meta.c.key == "schema_version")
                        .values(value=str(version + 1))
                    )
            except sa.exc.OperationalError as exc:
                # PostgreSQL's lock_timeout (55P03): another session (a replica of the older
                # version mid-transaction, a long query) held what the step changes. The
                # step is rolled back whole; anything else keeps its traceback.
                if getattr(exc.orig, "sqlstate", None) != "55P03":
                    raise
                reason = (str(exc.orig).splitlines() or ["?"])[0]
                raise DataDirError(
                    f"cannot migrate the database from schema version {version}: {reason}; "
                    "the step was rolled back: start the server again (another session, "
                    "such as a replica of an older version, held the tables it changes)"
                ) from exc
            version += 1

    def close(self) -> None:
        """Release connections."""
        self.engine.dispose()

    def generation(self, max_age_s: float = 0.0) -> int:
        """The fleet state generation (see ``fleet_state``), read at most ``max_age_s`` ago."""
        now = time.monotonic()
        cached = self._generation
        if cached is not None and now - cached[0] <= max_age_s:
            return cached[1]
        with self.engine.connect() as conn:
            value = int(
                conn.execute(
                    sa.select(fleet_state.c.generation).where(fleet_state.c.id == 1)
                ).scalar_one()
            )
        self._generation = (now, value)
        return value
