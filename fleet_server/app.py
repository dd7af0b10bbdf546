"""The composition root: one running fleet server built from its settings.

:class:`FleetServer` opens the database, starts the parts in a fixed order (embedded broker,
telemetry ingest, rollout controller, ghost-device reaper, key maintainer, notifier, gRPC
server, reference cloud, dashboard, metrics, check-in writer, worker processes) and stops them
in the reverse order. The command line (:mod:`fleet_server.cli`) only turns options into
:class:`Settings` and owns the signals.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from cryptography import x509

from agent.systemd import Notifier, watchdog_interval
from agent.telemetry.mqtt import MqttEndpoint
from fleet_server.addresses import (
    bracket,
    claim_ports,
    free_port,
    mqtt_endpoint,
    remembered_port,
    split_host_port,
    wildcard,
    write_private,
)
from fleet_server.api.server import create_server
from fleet_server.artifacts.store import ArtifactStore
from fleet_server.config import Settings
from fleet_server.context import ServerContext
from fleet_server.datadir import DataDir
from fleet_server.errors import DataDirError
from fleet_server.metrics import render
from fleet_server.notify.watch import budget_events, expiry_events, offline_events
from fleet_server.notify.worker import WebhookNotifier
from fleet_server.registry.ca import default_sans
from fleet_server.registry.ghosts import GhostReaper
from fleet_server.registry.store import DeviceStore
from fleet_server.renewal.maintainer import KeyMaintainer
from fleet_server.renewal.status import ExpiryWatch
from fleet_server.rollouts.controller import RolloutController
from fleet_server.signing.pkcs11 import open_key_store
from fleet_server.storage.db import Database
from fleet_server.telemetry.broker import EmbeddedBroker
from fleet_server.telemetry.connector import Connector
from fleet_server.telemetry.ingest import TelemetryIngest
from fleet_server.telemetry.spill import SpillBounds, SpillConfig
from fleet_server.telemetry.store import TelemetryStore
from fleet_server.webhooks.events import EventType
from protos import device_pb2
from protos.topics import is_server_identity, server_identity

__all__ = ["FleetServer", "Settings", "split_host_port"]

log = logging.getLogger("fleet_server")
_WORKER_RESTARTS_PER_MINUTE = 5


@dataclass(frozen=True)
class _Ports:
    """What worker processes need to serve the same device port as the main one."""

    port: int
    device_port: int
    advertise: str
    mqtt_url: str
    device_mqtt_url: str
    cloud_url: str = ""  # the main process's reference cloud service, if it runs one


class FleetServer:
    """One server process: the main one (everything) or a worker (the device port only)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._data_dir = DataDir.open(settings.data_dir)
        if not settings.worker:  # before the database opens: fleet.db, -wal and -shm too
            self._data_dir.secure_at_start()
        self._db = Database(settings.db_url or self._data_dir.db_url)
        self._broker: EmbeddedBroker | None = None
        self._server_serial = ""  # of this process's own MQTT client certificate
        self._ingest: TelemetryIngest | None = None
        self._connector: Connector | None = None
        self._controller: RolloutController | None = None
        self._ghosts: GhostReaper | None = None
        self._upkeep: KeyMaintainer | None = None
        self._notifier: WebhookNotifier | None = None
        self._grpc: Any = None
        self._cloud: Any = None
        self._dashboard: Any = None
        self._metrics: Any = None
        self._metrics_port = 0
        self._workers: list[subprocess.Popen[bytes]] = []
        self._restarts: list[float] = []
        self._ports: _Ports | None = None
        self.ctx: ServerContext | None = None

    # start -------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start every part; on a failure, stop what started and raise.

        Raises:
            DataDirError: an address cannot be bound or a file cannot be read (the telemetry
                ingest's broker is connected in the background: telemetry/connector.py).
        """
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        s = self.settings
        data_dir = self._data_dir
        # Pushes, which sign, reach the main process only: workers never open the token.
        keys = open_key_store(
            data_dir.keys_dir, None if s.worker else s, os.environ.get("CREDENTIALS_DIRECTORY")
        )
        self._db.create_schema()
        main_host, main_port = split_host_port(s.listen, "--listen")
        device_listen = s.device_listen or (
            f"{bracket(main_host)}:{main_port + 1 if main_port else 0}"
        )
        device_host, _ = split_host_port(device_listen, "--device-listen")
        tls_names = list(s.tls_name or default_sans())
        for host in (main_host, device_host):
            if not wildcard(host) and host not in tls_names:
                tls_names.append(host)
        if not s.worker:  # before anything starts (its workers share the device port)
            claim_ports({"--listen": s.listen, "--device-listen": device_listen,
                         "--mqtt-listen": "" if s.mqtt_url else s.mqtt_listen,
                         "--dashboard-listen": s.dashboard_listen,
                         "--metrics-listen": s.metrics_listen or "",
                         "--cloud-listen": s.cloud_listen})  # fmt: skip
        mqtt_url = s.mqtt_url
        device_mqtt_url = s.device_mqtt_url or mqtt_url or ""
        if not mqtt_url and not s.worker:
            self._broker = self._start_broker(tls_names)
            mqtt_url = self._broker.url
            # Devices dial the broker on the host they enrolled through, unless told otherwise.
            device_mqtt_url = s.device_mqtt_url or f"mqtts://:{self._broker.port}"
        endpoint = mqtt_endpoint(mqtt_url) if mqtt_url else None
        if endpoint is not None and self._broker is not None:
            endpoint = replace(endpoint, v5=False)  # amqtt: 3.1.1 only
        if endpoint is not None and not s.worker:
            if endpoint.tls:
                endpoint = self._mqtt_client_files(endpoint)
            self._ingest = self._start_ingest(endpoint)
        ctx = ServerContext(
            db=self._db,
            ca=data_dir.ca(),
            artifacts=ArtifactStore(data_dir.artifacts),
            keys=keys,
            fleet_id=data_dir.fleet_id,
            admin_token=data_dir.read_secret(data_dir.admin_token_file),
            enrollment_token=""
            if s.no_bootstrap_token
            else data_dir.read_secret(data_dir.enrollment_token_file),
            device_mqtt_url=device_mqtt_url,
            data_dir=data_dir,
            manifest_lifetime_s=int(s.manifest_lifetime_days * 86400),
            renew_ahead_s=s.renew_ahead_days * 86400,
        )
        self.ctx = ctx
        # Worker processes only serve gRPC; the main process runs the rollouts and the ingest.
        if not s.worker:
            self._write_crl()
            ingest = self._ingest
            self._controller = RolloutController(
                ctx.rollouts,
                interval_s=s.rollout_interval,
                nudge=ingest.nudge if ingest is not None else None,
            )
            ctx.wake_rollouts = self._controller.wake
            if ingest is not None:
                ingest.watch_health(ctx.health, self._controller.wake)
                ctx.send_command = ingest.command
            ctx.revoked = self._revoked
            self._ghosts = GhostReaper(
                ctx.devices, ctx.audit, after_s=s.ghost_device_after, on_deleted=self._write_crl
            )
            watch = ExpiryWatch(
                ctx.key_status, data_dir.fleet_id, hook=s.expiry_hook,
                notify=lambda due: ctx.webhooks.record(expiry_events(due)),
            )  # fmt: skip
            self._notifier = WebhookNotifier(
                ctx.webhooks, data_dir.fleet_id,
                timeout_s=s.webhook_timeout, retry_after_s=s.webhook_retry_after,
                watchers=[
                    (EventType.DEVICE_OFFLINE,
                     lambda now: offline_events(ctx.db, now=now, after_s=s.offline_after)),
                    (EventType.BUDGET_REACHED,
                     lambda now: budget_events(ctx.db, ctx.routing, now=now)),
                ],
            )  # fmt: skip
            self._upkeep = KeyMaintainer(
                keys, ctx.catalog, ctx.rollouts, ctx.audit,
                root_keys=data_dir.root_keys_here,
                manifest_lifetime_s=ctx.manifest_lifetime_s,
                keylist_lifetime_s=s.keylist_lifetime_days * 86400,
                renew_ahead_s=ctx.renew_ahead_s,
                after_pass=watch.check_soon,
            )  # fmt: skip
            ctx.wake_upkeep = self._upkeep.wake
        try:
            # Workers take device calls only: enrollment, the admin API and commands (which
            # need the MQTT connection) stay with the main process.
            server, port, device_port = create_server(
                ctx, "" if s.worker else s.listen, device_listen, tls_names=tls_names,
                shared=s.workers > 1 or s.worker)  # fmt: skip
        except (OSError, RuntimeError) as exc:
            raise DataDirError(
                f"cannot serve gRPC on {s.listen} and {device_listen}: {exc}"
            ) from exc
        # Devices dial the device port on the host they enrolled through, unless told otherwise.
        ctx.device_address = s.device_advertise or f":{device_port}"
        self._cloud = self._start_cloud(ctx, tls_names)
        server.start()
        self._grpc = server
        dashboard_port = self._start_dashboard(ctx, main_host, port, tls_names)
        self._start_metrics(ctx, tls_names)
        if self._controller is not None:
            self._controller.start()
        if self._ghosts is not None:
            self._ghosts.start()
        if self._upkeep is not None:
            self._upkeep.start()
        if self._notifier is not None:
            self._notifier.start()
        ctx.last_seen.start()
        cloud_url = ctx.cloud_endpoint.url if self._cloud and ctx.cloud_endpoint else ""
        self._ports = _Ports(
            port, device_port, ctx.device_address, mqtt_url or "", device_mqtt_url, cloud_url
        )
        self._workers = self._start_workers()
        log.info(
            "fleet %s: gRPC on port %d (TLS), devices on port %d (mTLS), telemetry via %s%s",
            data_dir.fleet_id,
            port,
            device_port,
            endpoint,
            f", {len(self._workers) + 1} server processes" if self._workers else "",
        )
        if s.ready_file:
            self._write_ready_file(s.ready_file, port, device_port, mqtt_url, dashboard_port)

    def _write_ready_file(
        self, path: Path, port: int, device_port: int, mqtt_url: str | None, dashboard_port: int
    ) -> None:
        """The ports as JSON, for whoever started the server (tests, scripts).

        Raises:
            DataDirError: it cannot be written.
        """
        try:
            path.write_text(
                json.dumps(
                    {
                        "grpc_port": port,
                        "device_port": device_port,
                        "mqtt_url": mqtt_url,
                        "metrics_port": self._metrics_port,
                        "dashboard_port": dashboard_port,
                        "pid": os.getpid(),
                    }
                ),
                encoding="utf-8",
            )
        except OSError as exc:
            raise DataDirError(f"cannot write the ready file {path}: {exc.strerror}") from exc

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

    def _revoked(self, device_id: str) -> None:
        if self._ingest is not None:
            self._ingest.revoked(device_id)
        if self._broker is not None:
            self._broker.disconnect(device_id)
        self._write_crl()

    def _write_crl(self) -> None:
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
        ingest = self._ingest
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

    def _mqtt_client_files(self, endpoint: MqttEndpoint) -> MqttEndpoint:
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

    def _metrics_text(self, ctx: ServerContext) -> str:
        return render(ctx, self._ingest)

    def _start_metrics(self, ctx: ServerContext, tls_names: list[str]) -> None:
        """Prometheus text on HTTPS HOST:PORT/metrics, for an admin token (any role), when
        asked for (the dashboard serves it on its own port too).

        Raises:
            DataDirError: it cannot listen.
        """
        address = self.settings.metrics_listen
        if not address or self.settings.worker:
            return
        from fleet_server.dashboard.server import MetricsEndpoint  # noqa: PLC0415 - only when asked

        key_pem, cert_pem = ctx.ca.server_credentials(tls_names)
        endpoint = MetricsEndpoint(ctx, lambda: self._metrics_text(ctx), key_pem, cert_pem)
        try:
            self._metrics_port = endpoint.start(address)
        except (OSError, ValueError) as exc:
            raise DataDirError(f"cannot serve metrics on {address}: {exc}") from exc
        self._metrics = endpoint
        log.info("Prometheus metrics on https://%s:%d/metrics (for an admin token)",
                 address.rpartition(":")[0], self._metrics_port)  # fmt: skip

    def _start_dashboard(
        self, ctx: ServerContext, host: str, port: int, tls_names: list[str]
    ) -> int:
        """Start the dashboard (--dashboard-listen), which calls this server's own admin API;
        return its port (0: none).

        Raises:
            DataDirError: it cannot listen.
        """
        s = self.settings
        if not s.dashboard_listen or s.worker:
            return 0
        from fleet_server.dashboard.server import Dashboard  # noqa: PLC0415 - only when asked

        key_pem, cert_pem = ctx.ca.server_credentials(tls_names)
        admin = "127.0.0.1" if wildcard(host) else host
        dashboard = Dashboard(
            ctx,
            admin_address=f"{bracket(admin)}:{port}",
            tls_key_pem=key_pem,
            tls_cert_pem=cert_pem,
            metrics=lambda: self._metrics_text(ctx),
        )
        try:
            dashboard_port = dashboard.start(s.dashboard_listen)
        except (OSError, ValueError) as exc:
            raise DataDirError(f"dashboard: cannot listen on {s.dashboard_listen}: {exc}") from exc
        self._dashboard = dashboard
        log.info("dashboard on https://%s:%d (log in with an admin token)",
                 s.dashboard_listen.rpartition(":")[0], dashboard_port)  # fmt: skip
        return dashboard_port

    def _start_cloud(self, ctx: ServerContext, tls_names: list[str]) -> Any:
        """Start the reference cloud service (--cloud-listen) or note an external endpoint
        (--cloud-url): what devices routed to the cloud are told to use.

        Raises:
            DataDirError: the service cannot listen, or a file cannot be read.
        """
        s = self.settings
        data_dir = self._data_dir
        if s.cloud_listen and not s.worker:
            from fleet_server.cloud import ReferenceCloud  # noqa: PLC0415 - only when asked

            key_pem, cert_pem = ctx.ca.server_credentials(tls_names)
            cloud = ReferenceCloud(
                ctx.catalog,
                ctx.artifacts,
                token=data_dir.cloud_token(),
                tls_key_pem=key_pem,
                tls_cert_pem=cert_pem,
            )
            try:
                cloud_port = cloud.start(s.cloud_listen)
            except OSError as exc:
                raise DataDirError(f"reference cloud service: {exc}") from exc
            host, _ = split_host_port(s.cloud_listen, "--cloud-listen")
            # A wildcard address: devices dial the host they reach the fleet server on.
            shown = "" if wildcard(host) else bracket(host)
            ctx.cloud_endpoint = device_pb2.CloudEndpoint(
                url=f"grpcs://{shown}:{cloud_port}",
                token=data_dir.cloud_token(),
                ca_pem=ctx.ca.cert_pem,
            )
            log.info("reference cloud inference service on port %d (TLS, token)", cloud_port)
            return cloud
        if s.cloud_url:
            if not s.cloud_url.startswith(("grpc://", "grpcs://")):
                raise DataDirError("--cloud-url must be grpcs://host:port or grpc://host:port")
            token = data_dir.read_secret(s.cloud_token_file) if s.cloud_token_file else ""
            try:
                ca_pem = s.cloud_ca_file.read_bytes() if s.cloud_ca_file else b""
            except OSError as exc:
                raise DataDirError(f"cannot read {s.cloud_ca_file}: {exc.strerror}") from exc
            ctx.cloud_endpoint = device_pb2.CloudEndpoint(
                url=s.cloud_url, token=token, ca_pem=ca_pem
            )
        return None

    # workers -----------------------------------------------------------------------------------

    def _start_workers(self, count: int | None = None) -> list[subprocess.Popen[bytes]]:
        """Start ``--workers - 1`` (or ``count``) more processes serving the device port
        (SO_REUSEPORT), so check-ins are not bound to one Python process's GIL."""
        s, ports = self.settings, self._ports
        if s.worker or s.workers <= 1 or ports is None:
            return []
        host, _ = split_host_port(s.listen, "--listen")
        device_host, _ = split_host_port(s.device_listen or s.listen, "--device-listen")
        cmd = [
            sys.executable,
            "-m",
            "fleet_server.cli",
            "--log-level",
            s.log_level,
            "run",
            "--worker",
            "--main-pid",
            str(os.getpid()),
            "--data-dir",
            str(s.data_dir),
            "--listen",
            f"{bracket(host)}:{ports.port}",
            "--device-listen",
            f"{bracket(device_host)}:{ports.device_port}",
            "--device-advertise",
            ports.advertise,
        ]
        if ports.mqtt_url:
            cmd += [
                "--mqtt-url",
                ports.mqtt_url,
                "--device-mqtt-url",
                ports.device_mqtt_url,
            ]
        if s.db_url:
            cmd += ["--db-url", s.db_url]
        if ports.cloud_url:
            cmd += [
                "--cloud-url",
                ports.cloud_url,
                "--cloud-token-file",
                str(s.data_dir / "cloud.token"),
                "--cloud-ca-file",
                str(s.data_dir / "ca" / "ca.crt"),
            ]
        elif s.cloud_url:
            cmd += ["--cloud-url", s.cloud_url]
            if s.cloud_token_file:
                cmd += ["--cloud-token-file", str(s.cloud_token_file)]
            if s.cloud_ca_file:
                cmd += ["--cloud-ca-file", str(s.cloud_ca_file)]
        for name in s.tls_name or ():
            cmd += ["--tls-name", name]
        if s.no_bootstrap_token:
            cmd.append("--no-bootstrap-token")
        return [subprocess.Popen(cmd) for _ in range(s.workers - 1 if count is None else count)]

    def _supervise(self) -> None:
        """Restart a worker process that died, at most 5 times a minute (then the main process
        serves without it and says so)."""
        for i, worker in enumerate(self._workers):
            code = worker.poll()
            if code is None:
                continue
            now = time.monotonic()
            self._restarts[:] = [t for t in self._restarts if now - t < 60]
            if len(self._restarts) >= _WORKER_RESTARTS_PER_MINUTE:
                log.error(
                    "worker %d exited %d; not restarted: %d restarts in a minute",
                    worker.pid,
                    code,
                    _WORKER_RESTARTS_PER_MINUTE,
                )
                self._workers.pop(i)
                return
            self._restarts.append(now)
            (replacement,) = self._start_workers(count=1)
            log.warning("worker %d exited %d; started %d", worker.pid, code, replacement.pid)
            self._workers[i] = replacement

    # run and stop ------------------------------------------------------------------------------

    def serve(self, stop: threading.Event) -> None:
        """Tell systemd the server is ready, then keep the workers and the watchdog going
        until ``stop`` is set."""
        ports = self._ports
        notifier = Notifier()
        workers = f", {len(self._workers) + 1} processes" if self._workers else ""
        if ports is not None:
            notifier.notify(
                "READY=1",
                f"STATUS=serving: gRPC {ports.port} (TLS), devices {ports.device_port} (mTLS)"
                + workers,
            )
        ping = watchdog_interval()
        last_ping = 0.0
        parent = self.settings.main_pid
        try:
            while not stop.wait(1.0):
                if parent and os.getppid() != parent:
                    # The main process died without stopping us (kill -9): do not serve on
                    # as an orphan beside whatever replaces it.
                    log.warning("main server process %d is gone; worker stopping", parent)
                    return
                self._supervise()
                # The main loop runs: tell the watchdog (every WatchdogSec / 2).
                if ping is not None and time.monotonic() - last_ping >= ping:
                    notifier.notify("WATCHDOG=1")
                    last_ping = time.monotonic()
        finally:
            notifier.notify("STOPPING=1")

    def stop(self) -> None:
        """Stop every part that started, in the reverse order (idempotent)."""
        for worker in self._workers:
            worker.terminate()
        for part in (self._metrics, self._cloud, self._dashboard):
            if part is not None:
                part.stop()
        self._metrics = self._cloud = self._dashboard = None
        if self._grpc is not None:
            self._grpc.stop(grace=5).wait()
            self._grpc = None
        for worker in self._workers:
            try:
                worker.wait(timeout=10)
            except subprocess.TimeoutExpired:
                worker.kill()
        self._workers = []
        if self._ghosts is not None:
            self._ghosts.stop()
            self._ghosts = None
        if self._upkeep is not None:
            self._upkeep.stop()
            self._upkeep = None
        if self._notifier is not None:
            self._notifier.stop()
            self._notifier = None
        if self._controller is not None:
            self._controller.stop()
            self._controller = None
        if self.ctx is not None:
            self.ctx.last_seen.stop()
            self.ctx.keys.close()
            self.ctx = None
        # What the embedded broker acknowledged to devices reaches the ingest before it stops
        # (amqtt keeps nothing on disk: a kill -9 loses it; docs/mqtt.md).
        if self._broker is not None and self._ingest is not None and self._ingest.connected:
            if not self._broker.quiesce():
                log.warning("the embedded broker did not hand over everything within 5 s")
            self._ingest.settle()
        ingest, self._ingest = self._ingest, None
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
        if self._broker is not None:
            self._broker.stop()
            self._broker = None
        self._db.close()
