"""The notifier: a thread of the main server process that sends the outbox's due deliveries
(on a few sender threads, at most two at a time to one webhook), looks for the events no
transaction records (:mod:`fleet_server.notify.watch`) and keeps the outbox and the delivery
log bounded (:meth:`WebhookStore.prune`).

A delivery is a POST of the event's payload (:func:`fleet_server.webhooks.events.body`),
signed with the webhook's secret; every attempt is logged in the database, and the log says
what the server's own log says only once a minute per webhook while a receiver keeps failing.
"""

from __future__ import annotations

import logging
import os
import queue
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence

from fleet_server import __version__
from fleet_server.notify.sender import Answer, post
from fleet_server.storage.retrying import RetryLog
from fleet_server.webhooks.events import Event, EventType, body
from fleet_server.webhooks.policy import DeliveryState, after_attempt, shown_url
from fleet_server.webhooks.signature import (
    EVENT_HEADER,
    ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    sign,
)
from fleet_server.webhooks.store import Claimed, WebhookStore

__all__ = ["Watcher", "WebhookNotifier"]

log = logging.getLogger(__name__)

# A look for events of one type: given the time now, what happened (an offline device, ...).
Watcher = tuple[EventType, Callable[[float], Iterable[Event]]]
_PRUNE_EVERY_S = 60.0
_LOG_EVERY_S = 60.0


