"""Deliver the spool's outbox over the device API and apply the server's acknowledgement.

The update events the spool holds go over gRPC as well as MQTT, so an update outcome reaches
the server by whichever path is up first; the answer says what the server has stored of the
device's whole message sequence (telemetry included), which the spool then forgets, and what it
misses, which the spool publishes again. The lowest number the spool holds (its floor) tells
the server that anything missing below it was dropped by the device's bound, not lost on the
way.
"""

from __future__ import annotations

import threading

from agent.client import DeviceClient
from agent.telemetry.spool import EVENT, Delivery, Spool
from protos import device_pb2

__all__ = ["MAX_EVENTS", "deliver"]

MAX_EVENTS = 64  # events per delivery (the server's bound too)
_lock = threading.Lock()  # the update loop and a report on another thread: one at a time


def deliver(spool: Spool, client: DeviceClient) -> bool:
    """Deliver the outbox once; False when the server does not take outboxes.

    Raises:
        AgentError: the server is unreachable or refused it (the events stay spooled).
    """
    with _lock:
        epoch = spool.epoch
        events = [m.payload for m in spool.held(EVENT, MAX_EVENTS)]
        # Until a server first acknowledged, the spool forgot at each PUBACK: what it no longer
        # holds may still be on its way, so it names no floor (0) rather than a wrong one.
        floor = spool.floor() if spool.acknowledged else 0
        outbox = device_pb2.Outbox(epoch=epoch, floor=floor, events=events)
        answer = client.deliver(outbox)
        if answer is None:
            if spool.acknowledged:  # a server rolled back, or an old replica: as before
                spool.unacknowledged()
            return False
        missing = tuple((r.first, r.last) for r in answer.missing)
        spool.acknowledge(Delivery(answer.epoch, answer.highest, missing))
        return True
