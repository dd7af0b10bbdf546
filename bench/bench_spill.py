"""The ingest's spill: how fast it takes messages, and how fast a full one drains into the
database once the database is back.

    python -m bench.bench_spill [--devices 20] [--per-device 900] [--quick]

Write: DEVICES x PER_DEVICE telemetry reports (one model each, as an agent sends) committed to a
fresh spill file (SQLite WAL, synchronous=FULL) in batches of 500, as the router commits them
under load, and one by one (a quiet fleet: each message its own commit).

Drain: a real server with the embedded broker; DEVICES enrolled devices, each on its own mTLS
connection, publish PER_DEVICE reports each while another connection holds the database's write
lock (an outage). Measured: how fast the reports reached the spill, then, from the release of the
lock, until the spill is empty and every report is counted in the database.
--quick: 4 devices x 100 reports.
"""

from __future__ import annotations

import argparse
import sqlite3
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho

from bench.processes import run_folder
from fleet_server.telemetry.spill import Spill, SpillBounds
from protos import telemetry_pb2
from tests.harness import scrape_metrics, start_server
from tests.mqtt_clients import Client
from tests.test_mqtt_attacks import enroll_bare

TIMEOUT_S = 600
BATCH = 500


def report(device_id: str, seq: int) -> bytes:
    message = telemetry_pb2.TelemetryReport(
        device_id=device_id, seq=seq, epoch="e", sent_unix_ms=int(time.time() * 1000)
    )
    model = message.models.add(model_name="mobilenet", version="1.0.0", backend="cpu")
    model.latency.p50_ms = 1.2
    model.window_requests = 40
    return message.SerializeToString()


def write_rate(folder: Path, n: int, batch: int) -> float:
    """Messages a second committed to a fresh spill in batches of ``batch``."""
    spill = Spill(folder / f"write-{batch}.db", SpillBounds(n * 2, 1 << 40))
    payload = report("bench", 1)
    started = time.perf_counter()
    for start in range(0, n, batch):
        rows = [(spill.number(), "edgefleet/v1/default/bench/telemetry", payload)]
        rows += [(spill.number(), rows[0][1], payload) for _ in range(min(batch, n - start) - 1)]
        assert spill.append(rows) == len(rows)
    rate = n / (time.perf_counter() - started)
    spill.close()
    return rate


def metrics(folder: Path) -> dict[str, float]:
    text = scrape_metrics(folder)
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def until(what: str, probe: object, timeout: float = TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not probe():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.05)


def drain(folder: Path, devices: int, per_device: int) -> tuple[int, float, float]:
    """(messages, their rate into the spill, seconds to drain them once the database is back)."""
    server = start_server(folder, None, extra=("--metrics-listen", "127.0.0.1:0"))
    try:
        port = int(server.mqtt_url.rsplit(":", 1)[1])
        names = [f"d{i}" for i in range(devices)]
        clients = {
            n: Client(port, enroll_bare(server, n, folder), n, protocol=paho.MQTTv311)
            for n in names
        }
        for name, client in clients.items():  # the ledgers exist before the outage
            client.publish(f"edgefleet/v1/default/{name}/telemetry", report(name, 1))
        until("the first reports", lambda: metrics(folder)[
            'edgefleet_mqtt_messages_total{outcome="accepted"}'] >= devices)  # fmt: skip
        locked, release = threading.Event(), threading.Event()

        def hold() -> None:
            db = sqlite3.connect(server.data_dir / "fleet.db", timeout=30, isolation_level=None)
            db.execute("BEGIN EXCLUSIVE")
            locked.set()
            release.wait(TIMEOUT_S)
            db.execute("ROLLBACK")
            db.close()

        holder = threading.Thread(target=hold)
        holder.start()
        assert locked.wait(30)
        total = devices * per_device
        started = time.perf_counter()
        infos = []
        for seq in range(2, per_device + 2):
            for name, client in clients.items():
                topic = f"edgefleet/v1/default/{name}/telemetry"
                infos.append(client.client.publish(topic, report(name, seq), 1))
        until("the reports in the spill", lambda: metrics(folder)[
            "edgefleet_ingest_spill_messages"] >= total)  # fmt: skip
        into = total / (time.perf_counter() - started)
        release.set()
        holder.join()
        started = time.perf_counter()
        until("the spill drained", lambda: (m := metrics(folder))[
            "edgefleet_ingest_spill_messages"] == 0 and m[
            'edgefleet_mqtt_messages_total{outcome="accepted"}'] >= devices + total)  # fmt: skip
        seconds = time.perf_counter() - started
        for client in clients.values():
            client.close()
        return total, into, seconds
    finally:
        server.proc.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=20)
    parser.add_argument("--per-device", type=int, default=900, help="at most ~1,000 (guard)")
    parser.add_argument("--quick", action="store_true", help="4 devices x 100 (a smoke run)")
    args = parser.parse_args()
    devices, per_device = (4, 100) if args.quick else (args.devices, args.per_device)
    n = devices * per_device
    with run_folder("bench_spill") as children:
        folder = children.folder
        batched = write_rate(folder, n, BATCH)
        single = write_rate(folder, min(n, 2000), 1)
        total, into, seconds = drain(folder / "server", devices, per_device)
    print(f"spill write, batches of {BATCH}: {batched:,.0f} messages/s ({n:,} messages)")
    print(f"spill write, one message a commit: {single:,.0f} messages/s")
    print(f"outage: {total:,} reports from {devices} devices reached the spill at {into:,.0f}/s")
    print(f"drain once the database is back: {seconds:.1f} s ({total / seconds:,.0f} messages/s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
