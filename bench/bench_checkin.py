"""Check-ins per second from simulated devices, against a bare grpcio server.

    python -m bench.bench_checkin [--devices 200] [--clients 2] [--seconds 10] [--db sqlite]
                                  [--quick]

A real server process (SQLite, or PostgreSQL on 127.0.0.1:5432 with --db postgresql) with a
model deployed; DEVICES simulated devices enroll (each its own key and certificate), then
CLIENTS load processes (bench/checkin_load.py, grpc.aio) make them check in back to back over
mTLS, sending the state version they last got: the unchanged case, the common one. The floor
in the same run: the same clients and channels calling a bare grpcio server (one process,
same TLS and thread pool) that answers a tiny unary call. --quick: both databases, 10 devices
for 0.5 s after a 0.25 s warm-up, a rollout to 20 (a check that the benchmark still works; its
figures mean little).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import time
from concurrent import futures
from pathlib import Path

import grpc

from agent.identity import new_key_and_csr
from bench.processes import Child, ChildExitedError, Children, run_folder
from fleet_server.registry.ca import FleetCA
from protos import device_pb2 as pb
from protos import device_pb2_grpc as pb_grpc
from tests.harness import REPO, Server, start_mosquitto, start_server

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def enroll(server: Server, count: int, **labels: str) -> list[dict[str, str]]:
    ca = server.ca_file.read_text()
    token = server.enrollment_token()
    devices = []
    credentials = grpc.ssl_channel_credentials(root_certificates=ca.encode())
    with grpc.secure_channel(server.address, credentials) as channel:
        stub = pb_grpc.DeviceServiceStub(channel)
        for i in range(count):
            name = f"{labels.get('fleet', 'sim')}-{i}"
            key, csr = new_key_and_csr(name)
            request = pb.EnrollRequest(
                enrollment_token=token, requested_name=name, csr_pem=csr, labels=labels
            )
            response = stub.Enroll(request, timeout=30)
            devices.append(
                {
                    "device_id": response.device_id,
                    "address": f"127.0.0.1:{server.device_port}",
                    "ca": ca,
                    "key": key.decode(),
                    "cert": response.certificate_pem.decode(),
                }
            )
    return devices


def clients(
    children: Children, devices_file: Path, count: int, processes: int, *args: str
) -> list[Child]:
    """Start load processes (bench/checkin_load.py), each with its share of the devices."""
    share = count // processes
    return [
        children.start(
            "checkin_load",
            [
                sys.executable,
                "-m",
                "bench.checkin_load",
                str(devices_file),
                str(i * share),
                str(share),
                *args,
            ],
            stdout=True,
        )
        for i in range(processes)
    ]


def output(child: Child, timeout: float) -> str:
    """What a load process printed, once it exited.

    Raises:
        ChildExitedError: it failed or ran past ``timeout`` seconds (its log is printed).
    """
    out, _ = child.popen.communicate(timeout=timeout)
    if child.popen.returncode != 0:
        raise ChildExitedError(
            f"{child.name} exited with status {child.popen.returncode} (log {child.log.name}, "
            f"tail printed above)"
        )
    return out


def load(children: Children, devices_file: Path, args: argparse.Namespace, *, bare: bool) -> float:
    extra = ["--warmup", str(args.warmup), *(["--bare"] if bare else [])]
    procs = clients(children, devices_file, args.devices, args.clients, str(args.seconds), *extra)
    calls = errors = 0
    for proc in procs:
        c, e = (int(x) for x in output(proc, args.seconds + 120).split())
        calls, errors = calls + c, errors + e
    if errors:
        print(f"  ({errors} errors)")
    return calls / args.seconds


def rollout(
    children: Children, server: Server, tmp: Path, args: argparse.Namespace, model: Path
) -> tuple[float, int]:
    """Seconds from 'rollouts create' until ROLLOUT devices (polling every 60 s, nudged over
    MQTT) all run the new version, through the default waves 1, 10%, 50%, 100%; and how many
    of their calls failed (each retried after 1 s, as an agent would).

    Raises:
        ChildExitedError: a load process failed, or did not see every device updated.
    """
    devices = enroll(server, args.rollout, fleet="bench")
    devices_file = tmp / "rollout-devices.json"
    devices_file.write_text(json.dumps(devices))
    server.admin("models", "push", str(model), "--name", "color", "--version", "2.0.0")
    procs = clients(
        children,
        devices_file,
        args.rollout,
        args.clients,
        "300",
        server.mqtt_url,
        "default",
        "2.0.0",
    )
    for proc in procs:  # every client subscribed
        assert proc.popen.stdout is not None
        if proc.popen.stdout.readline().strip() != "ready":
            raise ChildExitedError(f"{proc.name} did not get ready (log {proc.log.name}, above)")
    time.sleep(args.settle)  # and made its first check-in round
    started = time.perf_counter()
    server.admin("rollouts", "create", "color", "2.0.0", "--selector", "fleet=bench")
    failed = 0
    for proc in procs:
        failed += int(output(proc, 360).split()[1])
    return time.perf_counter() - started, failed


def bare_server(ca: FleetCA) -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    handler = grpc.method_handlers_generic_handler(
        "bench.Bare", {"Echo": grpc.unary_unary_rpc_method_handler(lambda req, ctx: req)}
    )
    server.add_generic_rpc_handlers((handler,))
    key, cert = ca.server_credentials(["127.0.0.1", "localhost"])
    creds = grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca.cert_pem, require_client_auth=True
    )
    port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()
    return server, port


def postgres_url() -> tuple[str, str]:
    import sqlalchemy as sa  # noqa: PLC0415

    name = f"edgefleet_bench_{secrets.token_hex(4)}"
    engine = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return name, PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"


def drop_database(name: str) -> None:
    import sqlalchemy as sa  # noqa: PLC0415

    engine = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


def run(children: Children, args: argparse.Namespace, db: str) -> dict[str, float]:
    tmp = children.folder
    pg_name, db_url = postgres_url() if db == "postgresql" else ("", None)
    server = broker = None
    try:
        # The load processes hear the nudges for all their devices on one MQTT connection: a
        # private, anonymous mosquitto (the closed brokers give that right to no one).
        broker = start_mosquitto(tmp / f"broker-{db}")
        server = start_server(
            tmp / db,
            broker.url,
            db_url,
            extra=("--rollout-interval", "1", "--workers", str(args.workers)),
        )
        model = REPO / "tests" / "data" / "mobilenet_v1_0.25_128_quant.tflite"
        server.admin("models", "push", str(model), "--name", "color", "--version", "1.0.0")
        server.admin("deploy", "color", "1.0.0")
        devices = enroll(server, args.devices)
        devices_file = tmp / f"devices-{db}.json"
        devices_file.write_text(json.dumps(devices))
        rate = load(children, devices_file, args, bare=False)
        result = {"checkin": rate}
        if args.rollout:
            result["rollout_s"], result["rollout_failed"] = rollout(
                children, server, tmp, args, model
            )
        ca = FleetCA.load(server.data_dir / "ca")
    finally:
        if server is not None:
            server.proc.stop()
        if broker is not None:
            broker.proc.stop()
        if pg_name:
            drop_database(pg_name)
    bare, port = bare_server(ca)
    try:
        for d in devices:
            d["address"] = f"127.0.0.1:{port}"
        devices_file.write_text(json.dumps(devices))
        result["bare"] = load(children, devices_file, args, bare=True)
    finally:
        bare.stop(0)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--workers", type=int, default=2, help="server processes (--workers)")
    parser.add_argument(
        "--rollout", type=int, default=1000, help="devices for the rollout timing (0 = skip)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="10 devices for 0.5 s, a rollout to 20, both databases (a smoke run)",
    )
    args = parser.parse_args()
    args.warmup, args.settle = 2.0, 5.0  # s: uncounted calls; load clients' first check-ins
    if args.quick:
        args.devices, args.seconds, args.rollout = 10, 0.5, 20
        args.warmup, args.settle = 0.25, 0.5
    dbs = ["sqlite", "postgresql"] if args.db == "both" else [args.db]
    rows = []
    with run_folder("bench_checkin") as children:
        for db in dbs:
            result = run(children, args, db)
            rows.append((db, result))
    print(
        f"{time.strftime('%Y-%m-%d')} · {os.cpu_count()} cores · {args.devices} simulated "
        f"devices, {args.clients} client processes, {args.workers} server process(es), "
        f"{args.seconds:g} s, mTLS"
    )
    print()
    print("| storage | check-ins/s (unchanged state) | bare grpcio unary/s | ratio |")
    print("|---|---|---|---|")
    for db, r in rows:
        print(
            f"| {db} | {r['checkin']:.0f} (target >= 2000) | {r['bare']:.0f} | "
            f"{r['checkin'] / r['bare']:.2f}x |"
        )
    if args.rollout:
        print()
        print(
            f"| storage | rollout to {args.rollout} devices polling every 60 s, MQTT nudge, "
            "waves 1/10%/50%/100% |"
        )
        print("|---|---|")
        for db, r in rows:
            failed = int(r["rollout_failed"])
            retried = f"; {failed} failed calls, retried after 1 s" if failed else ""
            print(f"| {db} | {r['rollout_s']:.1f} s (target <= 60 s){retried} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
