"""The ingest's two threads when it has a spill (:mod:`fleet_server.telemetry.spill`).

The *router* takes what paho handed over (the in-memory queue) in arrival order and numbers
it. While the spill is empty and the writer keeps up, it passes batches to the writer directly
(acknowledged once the database stored them, as without a spill). Otherwise (the spill holds
something, or the writer is still busy with the batches before) it commits the batch to the
spill and acknowledges it to the broker at once: the router never waits for the database, so
an outage that makes each attempt hang (SQLite's 5 s busy timeout, PostgreSQL's 20 s lock
timeout) does not fill the in-memory queue. What the spill refuses (its bound, a full disk)
the router hands to the writer and waits, unacknowledged, as without a spill: paho's queue
holds what comes meanwhile, and past its bound leaves it unacknowledged (devices send again).

The *writer* stores a direct batch in one attempt; when that fails it moves the batch (and
whatever else waits for it) to the spill and acknowledges it. Then, and whenever the spill
holds rows, it stores the spill's oldest rows in arrival order, retrying with a capped backoff,
and deletes them once the database committed them. When the spill cannot take a batch (its
bound, a full disk), the writer waits for the database with it as without a spill. At a
clean stop it stores what the spill holds while the database takes it (up to 20 s); the rest
is stored at the next start.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable, Sequence

from fleet_server.telemetry.spill import Row, Spill

__all__ = ["Entry", "Spillway"]

log = logging.getLogger(__name__)
_RETRY_MAX_S = 5.0
_STOP_DRAIN_S = 20.0  # within the 30 s the ingest gives its writer to finish

# What paho handed over: (topic, payload, message id to acknowledge (0: none), connection)
Item = tuple[str, bytes, int, int]
# The same, numbered in arrival order: (number, topic, payload, message id, connection)
Entry = tuple[int, str, bytes, int, int]


class Spillway:
    """The router and writer loops (run each on a thread of its own)."""

    def __init__(
        self,
        spill: Spill,
        source: queue.Queue[Item | None],
        *,
        attempt: Callable[[list[tuple[str, bytes]]], bool],
        persist: Callable[[list[tuple[str, bytes]], bool], object],
        acknowledge: Callable[[list[tuple[int, int]]], None],
        dequeued: Callable[[Item], None],
        idle: Callable[[], object],
        final: Callable[[], object],
        spill_new: bool = True,
        batch: int = 500,
        idle_s: float = 30.0,
    ) -> None:
        """``attempt(items)`` stores a batch in one attempt, True when stored;
        ``persist(items, stopping)`` retries until stored (or, stopping, gives up after a few
        attempts, counted); ``acknowledge`` takes (message id, connection) pairs; ``idle``
        writes ended history buckets; ``final`` writes everything open at a stop. With
        ``spill_new`` False, the spill of an earlier run is stored, and nothing new goes to
        it."""
        self.spill = spill
        self._source = source
        self._attempt = attempt
        self._persist = persist
        self._acknowledge = acknowledge
        self._dequeued = dequeued
        self._idle = idle
        self._final = final
        self._spill_new = spill_new
        self._batch = batch
        self._idle_s = idle_s
        # Batches on their way to the writer: two, so that the router spills rather than waits.
        self._direct: queue.Queue[list[Entry] | None] = queue.Queue(maxsize=2)

    def _take(self) -> tuple[list[Entry], bool]:
        """The next batch from paho's queue (waits for the first message), numbered."""
        first = self._source.get()
        if first is None:
            return [], True
        items, final = [first], False
        while len(items) < self._batch:
            try:
                more = self._source.get_nowait()
            except queue.Empty:
                break
            if more is None:
                final = True
                break
            items.append(more)
        entries = []
        for item in items:
            self._dequeued(item)
            entries.append((self.spill.number(), *item))
        return entries, final

    def route(self) -> None:
        """The router's loop: until the stop (None in paho's queue), which it passes on."""
        while True:
            entries, final = self._take()
            if entries and self._spill_new:
                if not self.spill.messages:
                    try:
                        self._direct.put_nowait(entries)
                        entries = []
                    except queue.Full:
                        pass
                if entries:
                    entries = self._to_spill(entries)
            if entries:
                # Spill off, or past its bound (or on a full disk): wait for the writer with
                # them, unacknowledged, as without a spill; paho's queue holds what comes
                # meanwhile, and past its bound leaves the rest unacknowledged.
                self._direct.put(entries)
            if final:
                self._direct.put(None)
                return

    def _to_spill(self, entries: Sequence[Entry], *, counted: bool = True) -> list[Entry]:
        """Commit to the spill what fits and acknowledge it; return the rest (counted as
        refused by the spill unless ``counted`` is False)."""
        rows = [(n, topic, payload) for n, topic, payload, _m, _c in entries]
        taken = self.spill.append(rows, counted=counted)
        self._acknowledge([(mid, conn) for _n, _t, _p, mid, conn in entries[:taken] if mid])
        return list(entries[taken:])

    def drain(self) -> None:
        """The writer's loop: until the router passes the stop on."""
        attempt, retry_at = 0, 0.0
        while True:
            held = self.spill.messages
            wait = max(0.0, retry_at - time.monotonic()) if held else self._idle_s
            try:
                batch = self._direct.get(timeout=wait) if wait > 0 else self._direct.get_nowait()
            except queue.Empty:
                batch = []
            stopping = batch is None
            if batch:
                if self._attempt([(t, p) for _n, t, p, _m, _c in batch]):
                    self._acknowledge([(mid, conn) for _n, _t, _p, mid, conn in batch if mid])
                    continue
                stopping = self._stalled(batch)
                attempt += 1
                retry_at = time.monotonic() + min(_RETRY_MAX_S, 0.5 * attempt)
            elif held and batch is not None:
                if self._from_spill():
                    if attempt:
                        log.warning("the database is back: storing the %d message(s) in the "
                                    "ingest's spill", self.spill.messages)  # fmt: skip
                    attempt = 0
                else:
                    attempt += 1
                    retry_at = time.monotonic() + min(_RETRY_MAX_S, 0.5 * attempt)
            elif batch is not None:
                self._idle()  # no message for idle_s: the ended history buckets
            if stopping:
                # A clean stop stores what the spill holds while the database takes it.
                deadline = time.monotonic() + _STOP_DRAIN_S
                while self.spill.messages and time.monotonic() < deadline:
                    if not self._from_spill():
                        break
                if self.spill.messages:
                    log.warning("%d message(s) stay in the ingest's spill %s: stored at the "
                                "next start", self.spill.messages, self.spill.path)  # fmt: skip
                self._final()
                return

    def _stalled(self, batch: list[Entry]) -> bool:
        """A direct batch the database did not take: to the spill with everything else on its
        way (older than what the router spills meanwhile); what the spill refuses waits for the
        database here, as without a spill. Returns whether the stop came in the meantime."""
        stalled, stopping = list(batch), False
        while True:
            try:
                more = self._direct.get_nowait()
            except queue.Empty:
                break
            if more is None:
                stopping = True
                break
            stalled += more
        refused = self._to_spill(stalled, counted=False) if self._spill_new else stalled
        if refused:
            self._persist([(t, p) for _n, t, p, _m, _c in refused], stopping)
            self._acknowledge([(mid, conn) for _n, _t, _p, mid, conn in refused if mid])
        return stopping

    def _from_spill(self) -> bool:
        """Store the spill's oldest rows; False when the database did not take them."""
        rows: list[Row] = self.spill.head(self._batch)
        if not rows:  # empty, or it cannot hand out rows now (a full disk): wait and retry
            return not self.spill.messages
        if not self._attempt([(t, p) for _n, t, p in rows]):
            return False
        self.spill.delete(rows)
        return True
