"""The agent's store-and-forward spool: bounded, ordered, durable, events never dropped."""

from __future__ import annotations

from pathlib import Path

from agent.telemetry.spool import EVENT, TELEMETRY, Spool


def test_order_bound_and_events_kept(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db", max_messages=10)
    spool.append("t", b"event-0", EVENT)
    for i in range(15):
        spool.append("t", f"tel-{i}".encode(), TELEMETRY)
    spool.append("t", b"event-1", EVENT)
    kept = [m.payload.decode() for m in spool.oldest(100)]
    # The oldest telemetry went first; both events stayed; order is kept.
    assert kept[0] == "event-0" and kept[-1] == "event-1"
    assert kept[1:-1] == [f"tel-{i}" for i in range(7, 15)]
    assert len(spool) == 10 and spool.dropped == 7
    spool.remove([m.id for m in spool.oldest(3)])
    assert [m.payload for m in spool.oldest(1)] == [b"tel-9"]
    spool.close()


def test_only_events_may_exceed_the_bound(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db", max_messages=10)
    for i in range(12):
        spool.append("t", str(i).encode(), EVENT)
    assert len(spool) == 12 and spool.dropped == 0
    spool.close()


def test_messages_sequence_and_epoch_survive_a_restart(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db")
    epoch = spool.epoch
    assert [spool.next_seq() for _ in range(3)] == [1, 2, 3]
    spool.append("topic/a", b"one")
    spool.close()
    again = Spool(tmp_path / "spool.db")
    assert again.epoch == epoch
    assert again.next_seq() == 4
    (message,) = again.oldest(10)
    assert (message.topic, message.payload) == ("topic/a", b"one")
    again.close()
    other = Spool(tmp_path / "other.db")
    assert other.epoch != epoch and other.next_seq() == 1
    other.close()
