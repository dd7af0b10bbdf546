"""End-to-end delivery with real processes: what a device reports reaches the server's database
whatever happens between (issue 19).

- a broker restarted without persistence, with messages it had acknowledged to the agent but
  not yet delivered to the server: the agent keeps them until the server's acknowledgement
  covers them, and publishes again what the server reports missing;
- an update outcome reported while the server is unreachable: it stays in the spool and reaches
  the server (and the rollout's failure gate) once the server is back, counted once whichever
  path (the device API or MQTT) brings it first.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest

from agent.client import DeviceClient
from agent.telemetry.outbox import deliver
from agent.telemetry.spool import EVENT, Spool
from fleet_server.simulator import SimDevice
from protos import device_pb2, telemetry_pb2
from protos.topics import device_topic
from tests.harness import (
    REPO,
    Agent,
    Server,
    fill_disk,
    free_port,
    make_agent,
    small_disk,
    start_mosquitto,
    wait_for,
)

pytestmark = pytest.mark.slow

MODEL = REPO / "tests" / "data" / "mobilenet_v1_0.25_128_quant.tflite"


def ledger(server: Server, device_id: str) -> dict[str, Any]:
    """The device's sequence ledger as the server stored it."""
    with sqlite3.connect(server.data_dir / "fleet.db") as db:
        row = db.execute(
            "SELECT telemetry_ledger FROM devices WHERE device_id = ?", (device_id,)
        ).fetchone()
    return dict(json.loads(row[0])) if row and row[0] else {}


def balanced(books: dict[str, Any]) -> bool:
    pending = sum(hi - lo + 1 for lo, hi in books["missing"])
    return bool(books["stored"] + books["dropped"] + books["lost"] + pending == books["highest"])


def test_a_broker_restarted_without_persistence_loses_nothing(
    tmp_path: Path,
    server_factory: Callable[..., Server],
    agent_factory: Callable[..., Agent],
) -> None:
    broker = start_mosquitto(tmp_path / "broker", persistent=False)
    server = server_factory(broker.url, extra=("--mqtt-client-id", f"ingest-{tmp_path.name}"))
    agent = agent_factory("edge-1", server, telemetry_s=0.5, checkin_s=1.0)
    wait_for("telemetry", lambda: ledger(server, "edge-1").get("highest", 0) >= 5)

    # The server stops reading: the broker acknowledges the agent's reports and queues them
    # for the server's session. Then the broker dies and comes back without them.
    server.proc.popen.send_signal(signal.SIGSTOP)
    try:
        time.sleep(4)
        before = ledger(server, "edge-1")["highest"]
        broker.proc.stop(signal.SIGKILL)
        broker = start_mosquitto(tmp_path / "broker", broker.port, persistent=False)
    finally:
        server.proc.popen.send_signal(signal.SIGCONT)

    def settled() -> dict[str, Any] | None:
        books = ledger(server, "edge-1")
        done = books["highest"] >= before + 20 and not books["missing"]
        return books if done else None

    books = wait_for("every report stored, none awaited", settled, timeout=90)
    # Some reports were lost by the broker, then published again and filled in: none is
    # counted lost, none dropped, each stored once.
    assert books["lost"] == 0 and books["dropped"] == 0 and balanced(books), books
    assert books["stored"] == books["highest"]
    agent.stop()
    broker.proc.stop()


def _fleet_id(server: Server) -> str:
    return str(json.loads((server.data_dir / "fleet.json").read_text())["fleet_id"])


def _rollout_failed(server: Server) -> int:
    status = json.loads(server.admin("rollouts", "status", "1", "--json").stdout)
    return sum(int(wave.get("failed", 0)) for wave in status.get("wave_status", []))


