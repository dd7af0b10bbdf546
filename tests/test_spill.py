"""The ingest's spill file (issue 19 item 5) on its own: bounds in messages and bytes, arrival
order across a restart, a damaged file moved aside, a full disk refused without an exception.
The ingest around it is tested with real servers in test_spill_server.py."""

from __future__ import annotations

import queue
import sqlite3
import stat
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleet_server.telemetry.spill import Spill, SpillBounds, room, spill_wanted
from fleet_server.telemetry.spillway import Spillway
from tests.harness import fill_disk, small_disk


@given(
    st.integers(1, 50),
    st.integers(1, 5000),
    st.integers(0, 60),
    st.lists(st.integers(0, 400), max_size=80),
)
def test_room_is_the_longest_prefix_within_both_bounds(
    max_messages: int, max_bytes: int, held: int, sizes: list[int]
) -> None:
    bounds = SpillBounds(max_messages, max_bytes)
    size = 0
    fits = room(bounds, held, size, sizes)
    assert held + fits <= max_messages or fits == 0
    assert sum(sizes[:fits]) <= max_bytes
    if fits < len(sizes):  # the next one would break a bound
        assert held + fits + 1 > max_messages or sum(sizes[: fits + 1]) > max_bytes


def test_the_spill_is_on_by_default_only_where_the_broker_cannot_hold_messages() -> None:
    assert spill_wanted("auto", receive_window=False)  # the embedded 3.1.1 broker
    assert not spill_wanted("auto", receive_window=True)  # mosquitto, MQTT v5
    assert spill_wanted("on", receive_window=True)
    assert not spill_wanted("off", receive_window=False)
    with pytest.raises(ValueError, match="auto, on or off"):
        spill_wanted("maybe", receive_window=False)


def _rows(spill: Spill, count: int, size: int = 100) -> list[tuple[int, str, bytes]]:
    return [(spill.number(), "t/x", bytes([i % 256]) * size) for i in range(count)]


