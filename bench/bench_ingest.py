"""Telemetry ingest: messages per second one server process stores, against a bare subscriber.

    python -m bench.bench_ingest [--devices 200] [--messages 40000]

On a private mosquitto (no message limit), a publisher process sends MESSAGES QoS 1 telemetry
reports (one model each, as an agent sends) round-robin from DEVICES enrolled devices, as fast as
the broker takes them. Measured: from the first message to the server having counted every one
(devices' telemetry_count in the database), against a bare paho subscriber (QoS 1, same broker,
same publisher, in the same run) receiving them all.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
import sqlalchemy as sa

from bench.bench_checkin import enroll
from tests.harness import REPO, start_mosquitto, start_server

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


def publisher(port: int, count: int, ids: list[str]) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", PUBLISHER, str(port), str(count), ",".join(ids)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=REPO,
        text=True,
    )
    assert proc.stdout is not None
    proc.stdout.readline()  # payloads built
    return proc


def bare(port: int, count: int, ids: list[str]) -> float:
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
    proc = publisher(port, count, ids)
    started = time.perf_counter()
    assert proc.stdin is not None
    proc.stdin.write("go\n")
    proc.stdin.flush()
    done.wait(300)
    elapsed = time.perf_counter() - started
    proc.wait(60)
    client.loop_stop()
    client.disconnect()
    return received / elapsed


def ingest(port: int, count: int, ids: list[str], db_url: str) -> float:
    engine = sa.create_engine(db_url)

    def stored() -> int:
        with engine.connect() as conn:
            return int(
                conn.execute(
                    sa.text("SELECT COALESCE(SUM(telemetry_count), 0) FROM devices")
                ).scalar_one()
            )

    base = stored()
    proc = publisher(port, count, ids)
    started = time.perf_counter()
    assert proc.stdin is not None
    proc.stdin.write("go\n")
    proc.stdin.flush()
    while stored() - base < count and time.perf_counter() - started < 300:
        time.sleep(0.05)
    elapsed = time.perf_counter() - started
    proc.wait(60)
    engine.dispose()
    return (stored() - base) / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--messages", type=int, default=40_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        broker = start_mosquitto(tmp / "broker")
        server = start_server(tmp, broker.url)
        try:
            ids = [d["device_id"] for d in enroll(server, args.devices, fleet="ing")]
            db_url = f"sqlite:///{server.data_dir / 'fleet.db'}"
            rate = ingest(broker.port, args.messages, ids, db_url)
            floor = bare(broker.port, args.messages, ids)
        finally:
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
