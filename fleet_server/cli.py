"""``edgefleet-server``: create a data dir, run the fleet server."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from agent.errors import AgentError
from agent.systemd import Notifier, setup_logging, watchdog_interval
from fleet_server import __version__
from fleet_server.config import apply_config
from fleet_server.errors import DataDirError, FleetError

if TYPE_CHECKING:
    from fleet_server.cloud import ReferenceCloud
    from fleet_server.context import ServerContext
    from fleet_server.dashboard.server import Dashboard
    from fleet_server.datadir import DataDir

__all__ = ["main"]

log = logging.getLogger("fleet_server")
PROG = "edgefleet-server"
MQTT_SERVER_IDENTITY = "edgefleet:server"


def _split_host_port(value: str, what: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise DataDirError(f"{what} {value!r} must be host:port")
    return host, int(port)


def _history_hours(value: str) -> float:
    hours = float(value)
    if not 0 <= hours <= 24 * 366:
        raise argparse.ArgumentTypeError(f"{value} hours is outside 0..{24 * 366}")
    return hours


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _passphrase(path: Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        value = path.read_bytes().strip()
    except OSError as exc:
        raise DataDirError(f"cannot read passphrase file {path}: {exc.strerror}") from exc
    if not value:
        raise DataDirError(f"passphrase file {path} is empty")
    return value


def _cmd_init(args: argparse.Namespace) -> int:
    from fleet_server.datadir import DataDir  # noqa: PLC0415
    from fleet_server.storage.db import Database  # noqa: PLC0415

    if args.if_missing and (args.data_dir / "fleet.json").exists():
        return 0
    passphrase = _passphrase(args.root_passphrase_file)
    data_dir = DataDir.create(
        args.data_dir,
        args.fleet_id,
        root_keys=args.root_keys,
        root_threshold=args.root_threshold,
        passphrase=passphrase,
    )
    db = Database(data_dir.db_url)
    db.create_schema()
    db.close()
    print(f"created {args.data_dir} for fleet {args.fleet_id}")
    print(f"  admin token:      {data_dir.admin_token_file}")
    print(f"  enrollment token: {data_dir.enrollment_token_file}")
    roots = f"{args.root_threshold}-of-{args.root_keys} root"
    print(f"  keys:             {data_dir.keys_dir} ({roots})")
    print("  keep the root keys (keys/root-*.key) offline once the fleet is set up")
    return 0


def _cmd_broker_cert(args: argparse.Namespace) -> int:
    from fleet_server.datadir import DataDir  # noqa: PLC0415

    data_dir = DataDir.open(args.data_dir)
    names = list(args.name or ["localhost", "127.0.0.1", socket.gethostname()])
    key_pem, cert_pem = data_dir.ca().server_credentials(names)
    args.out.mkdir(parents=True, exist_ok=True)
    key_file = args.out / "broker.key"
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key_pem)
    (args.out / "broker.crt").write_bytes(cert_pem)
    (args.out / "fleet-ca.crt").write_bytes(data_dir.ca().cert_pem)
    print(
        f"wrote {args.out}/broker.crt, broker.key (0600) and fleet-ca.crt for {', '.join(names)}; "
        "see packaging/mosquitto/edgefleet.conf"
    )
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from agent.errors import TransientError  # noqa: PLC0415
    from agent.telemetry.mqtt import parse_mqtt_url  # noqa: PLC0415
    from fleet_server.api.server import create_server  # noqa: PLC0415
    from fleet_server.artifacts.store import ArtifactStore  # noqa: PLC0415
    from fleet_server.context import ServerContext  # noqa: PLC0415
    from fleet_server.datadir import DataDir  # noqa: PLC0415
    from fleet_server.registry.ca import default_sans  # noqa: PLC0415
    from fleet_server.rollouts.controller import RolloutController  # noqa: PLC0415
    from fleet_server.signing.keys import KeyStore  # noqa: PLC0415
    from fleet_server.storage.db import Database  # noqa: PLC0415
    from fleet_server.telemetry.broker import EmbeddedBroker  # noqa: PLC0415
    from fleet_server.telemetry.ingest import TelemetryIngest  # noqa: PLC0415
    from fleet_server.telemetry.store import TelemetryStore  # noqa: PLC0415

    data_dir = DataDir.open(args.data_dir)
    db = Database(args.db_url or data_dir.db_url)
    db.create_schema()
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s; stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    broker: EmbeddedBroker | None = None
    mqtt_url = args.mqtt_url
    if not mqtt_url and not args.worker:
        host, port = _split_host_port(args.mqtt_listen, "--mqtt-listen")
        broker = EmbeddedBroker(host, port or _free_port(host))
        try:
            broker.start()
        except OSError as exc:
            raise DataDirError(
                f"{exc}. Is another broker running there? Use it with --mqtt-url, or pick "
                "another port with --mqtt-listen HOST:PORT (0 = any free port)"
            ) from exc
        mqtt_url = broker.url
    endpoint = parse_mqtt_url(mqtt_url) if mqtt_url else None
    if endpoint is not None and endpoint.tls:
        endpoint = _mqtt_client_files(data_dir, endpoint)
    ingest: TelemetryIngest | None = None
    if endpoint is not None and not args.worker:
        # A stable client id keeps the broker session (and what it queued) across restarts.
        # Without one (an ephemeral port) the session is clean: a persistent session nobody
        # resumes would stay in the shared subscription and take its share of the messages.
        _, listen_port = _split_host_port(args.listen, "--listen")
        stable = bool(args.mqtt_client_id or listen_port)
        default_id = f"edgefleet-server-{data_dir.fleet_id}-{socket.gethostname()}"
        client_id = (args.mqtt_client_id or f"{default_id}-{listen_port or os.getpid()}")[:64]
        ingest = TelemetryIngest(
            endpoint,
            TelemetryStore(db),
            data_dir.fleet_id,
            client_id=client_id,
            persistent_session=stable,
            share_group=args.mqtt_share_group or "",
            history_hours=args.history_hours,
        )
        try:
            ingest.start()
        except TransientError as exc:
            raise DataDirError(f"telemetry ingest cannot start: {exc}") from exc

    main_host, main_port = _split_host_port(args.listen, "--listen")
    device_listen = args.device_listen or (
        f"{_bracket(main_host)}:{main_port + 1 if main_port else 0}"
    )
    device_host, _ = _split_host_port(device_listen, "--device-listen")
    tls_names = list(args.tls_name or default_sans())
    for host in (main_host, device_host):
        if host not in ("0.0.0.0", "::", "") and host not in tls_names:  # noqa: S104
            tls_names.append(host)
    ca = data_dir.ca()
    ctx = ServerContext(
        db=db,
        ca=ca,
        artifacts=ArtifactStore(data_dir.artifacts),
        keys=KeyStore(data_dir.keys_dir),
        fleet_id=data_dir.fleet_id,
        admin_token=data_dir.read_secret(data_dir.admin_token_file),
        enrollment_token=""
        if args.no_bootstrap_token
        else data_dir.read_secret(data_dir.enrollment_token_file),
        device_mqtt_url=args.device_mqtt_url or mqtt_url,
    )
    # Worker processes only serve gRPC; the main process runs the rollouts and the ingest.
    controller = (
        None
        if args.worker
        else RolloutController(
            ctx.rollouts,
            interval_s=args.rollout_interval,
            nudge=ingest.nudge if ingest is not None else None,
        )
    )
    if controller is not None:
        ctx.wake_rollouts = controller.wake
        if ingest is not None:
            ingest.watch_health(ctx.rollouts, controller.wake)
    if ingest is not None:
        ctx.send_command = ingest.command
    try:
        # Workers take device calls only: enrollment, the admin API and commands (which need
        # the MQTT connection) stay with the main process.
        server, port, device_port = create_server(
            ctx, "" if args.worker else args.listen, device_listen, tls_names=tls_names
        )
    except (OSError, RuntimeError) as exc:
        raise DataDirError(
            f"cannot serve gRPC on {args.listen} and {device_listen}: {exc}"
        ) from exc
    # Devices dial the device port on the host they enrolled through, unless told otherwise.
    ctx.device_address = args.device_advertise or f":{device_port}"
    cloud = _cloud(args, ctx, data_dir, tls_names)
    server.start()
    dashboard = _dashboard(args, ctx, main_host, port, tls_names)
    metrics = _start_metrics(args.metrics_listen, ctx, ingest)
    if controller is not None:
        controller.start()
    ctx.last_seen.start()
    ports = _Ports(
        port,
        device_port,
        ctx.device_address,
        mqtt_url or "",
        ctx.cloud_endpoint.url if cloud is not None and ctx.cloud_endpoint else "",
    )
    workers = _start_workers(args, ports)
    log.info(
        "fleet %s: gRPC on port %d (TLS), devices on port %d (mTLS), telemetry via %s%s",
        data_dir.fleet_id,
        port,
        device_port,
        endpoint,
        f", {len(workers) + 1} server processes" if workers else "",
    )
    if args.ready_file:
        args.ready_file.write_text(
            json.dumps(
                {
                    "grpc_port": port,
                    "device_port": device_port,
                    "mqtt_url": mqtt_url,
                    "metrics_port": metrics.port if metrics is not None else 0,
                    "dashboard_port": getattr(args, "dashboard_port", 0),
                    "pid": os.getpid(),
                }
            ),
            encoding="utf-8",
        )
    notifier = Notifier()
    notifier.notify(
        "READY=1",
        f"STATUS=serving: gRPC {port} (TLS), devices {device_port} (mTLS)"
        + (f", {len(workers) + 1} processes" if workers else ""),
    )
    ping = watchdog_interval()
    last_ping = 0.0
    try:
        restarts: list[float] = []
        while not stop.wait(1.0):
            _supervise(workers, restarts, args, ports)
            # The main loop runs: tell the watchdog (every WatchdogSec / 2).
            if ping is not None and time.monotonic() - last_ping >= ping:
                notifier.notify("WATCHDOG=1")
                last_ping = time.monotonic()
    finally:
        notifier.notify("STOPPING=1")
        for worker in workers:
            worker.terminate()
        if metrics is not None:
            metrics.stop()
        if cloud is not None:
            cloud.stop()
        if dashboard is not None:
            dashboard.stop()
        server.stop(grace=5).wait()
        for worker in workers:
            try:
                worker.wait(timeout=10)
            except subprocess.TimeoutExpired:
                worker.kill()
        if controller is not None:
            controller.stop()
        ctx.last_seen.stop()
        if ingest is not None:
            ingest.stop()
            log.info(
                "telemetry: %d accepted, %d rejected, %d duplicates, %d lost, %d dropped",
                ingest.accepted,
                ingest.rejected,
                ingest.duplicates,
                ingest.gaps,
                ingest.dropped,
            )
        if broker is not None:
            broker.stop()
        db.close()
        log.info("server %sstopped", "worker " if args.worker else "")
    return 0


def _start_metrics(address: str | None, ctx: Any, ingest: Any) -> Any:
    """Prometheus text on HOST:PORT/metrics, when asked for."""
    if not address:
        return None
    from agent.inference.metrics_http import MetricsServer  # noqa: PLC0415
    from fleet_server.metrics import render  # noqa: PLC0415

    host, port = _split_host_port(address, "--metrics-listen")
    try:
        server = MetricsServer(lambda: render(ctx, ingest), host, port)
    except OSError as exc:
        raise DataDirError(f"cannot serve metrics on {address}: {exc}") from exc
    server.start()
    return server


def _mqtt_client_files(data_dir: Any, endpoint: Any) -> Any:
    """The server's MQTT client certificate from the fleet CA (CN "edgefleet:server", which
    the shipped broker ACL gives the server's rights), written next to the CA."""
    key_pem, cert_pem = data_dir.ca().client_credentials(MQTT_SERVER_IDENTITY)
    folder = data_dir.ca_dir
    key_file, cert_file = folder / "mqtt-server.key", folder / "mqtt-server.crt"
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key_pem)
    cert_file.write_bytes(cert_pem)
    return endpoint.with_tls_files(str(folder / "ca.crt"), str(cert_file), str(key_file))


