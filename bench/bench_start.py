"""Start to first admin call: how soon `edgefleet-server run` answers an admin call, against a
bare grpcio server's start in the same run (issue 22 item 5).

    python -m bench.bench_start [--runs 7] [--quick]

Each run spawns a process and times, from the spawn, the first successful call made from this
process over a fresh TLS channel (polled every 20 ms):

- **bare**: a Python process that imports grpcio, serves the standard health service on TLS and
  answers ``Check``: the floor (interpreter start, imports, bind) of any Python gRPC server.
- **server, embedded broker**: ``edgefleet-server run`` on an initialised data dir (SQLite, the
  embedded amqtt broker), answering ``ListModels`` with the admin token.
- **server, silent broker**: the same with ``--mqtt-url`` at a TCP port that accepts and never
  answers (a hung broker): before issue 22 this start waited the connect timeout (10 s) and
  then failed.

Reported: the median of each and the server's median as a multiple of the bare one.
--quick: 1 run (a check that it completes, for `make test`).
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.processes import run_folder
from fleet_server.registry.ca import FleetCA
from protos import admin_pb2, admin_pb2_grpc
from tests.harness import free_port, run_cli

TIMEOUT_S = 120.0

BARE = """
import sys
from concurrent import futures
import grpc
from grpc_health.v1 import health, health_pb2_grpc
key, cert, port = open(sys.argv[1], 'rb').read(), open(sys.argv[2], 'rb').read(), sys.argv[3]
server = grpc.server(futures.ThreadPoolExecutor(4))
health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
server.add_secure_port('127.0.0.1:' + port, grpc.ssl_server_credentials([(key, cert)]))
server.start()
server.wait_for_termination()
"""


def first_call(call: object, deadline_s: float) -> float:
    """Poll ``call`` (a function making one RPC) until it succeeds; the monotonic time then."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            call()  # type: ignore[operator]
            return time.monotonic()
        except grpc.RpcError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def time_bare(folder: Path, ca_pem: bytes, key: Path, cert: Path) -> float:
    port = free_port()
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-c", BARE, str(key), str(cert), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=(folder / "bare.log").open("ab"),
    )
    try:
        channel = grpc.secure_channel(f"127.0.0.1:{port}", grpc.ssl_channel_credentials(ca_pem),
                                      options=[("grpc.initial_reconnect_backoff_ms", 20),
                                               ("grpc.max_reconnect_backoff_ms", 50)])  # fmt: skip
        stub = health_pb2_grpc.HealthStub(channel)
        done = first_call(lambda: stub.Check(health_pb2.HealthCheckRequest(), timeout=5), TIMEOUT_S)
        channel.close()
        return done - started
    finally:
        proc.terminate()
        proc.wait(30)


def time_server(folder: Path, data_dir: Path, extra: list[str]) -> float:
    port = free_port()
    ca_pem = (data_dir / "ca" / "ca.crt").read_bytes()
    token = (data_dir / "admin.token").read_text().strip()
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "fleet_server.cli", "run", "--data-dir", str(data_dir),
         "--listen", f"127.0.0.1:{port}", "--device-listen", "127.0.0.1:0", *extra],
        stdout=subprocess.DEVNULL, stderr=(folder / "server.log").open("ab"),
    )  # fmt: skip
    try:
        channel = grpc.secure_channel(f"127.0.0.1:{port}", grpc.ssl_channel_credentials(ca_pem),
                                      options=[("grpc.initial_reconnect_backoff_ms", 20),
                                               ("grpc.max_reconnect_backoff_ms", 50)])  # fmt: skip
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        metadata = [("authorization", f"Bearer {token}")]
        done = first_call(
            lambda: stub.ListModels(admin_pb2.ListModelsRequest(), timeout=5, metadata=metadata),
            TIMEOUT_S,
        )
        channel.close()
        return done - started
    finally:
        proc.terminate()
        if proc.wait(60) != 0:
            raise RuntimeError(f"the server exited with {proc.returncode}: see {folder}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="1 run")
    parser.add_argument(
        "--without-silent", action="store_true",
        help="leave out the silent broker (a server from before issue 22 does not start then)",
    )  # fmt: skip
    args = parser.parse_args()
    runs = 1 if args.quick else args.runs
    with run_folder("bench-start") as children:
        folder = children.folder
        data_dir = folder / "server"
        run_cli("edgefleet-server", "init", "--data-dir", str(data_dir))
        ca = FleetCA.load(data_dir / "ca")
        key_pem, cert_pem = ca.server_credentials(["127.0.0.1"])
        key, cert = folder / "bare.key", folder / "bare.crt"
        key.write_bytes(key_pem)
        cert.write_bytes(cert_pem)
        ca_pem = (data_dir / "ca" / "ca.crt").read_bytes()
        silent = socket.create_server(("127.0.0.1", 0))  # accepts (backlog), never answers
        silent_url = f"mqtt://127.0.0.1:{silent.getsockname()[1]}"
        results: dict[str, list[float]] = {"bare": [], "embedded": [], "silent": []}
        for _ in range(runs):  # interleaved: a busy moment of the machine hits all three
            results["bare"].append(time_bare(folder, ca_pem, key, cert))
            results["embedded"].append(
                time_server(folder, data_dir, ["--mqtt-listen", "127.0.0.1:0"])
            )
            if not args.without_silent:
                results["silent"].append(time_server(folder, data_dir, ["--mqtt-url", silent_url]))
        silent.close()
    bare = statistics.median(results["bare"])
    print(f"start to first call, median of {runs} runs (seconds):")
    for name, label in (
        ("bare", "bare grpcio server (health Check)"),
        ("embedded", "edgefleet-server, embedded broker (ListModels)"),
        ("silent", "edgefleet-server, broker that never answers (ListModels)"),
    ):
        if not results[name]:
            continue
        median = statistics.median(results[name])
        print(f"  {label:58} {median:6.2f}  {median / bare:5.1f}x bare"
              f"  (runs: {', '.join(f'{v:.2f}' for v in results[name])})")  # fmt: skip


if __name__ == "__main__":
    main()
