"""Telemetry ingest: messages per second one server process stores, against a bare subscriber.

    python -m bench.bench_ingest [--devices 200] [--messages 40000] [--quick]

On a private mosquitto running the shipped, closed configuration (TLS, fleet client
certificates, the generated ACL, packaging/mosquitto/), a publisher process connects as each of
DEVICES enrolled devices with its own certificate and sends MESSAGES QoS 1 telemetry reports
(one model each, as an agent sends) round-robin, as fast as the broker takes them. Measured: from
the first message to the server having counted every one (devices' telemetry_count in the
database), against a bare paho subscriber (QoS 1, a server identity's certificate, the same
broker and publisher, in the same run) receiving them all. --quick: 10 devices, 1,000 messages.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
import sqlalchemy as sa

from bench.bench_checkin import enroll
from bench.processes import Child, ChildExitedError, Children, ensure_running, run_folder
from fleet_server.registry.ca import FleetCA
from protos.topics import server_identity
from tests.harness import Server, start_server
from tests.mqtt_clients import start_tls_broker

TIMEOUT_S = 300
BARE_IDENTITY = server_identity("bench")

PUBLISHER = r"""
import json, sys, time
from pathlib import Path
import paho.mqtt.client as paho
from protos import telemetry_pb2
port, count, devices_file = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
devices = json.loads(devices_file.read_text())
folder = devices_file.parent / "publisher-certs"
folder.mkdir(exist_ok=True)
(folder / "ca.crt").write_text(devices[0]["ca"])
clients = []
for d in devices:  # one TLS connection per device, with its own certificate (the ACL's rule)
    (folder / f"{d['device_id']}.crt").write_text(d["cert"])
    (folder / f"{d['device_id']}.key").write_text(d["key"])
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=d["device_id"],
                         protocol=paho.MQTTv5)
    client.tls_set(ca_certs=str(folder / "ca.crt"), certfile=str(folder / f"{d['device_id']}.crt"),
                   keyfile=str(folder / f"{d['device_id']}.key"))
    client.max_inflight_messages_set(1000)
    client.connect("127.0.0.1", port)
    client.loop_start()
    clients.append(client)
payloads = []
for i in range(count):
    d = devices[i % len(devices)]["device_id"]
    r = telemetry_pb2.TelemetryReport(device_id=d, seq=i // len(devices) + 1, epoch="bench",
                                       sent_unix_ms=int(time.time() * 1000), uptime_s=1.0)
    m = r.models.add(model_name="mobilenet", version="1.0.0", backend="cpu", requests=i,
                     window_requests=10)
    m.latency.p50_ms = 1.2; m.latency.p95_ms = 2.0; m.latency.p99_ms = 3.0; m.latency.mean_ms = 1.3
    topic = f"edgefleet/v1/default/{d}/telemetry"
    payloads.append((i % len(devices), topic, r.SerializeToString()))
while not all(c.is_connected() for c in clients):
    time.sleep(0.05)
print("ready", flush=True)
sys.stdin.readline()
infos = [clients[c].publish(t, p, qos=1) for c, t, p in payloads]
for info in infos:
    info.wait_for_publish(60)
for client in clients:
    client.disconnect()
for client in clients:
    client.loop_stop()
"""


def observer_credentials(data_dir: Path, identity: str, folder: Path) -> Path:
    """A client certificate for ``identity`` (a server identity, which the ACL lets read every
    device's topics) from the fleet CA in the server's data dir, written to ``folder``."""
    ca = FleetCA.load(data_dir / "ca")
    key, cert = ca.client_credentials(identity)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "client.key").write_bytes(key)
    (folder / "client.crt").write_bytes(cert)
    (folder / "ca.crt").write_bytes(ca.cert_pem)
    return folder


def publisher(children: Children, port: int, count: int, devices: Path) -> Child:
    """Start the publisher process; return when its payloads are built (it waits for "go").

    Raises:
        ChildExitedError: it exited before it was ready.
    """
    child = children.start(
        "publisher",
        [sys.executable, "-c", PUBLISHER, str(port), str(count), str(devices)],
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


def bare(children: Children, port: int, count: int, devices: Path, certs: Path) -> float:
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

    client = paho.Client(
        paho.CallbackAPIVersion.VERSION2, client_id=BARE_IDENTITY, protocol=paho.MQTTv5
    )
    client.tls_set(
        ca_certs=str(certs / "ca.crt"),
        certfile=str(certs / "client.crt"),
        keyfile=str(certs / "client.key"),
    )
    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.subscribe("edgefleet/v1/default/+/telemetry", qos=1)
    client.loop_start()
    time.sleep(1)
    proc = publisher(children, port, count, devices)
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


def ingest(children: Children, server: Server, port: int, count: int, devices: Path) -> float:
    engine = sa.create_engine(f"sqlite:///{server.data_dir / 'fleet.db'}")

    def stored() -> int:
        with engine.connect() as conn:
            return int(
                conn.execute(
                    sa.text("SELECT COALESCE(SUM(telemetry_count), 0) FROM devices")
                ).scalar_one()
            )

    base = stored()
    proc = publisher(children, port, count, devices)
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
        broker = None
        server = start_server(tmp / "srv", None)  # the embedded broker, only to enroll
        try:
            enrolled = enroll(server, args.devices, fleet="ing")
            devices = tmp / "devices.json"
            devices.write_text(json.dumps(enrolled))
            certs = observer_credentials(server.data_dir, BARE_IDENTITY, tmp / "bare-certs")
            port, broker = start_tls_broker(tmp / "broker", server, ("main", "bench"))
            server.proc.stop()
            url = f"mqtts://127.0.0.1:{port}"
            server = start_server(
                tmp / "srv", url, extra=("--device-mqtt-url", url), data_dir=server.data_dir
            )
            rate = ingest(children, server, port, args.messages, devices)
            floor = bare(children, port, args.messages, devices, certs)
        finally:
            server.proc.stop()
            if broker is not None:
                broker.stop()
    print(
        f"{time.strftime('%Y-%m-%d')} · {os.cpu_count()} cores · {args.messages} QoS 1 telemetry "
        f"reports from {args.devices} devices (one TLS connection each), mosquitto with the "
        "shipped TLS + ACL configuration, SQLite"
    )
    print()
    print("| subscriber | messages/s | ratio |")
    print("|---|---|---|")
    print(
        f"| bare paho subscriber over the same TLS broker (receives only) | {floor:.0f} | 1.00x |"
    )
    print(
        f"| server ingest: TLS, ACL, validate, bound, dedupe, store | {rate:.0f} | "
        f"{rate / floor:.2f}x (target >= 0.8x) |"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
