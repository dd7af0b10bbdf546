"""A device's recent log (issue 22 item 8), the parts without processes: the agent's ring keeps
the last records within its bounds and no secret, its tail file carries a crash-looping run's
records to the next run, an upload is read by the server no further than its cap with the text
escaped, the store takes one upload per request and keeps the latest until the device goes
(SQLite and PostgreSQL), and what `edgefleet devices log` prints cannot drive a terminal."""

from __future__ import annotations

import io
import json
import logging
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.logs import Kept, RecentLog, open_tail, parts, select
from agent.logs.redact import redact
from agent.logs.tail import decode, encode
from fleet_server.admin_cli.devlogs import render
from fleet_server.admin_cli.terminal import EscapingStream
from fleet_server.errors import BadRequestError
from fleet_server.registry.ca import IssuedCert
from fleet_server.registry.devlogs import REQUEST_TTL_S, DeviceLogStore, read_upload
from fleet_server.registry.store import DeviceStore
from fleet_server.storage.db import Database
from protos import admin_pb2, device_pb2
from protos.logs import (
    MAX_MESSAGE_CHARS,
    MAX_PART_RECORDS,
    MAX_TRACEBACK_CHARS,
    MAX_UPLOAD_BYTES,
    TAIL_BYTES,
    parse_level,
)


def logger_with(ring: RecentLog, name: str = "agent.test") -> logging.Logger:
    log = logging.getLogger(name)
    log.handlers[:] = [ring]
    log.setLevel(logging.DEBUG)
    log.propagate = False
    return log


def test_the_ring_keeps_the_last_records_within_its_count_and_bytes() -> None:
    ring = RecentLog(records=10, max_bytes=10_000)
    log = logger_with(ring)
    for i in range(25):
        log.info("record %d", i)
    kept, dropped = ring.snapshot()
    assert [k.message for k in kept] == [f"record {i}" for i in range(15, 25)]
    assert dropped == 15
    ring = RecentLog(records=1000, max_bytes=2000)
    log = logger_with(ring)
    for _ in range(100):
        log.warning("x" * 100)
    kept, dropped = ring.snapshot()
    assert sum(k.size for k in kept) <= 2000 and len(kept) == 2000 // kept[0].size
    assert dropped == 100 - len(kept) and all(k.level == logging.WARNING for k in kept)


def test_a_long_message_and_a_deep_traceback_are_cut_keeping_the_error_line() -> None:
    ring = RecentLog()
    log = logger_with(ring)
    log.info("a" * 10_000)

    def chain(n: int) -> None:  # a traceback of 60 causes, each of its own
        try:
            if n:
                chain(n - 1)
            else:
                raise KeyError("the root cause")
        except (KeyError, ValueError) as exc:
            raise ValueError("the actual error" if n == 60 else f"step {n}") from exc

    try:
        chain(60)
    except ValueError:
        log.exception("it failed")
    log.info("bad format %d", "not a number")  # someone's bug: kept, no exception
    (long, failed, bad), _ = ring.snapshot()
    assert len(long.message) < MAX_MESSAGE_CHARS + 64 and "characters cut" in long.message
    assert failed.message.startswith("it failed\nTraceback (most recent call last):")
    assert failed.message.endswith("ValueError: the actual error")
    assert len(failed.message) < len("it failed\n") + MAX_TRACEBACK_CHARS + 64
    assert "characters cut" in failed.message
    assert bad.message.startswith("bad format %d")


def test_secrets_never_reach_a_kept_record() -> None:
    token = "enroll-7f3a9c2e41b8"  # noqa: S105 - a made-up token to keep out
    ring = RecentLog(secrets=lambda: [token, ""])
    log = logger_with(ring)
    log.warning("enrolling with %s failed", token)
    log.error("broker mqtts://dev:hunter2secret@broker:8883 refused")
    log.info("header authorization: Bearer abcdef0123456789")
    log.info("key -----BEGIN EC PRIVATE KEY-----\nMHcCAQEEI\n-----END EC PRIVATE KEY----- loaded")
    log.info("config cloud_token=s3cr3tvalue read")
    text = "\n".join(k.message for k in ring.snapshot()[0])
    for secret in (token, "hunter2secret", "abcdef0123456789", "MHcCAQEEI", "s3cr3tvalue"):
        assert secret not in text
    assert "mqtts://dev:[redacted]@broker:8883" in text
    # Ordinary words stay: short "secrets" are not blanked, nor is the word token alone.
    assert redact("the enrollment token is unknown", ["abc"]) == "the enrollment token is unknown"


