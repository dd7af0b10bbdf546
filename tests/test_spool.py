"""The agent's store-and-forward spool: bounded, ordered, durable, numbered in one transaction,
kept until the server acknowledges, events never dropped, alive after a full disk."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.telemetry.spool import EVENT, TELEMETRY, Delivery, Spool, SpoolFullError
from tests.harness import fill_disk, small_disk


def text(payload: str) -> Callable[[int], bytes]:
    return lambda _seq: payload.encode()


def numbered(kind: str) -> Callable[[int], bytes]:
    return lambda seq: f"{kind}-{seq}".encode()


def test_order_bound_and_events_kept(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db", max_messages=10)
    spool.append("t", text("event-0"), EVENT)
    for i in range(15):
        spool.append("t", text(f"tel-{i}"), TELEMETRY)
    spool.append("t", text("event-1"), EVENT)
    kept = [m.payload.decode() for m in spool.unsent(100)]
    # The oldest telemetry went first; both events stayed; order is kept.
    assert kept[0] == "event-0" and kept[-1] == "event-1"
    assert kept[1:-1] == [f"tel-{i}" for i in range(7, 15)]
    assert len(spool) == 10 and spool.dropped == 7
    spool.sent([m.id for m in spool.unsent(3)])  # no server acknowledges: forgotten at PUBACK
    assert [m.payload for m in spool.unsent(1)] == [b"tel-9"]
    assert len(spool) == 7
    spool.close()


def test_only_events_may_exceed_the_bound(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db", max_messages=10)
    for i in range(12):
        spool.append("t", text(str(i)), EVENT)
    assert len(spool) == 12 and spool.dropped == 0
    spool.close()


def test_messages_sequence_and_epoch_survive_a_restart(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db")
    epoch = spool.epoch
    assert [spool.append("topic/a", numbered("m")) for _ in range(3)] == [1, 2, 3]
    spool.close()
    again = Spool(tmp_path / "spool.db")
    assert again.epoch == epoch
    assert again.append("topic/a", numbered("m")) == 4
    assert next((m.topic, m.payload, m.seq) for m in again.unsent(10)) == ("topic/a", b"m-1", 1)
    again.close()
    other = Spool(tmp_path / "other.db")
    assert other.epoch != epoch and other.append("t", numbered("m")) == 1
    other.close()


def test_concurrent_producers_number_in_spool_order(tmp_path: Path) -> None:
    """Three threads (telemetry, command answers, update events) spooling at once: the
    numbers are the spool's order, with no gap and no repeat (issue 19's duplicate drops)."""
    spool = Spool(tmp_path / "spool.db", max_messages=100_000)
    start = threading.Event()

    def produce(kind: str) -> None:
        start.wait()
        for _ in range(300):
            spool.append(kind, numbered(kind), EVENT if kind != "telemetry" else TELEMETRY)

    threads = [threading.Thread(target=produce, args=(k,)) for k in ("telemetry", "ack", "update")]
    for t in threads:
        t.start()
    start.set()
    for t in threads:
        t.join()
    messages = spool.unsent(10_000)
    assert [m.seq for m in messages] == list(range(1, 901))
    # The number inside each payload is the one the spool gave it.
    assert all(m.payload.decode().endswith(f"-{m.seq}") for m in messages)
    spool.close()


def test_kept_until_the_server_stores_and_sent_again_when_missing(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db")
    for _ in range(6):
        spool.append("t", numbered("m"))
    spool.acknowledge(Delivery(spool.epoch, 0))  # a server that acknowledges
    spool.sent([m.id for m in spool.unsent(10)])  # the broker has all six
    assert len(spool) == 6 and spool.unsent(10) == []
    # The server stored 1..5 except 2 and 4 (a broker restart lost them): 1, 3, 5 go; 2 and 4
    # are published again; 6 is above what it stored and may still be on its way.
    assert spool.acknowledge(Delivery(spool.epoch, 5, ((2, 2), (4, 4)))) == 3
    assert [m.seq for m in spool.unsent(10)] == [2, 4]
    assert spool.floor() == 2
    # An acknowledgement of another epoch (a server behind on a replaced spool) changes nothing.
    assert spool.acknowledge(Delivery("other", 10)) == 0
    spool.sent([m.id for m in spool.unsent(10)])
    # 6 still unstored two acknowledgements after it was sent: lost on the way, sent again.
    spool.acknowledge(Delivery(spool.epoch, 5, ((2, 2), (4, 4))))
    assert [m.seq for m in spool.unsent(10)] == [2, 4, 6]
    spool.acknowledge(Delivery(spool.epoch, 6))
    assert len(spool) == 0 and spool.floor() == 7
    spool.close()


def test_the_bound_drops_what_the_broker_has_before_what_it_has_not(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db", max_messages=4)
    spool.acknowledge(Delivery(spool.epoch, 0))
    for _ in range(4):
        spool.append("t", numbered("m"))
    spool.sent([m.id for m in spool.unsent(2)])  # 1 and 2 at the broker, not yet stored
    spool.append("t", numbered("m"))
    spool.append("t", numbered("m"))
    held = sorted(m.seq for m in spool.unsent(10))
    assert held == [3, 4, 5, 6] and spool.dropped == 2 and spool.floor() == 3
    spool.close()


def test_a_damaged_spool_is_replaced_with_a_new_epoch_that_says_so(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    spool = Spool(path)
    epoch = spool.epoch
    spool.append("t", numbered("m"))
    spool.close()
    for suffix in ("-wal", "-shm"):
        (tmp_path / f"spool.db{suffix}").unlink(missing_ok=True)
    path.write_bytes(b"this is not a database" * 300)
    again = Spool(path)
    assert again.epoch != epoch and "damaged" in again.lost
    assert (tmp_path / "spool.db.damaged").exists()
    assert again.append("t", numbered("m")) == 1
    again.close()
    # The reason stays with the new spool (every report of its epoch says so).
    assert "damaged" in Spool(path).lost


@pytest.mark.slow
def test_a_full_disk_makes_room_and_the_spool_goes_on(tmp_path: Path) -> None:
    """A real 4 MiB tmpfs filled to the last byte: appends make room by dropping the oldest
    telemetry (counted), never events, and go on; once the disk has room the reserve is back."""
    with small_disk(tmp_path / "small", "4m") as mount:
        spool = Spool(mount / "spool.db", max_messages=1_000_000)
        assert (mount / "spool.db.reserve").exists()
        spool.append("t", text("update"), EVENT)
        filler = fill_disk(mount)
        payload = os.urandom(2048)
        for _ in range(3000):  # 6 MB of telemetry into a full 4 MiB disk: none refused
            spool.append("t", lambda _seq: payload)
        assert spool.dropped > 0 and spool.last_seq == 3001
        kinds = [m.kind for m in spool.unsent(100_000)]
        assert kinds[0] == EVENT  # the event survived every drop
        # Only events left to write, and no telemetry to drop: refused, not lost silently.
        with pytest.raises(SpoolFullError):
            for _ in range(10_000):
                spool.append("t", lambda _seq: payload, EVENT)
        filler.unlink()  # room again: the spool goes on and takes its reserve back
        seq = spool.append("t", text("after"), TELEMETRY)
        assert seq == spool.last_seq
        assert (mount / "spool.db.reserve").exists()
        spool.close()
