"""The composition root: one running fleet server built from its settings.

:class:`FleetServer` opens the database, starts the parts in a fixed order (embedded broker,
telemetry ingest, rollout controller, ghost-device reaper, key maintainer, notifier, gRPC
server, reference cloud, dashboard, metrics, check-in writer, worker processes) and stops them
in the reverse order. The command line (:mod:`fleet_server.cli`) only turns options into
:class:`Settings` and owns the signals.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from agent.systemd import Notifier, watchdog_interval
from fleet_server.addresses import (
    bracket,
    claim_ports,
    split_host_port,
    wildcard,
)
from fleet_server.api.server import create_server
from fleet_server.artifacts.store import Artifacts, ArtifactStore
from fleet_server.config import Settings
from fleet_server.context import ServerContext
from fleet_server.datadir import DataDir
from fleet_server.errors import DataDirError
from fleet_server.metrics import render
from fleet_server.notify.watch import budget_events, expiry_events, offline_events
from fleet_server.notify.worker import WebhookNotifier
from fleet_server.registry.ca import default_sans
from fleet_server.registry.ghosts import GhostReaper
from fleet_server.renewal.maintainer import KeyMaintainer
from fleet_server.renewal.status import ExpiryWatch
from fleet_server.rollouts.controller import RolloutController
from fleet_server.signing.pkcs11 import open_key_store
from fleet_server.storage.db import Database
from fleet_server.telemetry.plane import TelemetryPlane
from fleet_server.webhooks.events import EventType
from fleet_server.workers import WorkerPool, WorkerPorts
from protos import device_pb2

__all__ = ["FleetServer", "Settings", "split_host_port"]

log = logging.getLogger("fleet_server")


def open_artifacts(s: Settings, folder: Path) -> Artifacts:
    """The data dir's folder, or a bucket with that folder as this process's cache.

    Raises:
        DataDirError: a bad --artifact-store, unreadable credentials, or a bucket that cannot
            be reached.
    """
    if not s.artifact_store:
        return ArtifactStore(folder)
    from fleet_server.artifacts.s3 import (  # noqa: PLC0415 - boto3 only for this backend
        S3ArtifactStore,
        S3Settings,
        parse_store_url,
    )

    bucket, prefix = parse_store_url(s.artifact_store)
    credentials = s.s3_credentials
    systemd = os.environ.get("CREDENTIALS_DIRECTORY")
    if credentials is None and systemd and (Path(systemd) / "s3-credentials").is_file():
        credentials = Path(systemd) / "s3-credentials"
    store = S3ArtifactStore(
        S3Settings(
            bucket=bucket,
            prefix=prefix,
            endpoint=s.s3_endpoint,
            region=s.s3_region,
            credentials_file=credentials,
            ca_file=s.s3_ca_file,
            public_endpoint=s.s3_public_endpoint,
            url_lifetime_s=s.download_url_lifetime,
        ),
        folder,
    )
    store.check(create=s.s3_create_bucket and not s.worker)
    log.info("artifacts in %s (%s), cached in %s", s.artifact_store,
             s.s3_endpoint or "AWS S3", folder)  # fmt: skip
    return store


def _mirror(template: str) -> str:
    """A checked --artifact-mirror template.

    Raises:
        DataDirError: not an http(s) URL with a host (and a valid port) naming {artifact}.
    """
    parts = urlsplit(template.replace("{artifact}", "0" * 64))
    try:
        usable = bool(parts.hostname) and parts.port != 0  # a port out of range raises
    except ValueError:
        usable = False
    if (
        not template.startswith(("https://", "http://"))
        or "{artifact}" not in template
        or not usable
    ):
        raise DataDirError(
            f"--artifact-mirror {template!r}: give https://HOST/PATH/{{artifact}} "
            "({artifact} stands for the artifact's sha256)"
        )
    if template.startswith("http://"):
        log.warning(
            "--artifact-mirror is plain HTTP: agents refuse it unless "
            "updates.allow_http_downloads (the hash protects integrity, not privacy)"
        )
    return template


class FleetServer:
    """One server process: the main one (everything) or a worker (the device port only)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._data_dir = DataDir.open(settings.data_dir)
        if not settings.worker:  # before the database opens: fleet.db, -wal and -shm too
            self._data_dir.secure_at_start()
        self._db = Database(settings.db_url or self._data_dir.db_url)
        self._telemetry = TelemetryPlane(settings, self._data_dir, self._db)
        self._controller: RolloutController | None = None
        self._ghosts: GhostReaper | None = None
        self._upkeep: KeyMaintainer | None = None
        self._notifier: WebhookNotifier | None = None
        self._grpc: Any = None
        self._cloud: Any = None
        self._dashboard: Any = None
        self._metrics: Any = None
        self._metrics_port = 0
        self._workers = WorkerPool(settings)
        self._ports: WorkerPorts | None = None
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
        telemetry = self._telemetry
        telemetry.start(tls_names)
        mqtt_url, device_mqtt_url = telemetry.mqtt_url, telemetry.device_mqtt_url
        ctx = ServerContext(
            db=self._db,
            ca=data_dir.ca(),
            artifacts=open_artifacts(s, data_dir.artifacts),
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
        if s.artifact_mirror:
            ctx.mirror_url = _mirror(s.artifact_mirror)
        self.ctx = ctx
        # Worker processes only serve gRPC; the main process runs the rollouts and the ingest.
        if not s.worker:
            telemetry.write_crl()
            ingest = telemetry.ingest
            self._controller = RolloutController(
                ctx.rollouts,
                interval_s=s.rollout_interval,
                nudge=ingest.nudge if ingest is not None else None,
            )
            ctx.wake_rollouts = self._controller.wake
            if ingest is not None:
                ingest.watch_health(ctx.health, self._controller.wake)
                ctx.send_command = ingest.command
            ctx.revoked = telemetry.revoked
            self._ghosts = GhostReaper(
                ctx.devices, ctx.audit, after_s=s.ghost_device_after, on_deleted=telemetry.write_crl
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
        self._ports = WorkerPorts(
            port, device_port, ctx.device_address, mqtt_url, device_mqtt_url, cloud_url
        )
        self._workers.start(self._ports)
        log.info(
            "fleet %s: gRPC on port %d (TLS), devices on port %d (mTLS), telemetry via %s%s",
            data_dir.fleet_id,
            port,
            device_port,
            telemetry.endpoint,
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

    def _metrics_text(self, ctx: ServerContext) -> str:
        return render(ctx, self._telemetry.ingest)

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
                self._workers.supervise()
                # The main loop runs: tell the watchdog (every WatchdogSec / 2).
                if ping is not None and time.monotonic() - last_ping >= ping:
                    notifier.notify("WATCHDOG=1")
                    last_ping = time.monotonic()
        finally:
            notifier.notify("STOPPING=1")

    def stop(self) -> None:
        """Stop every part that started, in the reverse order (idempotent)."""
        self._workers.terminate()
        for part in (self._metrics, self._cloud, self._dashboard):
            if part is not None:
                part.stop()
        self._metrics = self._cloud = self._dashboard = None
        if self._grpc is not None:
            self._grpc.stop(grace=5).wait()
            self._grpc = None
        self._workers.wait()
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
        self._telemetry.stop()
        self._db.close()