def test_the_tail_of_a_killed_run_is_the_next_runs_previous_run(tmp_path: Path) -> None:
    folder = tmp_path / "log"
    tail, started, previous = open_tail(folder, 1000)
    assert (started, previous) == (0, [])
    for i in range(3):
        tail.append(Kept(1000 + i, logging.INFO, "agent", f"first run {i}"))
    # No close: a SIGKILL. What was appended is in the file.
    tail2, started, previous = open_tail(folder, 2000)
    assert started == 1000
    assert [(k.message, k.previous_run) for k in previous] == [
        (f"first run {i}", True) for i in range(3)
    ]
    tail2.close()
    # A run that logged nothing (killed before its first record) keeps the tail before it.
    _tail3, started, previous = open_tail(folder, 3000)
    assert started == 1000 and len(previous) == 3
    modes = {p.name: p.stat().st_mode & 0o777 for p in folder.iterdir()}
    assert set(modes.values()) == {0o600}, modes


def test_the_tail_files_stay_bounded_and_damage_is_skipped(tmp_path: Path) -> None:
    folder = tmp_path / "log"
    tail, _, _ = open_tail(folder, 1)
    for i in range(5000):
        tail.append(Kept(i, logging.ERROR, "agent.loop", f"again {i} " + "y" * 80))
    assert sum(p.stat().st_size for p in folder.iterdir()) <= 2 * TAIL_BYTES
    with (folder / "current.jsonl").open("ab") as f:
        f.write(b'{"t": 1, "l": 20, "n": "agent", "m": "cut by a power fail')  # no newline
    _, _, previous = open_tail(folder, 2)
    assert previous[-1].message.startswith("again 4999 ")
    assert sum(k.size for k in previous) <= TAIL_BYTES
    # Another format or version is not read as ours.
    (folder / "current.jsonl").write_text(json.dumps({"format": "x", "version": 1}) + "\n")
    newer = b'{"format": "edgefleet-agent-log", "version": 2}\n'
    assert decode(newer + encode(previous[0])) is None
    _, _, again = open_tail(folder, 3)
    assert again == previous  # the run before stays the tail


def test_an_upload_holds_the_last_lines_at_the_level_in_bounded_parts() -> None:
    records = [Kept(i, logging.INFO if i % 2 else logging.ERROR, "a", str(i)) for i in range(600)]
    chosen = select(records, lines=450, level=logging.ERROR)
    assert len(chosen) == 300 and chosen[-1].message == "598"
    assert [r.message for r in select(records, lines=3, level=0)] == ["597", "598", "599"]
    messages = list(parts("r1", chosen, started_ms=5, previous_started_ms=4, dropped=7,
                          agent_version="1.0"))  # fmt: skip
    assert [len(m.records) for m in messages] == [MAX_PART_RECORDS, 100]
    assert messages[0].request_id == "r1" and messages[0].dropped == 7
    assert messages[1].request_id == ""
    empty = list(parts("r2", [], started_ms=5, previous_started_ms=0, dropped=0, agent_version=""))
    assert len(empty) == 1 and not empty[0].records


HOSTILE = "ok\x1b[2J\x1b]0;owned\x07\r2026-01-01 00:00:00.000 ERROR    agent: forged\x9b31m"


def test_the_server_reads_an_upload_no_further_than_its_cap_and_escapes_the_text() -> None:
    read_parts = 0

    def endless() -> Iterator[device_pb2.LogUpload]:
        nonlocal read_parts
        while True:  # a hostile device that never ends its stream
            read_parts += 1
            yield device_pb2.LogUpload(
                records=[device_pb2.LogRecord(level=20, message="z" * 2000)] * MAX_PART_RECORDS
            )

    first = device_pb2.LogUpload(request_id="r", agent_version="1\x1b[2J")
    read = read_upload(first, endless())
    assert read.truncated and read.upload.ByteSize() <= MAX_UPLOAD_BYTES + 1024
    assert read_parts <= MAX_UPLOAD_BYTES // (MAX_PART_RECORDS * 2000) + 1
    assert read.upload.agent_version == "1\\x1b[2J"
    hostile = device_pb2.LogUpload(
        request_id="r",
        records=[
            device_pb2.LogRecord(
                unix_ms=2**62, level=10**6, logger="a\x1b[1m", message=f"{HOSTILE}\nx\ty"
            )
        ],
    )
    (record,) = read_upload(hostile, iter(())).upload.records
    assert record.level == 100 and record.logger == "a\\x1b[1m"
    assert record.unix_ms < 2**62  # a time in year 9999 at most
    first_line, second = record.message.split("\n")
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in first_line + second)
    with pytest.raises(BadRequestError, match="at most 200"):
        read_upload(
            device_pb2.LogUpload(records=[device_pb2.LogRecord()] * (MAX_PART_RECORDS + 1)),
            iter(()),
        )


