"""Review of the PostgreSQL session settings (issue 19): what they leave open, what the retry
log says about them, and what the soak's convergence rule lets pass."""

from __future__ import annotations

import logging
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa

from bench.soak.check import AgentView, Ledger, RolloutRecord, SimView, check
from fleet_server.errors import DataDirError
from fleet_server.simulator import SimDevice
from fleet_server.storage.db import SCHEMA_VERSION, Database
from fleet_server.storage.retrying import RetryLog
from tests.harness import REPO, Server


def _schema(postgres_url: str, prefix: str) -> str:
    schema = f"{prefix}_{secrets.token_hex(4)}"
    engine = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    engine.dispose()
    return schema


def _show(db: Database, *names: str) -> dict[str, str]:
    with db.engine.connect() as conn:
        return {n: str(conn.execute(sa.text(f"SHOW {n}")).scalar()) for n in names}


# ------------------------------------------------------------------ session options


def test_pgoptions_from_the_environment_still_apply(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # libpq reads PGOPTIONS only when the connection passes no options; the server now always
    # passes its own, so a deployment that chose its schema with PGOPTIONS silently connected
    # to "public", found no tables and created an empty fleet there.
    schema = _schema(postgres_url, "env")
    monkeypatch.setenv("PGOPTIONS", f"-c search_path={schema} -c lock_timeout=0")
    db = Database(postgres_url)
    try:
        shown = _show(db, "search_path", "lock_timeout", "idle_in_transaction_session_timeout")
    finally:
        db.close()
    # The environment's options come after ours, as a URL's do: a setting repeated wins.
    assert shown == {"search_path": schema, "lock_timeout": "0",
                     "idle_in_transaction_session_timeout": "30s"}  # fmt: skip


def test_a_url_with_options_of_its_own_still_wins_over_pgoptions(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ours, theirs = _schema(postgres_url, "url"), _schema(postgres_url, "env")
    monkeypatch.setenv("PGOPTIONS", f"-c search_path={theirs}")
    db = Database(f"{postgres_url}?options=-csearch_path%3D{ours}%20-clock_timeout%3D5s")
    try:
        assert _show(db, "search_path", "lock_timeout") == {"search_path": ours,
                                                            "lock_timeout": "5s"}  # fmt: skip
    finally:
        db.close()


def test_a_migration_that_waits_past_the_lock_timeout_says_so_and_can_be_run_again(
    postgres_url: str,
) -> None:
    # A server starting with a migration to do while another session holds what it changes
    # (another replica of the older version mid-transaction): lock_timeout now ends the wait,
    # and the server died with a driver traceback instead of a message.
    schema = _schema(postgres_url, "migrate")
    url = f"{postgres_url}?options=-csearch_path%3D{schema}"
    db = Database(url)
    db.create_schema()
    db.close()
    holder = sa.create_engine(url)  # without the server's session options
    with holder.connect() as held:
        held.execute(
            sa.text("UPDATE schema_meta SET value = :v WHERE key = 'schema_version'"),
            {"v": str(SCHEMA_VERSION - 1)},
        )
        held.commit()
        # The other session: the row the last step writes, locked (its own migration, say).
        held.execute(sa.text("SELECT * FROM schema_meta FOR UPDATE")).all()
        starting = Database(f"{url}%20-clock_timeout%3D1s")
        try:
            with pytest.raises(DataDirError, match="lock timeout") as refused:
                starting.create_schema()
        finally:
            starting.close()
        assert f"from schema version {SCHEMA_VERSION - 1}" in str(refused.value)
        held.rollback()
    holder.dispose()
    again = Database(url)
    try:
        again.create_schema()  # nothing half-done was kept
        with again.engine.connect() as conn:
            version = conn.execute(
                sa.text("SELECT value FROM schema_meta WHERE key = 'schema_version'")
            ).scalar()
        assert version == str(SCHEMA_VERSION)
    finally:
        again.close()


FROZEN_READER = r"""
import os, signal, sys
import sqlalchemy as sa
from fleet_server.errors import DataDirError
from fleet_server.storage.db import SCHEMA_VERSION, Database

db = Database(sys.argv[1])
conn = db.engine.connect()
conn.begin()
conn.execute(sa.text("UPDATE devices SET last_seen = 0 WHERE device_id = :d"), {"d": sys.argv[2]})
# A result bigger than the sockets hold, asked for and never read: frozen mid-statement.
raw = conn.connection.driver_connection
raw.pgconn.send_query(b"SELECT repeat('x', 1000) FROM generate_series(1, 200000)")
raw.pgconn.flush()
print("locked", flush=True)
os.kill(os.getpid(), signal.SIGSTOP)
"""


@pytest.mark.slow
def test_a_replica_frozen_while_reading_a_result_loses_its_locks(
    server_factory: Callable[..., Server], broker_url: str, postgres_url: str
) -> None:
    # idle_in_transaction_session_timeout ends a session waiting for its client's next
    # statement. A client frozen (or cut off) while PostgreSQL sends it a result leaves the
    # session active, blocked writing (ClientWrite): no timeout of PG_SESSION_OPTIONS ended it,
    # and it held its row locks for as long as the client stayed frozen (checked: 40 s of 40).
    schema = _schema(postgres_url, "reader")
    url = f"{postgres_url}?options=-csearch_path%3D{schema}"
    db = Database(url)
    try:
        user_timeout = _show(db, "tcp_user_timeout")["tcp_user_timeout"]
    finally:
        db.close()
    assert user_timeout != "0", "nothing bounds a session blocked writing to a frozen client"

    # At test speed: the URL's options shorten every bound.
    fast = url + ("%20-cidle_in_transaction_session_timeout%3D2s%20-clock_timeout%3D1s"
                  "%20-ctcp_user_timeout%3D3000")  # fmt: skip
    server = server_factory(broker_url, db_url=fast)
    device = SimDevice.enroll(server.sim_fleet(), server.enrollment_token(), "d0")
    frozen = subprocess.Popen([sys.executable, "-c", FROZEN_READER, fast, device.device_id],
                              stdout=subprocess.PIPE, cwd=REPO)  # fmt: skip
    try:
        assert frozen.stdout is not None and frozen.stdout.readline() == b"locked\n"
        started = time.monotonic()
        time.sleep(2.5)  # past the idle timeout: the session is not idle, it is writing
        probe = Database(postgres_url)
        with probe.engine.connect() as conn:
            states = conn.execute(
                sa.text(
                    "SELECT state, wait_event FROM pg_stat_activity WHERE query LIKE "
                    "'SELECT repeat%' AND pid <> pg_backend_pid()"
                )
            ).all()
        probe.close()
        assert [tuple(s) for s in states] == [("active", "ClientWrite")], states
        answers: list[Any] = []
        while time.monotonic() - started < 30:
            result = server.admin("devices", "label", device.device_id, "site=a", check=False)
            answers.append(result.returncode == 0 or result.stderr.strip())
            if result.returncode == 0:
                break
        waited = time.monotonic() - started
        assert answers[-1] is True, answers
        assert all("busy or unreachable" in str(a) for a in answers[:-1]), answers
        assert waited < 15, f"done only after {waited:.1f} s: {answers}"
    finally:
        frozen.kill()
        frozen.wait(10)
    device.close()


# ------------------------------------------------------------------ the retry log


def test_a_session_ended_idle_in_transaction_is_one_line_in_the_retry_log(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # What a replica's loops meet after it was frozen mid-transaction: PostgreSQL ended the
    # session (SQLSTATE 25P03, an InternalError in psycopg, not an OperationalError).
    db = Database(f"{postgres_url}?options=-cidle_in_transaction_session_timeout%3D300ms")
    try:
        with pytest.raises(sa.exc.DBAPIError) as ended, db.engine.begin() as conn:
            conn.execute(sa.text("SELECT 1"))
            time.sleep(1.0)
            conn.execute(sa.text("SELECT 2"))
        assert ended.value.connection_invalidated
        retry = RetryLog(logging.getLogger("review"), "move the rollouts on")
        with caplog.at_level(logging.INFO, logger="review"):
            try:
                raise ended.value
            except sa.exc.DBAPIError as exc:
                retry.failed(exc)
        [record] = caplog.records
        assert record.exc_info is None, "a traceback for a database outage"
        assert "unreachable or busy" in record.getMessage()
        assert "idle-in-transaction timeout" in record.getMessage()
        # The pool keeps no broken connection: the next transaction works.
        with db.engine.begin() as conn:
            assert conn.execute(sa.text("SELECT 3")).scalar() == 3
    finally:
        db.close()


def test_a_failure_that_is_no_outage_keeps_its_traceback_once_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    retry = RetryLog(logging.getLogger("review"), "record check-ins", every_s=0.3)
    with caplog.at_level(logging.INFO, logger="review"):
        for _ in range(3):
            try:
                raise KeyError("a bug")
            except KeyError as exc:
                retry.failed(exc)
        time.sleep(0.4)
        try:
            raise KeyError("the bug again")
        except KeyError as exc:
            retry.failed(exc)
        retry.succeeded()
    traced = [r for r in caplog.records if r.exc_info]
    assert len(traced) == 2 and "works again after 4 failure(s)" in caplog.text


def test_a_database_that_refuses_now_and_then_is_one_line_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Lock timeouts or deadlocks under load: the step fails and works by turns. Each success
    # reset the minute, so every flap logged a warning and a "works again" line.
    retry = RetryLog(logging.getLogger("review"), "record check-ins")
    busy = sa.exc.OperationalError("UPDATE devices", {}, Exception("deadlock detected"))
    with caplog.at_level(logging.INFO, logger="review"):
        for _ in range(10):
            try:
                raise busy
            except sa.exc.OperationalError as exc:
                retry.failed(exc)
            retry.succeeded()
    assert [r.levelname for r in caplog.records] == ["WARNING", "INFO"], caplog.text


# ------------------------------------------------------------------ the soak's rule


def _view(target: str) -> AgentView:
    return AgentView(
        name="soak-agent-0", device_id="soak-agent-0", spool_epoch="e" * 16, spool_seq=10,
        spool_dropped=0, spooled_seqs=(), spool_bound=2000,
        ledger=Ledger("e" * 16, 10, (), 10, 0, 0, "ledger"), served_version=target,
        journal_version=target, artifact_ok=True, expected_sha_ok=True, server_version=target,
        server_state="INSTALLED", server_active=target, target=target, staging_bytes=0,
    )  # fmt: skip


def _judge(target: str, rollouts: list[RolloutRecord]) -> list[str]:
    sims = [SimView("sim-1", target, target, "INSTALLED", target, target)]
    out = check([_view(target)], sims, rollouts, [], bad_versions={"1.1.0"},
                largest_artifact=1000, faults={}, convergence_s=5.0)  # fmt: skip
    return [f"{v.invariant}: {v.cause}" for v in out.violations]


def test_a_rollout_that_never_ends_fails_the_soak() -> None:
    # The stall f0757a4 fixed (a row held for minutes): rollouts time out and are aborted, the
    # devices stay where the server keeps them, and every device agrees with the server.
    stalled = [
        RolloutRecord(1, "1.2.0", bad=False, outcome="completed", seconds=9.0),
        RolloutRecord(2, "1.3.0", bad=False, outcome="aborted (timed out)", seconds=150),
        RolloutRecord(3, "1.1.0", bad=True, outcome="aborted (timed out)", seconds=150),
    ]
    assert _judge("1.2.0", stalled) == [
        "rollout-ended: good release 1.3.0 aborted (timed out) after 150 s",
        "rollout-ended: bad release 1.1.0 aborted (timed out) after 150 s",
    ]


def test_the_server_asking_less_than_the_completed_release_fails_the_soak() -> None:
    # A completed rollout that never reached some devices (late joiners left out, say): they
    # run the old deployment, the server asks them for it and knows it. The server's own
    # targets agree with themselves; the harness's record says 1.2.0 reached every device.
    done = [
        RolloutRecord(1, "1.2.0", bad=False, outcome="completed", seconds=9.0),
        RolloutRecord(2, "1.1.0", bad=True, outcome="rolled-back", seconds=9.0),
    ]
    assert _judge("1.0.0", done) == [
        "targets: the server asks 1.0.0 of 2, not 1.2.0, whose rollout completed and was the "
        "last to change the fleet"
    ]
    assert _judge("1.2.0", done) == []
