"""Consume device telemetry, state and events from MQTT.

One server subscribes plainly with a persistent session: the broker queues what arrives while
the server restarts, and restores the subscription after its own restart. Several replicas
subscribe through a shared subscription (``--mqtt-share-group``) and split the stream; mosquitto
2.0 does not restore shared subscriptions after a broker restart (measured), so a broker
restart can lose what devices send before the replicas reconnect.

Each message is validated (topic, size, payload, and the device id in the payload must be the
one its topic names), deduplicated on (device, epoch, sequence) with gaps counted as lost, and
written in batches: the latest report per device, its online state from birth and Will,
update events, usage for the cost reports, and telemetry over time in 5-minute buckets
(:mod:`fleet_server.telemetry.history`). Reports about a model version a live rollout has
just installed on the device feed that rollout's health gate (:meth:`HealthStore.record_health`).

With an MQTT v5 broker the server subscribes through a shared subscription so that several
replicas split the stream; against the embedded 3.1.1 broker it subscribes plainly (one server).
A message is accepted only when the device id in its payload matches the topic it came on.

A broker without MQTT v5's Receive Maximum (the embedded one) cannot be made to hold back what
the ingest leaves unacknowledged; there the ingest spills what the database cannot take now to
disk first (:mod:`fleet_server.telemetry.spill`, its threads in
:mod:`fleet_server.telemetry.spillway`).
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import paho.mqtt.client as paho
import sqlalchemy as sa
from google.protobuf.json_format import MessageToDict

from agent.errors import AgentError
from agent.telemetry.mqtt import MqttEndpoint, MqttPublisher
from fleet_server.errors import TransientError
from fleet_server.rollouts.health import HealthSample, HealthStore
from fleet_server.storage.db import stored_text
from fleet_server.telemetry.checks import plausible
from fleet_server.telemetry.decode import KINDS, count_usage, decode_message, decode_report
from fleet_server.telemetry.events import event_row, outcome_of
from fleet_server.telemetry.guard import Guard
from fleet_server.telemetry.history import HistoryBuffer
from fleet_server.telemetry.sequence import Verdict, lost_between
from fleet_server.telemetry.spill import Spill, SpillConfig, spill_wanted
from fleet_server.telemetry.spillway import Spillway
from fleet_server.telemetry.store import IngestBatch, Known, TelemetryStore
from fleet_server.telemetry.throttle import OncePer
from protos import telemetry_pb2
from protos.topics import commands_topic, device_topic, telemetry_filter

__all__ = ["TelemetryIngest", "decode_message", "decode_report"]

log = logging.getLogger(__name__)
_QUEUE_BOUND = 10_000
_QUEUE_BYTES = 64 * 1024 * 1024  # and at most this much payload waiting for the writer
_BATCH = 500
_FINAL_ATTEMPTS = 3  # when stopping; otherwise a write is retried until the database is back
_RETRY_MAX_S = 5.0  # between attempts
# Unacknowledged messages an MQTT v5 broker may send the ingest (its back-pressure window):
# messages are acknowledged once stored, so during a database outage the broker holds the rest.
_RECEIVE_MAXIMUM = 500  # x 256 KiB at most per message: 128 MiB at worst
_IDLE_FLUSH_S = 30.0  # with no messages, ended history buckets are written this often
_REVOKED_REFRESH_S = 5.0  # revocations made by another server replica are seen this soon
_EVENTS_KEPT_S = 7 * 86400  # device events are kept this long at least (the history's if longer)


_REFUSALS = {
    "rate": "more messages than a device generates: see docs/mqtt.md, Bounds",
    "jump": "a sequence number further ahead than the device could have counted",
    "revoked": "the device is revoked",
}


def _refused_value(exc: BaseException) -> bool:
    """Whether a failed write would fail again however long the ingest waits: a value the
    database refuses (DataError), or one its driver cannot even send (Python's sqlite3 raises
    OverflowError for an integer beyond 64 bits; a wrapped TypeError or ValueError), not the
    database being down, locked or unreachable. Retrying those would stop the ingest for the
    whole fleet for good (one device's numbers can overflow a count)."""
    if isinstance(exc, sa.exc.DataError):
        return True
    if isinstance(exc, sa.exc.DBAPIError):
        return False  # the database's own answer: an outage, a lock, a lost connection
    return not isinstance(exc, sa.exc.SQLAlchemyError) or isinstance(exc, sa.exc.StatementError)


class TelemetryIngest:
    """An MQTT subscriber feeding a bounded queue drained by one writer thread."""

    def __init__(
        self,
        endpoint: MqttEndpoint,
        store: TelemetryStore,
        fleet_id: str,
        client_id: str,
        *,
        persistent_session: bool = False,
        share_group: str = "",
        history_hours: float = 48.0,
        spill: SpillConfig | None = None,
        queue_messages: int = _QUEUE_BOUND,
    ) -> None:
        self._endpoint = endpoint
        self._persistent = persistent_session
        self._share_group = share_group
        self._telemetry = store
        self._fleet_id = fleet_id
        self._client_id = client_id
        # (topic, payload, the broker's message id to acknowledge once stored (0: none), the
        # connection it came on: an id from an earlier connection is not acknowledged on a new
        # one, where it may name another message)
        self._queue: queue.Queue[tuple[str, bytes, int, int] | None] = queue.Queue(
            maxsize=queue_messages
        )
        self._spill_config = spill
        self.spill: Spill | None = None  # opened at the start (spill.py)
        self._connection = 0
        self._publisher: MqttPublisher | None = None
        self._writer = threading.Thread(target=self._drain, name="telemetry-ingest", daemon=True)
        self.received = 0  # messages handed over by the broker
        self._queued_bytes = 0
        self._bytes_lock = threading.Lock()
        self.accepted = 0
        self.rejected = 0
        self.dropped = 0  # given up at a stop with the database down (devices send them again)
        self.deferred = 0  # left unacknowledged with the queue full (sent again)
        self.write_failures = 0  # attempts to store a batch the database refused
        # Set by stop(): with the database down, nothing more is tried (devices send it again).
        self._halt = threading.Event()
        self._down = False  # the last attempt to store failed
        self.duplicates = 0
        self.gaps = 0  # messages given up as lost (see sequence.py)
        self.filled = 0  # late arrivals into a missing range (neither duplicates nor losses)
        self._history = HistoryBuffer(history_hours)
        self._rollouts: HealthStore | None = None
        self._on_unhealthy: Callable[[], None] = lambda: None
        # What each device last reported running, and the (device, model, version)s whose
        # telemetry feeds a health gate -> (rollout id, end of its window).
        self._versions: dict[str, dict[str, str]] = {}
        self._gated: dict[tuple[str, str, str], tuple[int, int]] = {}
        self.unhealthy = 0  # devices failed by a rollout's health gate
        self.history_lost = 0  # history rows the database refused
        # Messages refused by the per-device bounds (guard.py) and from revoked devices.
        self.refused: dict[str, int] = {"rate": 0, "jump": 0, "revoked": 0}
        self._guard = Guard()
        self._complaints = OncePer(60.0)
        self._revoked: set[str] = set()
        # When the server last stored a report of each device (or enrolled it): the guard
        # gives a device no credit for send times before that.
        self._since: dict[str, int] = {}
        self._revoked_at = 0.0
        self._events_kept_s = max(_EVENTS_KEPT_S, int(history_hours * 3600))

    def watch_health(self, rollouts: HealthStore, on_unhealthy: Callable[[], None]) -> None:
        """Feed telemetry to the health gates of these rollouts; call ``on_unhealthy`` when a
        device breaks one (to let the rollout controller pause it sooner)."""
        self._rollouts = rollouts
        self._on_unhealthy = on_unhealthy

    def _health_samples(
        self, reports: Sequence[Any]
    ) -> tuple[list[HealthSample], Callable[[], None]]:
        """What the reports say about model versions under a rollout's health gate, and what
        to remember once the batch is stored (so a failed write is retried with a fresh look).

        A device changes version only when told to, so the database is asked about a device
        only when its reported versions change (or on its first report after a restart).
        """
        if self._rollouts is None:
            return [], lambda: None
        changed: dict[str, dict[str, str]] = {}
        for report in reports:
            versions = {m.model_name: m.version for m in report.models}
            if self._versions.get(report.device_id) != versions:
                changed[report.device_id] = versions
        now = int(time.time())
        gated = self._gated
        if changed:
            gated = {k: v for k, v in gated.items() if k[0] not in changed and v[1] >= now}
            for w in self._rollouts.watched(set(changed), now):
                gated[(w.device_id, w.model_name, w.version)] = (w.rollout_id, w.until)
        samples = []
        for report in reports:
            for model in report.models:
                entry = gated.get((report.device_id, model.model_name, model.version))
                if entry is not None and entry[1] >= now and plausible(model):
                    samples.append(
                        HealthSample(
                            entry[0],
                            report.device_id,
                            model.window_requests,
                            model.window_errors,
                            model.latency.p95_ms,
                        )
                    )

        def commit() -> None:
            self._versions.update(changed)
            self._gated = gated

        return samples, commit

    def start(self) -> None:
        """Connect, subscribe and start writing.

        Raises:
            TransientError: the broker is unreachable.
        """
        topics: list[str] = []

        def subscribe(client: paho.Client) -> None:
            # Runs after every (re)connect, so a broker restart does not end the subscription.
            self._connection += 1
            for topic in topics:
                client.subscribe(topic, qos=1)

        def on_message(_c: paho.Client, _u: object, message: Any) -> None:
            # Hand the message to the writer, which acknowledges it to the broker once stored
            # (the broker sends at most _RECEIVE_MAXIMUM unacknowledged: back-pressure). When
            # the queue is full anyway (a 3.1.1 broker has no such window), wait, then leave
            # it unacknowledged: the broker or the device (its spool, told what is missing)
            # sends it again. (Briefly: this is paho's thread, which also keeps the link.)
            payload = bytes(message.payload)
            if self._queued_bytes > _QUEUE_BYTES:
                deadline = time.monotonic() + 1
                while self._queued_bytes > _QUEUE_BYTES and time.monotonic() < deadline:
                    time.sleep(0.01)
                if self._queued_bytes > _QUEUE_BYTES:
                    self.deferred += 1
                    return
            try:
                topic = message.topic
            except UnicodeDecodeError:
                topic = ""
            try:
                self._queue.put((topic, payload, int(message.mid), self._connection), timeout=1)
            except queue.Full:
                self.deferred += 1
                return
            with self._bytes_lock:
                self._queued_bytes += len(payload)
            self.received += 1

        publisher = MqttPublisher(
            self._endpoint,
            client_id=self._client_id,
            on_connected=subscribe,
            persistent_session=self._persistent,
            on_message=on_message,
            manual_ack=True,
            receive_maximum=_RECEIVE_MAXIMUM,
        )
        try:
            publisher.connect()
        except AgentError as exc:  # the agent's MQTT client speaks the agent's errors
            raise TransientError(str(exc)) from exc
        client = publisher.raw_client()
        group = self._share_group if publisher.protocol == paho.MQTTv5 else ""
        if self._share_group and not group:
            log.warning("the broker speaks MQTT 3.1.1: no shared subscription, one server only")
        topics.extend(telemetry_filter(self._fleet_id, group or None, kind) for kind in KINDS)
        for topic in topics:
            result, _mid = client.subscribe(topic, qos=1)
            if result != paho.MQTT_ERR_SUCCESS:
                publisher.close()
                raise TransientError(f"cannot subscribe to {topic} on {self._endpoint}")
        self._publisher = publisher
        self._start_writer(receive_window=publisher.protocol == paho.MQTTv5)
        log.info("ingesting %s on %s", ", ".join(topics), self._endpoint)

    def _drain(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=_IDLE_FLUSH_S)
            except queue.Empty:
                if len(self._history):
                    self._write([])  # a quiet fleet's ended buckets
                continue
            if item is None:
                self._write([], final=True)  # every open bucket
                return
            batch = [item]
            self._dequeued(item)
            final = False
            while len(batch) < _BATCH:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    final = True
                    break
                self._dequeued(more)
                batch.append(more)
            self._write([(topic, payload) for topic, payload, _m, _c in batch], stopping=final)
            now = self._connection
            self._acknowledge([mid for _t, _p, mid, conn in batch if mid and conn == now])
            if final:
                self._write([], final=True)
                return

    def _start_writer(self, receive_window: bool) -> None:
        """The writer thread; with a spill, a router thread in front of it (spillway.py)."""
        config = self._spill_config
        wanted = config is not None and spill_wanted(config.mode, receive_window)
        if config is not None and (wanted or config.path.exists()):
            try:
                self.spill = Spill(config.path, config.bounds)
            except (OSError, sqlite3.Error) as exc:
                log.error("cannot open the ingest's spill %s, going on without it: %s",
                          config.path, exc)  # fmt: skip
        if self.spill is not None:
            way = Spillway(
                self.spill, self._queue,
                attempt=lambda items: self._write(items, once=True),
                persist=lambda items, stopping: self._write(items, stopping=stopping),
                acknowledge=lambda sent: self._acknowledge(
                    [mid for mid, conn in sent if conn == self._connection]
                ),
                dequeued=self._dequeued,
                idle=lambda: len(self._history) and self._write([], once=True),
                final=lambda: self._write([], final=True),
                spill_new=wanted, batch=_BATCH, idle_s=_IDLE_FLUSH_S,
            )  # fmt: skip
            self._writer = threading.Thread(target=way.drain, name="telemetry-ingest", daemon=True)
            threading.Thread(target=way.route, name="telemetry-spill", daemon=True).start()
            log.info("the ingest %s %s (at most %d messages, %d MiB)",
                     "spills what the database cannot take now to" if wanted else
                     "stores what an earlier run spilled (--ingest-spill off) from",
                     self.spill.path, self.spill.bounds.messages,
                     self.spill.bounds.bytes >> 20)  # fmt: skip
        self._writer.start()

    def _acknowledge(self, mids: list[int]) -> None:
        """Tell the broker these messages are stored (or judged): it may forget them."""
        publisher = self._publisher
        if publisher is None or not mids:
            return
        try:
            client = publisher.raw_client()
            for mid in mids:
                client.ack(mid, 1)
        except AgentError:
            return  # closed or stopping: the broker sends them again to the next session
        except Exception:  # the writer must outlive anything paho raises here
            log.exception("cannot acknowledge %d MQTT message(s) to the broker", len(mids))

    def _dequeued(self, item: tuple[str, bytes, int, int]) -> None:
        with self._bytes_lock:
            self._queued_bytes -= len(item[1])

    def settle(self, quiet_s: float = 0.3, timeout_s: float = 5.0) -> None:
        """Wait until no message has arrived for ``quiet_s`` (at most ``timeout_s``): what the
        broker sent is in the queue before :meth:`stop`."""
        deadline = time.monotonic() + timeout_s
        seen = -1
        while time.monotonic() < deadline and seen != self.received:
            seen = self.received
            time.sleep(quiet_s)

    def _write(
        self,
        items: list[tuple[str, bytes]],
        *,
        final: bool = False,
        stopping: bool = False,
        once: bool = False,
    ) -> bool:
        """Validate, deduplicate and store one batch in one transaction (with ``final``, every
        open history bucket too); return whether it was stored. While the database fails, retry
        for as long as it takes: the broker (or the spill) holds what is not acknowledged yet,
        and devices keep what the server has not stored. With ``once`` (the spill takes the
        batch instead), give up after one attempt, counting nothing; when the server stops
        (``final`` or ``stopping``), after a few: what it could not store, devices send again.
        """
        decoded, rejected = [], 0
        for topic, payload in items:
            message = decode_message(topic, payload, self._fleet_id)
            if message is None:
                rejected += 1
            else:
                decoded.append(message)
        attempts = 1 if once else _FINAL_ATTEMPTS if final or stopping else None
        attempt = 0
        while (attempts is None or attempt < attempts) and not (self._halt.is_set() and self._down):
            attempt += 1
            try:
                self._store(decoded, final=final)
                self._down = False
                if attempt > 1:
                    log.warning("the database is back: stored %d MQTT message(s) after %d "
                                "attempt(s)", len(decoded), attempt)  # fmt: skip
                self.rejected += rejected
                return True
            except Exception as exc:  # any failure: judged below, logged once a minute
                if _refused_value(exc):
                    # A value the database (or its driver) refuses will be refused again:
                    # store the messages one by one so that only the offending one is lost.
                    log.exception("cannot store a value in %d MQTT message(s)", len(decoded))
                    self._store_each(decoded)
                    self.rejected += rejected
                    return True
                self.write_failures += 1
                self._down = True
                if self._complaints.first("database"):
                    log.error("cannot store %d MQTT message(s), retrying until the database "
                              "is back (not logged again this minute): %s", len(decoded),
                              exc)  # fmt: skip
                if not once:
                    self._halt.wait(min(_RETRY_MAX_S, 0.5 * attempt))
        if not once:
            self.rejected += rejected
            self.dropped += len(decoded)
        return False

    def _store_each(self, decoded: list[tuple[str, Any]]) -> None:
        for message in decoded:
            try:
                self._store([message])
            except Exception as exc:  # one message: logged and counted
                if _refused_value(exc):
                    log.warning("dropping a %s message from %s the database refuses: %s",
                                message[0], message[1].device_id, exc)  # fmt: skip
                    self.rejected += 1
                    continue
                log.exception("cannot store a %s message from %s", message[0],
                              message[1].device_id)  # fmt: skip
                self.dropped += 1

    def _store(self, decoded: list[tuple[str, Any]], *, final: bool = False) -> None:
        """Judge and write a batch in one transaction, against the devices' ledgers as the
        database holds them (locked meanwhile: another replica, or a device delivering over
        the device API, waits its turn). Counters and per-device budgets change only once it
        is stored, so a failed write can be retried as a whole.

        Raises:
            Exception: whatever the database raised.
        """
        now = time.time()
        self._refresh_revoked(now)
        touched = {m.device_id for _k, m in decoded} - self._revoked
        guard = self._guard.snapshot(touched)
        done: list[Callable[[bool], None]] = []

        def judge(known: dict[str, Known]) -> IngestBatch:
            self._guard.restore(guard)  # a retried transaction judges from the same start
            batch, after = self._judge_batch(decoded, known, now, final=final)
            done[:] = [after]
            return batch

        try:
            _batch, history_stored = self._telemetry.ingest(sorted(touched), judge)
        except BaseException:
            self._guard.restore(guard)  # the retry judges the same messages again
            raise
        if done:
            done[0](history_stored)

    def _refresh_revoked(self, now: float) -> None:
        """Re-read the revoked devices every few seconds (another replica may have revoked
        one); the ones this process revoked are dropped at once (:meth:`revoked`)."""
        if now - self._revoked_at < _REVOKED_REFRESH_S:
            return
        revoked = self._telemetry.revoked_devices()
        for device_id in revoked - self._revoked:
            self._forget(device_id)
        self._revoked, self._revoked_at = revoked, now

    def _forget(self, device_id: str) -> None:
        self._since.pop(device_id, None)
        self._versions.pop(device_id, None)
        self._guard.forget(device_id)

    def revoked(self, device_id: str) -> None:
        """Drop this device's messages from now on (it was revoked)."""
        self._revoked.add(device_id)
        self._forget(device_id)

    def _refused(self, refusals: list[tuple[str, str, str]]) -> None:
        """Count (and log, once per device and reason a minute) the refusals of a stored
        batch."""
        for reason, device_id, what in refusals:
            self.refused[reason] += 1
            if self._complaints.first(f"{reason}:{device_id}"):
                log.warning("refusing %s from %s (%s; not logged again for it this minute)",
                            what, device_id, _REFUSALS[reason])  # fmt: skip

    def _judge_batch(
        self, decoded: list[tuple[str, Any]], known: dict[str, Known], now: float, *, final: bool
    ) -> tuple[IngestBatch, Callable[[bool], None]]:
        """What to write for these messages, and what to do once it is stored."""
        batch = IngestBatch()
        latest: dict[str, Any] = {}
        reports: list[Any] = []
        ledgers = {d: k.ledger for d, k in known.items()}
        counts: dict[str, int] = {}
        accepted = rejected = duplicates = filled = deferred = 0
        refusals: list[tuple[str, str, str]] = []
        for kind, message in decoded:
            device_id = message.device_id
            if device_id in self._revoked:
                refusals.append(("revoked", device_id, f"a {kind} message"))
                continue
            entry = known.get(device_id)
            if entry is None:
                rejected += 1  # not an enrolled device (or revoked by another replica)
                continue
            self._since.setdefault(device_id, max(entry.last_at or 0, entry.enrolled_at))
            if kind == "state":
                batch.states[device_id] = stored_text(message.state, 16)
                continue
            ledger = ledgers[device_id]
            after, verdict = ledger.receive(message.epoch, message.seq)
            if verdict == Verdict.DUPLICATE:
                duplicates += 1
                continue
            if verdict == Verdict.DEFERRED:
                deferred += 1  # acknowledged to the broker, not to the device: sent again
                continue
            sent_ms = int(message.sent_unix_ms)
            admitted = self._guard.admit(device_id, sent_ms, now, self._since.get(device_id))
            if not admitted.ok:
                refusals.append((admitted.reason, device_id, f"{kind} #{message.seq}"))
                continue
            if verdict == Verdict.NEW and ledger.epoch:
                same = message.epoch == ledger.epoch
                advance = message.seq - ledger.highest if same else message.seq
                dropped = getattr(message, "spool_dropped", 0)
                allowance = self._guard.allowance(device_id, sent_ms, now, dropped, entry.last_at)
                jump = self._guard.jump(device_id, message.epoch, message.seq, advance, allowance)
                if not jump.ok:
                    refusals.append(("jump", device_id, f"{kind} #{message.seq} (+{advance})"))
                    continue
                if jump.adopted:  # the gap stays awaited: the device's floor settles it
                    log.warning("device %s continues from sequence %d: adopted", device_id,
                                message.seq)  # fmt: skip
            self._guard.accepted(device_id, sent_ms, now)
            filled += verdict == Verdict.FILLED
            counts[device_id] = counts.get(device_id, 0) + 1
            if kind == "telemetry":
                after = after.with_reason(message.spool_lost)
                if verdict == Verdict.NEW:
                    latest[device_id] = message  # only the newest is converted and stored
                reports.append(message)
                count_usage(batch, message)
            else:
                batch.events.append(event_row(message, now))
                outcome = outcome_of(message)
                if outcome is not None:
                    batch.outcomes.append(outcome)
            ledgers[device_id] = after
            accepted += 1
        lost = 0
        for device_id, count in counts.items():
            before, ledger = known[device_id].ledger, ledgers[device_id]
            report = latest.get(device_id)
            as_dict = MessageToDict(report, preserving_proto_field_name=True) if report else None
            given_up = lost_between(before, ledger)
            batch.telemetry[device_id] = (ledger, as_dict, count, given_up)
            lost += given_up
        samples, remember = self._health_samples(reports)
        batch.history = self._history.due(now, everything=final)
        batch.prune_history_before = self._history.prune_before(now)
        if batch.prune_history_before:  # once per history bucket: events are pruned with it
            batch.prune_events_before = int(now) - self._events_kept_s

        def after_commit(history_stored: bool) -> None:
            if not history_stored:
                self.history_lost += len(batch.history)  # not retried: it would block the rest
            remember()
            self._history.written(batch.history)
            if batch.prune_history_before:
                self._history.pruned(now)
            for report in reports:  # after the write: a retried batch is not counted twice
                self._history.add(report, now)
            if samples and self._rollouts is not None:
                self._judge(self._rollouts, samples)
            if batch.outcomes:
                self._on_unhealthy()  # an install or a failure: the controller looks now
            self._refused(refusals)
            self.accepted += accepted
            self.rejected += rejected
            self.duplicates += duplicates
            self.filled += filled
            self.deferred += deferred
            self.gaps += lost

        return batch, after_commit

    def _judge(self, rollouts: HealthStore, samples: list[HealthSample]) -> None:
        # After the batch is stored: a failure here loses one report's worth of health counts,
        # never the telemetry itself.
        try:
            failed = rollouts.record_health(samples)
        except Exception:
            log.exception("cannot update the health gates with %d report(s)", len(samples))
            return
        for failure in failed:
            log.warning(
                "device %s failed a rollout's health gate: %s", failure.device_id, failure.detail
            )
        if failed:
            self.unhealthy += len(failed)
            self._on_unhealthy()

    def connection_lost(self, device_id: str) -> None:
        """The broker saw this device's connection end without a Will (the embedded broker):
        record it offline, in order with its messages."""
        try:
            topic = device_topic(self._fleet_id, device_id, "state")
        except ValueError:
            return
        state = telemetry_pb2.DeviceState(
            device_id=device_id, state="offline", sent_unix_ms=int(time.time() * 1000)
        )
        try:
            self._queue.put((topic, state.SerializeToString(), 0, 0), timeout=10)
        except queue.Full:
            self.dropped += 1

    @property
    def connected(self) -> bool:
        """True while the ingest's broker connection is up."""
        publisher = self._publisher
        return publisher is not None and publisher.connected

    def nudge(self, device_ids: Sequence[str]) -> None:
        """Ask these devices to check in now."""
        for device_id in device_ids:
            self.command(device_id, "checkin")

    def command(self, device_id: str, kind: str, model_name: str = "") -> str:
        """Publish a command on a device's commands topic (QoS 1); return its id.

        Raises:
            TransientError: not connected to the broker.
        """
        publisher = self._publisher
        if publisher is None:
            raise TransientError("telemetry ingest is not connected to the broker")
        command = telemetry_pb2.Command(
            id=uuid.uuid4().hex,
            kind=kind,
            issued_unix_ms=int(time.time() * 1000),
            model_name=model_name,
            device_id=device_id,
        )
        publisher.raw_client().publish(
            commands_topic(self._fleet_id, device_id), command.SerializeToString(), qos=1
        )
        return command.id

    def stop(self) -> None:
        """Disconnect and let the writer finish what it has (with the database down: give up
        what waits, counted ``dropped``; devices send it again)."""
        self._halt.set()
        if self._publisher is not None:
            self._publisher.close()
        if self._writer.is_alive():
            self._queue.put(None)
            self._writer.join(timeout=30)
            if self._writer.is_alive():
                log.warning("the telemetry writer did not finish in 30 s; %d open history "
                            "bucket(s) not written", len(self._history))  # fmt: skip
            elif self.spill is not None:
                self.spill.close()