def test_an_outcome_reported_while_the_server_is_unreachable_reaches_its_rollout(
    tmp_path: Path, broker_url: str, server_factory: Callable[..., Server]
) -> None:
    server = server_factory(broker_url)
    server.admin("models", "push", str(MODEL), "--name", "m", "--version", "1.0.0")
    device = SimDevice.enroll(server.sim_fleet(), server.enrollment_token(), "dev-o")
    server.admin("rollouts", "create", "m", "1.0.0", "--waves", "100%")
    wait_for("the rollout to assign the device", lambda: device.check_in(act=False).desired)
    fleet = _fleet_id(server)

    spool = Spool(tmp_path / "spool.db")
    topic = device_topic(fleet, device.device_id, "events")

    def spool_event(report: device_pb2.StatusReport) -> bool:  # what the agent does
        def build(seq: int) -> bytes:
            event = telemetry_pb2.DeviceEvent(
                device_id=device.device_id, seq=seq, epoch=spool.epoch, sent_unix_ms=1
            )
            event.update.CopyFrom(report)
            return event.SerializeToString()

        spool.append(topic, build, EVENT)
        return True

    client = DeviceClient(server.address, timeout_s=2.0)
    credentials = {
        "certificate_pem": device.certificate_pem,
        "key_pem": device.key_pem,
        "ca_pem": device.ca_pem,
    }
    client.use_certificate(f"127.0.0.1:{free_port()}", **credentials)  # nobody listens
    client.on_report = spool_event
    client.deliver_outbox = lambda: deliver(spool, client)

    failed = device_pb2.StatusReport(
        model_name="m", version="1.0.0", state=device_pb2.FAILED, detail="smoke test failed"
    )
    client.report(failed)  # the server is unreachable: kept, not sent once and forgotten
    assert len(spool) == 1 and _rollout_failed(server) == 0

    client.use_certificate(f"127.0.0.1:{server.device_port}", **credentials)
    assert deliver(spool, client)
    assert _rollout_failed(server) == 1
    shown = json.loads(server.admin("devices", "show", device.device_id, "--json").stdout)
    (model,) = [m for m in shown["models"] if m["model_name"] == "m"]
    assert model["state"] == "FAILED" and "smoke test failed" in model["detail"]
    assert len(spool) == 0  # the server stored it: forgotten

    # The same event arriving again over MQTT (its copy from the broker) counts once.
    event = telemetry_pb2.DeviceEvent(device_id=device.device_id, seq=1, epoch=spool.epoch)
    event.update.CopyFrom(failed)
    publisher = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    port = int(broker_url.rsplit(":", 1)[1])
    publisher.connect("127.0.0.1", port)
    publisher.loop_start()
    publisher.publish(topic, event.SerializeToString(), qos=1).wait_for_publish(5)
    publisher.loop_stop()
    publisher.disconnect()
    time.sleep(2)
    with sqlite3.connect(server.data_dir / "fleet.db") as db:
        (events,) = db.execute(
            "SELECT COUNT(*) FROM device_events WHERE device_id = ?", (device.device_id,)
        ).fetchone()
    assert events == 1 and _rollout_failed(server) == 1
    books = ledger(server, device.device_id)
    assert books["stored"] == 1 and books["highest"] == 1
    spool.close()
    client.close()
    device.close()


def test_telemetry_goes_on_after_the_agents_disk_was_full(
    tmp_path: Path,
    broker_url: str,
    server_factory: Callable[..., Server],
) -> None:
    """The agent's state dir on a real 8 MiB tmpfs, filled to the last byte for a while: the
    agent keeps serving and checking in, its telemetry comes back once there is room, and the
    server's books balance (what the spool dropped to make room is counted, nothing lost)."""
    server = server_factory(broker_url)
    agent = make_agent(tmp_path, "edge-full", server, telemetry_s=0.5, checkin_s=1.0)
    with small_disk(agent.folder / "state", "8m") as state:
        agent.start()
        wait_for("telemetry", lambda: ledger(server, "edge-full").get("highest", 0) >= 4)
        at_fill = ledger(server, "edge-full")["highest"]
        filler = fill_disk(state)
        time.sleep(8)
        assert agent.proc is not None and agent.proc.popen.poll() is None, agent.output()
        # The spool gave back its reserve and made room: reports went on while the disk was
        # full (16 were due).
        assert ledger(server, "edge-full")["highest"] >= at_fill + 8
        filler.unlink()
        full_until = ledger(server, "edge-full")["highest"]

        def settled() -> dict[str, Any] | None:
            books = ledger(server, "edge-full")
            done = books["highest"] >= full_until + 10 and not books["missing"]
            return books if done else None

        books = wait_for("telemetry again, every report accounted for", settled, timeout=90)
        assert books["lost"] == 0 and balanced(books), books
        assert agent.stop() == 0
