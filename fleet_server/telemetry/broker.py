"""An MQTT broker inside the server process (amqtt), for single-machine setups: closed like the
production one (mosquitto with packaging/mosquitto/edgefleet.conf).

amqtt 0.12 alone would not do: its TLS asks for client certificates only optionally, it reads a
packet of any announced size into memory, and it deletes a client's session before it
authenticates the client. So the server terminates TLS itself and hands amqtt only connections
it has vetted, through amqtt's external listener:

- TLS with a client certificate from the fleet CA required (``ssl.CERT_REQUIRED``);
- the first packet must be a CONNECT (MQTT 3.1.1) whose client id is the certificate's common
  name, and that identity must be admitted now (an enrolled, not revoked device, or a server
  process): anything else gets a refusing CONNACK and is closed before amqtt sees it;
- a Will is accepted only on the client's own state topic (amqtt publishes Wills without its
  topic check);
- connections are counted from their TCP accept (4,096 at most, 4 unvetted per certificate);
- every packet's announced length is checked before its body is read (``max_packet``), and a
  device's packets are read within a byte budget and only while amqtt's backlog is small
  (back-pressure: a flood waits in the sender's socket);
- amqtt's topic check (:class:`TopicRights`) applies :mod:`protos.topics`, the same rules the
  mosquitto ACL file is generated from, to every publish, subscribe and delivery; a retain
  flag is kept only on state topics.

:meth:`EmbeddedBroker.disconnect` closes an identity's connections (revocation), and
``on_disconnect`` tells the server when a connection ends without a DISCONNECT packet and no
newer connection of the same identity took over (presence: agents send no Will over 3.1.1,
so this stands in for it). :meth:`EmbeddedBroker.quiesce` hands over what was acknowledged
before a stop. amqtt speaks MQTT 3.1.1 only; clients fall back to it. It runs its own asyncio
loop in a thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from amqtt.adapters import StreamWriterAdapter
from amqtt.broker import Broker
from amqtt.contexts import Action
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin

from fleet_server.telemetry.packets import (
    Connect,
    PacketReader,
    PacketTooLargeError,
    parse_connect,
    read_packet,
)
from fleet_server.telemetry.throttle import OncePer
from protos.topics import is_server_identity, may_publish, may_subscribe, retain_allowed

__all__ = ["EmbeddedBroker", "TopicRights"]

log = logging.getLogger(__name__)
_PUBACK_TIMEOUT = "Timeout waiting for PUBACK"


class _PubackTimeouts(logging.Filter):
    """amqtt logs an ERROR with a traceback for each message the ingest leaves unacknowledged
    for 5 s (a database outage past the spill's bound, or without a spill): 2,000 of them, and
    11,000 lines, in an 8 s outage. This makes them one line a minute, with their count."""

    def __init__(self) -> None:
        super().__init__()
        self._once = OncePer(60.0)
        self._count = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if _PUBACK_TIMEOUT not in record.getMessage():
            return True
        self._count += 1
        if not self._once.first("puback"):
            return False
        record.msg = (
            "the embedded broker gave up waiting for the ingest's acknowledgement of %d "
            "message(s) since this was last logged (not logged again this minute); devices "
            "publish them again once the server reports them missing"
        )
        record.args, record.exc_info, record.exc_text = (self._count,), None, None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        self._count = 0
        return True


_LISTENER = "edgefleet"
_HANDSHAKE_S = 5.0  # for the TLS handshake
_CONNECT_S = 3.0  # then for the CONNECT
_MAX_CONNECTIONS = 4096  # open TCP connections, vetted or not (the unit allows 65,536 files)
_MAX_PENDING_PER_IDENTITY = 4  # connections of one certificate not yet vetted
# What one device may send: 1 MiB a second after 8 MiB (a 10,000-report replay is ~10 MiB).
DEVICE_BUDGET = (1024 * 1024.0, 8 * 1024 * 1024.0)
_BACKLOG = 500  # messages amqtt holds for delivery before devices' packets wait to be read
_MAX_UNREAD = 4 * 1024 * 1024  # bytes written to a client that it has not read: it is gone
DEFAULT_MAX_PACKET = 320 * 1024  # as packaging/mosquitto/edgefleet.conf (max_packet_size)
# CONNACK return codes of MQTT 3.1.1.
_UNACCEPTABLE_PROTOCOL, _IDENTIFIER_REJECTED, _NOT_AUTHORIZED = 1, 2, 5
_BAD_WILL = 105  # refused with CONNACK 5; told apart in the log
_REASONS = {
    _BAD_WILL: "its Will is not on its own state topic",
    _UNACCEPTABLE_PROTOCOL: "not MQTT 3.1.1",
    _IDENTIFIER_REJECTED: "its client id is not its certificate's name",
    _NOT_AUTHORIZED: "not an enrolled device with its current certificate, or revoked",
}


@dataclass(frozen=True)
class TopicRights:
    """What the topic plugin asks: may this identity do that on this topic of ``fleet`` (the
    rules of :mod:`protos.topics`)."""

    fleet: str

    def may_publish(self, identity: str, topic: str) -> bool:
        return may_publish(identity, topic, self.fleet)

    def may_subscribe(self, identity: str, topic_filter: str) -> bool:
        return may_subscribe(identity, topic_filter, self.fleet)


class VettedAuth(BaseAuthPlugin):
    """Every connection amqtt sees was vetted by the TLS front: its client id is its
    certificate's name and that identity is admitted."""

    @dataclass
    class Config:
        pass

    async def authenticate(self, *, session: Any) -> bool:
        return bool(session.client_id)


class RightsCheck(BaseTopicPlugin):
    """amqtt's topic check, applying :class:`TopicRights` to the session's identity."""

    @dataclass
    class Config:
        rights: Any = None

    async def topic_filtering(
        self, *, session: Any = None, topic: str | None = None, action: Any = None
    ) -> bool:
        rights: TopicRights = self.config.rights
        identity = getattr(session, "client_id", None)
        if not identity or not topic:
            return False
        if action == Action.PUBLISH:
            return rights.may_publish(identity, topic)
        # SUBSCRIBE checks the filter; RECEIVE checks each delivered message's topic (a
        # retained message or an overlapping filter delivers nothing beyond the rights).
        return rights.may_subscribe(identity, topic)


class _Broker(Broker):
    """amqtt's broker with two faults of amqtt 0.12 fixed (both measured):

    - it acknowledges a PUBLISH when it reads it and passes it on later; a client that
      disconnected meanwhile had its acknowledged messages dropped (3,581 of 10,000 reports of
      a replaying device). Here what a client sent is passed on, in order, before its session
      ends (the message loop is ours).
    - it sends a client, when it connects, the retained messages matching *every* client's
      subscriptions, without the topic check (a device received every other device's retained
      state). Here a client gets retained messages only for its own subscriptions, and only
      those its identity may receive.
    """

    async def _client_message_loop(self, client_session: Any, handler: Any) -> None:
        """Serve one connected client: its publishes in the order they came, its
        (un)subscriptions, and at its end, first whatever it published before it went."""
        waiting = {
            "disconnect": asyncio.ensure_future(handler.wait_disconnect()),
            "subscribe": asyncio.ensure_future(handler.get_next_pending_subscription()),
            "unsubscribe": asyncio.ensure_future(handler.get_next_pending_unsubscription()),
            "deliver": asyncio.ensure_future(handler.mqtt_deliver_next_message()),
        }
        try:
            while True:
                done, _ = await asyncio.wait(waiting.values(), return_when=asyncio.FIRST_COMPLETED)
                if waiting["deliver"] in done:
                    if not await self._handle_message_delivery(
                        client_session, handler, waiting["deliver"]
                    ):
                        return  # a malformed topic: amqtt closes the connection
                    waiting["deliver"] = asyncio.ensure_future(handler.mqtt_deliver_next_message())
                if waiting["subscribe"] in done:
                    await self._handle_subscription(client_session, handler, waiting["subscribe"])
                    waiting["subscribe"] = asyncio.ensure_future(
                        handler.get_next_pending_subscription()
                    )
                if waiting["unsubscribe"] in done:
                    await self._handle_unsubscription(
                        client_session, handler, waiting["unsubscribe"]
                    )
                    waiting["unsubscribe"] = asyncio.ensure_future(
                        handler.get_next_pending_unsubscription()
                    )
                if waiting["disconnect"] in done:
                    await self._deliver_the_rest(client_session, handler, waiting.pop("deliver"))
                    await self._handle_disconnect(client_session, handler, waiting["disconnect"])
                    return
        except asyncio.CancelledError:
            log.debug("the message loop of %s was cancelled", client_session.client_id)
        finally:
            for waiter in waiting.values():
                waiter.cancel()
            await asyncio.gather(*waiting.values(), return_exceptions=True)

    async def _deliver_the_rest(
        self, client_session: Any, handler: Any, deliver: asyncio.Future[Any]
    ) -> None:
        """Pass on, in order, what the client published before it went (amqtt acknowledged
        it when it read it)."""
        deliver.cancel()  # a cancelled wait leaves its message in the queue
        await asyncio.gather(deliver, return_exceptions=True)
        if not deliver.cancelled() and deliver.exception() is None and deliver.result():
            await self._handle_message_delivery(client_session, handler, deliver)
        queue = client_session.delivered_message_queue
        while not queue.empty():
            received: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            received.set_result(queue.get_nowait())
            await self._handle_message_delivery(client_session, handler, received)

    async def _publish_retained_messages_for_subscription(
        self, subscription: tuple[str, int], session: Any
    ) -> None:
        topic_filter, qos = subscription
        subscribers = self._subscriptions.get(topic_filter, [])
        if not any(s.client_id == session.client_id for s, _qos in subscribers):
            return
        handler = self._get_handler(session)
        if handler is None:
            return
        for topic, retained in list(self._retained_messages.items()):
            if not self._matches(topic, topic_filter):
                continue
            if not await self._topic_filtering(session, topic, Action.RECEIVE):
                continue
            await handler.mqtt_publish(
                retained.topic, retained.data, min(qos, retained.qos or qos), retain=True
            )


class _BoundedWriter(StreamWriterAdapter):
    """amqtt's writer for one client, ending the connection when the client stops reading:
    what amqtt queues for it (a PINGRESP per PINGREQ, deliveries) would otherwise grow without
    bound and starve the broker's loop (measured: one device that never read kept every
    other client from completing its TLS handshake)."""

    def write(self, data: bytes) -> None:
        super().write(data)
        transport = self._writer.transport
        # The TLS layer's own buffer, and the socket transport's under it (asyncio has no
        # public way to reach that one: the TLS transport reports only its own).
        raw = getattr(getattr(transport, "_ssl_protocol", None), "_transport", None)
        unread = transport.get_write_buffer_size() + (
            raw.get_write_buffer_size() if raw is not None else 0
        )
        if unread > _MAX_UNREAD:
            log.warning("closing an MQTT connection whose client does not read")
            transport.abort()


class _Accepted(asyncio.Protocol):
    """A fresh TCP connection: reads nothing (the TLS handshake must see the client's first
    bytes) and hands the transport on."""

    def __init__(self, serve: Callable[[asyncio.BaseTransport], Any]) -> None:
        self._serve = serve
        self._task: asyncio.Task[Any] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.pause_reading()  # type: ignore[attr-defined]
        self._task = asyncio.get_running_loop().create_task(self._serve(transport))


class EmbeddedBroker:
    """Start and stop the vetting TLS front and amqtt behind it on ``host:port``."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        tls: ssl.SSLContext,
        fleet: str,
        admits: Callable[[str, str], bool],
        on_disconnect: Callable[[str], None] | None = None,
        max_packet: int = DEFAULT_MAX_PACKET,
    ) -> None:
        """``tls`` must require client certificates from the fleet CA; ``admits(identity,
        serial)`` (called in a worker thread, serial in lower-case hex) says whether a
        certificate's holder may connect now."""
        if tls.verify_mode != ssl.CERT_REQUIRED:
            raise ValueError("the embedded broker's TLS context must require client certificates")
        self.host = host
        self.port = port
        self._tls = tls
        self._rights = TopicRights(fleet)
        self._admits = admits
        self._on_disconnect = on_disconnect or (lambda _identity: None)
        self._max_packet = max_packet
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._open = 0
        self._pending: dict[str, int] = {}
        self._broker: _Broker | None = None
        self._server: asyncio.Server | None = None
        self._connections: dict[str, set[asyncio.StreamWriter]] = {}
        self.refused = 0  # connections refused by the front (no/unknown/revoked identity...)
        self._refusals = OncePer(60.0)

    @property
    def url(self) -> str:
        return f"mqtts://{self.host}:{self.port}"

    def start(self, timeout_s: float = 15.0) -> None:
        """Start listening; return once the broker accepts connections.

        Raises:
            OSError: the broker could not bind or start in time.
        """
        self._thread = threading.Thread(target=self._run, name="mqtt-broker", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise OSError(f"embedded MQTT broker did not start within {timeout_s:.0f} s")
        if self._error is not None:
            raise OSError(f"embedded MQTT broker failed on {self.host}:{self.port}: {self._error}")
        log.info("embedded MQTT broker (3.1.1, mTLS) listening on %s", self.url)

    def _run(self) -> None:
        # amqtt logs per connection and per odd packet (a stray PUBACK: a WARNING each), and
        # its state machine library per transition: a client could fill the server's log.
        # What matters is logged by the front, once a minute per client.
        for name in ("amqtt", "transitions"):
            logging.getLogger(name).setLevel(logging.ERROR)
        amqtt = logging.getLogger("amqtt.broker")
        if not any(isinstance(f, _PubackTimeouts) for f in amqtt.filters):  # one per process
            amqtt.addFilter(_PubackTimeouts())
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        config: dict[str, Any] = {
            "listeners": {"default": {"type": "external"}, _LISTENER: {"type": "external"}},
            "plugins": {
                f"{__name__}.VettedAuth": {},
                f"{__name__}.RightsCheck": {"rights": self._rights},
            },
        }
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        # Bound first: a port that is taken leaves no half-started amqtt behind.
        broker = self._broker = _Broker(config)
        try:
            # Plain TCP first: connections are counted before their TLS handshake.
            loop = asyncio.get_running_loop()
            server = await loop.create_server(
                lambda: _Accepted(lambda t: self._client(broker, t)), self.host, self.port
            )
        except OSError as exc:
            self._error = exc
            self._ready.set()
            return
        self._server = server
        try:
            await broker.start()
        except BaseException as exc:  # noqa: BLE001 - reported to start()'s caller
            server.close()
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        await self._stopped.wait()
        server.close()
        for writers in list(self._connections.values()):
            for writer in list(writers):
                writer.transport.abort()
        await broker.shutdown()

    async def _client(self, broker: _Broker, transport: asyncio.BaseTransport) -> None:
        """One client connection, counted from its TCP accept (not reading until TLS takes
        over), to its end (or the broker's stop: then quietly)."""
        if self._open >= _MAX_CONNECTIONS:
            transport.abort()  # type: ignore[attr-defined]
            return
        self._open += 1
        writer: asyncio.StreamWriter | None = None
        try:
            loop = asyncio.get_running_loop()
            reader = asyncio.StreamReader(limit=2**16, loop=loop)
            protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
            tls_transport = await loop.start_tls(
                transport,  # type: ignore[arg-type]
                protocol,
                self._tls,
                server_side=True,
                ssl_handshake_timeout=_HANDSHAKE_S,
            )
            if tls_transport is None:
                return
            # start_tls does not call connection_made: without it the reader has no transport
            # to pause, and a flood piles up in its buffer (measured: 1.5 GB in 10 s).
            protocol.connection_made(tls_transport)
            writer = asyncio.StreamWriter(tls_transport, protocol, reader, loop)
            await self._vet(broker, reader, writer)
        except (TimeoutError, ConnectionError, ssl.SSLError, OSError) as exc:
            log.debug("MQTT connection dropped in its TLS handshake: %r", exc)
        except asyncio.CancelledError:
            pass
        finally:
            self._open -= 1
            if writer is not None:
                writer.transport.abort()
            transport.abort()  # type: ignore[attr-defined]

    def _busy(self) -> bool:
        """Whether amqtt holds so much for delivery that devices' packets should wait."""
        broker = self._broker
        if broker is None:
            return False
        if broker._broadcast_queue.qsize() > _BACKLOG:  # amqtt has no accessor
            return True
        tasks = broker._tasks_queue
        return len(tasks) > _BACKLOG and sum(not t.done() for t in tasks) > _BACKLOG

    async def _vet(
        self, broker: _Broker, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Admit one TLS connection to amqtt, or refuse it (see the module docs)."""
        identity, serial = _subject(writer.get_extra_info("peercert"))
        if self._pending.get(identity, 0) >= _MAX_PENDING_PER_IDENTITY:
            writer.transport.abort()  # one certificate cannot hold the door for the others
            return
        self._pending[identity] = self._pending.get(identity, 0) + 1
        connect: Connect | None = None
        try:
            first = await asyncio.wait_for(read_packet(reader, self._max_packet), _CONNECT_S)
            connect = parse_connect(first)
            code = 0
            if connect is None:
                code = -1
            elif connect.level != 4:
                code = _UNACCEPTABLE_PROTOCOL
            elif not identity or connect.client_id != identity:
                code = _IDENTIFIER_REJECTED
            elif connect.will_topic is not None and not (
                self._rights.may_publish(identity, connect.will_topic)
                and retain_allowed(connect.will_topic)
            ):
                code = _BAD_WILL
            elif not await asyncio.to_thread(self._admits, identity, serial):
                code = _NOT_AUTHORIZED
        except (TimeoutError, asyncio.IncompleteReadError, PacketTooLargeError, ValueError,
                ConnectionError, ssl.SSLError) as exc:  # fmt: skip
            log.debug("MQTT connection dropped before CONNECT: %r", exc)
            code = -1
        except Exception:
            log.exception("cannot vet an MQTT connection")
            code = -1
        finally:
            left = self._pending.get(identity, 1) - 1
            if left:
                self._pending[identity] = left
            else:
                self._pending.pop(identity, None)
        if code:
            self.refused += 1
            if code == _UNACCEPTABLE_PROTOCOL:  # an MQTT v5 client about to fall back
                log.debug("MQTT connection of %r: not 3.1.1", identity[:64])
                self.refused -= 1
            elif code > 0 and self._refusals.first(f"{code}:{identity}"):
                log.warning(
                    "MQTT connection of %r refused: %s (not logged again this minute)",
                    identity[:64],
                    _REASONS[code],
                )
            if code > 0:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    writer.write(
                        bytes((0x20, 2, 0, _NOT_AUTHORIZED if code == _BAD_WILL else code))
                    )
                    await writer.drain()
            writer.transport.abort()
            return
        self._connections.setdefault(identity, set()).add(writer)
        server = is_server_identity(identity)
        packets = PacketReader(
            reader,
            first,
            max_packet=self._max_packet,
            identity=identity,
            busy=(lambda: False) if server else self._busy,
            budget=None if server else DEVICE_BUDGET,
        )
        try:
            # A server's ingest may lag behind a busy database: it is never cut off.
            out = StreamWriterAdapter(writer) if server else _BoundedWriter(writer)
            await broker.external_connected(packets, out, _LISTENER)
        finally:
            writers = self._connections.get(identity, set())
            writers.discard(writer)
            writer.transport.abort()
            # Gone without a goodbye, and not replaced by a newer connection of its own (a
            # reconnect takes the session over: its birth must not be followed by "offline").
            if not writers:
                self._connections.pop(identity, None)
                if not packets.said_goodbye:
                    with contextlib.suppress(Exception):
                        await asyncio.to_thread(self._on_disconnect, identity)

    def quiesce(self, timeout_s: float = 5.0) -> bool:
        """Before a stop: take no more connections, close the devices' ones, and wait until
        amqtt has handed everything it acknowledged to its subscribers (the server's ingest),
        for up to ``timeout_s``. False when it did not get there in time."""
        loop = self._loop
        if loop is None:
            return True
        try:
            future = asyncio.run_coroutine_threadsafe(self._quiesce(timeout_s), loop)
            return bool(future.result(timeout_s + 1))
        except (RuntimeError, TimeoutError, concurrent.futures.TimeoutError):
            return False

    async def _quiesce(self, timeout_s: float) -> bool:
        if self._server is not None:
            self._server.close()
        for identity, writers in list(self._connections.items()):
            if not is_server_identity(identity):
                for writer in list(writers):
                    writer.transport.abort()
        deadline = time.monotonic() + timeout_s
        broker = self._broker
        while broker is not None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            if any(not is_server_identity(i) for i in self._connections):
                continue  # a device's session is still handing over what it sent
            if broker._broadcast_queue.empty() and all(t.done() for t in broker._tasks_queue):
                return True
        return broker is None

    def disconnect(self, identity: str) -> None:
        """Close every connection of ``identity`` (after its revocation; a reconnect is then
        refused by ``admits``)."""
        loop = self._loop
        if loop is None:
            return

        def close() -> None:
            for writer in list(self._connections.get(identity, ())):
                writer.transport.abort()

        with contextlib.suppress(RuntimeError):  # the loop has ended
            loop.call_soon_threadsafe(close)

    def stop(self) -> None:
        """Stop the broker and its thread."""
        if self._loop is not None and self._stopped is not None:
            # A broker that failed to start has closed its loop already (RuntimeError).
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stopped.set)
        if self._thread is not None:
            self._thread.join(timeout=10)


def _subject(peercert: Any) -> tuple[str, str]:
    """(common name, serial in lower-case hex) of a verified peer certificate (``ssl``'s dict
    form); "" for what it lacks."""
    peercert = peercert or {}
    name = ""
    for rdn in peercert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                name = str(value)
    try:
        serial = f"{int(peercert.get('serialNumber', ''), 16):x}"
    except ValueError:
        serial = ""
    return name, serial
