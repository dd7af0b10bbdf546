"""Publish what the spool has not sent yet, in order, and tell it what the broker acknowledged."""

from __future__ import annotations

import logging
import threading
import time

from agent.telemetry.mqtt import MqttPublisher
from agent.telemetry.spool import Spool, SpoolFullError

__all__ = ["Forwarder"]

log = logging.getLogger(__name__)


class Forwarder:
    """Moves spooled messages to the broker in batches, at least once (the server dedupes).

    The spool keeps what the broker acknowledged until the server says it stored it
    (:meth:`Spool.acknowledge`), and hands it out again if the server misses it."""

    def __init__(
        self, spool: Spool, publisher: MqttPublisher, *, batch: int = 500, ack_timeout_s: float = 10
    ) -> None:
        self._spool = spool
        self._publisher = publisher
        self._batch = batch
        self._ack_timeout = ack_timeout_s
        self.sent = 0

    def drain(self, stop: threading.Event, budget_s: float) -> int:
        """Publish spooled messages while connected, for at most ``budget_s``; return how many
        the broker acknowledged. What it did not acknowledge is published again at the next call."""
        acked_total = 0
        deadline = time.monotonic() + budget_s
        while self._publisher.connected and not stop.is_set() and time.monotonic() < deadline:
            batch = self._spool.unsent(self._batch)
            if not batch:
                break
            pending = []
            for message in batch:
                info = self._publisher.publish_info(message.topic, message.payload)
                if info is None:
                    break
                pending.append((message.id, info))
            acked: list[int] = []
            for message_id, info in pending:
                try:
                    info.wait_for_publish(max(0.1, deadline - time.monotonic()) + self._ack_timeout)
                except (RuntimeError, ValueError):
                    break  # disconnected meanwhile: the rest stays spooled
                if not info.is_published():
                    break
                acked.append(message_id)
            try:
                self._spool.sent(acked)
            except SpoolFullError as exc:  # they stay unsent: published again (duplicates)
                log.warning("cannot note what the broker acknowledged: %s", exc)
                break
            acked_total += len(acked)
            if len(acked) < len(batch):
                break
        self.sent += acked_total
        return acked_total