@dataclass(frozen=True)
class _Ports:
    """What worker processes need to serve the same device port as the main one."""

    port: int
    device_port: int
    advertise: str
    mqtt_url: str
    cloud_url: str = ""  # the main process's reference cloud service, if it runs one


def _supervise(
    workers: list[subprocess.Popen[bytes]],
    restarts: list[float],
    args: argparse.Namespace,
    ports: _Ports,
) -> None:
    """Restart a worker process that died, at most 5 times a minute (then the main process
    serves without it and says so)."""
    for i, worker in enumerate(workers):
        code = worker.poll()
        if code is None:
            continue
        now = time.monotonic()
        restarts[:] = [t for t in restarts if now - t < 60]
        if len(restarts) >= 5:
            log.error(
                "worker %d exited %d; not restarted: 5 restarts in a minute", worker.pid, code
            )
            workers.pop(i)
            return
        restarts.append(now)
        (replacement,) = _start_workers(args, ports, count=1)
        log.warning("worker %d exited %d; started %d", worker.pid, code, replacement.pid)
        workers[i] = replacement


def _dashboard(
    args: argparse.Namespace, ctx: ServerContext, host: str, port: int, tls_names: list[str]
) -> Dashboard | None:
    """Start the dashboard (--dashboard-listen), which calls this server's own admin API.

    Raises:
        DataDirError: it cannot listen.
    """
    if not args.dashboard_listen or args.worker:
        return None
    from fleet_server.dashboard.server import Dashboard  # noqa: PLC0415

    key_pem, cert_pem = ctx.ca.server_credentials(tls_names)
    admin = host if host not in ("", "0.0.0.0", "::") else "127.0.0.1"  # noqa: S104
    dashboard = Dashboard(
        ctx,
        admin_address=f"{_bracket(admin)}:{port}",
        tls_key_pem=key_pem,
        tls_cert_pem=cert_pem,
    )
    try:
        dashboard_port = dashboard.start(args.dashboard_listen)
    except OSError as exc:
        raise DataDirError(f"dashboard: cannot listen on {args.dashboard_listen}: {exc}") from exc
    log.info("dashboard on https://%s (log in with the admin token)", args.dashboard_listen)
    args.dashboard_port = dashboard_port
    return dashboard


