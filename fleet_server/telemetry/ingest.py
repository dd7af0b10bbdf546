"""Consume device telemetry from MQTT and keep each device's latest report.

With an MQTT v5 broker the server subscribes through a shared subscription so that several
replicas split the stream; against the embedded 3.1.1 broker it subscribes plainly (one server).
A message is accepted only when the device id in its payload matches the topic it came on.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

import paho.mqtt.client as paho
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import DecodeError

from agent.errors import TransientError
from agent.telemetry.mqtt import MqttEndpoint, MqttPublisher
from fleet_server.storage.db import Database
from protos import telemetry_pb2
from protos.topics import commands_topic, device_from_topic, telemetry_filter

__all__ = ["TelemetryIngest", "decode_report"]

log = logging.getLogger(__name__)
_MAX_PAYLOAD = 256 * 1024
_QUEUE_BOUND = 10_000


def decode_report(
    topic: str, payload: bytes, fleet_id: str
) -> telemetry_pb2.TelemetryReport | None:
    """The report in a message, or None (logged) when it is malformed or spoofed."""
    where = device_from_topic(topic)
    if where is None or where[0] != fleet_id or where[2] != "telemetry":
        log.warning("ignoring message on unexpected topic %r", topic[:200])
        return None
    if len(payload) > _MAX_PAYLOAD:
        log.warning(
            "ignoring %d-byte telemetry from %s (limit %d)", len(payload), where[1], _MAX_PAYLOAD
        )
        return None
    report = telemetry_pb2.TelemetryReport()
    try:
        report.ParseFromString(payload)
    except DecodeError:
        log.warning("ignoring undecodable telemetry on %s", topic)
        return None
    if report.device_id != where[1]:
        log.warning("ignoring telemetry on %s that claims device %r", topic, report.device_id[:64])
        return None
    return report


class TelemetryIngest:
    """An MQTT subscriber feeding a bounded queue drained by one writer thread."""

    def __init__(self, endpoint: MqttEndpoint, db: Database, fleet_id: str, client_id: str) -> None:
        self._endpoint = endpoint
        self._db = db
        self._fleet_id = fleet_id
        self._client_id = client_id
        self._queue: queue.Queue[tuple[str, bytes] | None] = queue.Queue(maxsize=_QUEUE_BOUND)
        self._publisher: MqttPublisher | None = None
        self._writer = threading.Thread(target=self._drain, name="telemetry-ingest", daemon=True)
        self.accepted = 0
        self.rejected = 0
        self.dropped = 0

    def start(self) -> None:
        """Connect, subscribe and start writing.

        Raises:
            TransientError: the broker is unreachable.
        """
        topics: list[str] = []

        def subscribe(client: paho.Client) -> None:
            # Runs after every (re)connect, so a broker restart does not end the subscription.
            if topics:
                client.subscribe(topics[0], qos=1)

        publisher = MqttPublisher(self._endpoint, client_id=self._client_id, on_connected=subscribe)
        publisher.connect()
        client = publisher.raw_client()
        shared = publisher.protocol == paho.MQTTv5
        topic = telemetry_filter(self._fleet_id, "edgefleet-server" if shared else None)
        topics.append(topic)

        def on_message(_c: paho.Client, _u: object, message: Any) -> None:
            # Never block the network thread: hand the message to the writer.
            try:
                self._queue.put_nowait((message.topic, bytes(message.payload)))
            except queue.Full:
                self.dropped += 1

        client.on_message = on_message
        result, _mid = client.subscribe(topic, qos=1)
        if result != paho.MQTT_ERR_SUCCESS:
            publisher.close()
            raise TransientError(f"cannot subscribe to {topic} on {self._endpoint}")
        self._publisher = publisher
        self._writer.start()
        log.info("ingesting telemetry from %s on %s", topic, self._endpoint)

    def _drain(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            topic, payload = item
            report = decode_report(topic, payload, self._fleet_id)
            if report is None:
                self.rejected += 1
                continue
            summary = MessageToDict(report, preserving_proto_field_name=True)
            try:
                known = self._db.record_telemetry(report.device_id, report.seq, summary)
            except Exception:
                log.exception("cannot store telemetry of %s", report.device_id)
                continue
            if known:
                self.accepted += 1
            else:
                self.rejected += 1
                log.warning("telemetry from unknown device %s ignored", report.device_id)

    def nudge(self, device_ids: Sequence[str]) -> None:
        """Ask these devices to check in now (MQTT QoS 1, on each one's commands topic)."""
        publisher = self._publisher
        if publisher is None:
            return
        client = publisher.raw_client()
        now = int(time.time() * 1000)
        for device_id in device_ids:
            command = telemetry_pb2.Command(id=uuid.uuid4().hex, kind="checkin", issued_unix_ms=now)
            client.publish(
                commands_topic(self._fleet_id, device_id), command.SerializeToString(), qos=1
            )

    def stop(self) -> None:
        """Disconnect and let the writer finish what it has."""
        if self._publisher is not None:
            self._publisher.close()
        if self._writer.is_alive():
            self._queue.put(None)
            self._writer.join(timeout=10)