def test_a_printed_log_cannot_drive_the_terminal_or_forge_a_record() -> None:
    # Even text that reached the CLI unescaped (an older server) is escaped on the way out.
    log = admin_pb2.DeviceLog(
        device_id="dev-1",
        request_id="r",
        received_for="r",
        requested_by="alice@ipv4:10.0.0.7:5000",
        lines=200,
        level=20,
        records=[
            device_pb2.LogRecord(
                unix_ms=1, level=20, logger="agent", message="before", previous_run=True
            ),
            device_pb2.LogRecord(unix_ms=2, level=40, logger="agent", message=f"boom\n{HOSTILE}"),
        ],
    )
    summary, lines = render(log)
    assert summary[0].startswith("log of dev-1: 2 record(s)")
    out = io.StringIO()
    stream = EscapingStream(out)
    for line in lines:
        stream.write(line + "\n")
    text = out.getvalue()
    assert "\x1b" not in text and "\r" not in text and "\x07" not in text and "\x9b" not in text
    printed = text.splitlines()
    assert printed[0].startswith("-- the run before of the agent")
    assert printed[2].startswith("-- this run of the agent")
    assert printed[3].endswith("ERROR    agent: boom")
    assert printed[4].startswith("    ok\\x1b[2J")  # the device's second line: indented
    assert render(log, level=parse_level("error"))[1][-2].endswith("agent: boom")
    for odd_ms in (2**63 - 1, -(2**63)):  # times no calendar has: printed, no traceback
        odd = device_pb2.LogRecord(unix_ms=odd_ms, level=20, logger="a", message="m")
        assert render(admin_pb2.DeviceLog(records=[odd]))[1][1].endswith(" INFO     a: m")


@given(st.lists(st.text(max_size=50), max_size=40), st.integers(1, 50), st.integers(0, 60))
def test_select_never_returns_more_than_asked_or_below_the_level(
    messages: list[str], lines: int, level: int
) -> None:
    records = [Kept(i, (i % 5 + 1) * 10, "a", m) for i, m in enumerate(messages)]
    chosen = select(records, lines=lines, level=level)
    assert len(chosen) <= lines and all(r.level >= level for r in chosen)
    assert chosen == [r for r in records if r.level >= level][-lines:]


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    db = Database(db_url)
    db.create_schema()
    yield db
    db.close()


def test_one_upload_per_request_the_latest_kept_and_gone_with_the_device(db: Database) -> None:
    devices, logs = DeviceStore(db), DeviceLogStore(db)
    certify = lambda device_id: IssuedCert(b"pem", secrets.token_hex(8), 2)  # noqa: E731
    for name in ("cam-1", "cam-2"):
        devices.enroll(name, token=None, key_sha256=secrets.token_hex(32), labels={},
                       capabilities={}, certify=certify)  # fmt: skip
    now = int(time.time())
    assert logs.pending("cam-1", now) is None and logs.get("cam-1") is None
    generation = db.generation()
    first = logs.request("cam-1", lines=50, level=30, requested_by="alice@x", now=now)
    assert db.generation() > generation  # cached check-in answers are recomputed
    assert logs.pending("cam-1", now) == first and logs.pending("cam-2", now) is None
    one = read_upload(
        device_pb2.LogUpload(request_id=first.request_id, records=[device_pb2.LogRecord()]),
        iter(()),
    )
    assert not logs.store("cam-2", first.request_id, one, now)  # not cam-2's request
    assert logs.store("cam-1", first.request_id, one, now + 1)
    assert not logs.store("cam-1", first.request_id, one, now + 2)  # once
    assert logs.pending("cam-1", now) is None
    row = logs.get("cam-1")
    assert row is not None and row.received_for == first.request_id and not row.pending(now)
    # A newer request: the last upload stays until the next one replaces it.
    second = logs.request("cam-1", lines=10, level=20, requested_by="bob@y", now=now + 5)
    row = logs.get("cam-1")
    assert row is not None and row.pending(now + 5) and row.upload
    assert row.request.requested_by == "bob@y" and row.received_for == first.request_id
    assert not logs.store("cam-1", first.request_id, one, now + 6)  # the old id is done
    # A request no upload answered in a day is no longer sent.
    assert logs.pending("cam-1", now + 5 + REQUEST_TTL_S + 1) is None
    assert logs.pending("cam-1", now + 5) == second
    # A ghost device's request goes with it.
    logs.request("cam-2", lines=10, level=20, requested_by="bob@y", now=now)
    assert [g.device_id for g in devices.delete_ghosts(enrolled_before=now + 10)] == [
        "cam-1",
        "cam-2",
    ]
    assert logs.get("cam-1") is None and logs.get("cam-2") is None