def _cloud(
    args: argparse.Namespace, ctx: ServerContext, data_dir: DataDir, tls_names: list[str]
) -> ReferenceCloud | None:
    """Start the reference cloud service (--cloud-listen) or note an external endpoint
    (--cloud-url): what devices routed to the cloud are told to use.

    Raises:
        DataDirError: the service cannot listen, or a file cannot be read.
    """
    from fleet_server.cloud import ReferenceCloud  # noqa: PLC0415
    from protos import device_pb2  # noqa: PLC0415

    if args.cloud_listen and not args.worker:
        key_pem, cert_pem = ctx.ca.server_credentials(tls_names)
        cloud = ReferenceCloud(
            ctx.catalog,
            ctx.artifacts,
            token=data_dir.cloud_token(),
            tls_key_pem=key_pem,
            tls_cert_pem=cert_pem,
        )
        try:
            cloud_port = cloud.start(args.cloud_listen)
        except OSError as exc:
            raise DataDirError(f"reference cloud service: {exc}") from exc
        host, _ = _split_host_port(args.cloud_listen, "--cloud-listen")
        # A wildcard address: devices dial the host they reach the fleet server on.
        shown = "" if host in ("", "0.0.0.0", "::") else _bracket(host)  # noqa: S104
        ctx.cloud_endpoint = device_pb2.CloudEndpoint(
            url=f"grpcs://{shown}:{cloud_port}",
            token=data_dir.cloud_token(),
            ca_pem=ctx.ca.cert_pem,
        )
        log.info("reference cloud inference service on port %d (TLS, token)", cloud_port)
        return cloud
    if args.cloud_url:
        if not args.cloud_url.startswith(("grpc://", "grpcs://")):
            raise DataDirError("--cloud-url must be grpcs://host:port or grpc://host:port")
        token = data_dir.read_secret(args.cloud_token_file) if args.cloud_token_file else ""
        try:
            ca_pem = args.cloud_ca_file.read_bytes() if args.cloud_ca_file else b""
        except OSError as exc:
            raise DataDirError(f"cannot read {args.cloud_ca_file}: {exc.strerror}") from exc
        ctx.cloud_endpoint = device_pb2.CloudEndpoint(
            url=args.cloud_url, token=token, ca_pem=ca_pem
        )
    return None


