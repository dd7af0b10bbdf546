"""MQTT publishing with paho-mqtt 2.x: MQTT v5 first, 3.1.1 when the broker refuses v5.

The embedded broker of the fleet server (amqtt) only speaks 3.1.1 and answers a v5 CONNECT with
"Unsupported protocol version"; production brokers (mosquitto, EMQX) speak v5. The protocol that
worked is remembered for reconnects.
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.errors import ConfigError, TransientError

__all__ = ["MqttEndpoint", "MqttPublisher", "masked", "parse_mqtt_url"]

log = logging.getLogger(__name__)
_UNSUPPORTED_PROTOCOL = 132  # MQTT v5 CONNACK reason code
_MAX_QUEUED = 1000  # bound paho's in-memory queue while disconnected
# How long the broker keeps a persistent session (and queues for it) after a disconnect: long
# enough for a server restart, short enough that a replaced server's session does not pile up.
_SESSION_EXPIRY_S = 600


@dataclass(frozen=True)
class MqttEndpoint:
    """Where and how to connect."""

    host: str
    port: int
    tls: bool
    username: str | None = None
    password: str | None = None
    # With TLS: the CA to check the broker against, and a client certificate and key (files)
    # when the broker identifies clients by certificate.
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    # False for a broker known to speak only MQTT 3.1.1 (the server's embedded one): no v5
    # attempt first, which such a broker answers by closing the connection a second later.
    v5: bool = True

    def with_tls_files(self, ca_file: str, cert_file: str, key_file: str) -> MqttEndpoint:
        """The same endpoint presenting this client certificate (used only with TLS)."""
        return replace(self, ca_file=ca_file, cert_file=cert_file, key_file=key_file)

    def __str__(self) -> str:  # never print the password
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def masked(url: str) -> str:
    """``url`` with the password of a ``user:password@`` part shown as ``***``: for logs and
    error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{user}:***@{host}").geturl()