def test_rows_come_back_in_arrival_order_after_a_restart_and_numbers_stay_unique(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ingest-spill.db"
    spill = Spill(path)
    first = _rows(spill, 5)
    later = _rows(spill, 5)
    assert spill.append(later) == 5
    assert spill.append(first) == 5  # a batch the writer gave up on, older than the rest
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    spill.close()  # as a kill -9 leaves it: committed rows only

    again = Spill(path)
    assert (again.messages, again.bytes) == (10, 10 * (3 + 100))
    head = again.head(7)
    assert [r[0] for r in head] == [r[0] for r in first + later][:7]
    again.delete(head)
    assert again.number() > max(r[0] for r in first + later)
    rest = again.head(100)
    assert [r[0] for r in rest] == [r[0] for r in later[2:]]
    again.delete(rest)
    assert (again.messages, again.bytes, again.drained) == (0, 0, 10)


def test_one_process_at_a_time_uses_a_spill(tmp_path: Path) -> None:
    """Two servers on one data dir would store and delete each other's rows."""
    path = tmp_path / "ingest-spill.db"
    first = Spill(path)
    with pytest.raises(OSError, match="in use by another server process"):
        Spill(path)  # flock: another open file description, as another process has
    first.close()
    Spill(path).close()


def test_past_either_bound_messages_are_refused_and_counted(tmp_path: Path) -> None:
    spill = Spill(tmp_path / "s.db", SpillBounds(messages=10, bytes=1000))
    assert spill.append(_rows(spill, 8, size=50)) == 8
    assert spill.append(_rows(spill, 5, size=50)) == 2  # the 11th message would break it
    assert spill.refused == {"bound": 3, "disk": 0}
    bytes_bound = Spill(tmp_path / "b.db", SpillBounds(messages=1000, bytes=1000))
    assert bytes_bound.append(_rows(bytes_bound, 20, size=97)) == 10  # 100 bytes each
    assert bytes_bound.bytes == 1000


def test_a_damaged_file_is_moved_aside_and_replaced(tmp_path: Path) -> None:
    path = tmp_path / "ingest-spill.db"
    path.write_bytes(b"this is not a database" * 100)
    spill = Spill(path)
    assert spill.quarantined == 1
    assert (tmp_path / "ingest-spill.db.damaged").read_bytes().startswith(b"this is not")
    assert spill.append(_rows(spill, 3)) == 3
    spill.close()
    # A real SQLite file of another format is not read as ours either.
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE spill (n INTEGER PRIMARY KEY)")
        db.execute("PRAGMA user_version=99")
    assert Spill(other).quarantined == 1


def test_a_file_damaged_in_its_pages_is_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "ingest-spill.db"
    spill = Spill(path)
    spill.append(_rows(spill, 2000, size=200))
    spill.close()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray(path.read_bytes())
    data[8192:16384] = b"\xff" * 8192  # pages in the middle of the table
    path.write_bytes(bytes(data))
    again = Spill(path)
    assert again.quarantined == 1
    assert again.messages == 0


@pytest.mark.slow  # mounts a tmpfs
def test_a_full_disk_refuses_without_an_exception_and_the_spill_goes_on(tmp_path: Path) -> None:
    with small_disk(tmp_path / "small", "2m") as mount:
        spill = Spill(mount / "ingest-spill.db")
        filler = fill_disk(mount)
        taken = sum(spill.append(_rows(spill, 100, size=1000)) for _ in range(50))
        assert spill.refused["disk"] > 0
        assert spill.messages == taken
        held = spill.head(10_000)
        assert len(held) == taken
        filler.unlink()
        assert spill.append(_rows(spill, 10)) == 10  # room again: it goes on
        spill.delete(spill.head(100_000))
        assert spill.messages == 0
        spill.close()


@pytest.mark.parametrize("bound", [1_000_000, 300])
def test_the_spillway_stores_and_acknowledges_each_message_once_across_an_outage(
    tmp_path: Path, bound: int
) -> None:
    """The router and the writer on their threads, with a database that fails for a while
    (the callbacks stand in for the ingest's store: the spill and the threads are real). Every
    message is stored once and acknowledged once, whether it went direct, through the spill,
    or, past the spill's bound, waited for the database in the writer's hands; the ones the
    spill refused (past its bound) wait in memory for the writer, counted, and are stored
    once the database is back too."""
    spill = Spill(tmp_path / "s.db", SpillBounds(messages=bound))
    source: queue.Queue[tuple[str, bytes, int, int] | None] = queue.Queue()
    stored: list[str] = []
    acked: list[int] = []
    down = threading.Event()
    down.set()

    def attempt(items: list[tuple[str, bytes]]) -> bool:
        if down.is_set():
            time.sleep(0.005)
            return False
        stored.extend(t for t, _p in items)
        return True

    def persist(items: list[tuple[str, bytes]], stopping: bool) -> None:
        while down.is_set() and not stopping:
            time.sleep(0.005)
        stored.extend(t for t, _p in items)

    way = Spillway(
        spill, source, attempt=attempt, persist=persist,
        acknowledge=lambda sent: acked.extend(mid for mid, _c in sent),
        dequeued=lambda _item: None, idle=lambda: None, final=lambda: None,
        batch=50, idle_s=0.05,
    )  # fmt: skip
    threads = [threading.Thread(target=way.route), threading.Thread(target=way.drain)]
    for thread in threads:
        thread.start()
    for i in range(1, 2001):
        source.put((f"t/{i}", b"x" * 20, i, 1))
    deadline = time.monotonic() + 60
    while spill.spilled < min(bound, 1900) and time.monotonic() < deadline:
        time.sleep(0.01)
    down.clear()  # the database is back
    for i in range(2001, 3001):
        source.put((f"t/{i}", b"x" * 20, i, 1))
    source.put(None)
    for thread in threads:
        thread.join(60)
    assert not any(t.is_alive() for t in threads)
    assert len(stored) == len(set(stored)), "a message stored twice"
    assert sorted(acked) == sorted(int(t[2:]) for t in stored), "acknowledged != stored"
    assert len(stored) == 3000
    assert spill.messages == 0
    assert spill.spilled == spill.drained > 0
    if bound == 300:
        assert spill.refused["bound"] > 0
    else:
        assert spill.refused["bound"] == 0


@pytest.mark.slow  # mounts a tmpfs
def test_a_full_disk_while_draining_hands_out_each_row_once_and_deletes_them_later(
    tmp_path: Path,
) -> None:
    """The database is back but the spill's disk is full: deleting a stored row needs room
    in the write-ahead log too. A row stored from the spill must not be handed out again:
    the writer would store the same rows again and again for as long as the disk stays full
    (each time counted as duplicates, the database busy with them, the spill never empty)."""
    with small_disk(tmp_path / "small", "8m") as mount:
        path = mount / "ingest-spill.db"
        spill = Spill(path)
        spilled: list[int] = []
        for _ in range(20):
            rows = _rows(spill, 100, size=1000)
            assert spill.append(rows) == 100
            spilled += [r[0] for r in rows]
        filler = fill_disk(mount)
        handed: list[int] = []
        for _ in range(50):
            head = spill.head(500)
            if not head:
                break
            handed += [r[0] for r in head]
            spill.delete(head)  # stored: the database committed them
        assert sorted(handed) == spilled, "a spilled row handed out twice, or not at all"
        assert (spill.messages, spill.drained) == (0, len(spilled))
        filler.unlink()
        assert spill.append(_rows(spill, 1)) == 1  # room again: the stored rows go
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            assert db.execute("SELECT count(*) FROM spill").fetchone()[0] == 1
        spill.close()


@pytest.mark.slow  # waits out SQLite's 5 s busy timeout
def test_a_lock_another_program_holds_is_not_taken_for_damage(tmp_path: Path) -> None:
    """An operator's sqlite3 shell (or a backup tool) holding the spill's write lock makes an
    append fail with 'database is locked'. That is no damage: the file, with every message
    the broker was told is safe, must stay where it is; the new messages are refused."""
    path = tmp_path / "ingest-spill.db"
    spill = Spill(path)
    assert spill.append(_rows(spill, 50)) == 50
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    assert spill.append(_rows(spill, 10)) == 0
    assert spill.quarantined == 0
    assert not (tmp_path / "ingest-spill.db.damaged").exists()
    assert spill.refused["disk"] == 10
    other.execute("ROLLBACK")
    other.close()
    assert spill.messages == 50
    assert len(spill.head(100)) == 50
    assert spill.append(_rows(spill, 10)) == 10
    spill.close()


@pytest.mark.xfail(
    strict=True,
    reason="design decision: the spill has no per-device share. The guard's per-device rate "
    "bound (guard.py) is applied when a message is stored, after it was spilled and "
    "acknowledged, so during an outage one enrolled device flooding small reports (the "
    "broker bounds bytes, 1 MiB/s: ~17,000 reports/s) fills the whole spill in about a minute "
    "and every other device's reports are refused by it (left unacknowledged, sent again "
    "later). A share (e.g. one spool's worth, 10,000 messages a device, counted by topic and "
    "rebuilt at open) would bound it; its size is for the lead to choose.",
)
def test_one_device_cannot_fill_the_spill_for_every_other_device(tmp_path: Path) -> None:
    spill = Spill(tmp_path / "s.db", SpillBounds(messages=1000))
    hostile = "edgefleet/v1/default/hostile/telemetry"
    spill.append([(spill.number(), hostile, b"x" * 40) for _ in range(1500)])
    victim = [(spill.number(), "edgefleet/v1/default/victim/telemetry", b"y" * 40)]
    assert spill.append(victim) == 1, "one device's flood refuses another device's report"


@pytest.mark.slow  # mounts a tmpfs
def test_a_file_damaged_on_a_full_disk_is_set_aside_once_and_the_spill_goes_on(
    tmp_path: Path,
) -> None:
    """Damage found while the server runs, on a full disk: no new file can be made. That
    escaped as an exception (the router's thread died: the ingest stopped taking anything,
    the server looked alive), and each later call moved another 'damaged' file over the
    first one. The spill refuses until it can make a new file, then goes on."""
    with small_disk(tmp_path / "small", "4m") as mount:
        path = mount / "ingest-spill.db"
        spill = Spill(path)
        assert spill.append(_rows(spill, 3000, size=200)) == 3000
        with sqlite3.connect(path) as db:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        with path.open("r+b") as raw:
            raw.seek(8192)
            raw.write(b"\xff" * 8192)  # pages in the middle of the table
        filler = fill_disk(mount)
        for _ in range(3):
            assert spill.append(_rows(spill, 10)) == 0
            assert spill.head(500) == []
        assert spill.quarantined == 1
        assert (mount / "ingest-spill.db.damaged").stat().st_size > 100_000
        filler.unlink()
        assert spill.append(_rows(spill, 10)) == 10
        assert len(spill.head(500)) == 10
        spill.close()
