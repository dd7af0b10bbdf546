"""Telemetry ingest: messages per second one server process stores, against a bare subscriber.

    python -m bench.bench_ingest [--devices 200] [--messages 40000] [--quick]

On a private mosquitto (no message limit), a publisher process sends MESSAGES QoS 1 telemetry
reports (one model each, as an agent sends) round-robin from DEVICES enrolled devices, as fast as
the broker takes them. Measured: from the first message to the server having counted every one
(devices' telemetry_count in the database), against a bare paho subscriber (QoS 1, same broker,
same publisher, in the same run) receiving them all. --quick: 10 devices, 1,000 messages.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time

import paho.mqtt.client as paho
import sqlalchemy as sa

from bench.bench_checkin import enroll
from bench.processes import Child, ChildExitedError, Children, ensure_running, run_folder
from tests.harness import Server, start_mosquitto, start_server

TIMEOUT_S = 300

PUBLISHER = r"""
import sys, time
import paho.mqtt.client as paho
from protos import telemetry_pb2
port, count, devices = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3].split(",")
client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
client.max_inflight_messages_set(1000)
client.connect("127.0.0.1", port)
client.loop_start()
payloads = []
for i in range(count):
    d = devices[i % len(devices)]
    r = telemetry_pb2.TelemetryReport(device_id=d, seq=i // len(devices) + 1, epoch="bench",
                                       sent_unix_ms=int(time.time() * 1000), uptime_s=1.0)
    m = r.models.add(model_name="mobilenet", version="1.0.0", backend="cpu", requests=i,
                     window_requests=10)
    m.latency.p50_ms = 1.2; m.latency.p95_ms = 2.0; m.latency.p99_ms = 3.0; m.latency.mean_ms = 1.3
    payloads.append((f"edgefleet/v1/default/{d}/telemetry", r.SerializeToString()))
print("ready", flush=True)
sys.stdin.readline()
infos = [client.publish(t, p, qos=1) for t, p in payloads]
for info in infos:
    info.wait_for_publish(60)
client.loop_stop()
client.disconnect()
"""


def publisher(children: Children, port: int, count: int, ids: list[str]) -> Child:
    """Start the publisher process; return when its payloads are built (it waits for "go").

    Raises:
        ChildExitedError: it exited before it was ready.
    """
    child = children.start(
        "publisher",
        [sys.executable, "-c", PUBLISHER, str(port), str(count), ",".join(ids)],
        stdin=True,
        stdout=True,
    )
    assert child.popen.stdout is not None
    line = child.popen.stdout.readline().strip()
    if line != "ready":
        raise ChildExitedError(f"the publisher said {line!r} instead of 'ready' (log tail above)")
    return child


def go(child: Child) -> None:
    assert child.popen.stdin is not None
    child.popen.stdin.write("go\n")
    child.popen.stdin.flush()


def finish(child: Child) -> None:
    """Wait for the publisher to have every message acknowledged and exit.

    Raises:
        ChildExitedError: it failed (its log is printed).
    """
    code = child.popen.wait(60)
    if code != 0:
        raise ChildExitedError(f"the publisher exited with status {code} (log tail above)")


def bare(children: Children, port: int, count: int, ids: list[str]) -> float:
    received = 0
    done = threading.Event()
    first: list[float] = []

    def on_message(_c: object, _u: object, _m: object) -> None:
        nonlocal received
        if not first:
            first.append(time.perf_counter())
        received += 1
        if received >= count:
            done.set()

    client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.subscribe("edgefleet/v1/default/+/telemetry", qos=1)
    client.loop_start()
    time.sleep(1)
    proc = publisher(children, port, count, ids)
    started = time.perf_counter()
    go(proc)
    if not done.wait(TIMEOUT_S):
        raise TimeoutError(
            f"the bare subscriber got {received} of {count} messages in {TIMEOUT_S} s"
        )
    elapsed = time.perf_counter() - started
    finish(proc)
    client.loop_stop()
    client.disconnect()
    return received / elapsed


def ingest(children: Children, server: Server, port: int, count: int, ids: list[str]) -> float:
    engine = sa.create_engine(f"sqlite:///{server.data_dir / 'fleet.db'}")

    def stored() -> int:
        with engine.connect() as conn:
            return int(
                conn.execute(
                    sa.text("SELECT COALESCE(SUM(telemetry_count), 0) FROM devices")
                ).scalar_one()
            )

    base = stored()
    proc = publisher(children, port, count, ids)
    started = time.perf_counter()
    go(proc)
    while stored() - base < count:
        ensure_running("the fleet server", server.proc.popen, server.proc.log)
        if time.perf_counter() - started > TIMEOUT_S:
            raise TimeoutError(
                f"the server stored {stored() - base} of {count} messages in {TIMEOUT_S} s"
            )
        time.sleep(0.05)
    elapsed = time.perf_counter() - started
    finish(proc)
    engine.dispose()
    return (stored() - base) / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--messages", type=int, default=40_000)
    parser.add_argument(
        "--quick", action="store_true", help="10 devices, 1,000 messages (a smoke run)"
    )
    args = parser.parse_args()
    if args.quick:
        args.devices, args.messages = 10, 1000
    with run_folder("bench_ingest") as children:
        tmp = children.folder
        broker = start_mosquitto(tmp / "broker")
        server = None
        try:
            server = start_server(tmp, broker.url)
            ids = [d["device_id"] for d in enroll(server, args.devices, fleet="ing")]
            rate = ingest(children, server, broker.port, args.messages, ids)
            floor = bare(children, broker.port, args.messages, ids)
        finally:
            if server is not None:
                server.proc.stop()
            broker.proc.stop()
    print(
        f"{time.strftime('%Y-%m-%d')} · {os.cpu_count()} cores · {args.messages} QoS 1 telemetry "
        f"reports from {args.devices} devices, mosquitto, SQLite"
    )
    print()
    print("| subscriber | messages/s | ratio |")
    print("|---|---|---|")
    print(f"| bare paho subscriber (receives only) | {floor:.0f} | 1.00x |")
    print(
        f"| server ingest: validate, dedupe, store | {rate:.0f} | {rate / floor:.2f}x "
        "(target >= 0.7x) |"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