def _start_workers(
    args: argparse.Namespace, ports: _Ports, count: int | None = None
) -> list[subprocess.Popen[bytes]]:
    """Start ``--workers - 1`` (or ``count``) more processes serving the device port
    (SO_REUSEPORT), so check-ins are not bound to one Python process's GIL."""
    if args.worker or args.workers <= 1:
        return []
    host, _ = _split_host_port(args.listen, "--listen")
    device_host, _ = _split_host_port(args.device_listen or args.listen, "--device-listen")
    cmd = [
        sys.executable,
        "-m",
        "fleet_server.cli",
        "--log-level",
        args.log_level,
        "run",
        "--worker",
        "--data-dir",
        str(args.data_dir),
        "--listen",
        f"{_bracket(host)}:{ports.port}",
        "--device-listen",
        f"{_bracket(device_host)}:{ports.device_port}",
        "--device-advertise",
        ports.advertise,
    ]
    if ports.mqtt_url:
        cmd += [
            "--mqtt-url",
            ports.mqtt_url,
            "--device-mqtt-url",
            args.device_mqtt_url or ports.mqtt_url,
        ]
    if args.db_url:
        cmd += ["--db-url", args.db_url]
    if ports.cloud_url:
        cmd += [
            "--cloud-url",
            ports.cloud_url,
            "--cloud-token-file",
            str(args.data_dir / "cloud.token"),
            "--cloud-ca-file",
            str(args.data_dir / "ca" / "ca.crt"),
        ]
    elif args.cloud_url:
        cmd += ["--cloud-url", args.cloud_url]
        if args.cloud_token_file:
            cmd += ["--cloud-token-file", str(args.cloud_token_file)]
        if args.cloud_ca_file:
            cmd += ["--cloud-ca-file", str(args.cloud_ca_file)]
    for name in args.tls_name or ():
        cmd += ["--tls-name", name]
    if args.no_bootstrap_token:
        cmd.append("--no-bootstrap-token")
    return [subprocess.Popen(cmd) for _ in range(args.workers - 1 if count is None else count)]


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(prog=PROG, description="EdgeFleet fleet server.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    sub = parser.add_subparsers(dest="command", required=True)

    init = sub.add_parser("init", help="create a data dir: database, artifact folder, keys")
    init.add_argument("--data-dir", type=Path, required=True)
    init.add_argument("--fleet-id", default="default", help="fleet id (default: default)")
    init.add_argument("--root-keys", type=int, default=1, help="number of root keys (n)")
    init.add_argument(
        "--root-threshold", type=int, default=1, help="root signatures a key list needs (k)"
    )
    init.add_argument(
        "--root-passphrase-file", type=Path, help="encrypt the root keys with this passphrase"
    )
    init.add_argument(
        "--if-missing",
        action="store_true",
        help="do nothing (exit 0) when the data dir exists already (for ExecStartPre)",
    )
    init.set_defaults(func=_cmd_init)

    check = sub.add_parser("check-config", help="validate a server.toml and exit")
    check.add_argument("--config", type=Path, required=True)
    check.set_defaults(func=_cmd_check_config)

    bcert = sub.add_parser(
        "broker-cert", help="a TLS certificate for the MQTT broker, from the fleet CA"
    )
    bcert.add_argument("--data-dir", type=Path, required=True)
    bcert.add_argument("--out", type=Path, required=True, help="folder for the files")
    bcert.add_argument(
        "--name", action="append", help="DNS name or IP devices dial (repeat; default this host)"
    )
    bcert.set_defaults(func=_cmd_broker_cert)

    run = sub.add_parser(
        "run",
        help="serve the device and admin APIs",
        description="Options can also come from a TOML file (--config): a [server] table whose "
        "keys are these options with underscores (mqtt_url = ...); the command line wins.",
    )
    run.add_argument("--config", type=Path, help="server.toml (see packaging/config/server.toml)")
    run.add_argument("--data-dir", type=Path, required=True)
    run.add_argument(
        "--listen",
        default="127.0.0.1:7443",
        help="gRPC address for enrollment and the admin API, TLS (port 0 = any)",
    )
    run.add_argument(
        "--device-listen",
        help="gRPC address for devices, mTLS (default: the --listen host, its port + 1)",
    )
    run.add_argument(
        "--device-advertise",
        help="HOST:PORT devices should dial for the device port (default: the host they "
        "enrolled through, with the device port)",
    )
    run.add_argument(
        "--tls-name",
        action="append",
        help="a DNS name or IP the server certificate covers (repeat; default: this host's "
        "name, localhost and loopback, plus the listen hosts)",
    )
    run.add_argument(
        "--no-bootstrap-token",
        action="store_true",
        help="refuse the data dir's reusable enrollment.token; only tokens from "
        "'edgefleet tokens create' enroll devices",
    )
    run.add_argument("--db-url", help="SQLAlchemy URL (default: SQLite in the data dir)")
    run.add_argument(
        "--mqtt-url",
        help="MQTT broker for telemetry, mqtt://host:port, or mqtts://host:port with fleet "
        "certificates (packaging/mosquitto); without it an embedded broker starts",
    )
    run.add_argument(
        "--mqtt-listen",
        default="127.0.0.1:1883",
        help="where the embedded broker listens (default 127.0.0.1:1883; port 0 = any free)",
    )
    run.add_argument(
        "--device-mqtt-url", help="the MQTT URL devices are told to use (default: the server's)"
    )
    run.add_argument(
        "--mqtt-share-group",
        help="replicas: ingest through the MQTT v5 shared subscription $share/GROUP/... so "
        "they split the telemetry (default: a plain subscription, for one server)",
    )
    run.add_argument(
        "--mqtt-client-id",
        help="the ingest's MQTT client id: its persistent session queues telemetry while the "
        "server restarts (default: edgefleet-server-FLEET-HOST-PORT; unique per replica)",
    )
    run.add_argument(
        "--history-hours",
        type=_history_hours,
        default=48.0,
        help="keep telemetry over time (5-minute buckets per device and model, for the "
        "dashboard's charts) this long (default 48; 0 = none)",
    )
    run.add_argument(
        "--cloud-listen",
        default="",
        metavar="HOST:PORT",
        help="serve the reference cloud inference service (OIP v2 over TLS, token in "
        "DATA_DIR/cloud.token) with the catalog's full-precision variants; port 0 = any free "
        "port. Devices routed to the cloud are told to use it",
    )
    run.add_argument(
        "--dashboard-listen",
        default="",
        metavar="HOST:PORT",
        help="serve the web dashboard over HTTPS here (the fleet CA's certificate; log in with "
        "the admin token); off unless given",
    )
    run.add_argument(
        "--cloud-url",
        default="",
        help="tell devices routed to the cloud to use this OIP v2 endpoint instead "
        "(grpcs://host:port or grpc://host:port)",
    )
    run.add_argument(
        "--cloud-token-file",
        type=Path,
        help="the bearer token of --cloud-url, from this file",
    )
    run.add_argument(
        "--cloud-ca-file",
        type=Path,
        help="the CA of --cloud-url's TLS certificate (default: the system's roots)",
    )
    run.add_argument(
        "--rollout-interval",
        type=float,
        default=2.0,
        help="seconds between rollout controller steps (default 2; reports also wake it)",
    )
    run.add_argument(
        "--metrics-listen",
        help="serve fleet-level Prometheus metrics on HOST:PORT/metrics (default: off)",
    )
    run.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes serving the device port (default 1; one per core for big fleets; "
        "enrollment, admin and MQTT stay with the first)",
    )
    run.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    run.add_argument("--ready-file", type=Path, help="write ports as JSON here once serving")
    run.set_defaults(func=_cmd_run)
    return parser


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse, with ``run --config FILE`` supplying defaults the command line overrides.

    Raises:
        DataDirError: the config file is unreadable or invalid.
    """
    parser = build_parser()
    words = list(sys.argv[1:] if argv is None else argv)
    # Before parsing: the file may supply required options such as data_dir.
    if "run" in words:
        after = words[words.index("run") + 1 :]
        for i, word in enumerate(after):
            if word == "--config" and i + 1 < len(after):
                apply_config(_subparser(parser, "run"), Path(after[i + 1]))
            elif word.startswith("--config="):
                apply_config(_subparser(parser, "run"), Path(word.split("=", 1)[1]))
    return parser.parse_args(words)


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[name]
    raise KeyError(name)


def _cmd_check_config(args: argparse.Namespace) -> int:
    values = apply_config(_subparser(build_parser(), "run"), args.config)
    print(f"{args.config}: OK ({len(values)} setting(s): {', '.join(sorted(values))})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    try:
        args = _parse(argv)
    except DataDirError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    setup_logging(args.log_level)
    # amqtt logs every packet at INFO; keep the server's own log readable.
    logging.getLogger("amqtt").setLevel(logging.WARNING)
    logging.getLogger("transitions").setLevel(logging.WARNING)
    try:
        return int(args.func(args))
    except (FleetError, AgentError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except ImportError as exc:
        print(
            f"{PROG}: error: {exc.name} is missing; "
            "install the server with: pip install 'edgefleet[server]'",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
