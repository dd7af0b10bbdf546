"""The telemetry plane of one server process: the embedded broker (when no --mqtt-url names
one), this process's MQTT client identity, the ingest and its connector, and the certificate
revocation list mosquitto reads. The composition root (:mod:`fleet_server.app`) starts it first
and stops it last."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import ssl
from dataclasses import replace

import sqlalchemy as sa
from cryptography import x509

from agent.telemetry.mqtt import MqttEndpoint
from fleet_server.addresses import (
    free_port,
    mqtt_endpoint,
    remembered_port,
    split_host_port,
    wildcard,
    write_private,
)
from fleet_server.config import Settings
from fleet_server.datadir import DataDir
from fleet_server.errors import DataDirError
from fleet_server.registry.store import DeviceStore
from fleet_server.storage.db import Database
from fleet_server.telemetry.broker import EmbeddedBroker
from fleet_server.telemetry.connector import Connector
from fleet_server.telemetry.ingest import TelemetryIngest
from fleet_server.telemetry.spill import SpillBounds, SpillConfig
from fleet_server.telemetry.store import TelemetryStore
from protos.topics import is_server_identity, server_identity

__all__ = ["TelemetryPlane"]

log = logging.getLogger("fleet_server")


class TelemetryPlane:
    """Broker, ingest and revocation list of one server process (a worker has none of them)."""

    def __init__(self, settings: Settings, data_dir: DataDir, db: Database) -> None:
        self.settings = settings
        self._data_dir = data_dir
        self._db = db
        self.broker: EmbeddedBroker | None = None
        self.ingest: TelemetryIngest | None = None
        self._connector: Connector | None = None
        self._server_serial = ""  # of this process's own MQTT client certificate
        self.mqtt_url = ""  # where this process's ingest connects ("" = no telemetry)
        self.device_mqtt_url = ""  # what devices are told
        self.endpoint: MqttEndpoint | None = None

    def start(self, tls_names: list[str]) -> None:
        """Start the embedded broker (unless --mqtt-url names one) and the ingest (the main
        process only); a worker only learns the URLs.

        Raises:
            DataDirError: the broker cannot listen.
        """
        s = self.settings
        mqtt_url = s.mqtt_url
        device_mqtt_url = s.device_mqtt_url or mqtt_url or ""
        if not mqtt_url and not s.worker:
            if (s.db_url or "").startswith("postgresql"):
                # A shared database means replicas: each would run a broker of its own, and
                # devices enrolled through one would never reach the others' ingest.
                log.warning(
                    "the embedded MQTT broker with a shared database: replicas need one broker "
                    "for all of them (--mqtt-url, docs/deployment.md); a single server is fine"
                )
            self.broker = self._start_broker(tls_names)
            mqtt_url = self.broker.url
            # Devices dial the broker on the host they enrolled through, unless told otherwise.
            device_mqtt_url = s.device_mqtt_url or f"mqtts://:{self.broker.port}"
        endpoint = mqtt_endpoint(mqtt_url) if mqtt_url else None
        if endpoint is not None and self.broker is not None:
            endpoint = replace(endpoint, v5=False)  # amqtt: 3.1.1 only
        if endpoint is not None and not s.worker:
            if endpoint.tls:
                endpoint = self._client_files(endpoint)
            self.ingest = self._start_ingest(endpoint)
        self.mqtt_url, self.device_mqtt_url, self.endpoint = (
            mqtt_url or "",
            device_mqtt_url,
            endpoint,
        )

    def _start_broker(self, tls_names: list[str]) -> EmbeddedBroker:
        """The embedded broker (mTLS against the fleet CA) on --mqtt-listen. Port 0 means the
        port it had before (kept in the data dir, so devices find it after a restart), or any
        free one when that is taken (devices then learn it at their next check-in)."""
        s = self.settings
        data_dir = self._data_dir
        host, port = split_host_port(s.mqtt_listen, "--mqtt-listen")
        names = list(tls_names)
        if not wildcard(host) and host not in names:
            names.append(host)
        key_pem, cert_pem = data_dir.ca().server_credentials(names)
        folder = data_dir.ca_dir
        key_file, cert_file = folder / "mqtt-broker.key", folder / "mqtt-broker.crt"
        write_private(key_file, key_pem)
        cert_file.write_bytes(cert_pem)
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(folder / "ca.crt"))
        tls.verify_mode = ssl.CERT_REQUIRED
        tls.load_cert_chain(cert_file, key_file)
        remembered = data_dir.root / "mqtt-port"
        candidates = [port] if port else [remembered_port(remembered), 0]
        error: OSError | None = None
        for candidate in candidates:
            if candidate is None:
                continue
            broker = EmbeddedBroker(
                host,
                candidate or free_port(host),
                tls=tls,
                fleet=data_dir.fleet_id,
                admits=self._admits,
                on_disconnect=self._connection_lost,
            )
            try:
                broker.start()
            except OSError as exc:
                error = exc
                continue
            if not port:
                with contextlib.suppress(OSError):
                    remembered.write_text(f"{broker.port}\n", encoding="utf-8")
            # The server's own client dials the loopback when the broker listens everywhere.
            if wildcard(host):
                broker.host = "::1" if host == "::" else "127.0.0.1"
            return broker
        raise DataDirError(
            f"{error}. Is another broker running there? Use it with --mqtt-url, or pick "
            "another port with --mqtt-listen HOST:PORT (0 = any free port)"
        )

    def _admits(self, identity: str, serial: str) -> bool:
        """Whether the holder of a fleet certificate may use the embedded broker now: a server
        process, or an enrolled device with its current certificate that is not revoked."""
        if is_server_identity(identity):
            # Only this process, with the certificate it issued itself at this start: an
            # older one (copied off the data dir) would take over and end its subscriptions.
            return identity == server_identity(self.settings.server_name) and bool(
                serial and serial == self._server_serial
            )
        found = DeviceStore(self._db).device_certificate(identity)
        return found is not None and not found[1] and found[0] == serial

    def revoked(self, device_id: str) -> None:
        """A device was revoked: its messages are refused, its connection ends, the CRL says so."""
        if self.ingest is not None:
            self.ingest.revoked(device_id)
        if self.broker is not None:
            self.broker.disconnect(device_id)
        self.write_crl()

    def write_crl(self) -> None:
        """DATA_DIR/ca/fleet.crl: the revoked devices' certificates, for mosquitto's
        ``crlfile`` (docs/mqtt.md: it is read when mosquitto starts)."""
        data_dir = self._data_dir
        try:
            crl = data_dir.ca().crl(DeviceStore(self._db).revoked_certificates())
            temporary = data_dir.ca_dir / "fleet.crl.tmp"
            temporary.write_bytes(crl)
            temporary.replace(data_dir.ca_dir / "fleet.crl")
        except (OSError, sa.exc.SQLAlchemyError) as exc:
            log.error("cannot write the certificate revocation list: %s", exc)

    def _connection_lost(self, identity: str) -> None:
        """A device's connection to the embedded broker ended: it is offline (amqtt takes no
        Will from a 3.1.1 client, so this stands in for one)."""
        ingest = self.ingest
        if ingest is not None and not is_server_identity(identity):
            ingest.connection_lost(identity)

    def _start_ingest(self, endpoint: MqttEndpoint) -> TelemetryIngest:
        s = self.settings
        # A stable client id keeps the broker session (and what it queued) across restarts.
        # Without one (an ephemeral port) the session is clean: a persistent session nobody
        # resumes would stay in the shared subscription and take its share of the messages.
        _, listen_port = split_host_port(s.listen, "--listen")
        stable = bool(s.mqtt_client_id or listen_port)
        default_id = f"edgefleet-server-{self._data_dir.fleet_id}-{socket.gethostname()}"
        client_id = (s.mqtt_client_id or f"{default_id}-{listen_port or os.getpid()}")[:64]
        if endpoint.tls:
            # With certificates the client id is the identity (mosquitto's
            # use_username_as_clientid, the embedded broker's check): unique per server name.
            client_id, stable = server_identity(s.server_name), True
        bounds = SpillBounds(s.ingest_spill_messages, s.ingest_spill_mib << 20)
        ingest = TelemetryIngest(
            endpoint,
            TelemetryStore(self._db),
            self._data_dir.fleet_id,
            client_id=client_id,
            persistent_session=stable,
            share_group=s.mqtt_share_group or "",
            history_hours=s.history_hours,
            spill=SpillConfig(self._data_dir.root / "ingest-spill.db", s.ingest_spill, bounds),
            queue_messages=s.ingest_queue_messages,
        )
        # Connected in the background: the APIs serve meanwhile (telemetry/connector.py).
        self._connector = Connector(ingest.start, ingest.stop, f"telemetry ingest ({endpoint})")
        self._connector.start()
        return ingest

    def _client_files(self, endpoint: MqttEndpoint) -> MqttEndpoint:
        """This server process's MQTT client certificate from the fleet CA (CN
        "edgefleet:server:<--server-name>", which the broker ACL gives a server's rights),
        written next to the CA."""
        data_dir = self._data_dir
        identity = server_identity(self.settings.server_name)
        key_pem, cert_pem = data_dir.ca().client_credentials(identity)
        self._server_serial = f"{x509.load_pem_x509_certificate(cert_pem).serial_number:x}"
        folder = data_dir.ca_dir
        key_file, cert_file = folder / "mqtt-server.key", folder / "mqtt-server.crt"
        write_private(key_file, key_pem)
        cert_file.write_bytes(cert_pem)
        return endpoint.with_tls_files(str(folder / "ca.crt"), str(cert_file), str(key_file))

    def stop(self) -> None:
        """Hand over what the embedded broker acknowledged, stop the ingest, then the broker
        (idempotent)."""
        # What the embedded broker acknowledged to devices reaches the ingest before it stops
        # (amqtt keeps nothing on disk: a kill -9 loses it; docs/mqtt.md).
        if self.broker is not None and self.ingest is not None and self.ingest.connected:
            if not self.broker.quiesce():
                log.warning("the embedded broker did not hand over everything within 5 s")
            self.ingest.settle()
        ingest, self.ingest = self.ingest, None
        if ingest is not None and self._connector is not None:
            self._connector.stop()  # stops the ingest, once an attempt under way has ended
            log.info(
                "telemetry: %d accepted, %d rejected, %d duplicates, %d lost, %d dropped",
                ingest.accepted,
                ingest.rejected,
                ingest.duplicates,
                ingest.gaps,
                ingest.dropped,
            )
        if self.broker is not None:
            self.broker.stop()
            self.broker = None