class WebhookNotifier:
    """Sends webhook deliveries from the outbox; see the module's docstring."""

    def __init__(
        self,
        store: WebhookStore,
        fleet_id: str,
        *,
        timeout_s: float = 10.0,
        retry_after_s: float = 10.0,
        senders: int = 4,
        per_webhook: int = 2,
        watchers: Sequence[Watcher] = (),
        watch_every_s: float = 30.0,
        poll_s: float = 1.0,
    ) -> None:
        self._store = store
        self._fleet_id = fleet_id
        self._timeout = timeout_s
        self._first_retry = retry_after_s
        self._senders = senders
        self._per_webhook = per_webhook
        self._watchers = list(watchers)
        self._watch_every = watch_every_s
        self._poll = poll_s
        # Unique per process and start: a lease a killed process held is nobody's after it.
        self.owner = f"{socket.gethostname()[:30]}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self._stop = threading.Event()
        self._queue: queue.Queue[Claimed | None] = queue.Queue()
        self._busy: dict[int, int] = {}  # webhook id -> deliveries being sent
        self._lock = threading.Lock()
        self._logged: dict[int, float] = {}  # webhook id -> when a failure was last logged
        self._threads: list[threading.Thread] = []

    # lifecycle -----------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the loop and the sender threads."""
        self._threads = [threading.Thread(target=self._run, name="notify", daemon=True)]
        self._threads += [
            threading.Thread(target=self._send_loop, name=f"notify-send-{i}", daemon=True)
            for i in range(self._senders)
        ]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Stop within about 2 s; a delivery being sent is abandoned and, with what was
        leased and not sent yet, handed back (sent again, by whoever runs next)."""
        self._stop.set()
        for _ in range(self._senders):
            self._queue.put(None)
        deadline = time.monotonic() + 2
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        if self._threads:
            try:
                self._store.release(self.owner)
            except Exception as exc:  # noqa: BLE001 - the leases end by themselves then
                log.warning("cannot hand back the webhook deliveries being sent: %s", exc)
        self._threads = []

    # one step each, callable from tests ----------------------------------------------------------

    def look(self, now: float | None = None) -> int:
        """Run the watchers once; record what they found; return how many deliveries."""
        now = time.time() if now is None else now
        found: list[Event] = []
        wanted = self._store.wanted() if self._watchers else set()
        for kind, watcher in self._watchers:
            if kind in wanted:  # a look at a big fleet costs: only when someone listens
                found += watcher(now)
        return self._store.record(found) if found else 0

    def send_due(self, now: float | None = None) -> int:
        """Send every due delivery now, in this thread; return how many were tried."""
        tried = 0
        while True:
            claimed = self._store.claim(
                self.owner,
                now=time.time() if now is None else now,
                lease_s=self._timeout + 60,
                limit=self._senders,
                per_webhook=self._senders,
            )
            if not claimed:
                return tried
            for delivery in claimed:
                self.attempt(delivery, now)
                tried += 1

    def attempt(self, delivery: Claimed, now: float | None = None) -> Answer:
        """One attempt of a claimed delivery: sign, POST, record it and what follows."""
        payload = body(
            event_id=delivery.event_id,
            event_type=delivery.event_type,
            at=delivery.created_at,
            data=delivery.data,
            fleet_id=self._fleet_id,
        )
        sent = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"EdgeFleet-Webhook/{__version__}",
            EVENT_HEADER: delivery.event_type,
            ID_HEADER: delivery.event_id,
            TIMESTAMP_HEADER: str(sent),
            SIGNATURE_HEADER: sign(delivery.secret, sent, payload),
            "X-EdgeFleet-Delivery-Attempt": str(delivery.attempts + 1),
        }
        answer = post(
            delivery.url, payload, headers, timeout_s=self._timeout, ca_pem=delivery.ca_pem
        )
        finished = time.time() if now is None else now
        outcome = after_attempt(
            ok=answer.ok,
            attempts=delivery.attempts + 1,
            created_at=delivery.created_at,
            now=finished,
            first_s=self._first_retry,
            rand=random.random(),  # noqa: S311 - jitter, not a secret
            retry_after=answer.retry_after,
        )
        error = f"{answer.error}; {outcome.reason}" if outcome.reason else answer.error
        kept = self._store.finish(
            delivery,
            self.owner,
            outcome,
            status=answer.status,
            error=error,
            duration_ms=answer.duration_ms,
            now=finished,
        )
        if kept:
            self._tell(delivery, answer, outcome.state, outcome.next_at - finished, error)
        return answer

    def prune(self, now: float | None = None) -> dict[str, int]:
        """Bound the outbox and the log (see :meth:`WebhookStore.prune`); log the drops."""
        dropped = self._store.prune(time.time() if now is None else now)
        for name, count in dropped.items():
            log.warning(
                "webhook %s: dropped its %d oldest pending deliveries (too many waiting: is "
                "the receiver down?)",
                name,
                count,
            )
        return dropped

    # the threads ---------------------------------------------------------------------------------

    def _tell(
        self, delivery: Claimed, answer: Answer, state: DeliveryState, wait: float, error: str
    ) -> None:
        what = f"{delivery.event_type} {delivery.event_id} to {shown_url(delivery.url)}"
        attempt = delivery.attempts + 1
        if state == DeliveryState.DELIVERED:
            log.info("webhook: %s delivered (HTTP %d, attempt %d)", what, answer.status, attempt)
            return
        if state == DeliveryState.FAILED:
            log.error("webhook: %s not delivered: %s", what, error)
            return
        clock = time.monotonic()
        if clock - self._logged.get(delivery.webhook_id, -_LOG_EVERY_S) >= _LOG_EVERY_S:
            self._logged[delivery.webhook_id] = clock
            log.warning("webhook: %s failed (attempt %d: %s); trying again in %.1f s",
                        what, attempt, error, wait)  # fmt: skip

    def _run(self) -> None:
        retry = RetryLog(log, "send webhook deliveries")
        next_look = next_prune = time.monotonic()
        while not self._stop.is_set():
            try:
                clock = time.monotonic()
                if clock >= next_look:
                    next_look = clock + self._watch_every
                    self.look()
                if clock >= next_prune:
                    next_prune = clock + _PRUNE_EVERY_S
                    self.prune()
                self._hand_out()
            except Exception as exc:  # noqa: BLE001 - a database away now is there later
                retry.failed(exc)
            else:
                retry.succeeded()
            self._stop.wait(self._poll)

    def _hand_out(self) -> None:
        """Lease what the sender threads can take now and queue it for them."""
        with self._lock:
            busy = dict(self._busy)
        free = self._senders - sum(busy.values())
        claimed = self._store.claim(
            self.owner,
            now=time.time(),
            lease_s=self._timeout + 60,
            limit=free,
            per_webhook=self._per_webhook,
            busy=busy,
        )
        with self._lock:
            for delivery in claimed:
                self._busy[delivery.webhook_id] = self._busy.get(delivery.webhook_id, 0) + 1
        for delivery in claimed:
            self._queue.put(delivery)

    def _send_loop(self) -> None:
        retry = RetryLog(log, "record a webhook delivery")
        while True:
            delivery = self._queue.get()
            if delivery is None or self._stop.is_set():
                return
            try:
                self.attempt(delivery)
            except Exception as exc:  # noqa: BLE001 - its lease ends and it is sent again
                retry.failed(exc)
            else:
                retry.succeeded()
            finally:
                with self._lock:
                    left = self._busy.get(delivery.webhook_id, 1) - 1
                    if left > 0:
                        self._busy[delivery.webhook_id] = left
                    else:
                        self._busy.pop(delivery.webhook_id, None)
