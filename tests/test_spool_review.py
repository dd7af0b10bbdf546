"""Review of issue 19's spool: what it keeps when the server stops acknowledging."""

from __future__ import annotations

from pathlib import Path

from agent.telemetry.outbox import deliver
from agent.telemetry.spool import TELEMETRY, Spool
from protos import device_pb2


class FakeServerClient:
    """Stands in for ``DeviceClient`` against a server that acknowledged once (a newer one)
    and then answers as a server without ``Deliver`` does (None: UNIMPLEMENTED), as after a
    server rollback, or on an old replica in a rolling upgrade."""

    def __init__(self) -> None:
        self.knows_deliver = True

    def deliver(self, outbox: device_pb2.Outbox) -> device_pb2.Delivery | None:
        if not self.knows_deliver:
            return None
        return device_pb2.Delivery(epoch=outbox.epoch, highest=0)


def test_a_server_without_deliver_after_one_with_it_does_not_make_the_spool_drop(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path / "spool.db", max_messages=50)
    client = FakeServerClient()
    assert deliver(spool, client)  # type: ignore[arg-type]
    client.knows_deliver = False  # the server was rolled back
    for n in range(300):
        spool.append("t", lambda seq: b"report", TELEMETRY)
        spool.sent([m.id for m in spool.unsent(10)])  # the broker has every report
        if n % 10 == 0:
            assert not deliver(spool, client)  # type: ignore[arg-type]
    # Every report reached the broker and (this server stores at the PUBACK, as before)
    # the server; none was dropped by the device, none is kept.
    assert spool.dropped == 0 and len(spool) == 0
    spool.close()