def parse_mqtt_url(url: str) -> MqttEndpoint:
    """Parse ``mqtt[s]://[user[:password]@]host[:port]``.

    Raises:
        ConfigError: not such a URL.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ConfigError(
            f"MQTT URL {masked(url)!r} must look like mqtt://host:port or mqtts://host:port"
        )
    tls = parts.scheme == "mqtts"
    try:
        port = parts.port if parts.port is not None else (8883 if tls else 1883)
    except ValueError as exc:
        raise ConfigError(f"MQTT URL {masked(url)!r} has an invalid port") from exc
    if not 0 < port < 65536:
        raise ConfigError(f"MQTT URL {masked(url)!r} has an invalid port")
    return MqttEndpoint(
        host=parts.hostname,
        port=port,
        tls=tls,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
    )


class MqttPublisher:
    """A connected MQTT client that publishes QoS 1 messages and reconnects by itself."""

    def __init__(
        self,
        endpoint: MqttEndpoint,
        client_id: str,
        *,
        timeout_s: float = 10.0,
        on_connected: Callable[[paho.Client], None] | None = None,
        will: tuple[str, bytes] | None = None,
        persistent_session: bool = False,
        on_message: Callable[[paho.Client, object, paho.MQTTMessage], None] | None = None,
        manual_ack: bool = False,
        receive_maximum: int = 0,
    ) -> None:
        """``on_connected`` runs in paho's thread after every successful (re)connect; ``will``
        (topic, payload) is the retained Last Will the broker publishes if the connection dies.

        A subscriber passes ``on_message`` here (not later: a persistent session delivers as
        soon as it connects); with ``manual_ack`` a QoS 1 message is acknowledged only when
        the subscriber calls ``ack`` (it stored it), and ``receive_maximum`` (MQTT v5) bounds
        how many the broker sends before they are."""
        self._on_message = on_message
        self._manual_ack = manual_ack
        self._receive_maximum = receive_maximum
        self.endpoint = endpoint
        self._on_connected = on_connected
        self._will = will
        # A persistent session makes the broker keep this client's subscriptions and queue its
        # QoS 1 messages while it is away (the server's ingest across restarts).
        self._persistent = persistent_session
        self._client_id = client_id
        self._timeout = timeout_s
        self._client: paho.Client | None = None
        self.protocol: paho.MQTTProtocolVersion | None = None
        self._connected = threading.Event()

    def _make_client(
        self, protocol: paho.MQTTProtocolVersion
    ) -> tuple[paho.Client, threading.Event, list[object]]:
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self._client_id,
            protocol=protocol,
            clean_session=None if protocol == paho.MQTTv5 else not self._persistent,
        )
        client.max_queued_messages_set(_MAX_QUEUED)
        if self._manual_ack:
            client.manual_ack_set(True)
        if self._on_message is not None:
            client.on_message = self._on_message
        if self._will is not None and protocol == paho.MQTTv5:
            # Only on v5: the 3.1.1 fallback exists for the embedded broker (amqtt), which
            # refuses a CONNECT with a Will ("will topic/message not present"), measured.
            client.will_set(self._will[0], self._will[1], qos=1, retain=True)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        if self.endpoint.username:
            client.username_pw_set(self.endpoint.username, self.endpoint.password)
        if self.endpoint.tls:
            client.tls_set(
                ca_certs=self.endpoint.ca_file,
                certfile=self.endpoint.cert_file,
                keyfile=self.endpoint.key_file,
                cert_reqs=ssl.CERT_REQUIRED,
            )
        answered = threading.Event()
        outcome: list[object] = []

        def on_connect(
            _c: paho.Client, _u: object, _f: object, reason: ReasonCode, _p: object
        ) -> None:
            outcome.append(reason)
            if reason.is_failure and self._client is _c and not self._connected.is_set():
                # paho reconnecting by itself after a lost connection, refused.
                log.warning("MQTT broker %s refused the reconnection: %s", self.endpoint, reason)
            if not reason.is_failure:
                self._connected.set()
                log.info("connected to MQTT broker %s", self.endpoint)
                if self._on_connected is not None:
                    self._on_connected(_c)
            answered.set()

        def on_disconnect(
            _c: paho.Client, _u: object, _f: object, reason: ReasonCode, _p: object
        ) -> None:
            if self._connected.is_set():
                log.warning("MQTT connection to %s lost: %s", self.endpoint, reason)
            self._connected.clear()
            answered.set()

        client.on_connect = on_connect
        client.on_disconnect = on_disconnect
        return client, answered, outcome

    def connect(self) -> None:
        """Connect, trying MQTT v5 and then 3.1.1.

        Raises:
            TransientError: the broker is unreachable or refused both protocol versions.
        """
        last = "no answer"
        for protocol in (paho.MQTTv5, paho.MQTTv311) if self.endpoint.v5 else (paho.MQTTv311,):
            client, answered, outcome = self._make_client(protocol)
            try:
                if protocol == paho.MQTTv5 and (self._persistent or self._receive_maximum):
                    properties = Properties(PacketTypes.CONNECT)
                    if self._persistent:
                        properties.SessionExpiryInterval = _SESSION_EXPIRY_S
                    if self._receive_maximum:
                        properties.ReceiveMaximum = self._receive_maximum
                    client.connect(
                        self.endpoint.host,
                        self.endpoint.port,
                        keepalive=30,
                        clean_start=not self._persistent,
                        properties=properties,
                    )
                else:
                    client.connect(self.endpoint.host, self.endpoint.port, keepalive=30)
            except (OSError, ValueError) as exc:
                raise TransientError(f"MQTT broker {self.endpoint} unreachable: {exc}") from exc
            client.loop_start()
            answered.wait(self._timeout)
            if self._connected.is_set():
                self._client, self.protocol = client, protocol
                return
            client.loop_stop()
            client.disconnect()
            reason = outcome[0] if outcome else None
            last = str(reason) if reason is not None else "no CONNACK"
            # A 3.1.1-only broker answers v5 with "unsupported protocol", or (amqtt, when the
            # CONNECT carries a v5 Will) closes the connection without any CONNACK.
            unsupported = reason is None or (
                isinstance(reason, ReasonCode) and reason.value in (_UNSUPPORTED_PROTOCOL, 1)
            )
            if protocol == paho.MQTTv5 and unsupported:
                log.info("broker %s refused MQTT v5; falling back to 3.1.1", self.endpoint)
                continue
            break
        raise TransientError(f"MQTT broker {self.endpoint} refused the connection: {last}")

    @property
    def connected(self) -> bool:
        """True while the broker connection is up."""
        return self._connected.is_set()

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> bool:
        """Queue a QoS 1 message; False when it could not even be queued (counted by caller)."""
        if self._client is None:
            return False
        info = self._client.publish(topic, payload, qos=1, retain=retain)
        return info.rc == paho.MQTT_ERR_SUCCESS

    def publish_info(
        self, topic: str, payload: bytes, *, retain: bool = False
    ) -> paho.MQTTMessageInfo | None:
        """Queue a QoS 1 message and return its tracker (None when it could not be queued)."""
        if self._client is None:
            return None
        info = self._client.publish(topic, payload, qos=1, retain=retain)
        return info if info.rc == paho.MQTT_ERR_SUCCESS else None

    def raw_client(self) -> paho.Client:
        """The connected paho client, for subscribers that need more than publish.

        Raises:
            TransientError: not connected yet.
        """
        if self._client is None:
            raise TransientError(f"not connected to {self.endpoint}")
        return self._client

    def close(self) -> None:
        """Flush briefly, disconnect and stop the network thread."""
        if self._client is None:
            return
        self._connected.clear()  # first: a disconnection we asked for is no lost connection
        self._client.disconnect()
        self._client.loop_stop()
        self._client = None
