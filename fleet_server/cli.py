"""``edgefleet-server``: create a data dir, run the fleet server."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from agent.ports import (
    EXIT_PORT_IN_USE,
    PortInUseError,
    access_problem,
    held_by_another,
    held_by_itself,
)
from agent.systemd import setup_logging
from fleet_server import __version__
from fleet_server.artifacts.options import add_store_options
from fleet_server.config import apply_config
from fleet_server.errors import DataDirError, FleetError
from protos.names import is_name

__all__ = ["main"]

log = logging.getLogger("fleet_server")
PROG = "edgefleet-server"


def _within(low: float, high: float, kind: type[int] | type[float] = float) -> Any:
    """An argparse type: a finite number (or a whole one) from ``low`` to ``high``."""

    def parse(value: str) -> float:
        try:
            number = kind(value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{value!r} is not a number") from exc
        if not low <= number <= high:  # also refuses inf and nan
            raise argparse.ArgumentTypeError(f"{value} is outside {low:g}..{high:g}")
        return number

    return parse


def _hook_program(value: str) -> Path:
    """An argparse type: a program the server may run, one only its owner can change (anyone
    who could write it would run code as the server's user)."""
    from fleet_server.renewal.status import hook_problem  # noqa: PLC0415

    problem = hook_problem(Path(value).absolute())
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return Path(value).absolute()


_history_hours = _within(0, 24 * 366)


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
    from fleet_server.datadir import DataDir, default_root_key_dir  # noqa: PLC0415
    from fleet_server.storage.db import Database  # noqa: PLC0415

    if args.if_missing and (args.data_dir / "fleet.json").exists():
        return 0
    passphrase = _passphrase(args.root_passphrase_file)
    root_key_dir = None
    if not args.keep_root_online:
        root_key_dir = args.root_key_dir or default_root_key_dir(args.data_dir)
    data_dir = DataDir.create(
        args.data_dir,
        args.fleet_id,
        root_keys=args.root_keys,
        root_threshold=args.root_threshold,
        passphrase=passphrase,
        root_key_dir=root_key_dir,
    )
    db = Database(data_dir.db_url)
    db.create_schema()
    db.close()
    print(f"created {args.data_dir} for fleet {args.fleet_id} (files 0600, folders 0700)")
    print(f"  admin token:      {data_dir.admin_token_file}")
    print(f"  enrollment token: {data_dir.enrollment_token_file}")
    roots = f"{args.root_threshold}-of-{args.root_keys} root"
    print(f"  keys:             {data_dir.keys_dir} (release key and key list; {roots})")
    if data_dir.root_key_dir is None:
        print(
            f"  root keys:        {data_dir.keys_dir}/root-*.key (--keep-root-online: anyone "
            "who copies the data dir can sign key lists and rollbacks)"
        )
    else:
        print(f"  root keys:        {data_dir.root_key_dir} (outside the data dir)")
        print(
            f"MOVE {data_dir.root_key_dir} OFF THIS MACHINE (e.g. to an offline USB stick); "
            "hand the keys back only to sign: 'edgefleet keys rotate --root-key-dir DIR' or "
            "'edgefleet models rollback ... --root-key-dir DIR' (or --root-key FILE per key)"
        )
    return 0


def _lifetime(text: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600}
    try:
        seconds = float(text[:-1]) * units[text[-1]] if text[-1:] in units else float(text)
    except (ValueError, KeyError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 30m or 1h") from None
    if not 60 <= seconds <= 86400:
        raise argparse.ArgumentTypeError(f"{text!r} is outside 1m..24h")
    return int(seconds)


def _server_name(value: str) -> str:
    if not is_name(value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a name (1-64 of A-Z a-z 0-9 _ . -)")
    return value


def _cmd_broker_cert(args: argparse.Namespace) -> int:
    from fleet_server.datadir import DataDir  # noqa: PLC0415
    from protos.topics import mosquitto_acl  # noqa: PLC0415

    data_dir = DataDir.open(args.data_dir)
    names = list(args.name or ["localhost", "127.0.0.1", socket.gethostname()])
    key_pem, cert_pem = data_dir.ca().server_credentials(names)
    if not args.out.exists():
        args.out.mkdir(parents=True)
        args.out.chmod(0o755)  # mosquitto's user reads the certificates from it
    key_file = args.out / "broker.key"
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key_pem)
    crl = data_dir.ca_dir / "fleet.crl"  # the running server keeps it current
    if not crl.exists():
        crl.write_bytes(data_dir.ca().crl([]))
    servers = list(args.server_name or ["main"])
    # Not secrets, and for mosquitto's user: readable by all despite the server's umask.
    for name, data in (
        ("broker.crt", cert_pem),
        ("fleet-ca.crt", data_dir.ca().cert_pem),
        ("fleet.crl", crl.read_bytes()),
        ("edgefleet.acl", mosquitto_acl(data_dir.fleet_id, servers).encode()),
    ):
        (args.out / name).write_bytes(data)
        (args.out / name).chmod(0o644)
    print(
        f"wrote {args.out}/broker.crt, broker.key (0600), fleet-ca.crt and fleet.crl for "
        f"{', '.join(names)}, and edgefleet.acl for fleet {data_dir.fleet_id} and the servers "
        f"{', '.join(servers)}; see "
        "packaging/mosquitto/edgefleet.conf"
    )
    return 0


def _cmd_bootstrap_token(args: argparse.Namespace) -> int:
    """On the server host: let the bootstrap admin token work again for a while (a lockout:
    every named admin lost), or stop it at once."""
    from fleet_server.admins.store import AdminStore  # noqa: PLC0415
    from fleet_server.datadir import DataDir  # noqa: PLC0415
    from fleet_server.storage.db import Database  # noqa: PLC0415

    data_dir = DataDir.open(args.data_dir)
    db = Database(args.db_url or data_dir.db_url)
    try:
        db.create_schema()  # brings an older database to this version first
        admins = AdminStore(db)
        if args.enable_for is not None:
            until = time.time() + args.enable_for
            admins.enable_bootstrap(until)
            print(
                f"the bootstrap token ({data_dir.admin_token_file}) works until "
                f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(until))} (every replica "
                "within 5 s); add a named admin with it, then: bootstrap-token --disable"
            )
        elif args.disable:
            admins.enable_bootstrap(0)
            print("the bootstrap token works again only while no named admin has the admin role")
        until = admins.bootstrap_until()
        if args.status or not (args.enable_for or args.disable):
            named = [a for a in admins.list() if a.revoked_at is None]
            enabled = admins.bootstrap_allowed(time.time())
            day = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(until))
            again = f" (re-enabled until {day})" if until > time.time() else ""
            state = "enabled" if enabled else "disabled"
            print(f"named admins: {len(named)}; bootstrap token: {state}{again}")
    finally:
        db.close()
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from fleet_server.app import FleetServer, Settings  # noqa: PLC0415 - needs the server extra

    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s; stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server = FleetServer(Settings.from_args(args))
    server.start()
    try:
        server.serve(stop)
    finally:
        server.stop()
        log.info("server %sstopped", "worker " if args.worker else "")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(prog=PROG, description="EdgeFleet fleet server.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    sub = parser.add_subparsers(dest="command", required=True)

    init = sub.add_parser(
        "init",
        help="create a data dir: database, artifact folder, keys",
        description="Create a data dir (files 0600, folders 0700). The root keys, which sign "
        "key lists and rollbacks, go to a folder beside it (DATA_DIR.root-keys) to be moved "
        "off the machine.",
    )
    init.add_argument("--data-dir", type=Path, required=True)
    init.add_argument("--fleet-id", default="default", help="fleet id (default: default)")
    init.add_argument("--root-keys", type=int, default=1, help="number of root keys (n)")
    init.add_argument(
        "--root-threshold", type=int, default=1, help="root signatures a key list needs (k)"
    )
    init.add_argument(
        "--root-passphrase-file", type=Path, help="encrypt the root keys with this passphrase"
    )
    where = init.add_mutually_exclusive_group()
    where.add_argument(
        "--root-key-dir",
        type=Path,
        help="write the root private keys to this folder outside the data dir (0700, files "
        "0600; default DATA_DIR.root-keys beside it), to be moved off the machine",
    )
    where.add_argument(
        "--keep-root-online",
        action="store_true",
        help="keep the root private keys in DATA_DIR/keys, where a copy of the data dir "
        "carries them (test and demo fleets)",
    )
    init.add_argument(
        "--if-missing",
        action="store_true",
        help="do nothing (exit 0) when the data dir exists already (for ExecStartPre)",
    )
    init.set_defaults(func=_cmd_init)

    check = sub.add_parser("check-config", help="validate a server.toml and exit")
    check.add_argument("--config", type=Path, required=True)
    check.add_argument(
        "--user",
        metavar="USER",
        help="also check that USER (the service's: edgefleet-server in the .deb) can read the "
        "files the config names and write its data dir (ports another process holds are "
        "always checked; a server running with this config holds its own)",
    )
    check.set_defaults(func=_cmd_check_config)

    bcert = sub.add_parser(
        "broker-cert", help="a TLS certificate for the MQTT broker, from the fleet CA"
    )
    bcert.add_argument("--data-dir", type=Path, required=True)
    bcert.add_argument("--out", type=Path, required=True, help="folder for the files")
    bcert.add_argument(
        "--name", action="append", help="DNS name or IP devices dial (repeat; default this host)"
    )
    bcert.add_argument(
        "--server-name",
        action="append",
        type=_server_name,
        help="a fleet server process the ACL lets read the fleet and send commands (its "
        "'run --server-name'; repeat for replicas; default main)",
    )
    bcert.set_defaults(func=_cmd_broker_cert)

    boot = sub.add_parser(
        "bootstrap-token",
        help="on the server host: re-enable the bootstrap admin token for a while, or show it",
        description="The bootstrap admin token (DATA_DIR/admin.token) is for first setup: it "
        "stops working once a named admin with the admin role exists. When every admin is "
        "locked out, re-enable it here, on the server host (this opens the database itself).",
    )
    boot.add_argument("--data-dir", type=Path, required=True)
    boot.add_argument("--db-url", help="SQLAlchemy URL, as given to run (default: SQLite)")
    mode = boot.add_mutually_exclusive_group()
    mode.add_argument(
        "--enable-for",
        type=_lifetime,
        metavar="DURATION",
        help="let it work for this long (e.g. 30m, 1h; at most 24h)",
    )
    mode.add_argument("--disable", action="store_true", help="end a re-enabling now")
    mode.add_argument("--status", action="store_true", help="show whether it works (default)")
    boot.set_defaults(func=_cmd_bootstrap_token)

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
        default="127.0.0.1:8883",
        help="where the embedded broker listens, MQTT over TLS with fleet client certificates "
        "only (default 127.0.0.1:8883; port 0 = the port of the last start, else any free one)",
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
        help="the ingest's MQTT client id on a broker without certificates: its persistent "
        "session queues telemetry while the server restarts (default: "
        "edgefleet-server-FLEET-HOST-PORT; unique per replica). With mqtts:// the client id "
        "is the server's identity, edgefleet:server:NAME",
    )
    run.add_argument(
        "--server-name",
        type=_server_name,
        default="main",
        help="this server process's name in the fleet: its MQTT identity is "
        "edgefleet:server:NAME (the broker's ACL lists it; see 'broker-cert'); replicas "
        "on one broker need names of their own (default main)",
    )
    run.add_argument(
        "--history-hours",
        type=_history_hours,
        default=48.0,
        help="keep telemetry over time (5-minute buckets per device and model, for the "
        "dashboard's charts) this long (default 48; 0 = none)",
    )
    run.add_argument(
        "--ingest-queue-messages",
        type=_within(1, 1_000_000, int),
        default=10_000,
        metavar="N",
        help="MQTT messages waiting in memory for the database writer (default 10000, and at "
        "most 64 MiB); past it a message is left unacknowledged (docs/mqtt.md, Bounds)",
    )
    run.add_argument(
        "--ingest-spill",
        choices=["auto", "on", "off"],
        default="auto",
        help="commit what the database cannot take now to DATA_DIR/ingest-spill.db and only "
        "then acknowledge it to the broker; auto: with a broker that cannot hold messages back "
        "(the embedded MQTT 3.1.1 one). Default auto",
    )
    run.add_argument(
        "--ingest-spill-messages",
        type=_within(1, 100_000_000, int),
        default=1_000_000,
        metavar="N",
        help="at most N messages in the spill (default 1000000: 49 hours of the soak's 5.6 "
        "reports a second, 17 minutes of 1,000 a second); past it, messages wait in memory",
    )
    run.add_argument(
        "--ingest-spill-mib",
        type=_within(1, 1024 * 1024, int),
        default=512,
        metavar="MIB",
        help="at most this many MiB of topics and payloads in the spill (default 512)",
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
        help="serve the web dashboard over HTTPS here (the fleet CA's certificate; everyone logs "
        "in with their own admin token) and /metrics for an admin token; off unless given "
        "(docs/dashboard.md)",
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
    add_store_options(run)
    run.add_argument(
        "--rollout-interval",
        type=_within(0.1, 3600),
        default=2.0,
        help="seconds between rollout controller steps (default 2; reports also wake it)",
    )
    run.add_argument(
        "--ghost-device-after",
        type=_within(0, 30 * 86400),
        default=3600.0,
        metavar="SECONDS",
        help="delete a device that enrolled but never checked in (an agent killed before it "
        "saved its identity leaves one) this long after its enrollment, and audit it "
        "(default 3600; 0 = never)",
    )
    run.add_argument(
        "--manifest-lifetime-days",
        type=_within(1, 3650),
        default=365.0,
        metavar="DAYS",
        help="how long the manifests the server signs stay valid on devices (default 365)",
    )
    run.add_argument(
        "--keylist-lifetime-days",
        type=_within(1, 3650),
        default=365.0,
        metavar="DAYS",
        help="the lifetime of a key list the server renews by itself, when the root keys "
        "are on it (default 365)",
    )
    run.add_argument(
        "--renew-ahead-days",
        type=_within(0, 365),
        default=30.0,
        metavar="DAYS",
        help="re-issue the manifests in use (deployed, or in a rollout in effect) that expire "
        "within this many days, and renew the key list then if the root keys are on the "
        "server (else warn once a day); shorter than both lifetimes (default 30; "
        "docs/security.md)",
    )
    run.add_argument(
        "--expiry-hook",
        type=_hook_program,
        metavar="PROGRAM",
        help="run PROGRAM (no shell; owned by root or this user, it and its folders not "
        "writable by group or others) once a day for each "
        "key, manifest or certificate within 30 days of its expiry or past it, and while root "
        "keys sit on the server, with the event as JSON on its standard input (schema "
        "edgefleet.expiry.v1, docs/security.md); a failed run is retried at the next check, "
        "every 10 minutes (default: only the server's log warns)",
    )
    run.add_argument(
        "--webhook-timeout",
        type=_within(1, 60),
        default=10.0,
        metavar="SECONDS",
        help="give up one webhook delivery attempt after this long (connect, TLS, request and "
        "answer together; default 10; docs/notifications.md)",
    )
    run.add_argument(
        "--webhook-retry-after",
        type=_within(0.1, 3600),
        default=10.0,
        metavar="SECONDS",
        help="wait this long before trying a failed webhook delivery again, doubling (with "
        "jitter) up to an hour; given up once the event is a day old (default 10)",
    )
    run.add_argument(
        "--offline-after",
        type=_within(60, 3 * 86400),
        default=900.0,
        metavar="SECONDS",
        help="tell the webhooks (device.offline) about a device offline and unheard for this "
        "long (default 900)",
    )
    run.add_argument(
        "--metrics-listen",
        metavar="HOST:PORT",
        help="serve fleet-level Prometheus metrics on https://HOST:PORT/metrics for an admin "
        "token (Authorization: Bearer, any role; the fleet CA's certificate); the dashboard "
        "serves them too (default: off; docs/dashboard.md)",
    )
    run.add_argument(
        "--pkcs11-module",
        type=Path,
        metavar="PATH",
        help="sign releases with an Ed25519 key in a PKCS#11 token (an HSM) instead of a key "
        "file: the token's PKCS#11 library, e.g. /usr/lib/softhsm/libsofthsm2.so; with "
        "--pkcs11-token and --pkcs11-key-label (docs/security.md)",
    )
    run.add_argument("--pkcs11-token", metavar="LABEL", help="the token's label")
    run.add_argument(
        "--pkcs11-key-label",
        metavar="LABEL",
        help="the label of the key's private and public objects in the token",
    )
    run.add_argument(
        "--pkcs11-pin-file",
        type=Path,
        metavar="FILE",
        help="the token's user PIN, in a file other users cannot read (default: the systemd "
        "credential edgefleet-pkcs11-pin, LoadCredential=)",
    )
    run.add_argument(
        "--workers",
        type=_within(1, 64, int),
        default=1,
        help="processes serving the device port (default 1; one per core for big fleets; "
        "enrollment, admin and MQTT stay with the first)",
    )
    run.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    run.add_argument("--main-pid", type=int, default=0, help=argparse.SUPPRESS)
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
    run = _subparser(build_parser(), "run")
    values = apply_config(run, args.config)
    problems = []
    if args.user:  # what the service's user must read (the data dir: write)
        for key in ("cloud_token_file", "cloud_ca_file", "pkcs11_pin_file", "expiry_hook"):
            if values.get(key):
                problems.append(access_problem(Path(values[key]), args.user))
        if values.get("data_dir"):
            problems.append(access_problem(Path(values["data_dir"]), args.user, write=True))
    defaults = {a.dest: a.default for a in run._actions}
    for key in ("listen", "device_listen", "mqtt_listen", "dashboard_listen", "metrics_listen",
                "cloud_listen"):  # fmt: skip
        address = values.get(key, defaults.get(key))
        if key == "mqtt_listen" and values.get("mqtt_url"):
            continue  # an external broker: nothing listens here
        address = str(address or "")
        if address and held_by_another(address) and not held_by_itself(address, args.config):
            problems.append(f"{key} {address} is in use by another process")
    for problem in dict.fromkeys(p for p in problems if p):
        print(f"{PROG}: error: {args.config}: {problem}", file=sys.stderr)
    if any(problems):
        return 1
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
    # The data dir (database and its -wal/-shm, keys, tokens, certificates) is for this user
    # alone; files that must be readable by others (broker-cert's) say so themselves. Restored
    # after: main() called in a process that goes on (tests, tools) must not leave it changed.
    umask = os.umask(0o077)
    # amqtt logs every packet at INFO; keep the server's own log readable.
    logging.getLogger("amqtt").setLevel(logging.WARNING)
    logging.getLogger("transitions").setLevel(logging.WARNING)
    try:
        return int(args.func(args))
    except FleetError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except PortInUseError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_PORT_IN_USE
    except ImportError as exc:
        print(
            f"{PROG}: error: {exc.name} is missing; "
            "install the server with: pip install 'edgefleet[server]'",
            file=sys.stderr,
        )
        return 1
    finally:
        os.umask(umask)


if __name__ == "__main__":
    sys.exit(main())
