"""Telemetry over a real mosquitto: nothing lost through a broker outage and an agent restart,
birth / Will / stopped states, bad payloads dropped, many devices at once."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest

from protos import telemetry_pb2
from tests.harness import Agent, Server, scrape_metrics, start_mosquitto, wait_for

pytestmark = pytest.mark.slow

MOBILENET = Path(__file__).parent / "data" / "mobilenet_v1_0.25_128_quant.tflite"


def device(server: Server, device_id: str) -> dict[str, Any]:
    out = server.admin("devices", "show", device_id, "--json").stdout
    return dict(json.loads(out))


def last_seq(server: Server, device_id: str) -> int:
    report = device(server, device_id).get("last_telemetry") or {}
    return int(report.get("seq", 0))


def test_a_broker_outage_and_an_agent_restart_lose_nothing(
    tmp_path: Path,
    server_factory: Callable[..., Server],
    agent_factory: Callable[..., Agent],
) -> None:
    broker = start_mosquitto(tmp_path / "broker", persistent=True)
    # A stable MQTT client id: the server's session (its subscriptions and what the broker
    # queues for it) survives the broker restart, as in production.
    server = server_factory(broker.url, extra=("--mqtt-client-id", f"ingest-{tmp_path.name}"))
    agent = agent_factory("edge-1", server, telemetry_s=0.5)
    wait_for("telemetry", lambda: last_seq(server, "edge-1") >= 3)
    assert device(server, "edge-1")["online_state"] == "online"

    broker.proc.stop()  # the broker goes away; the agent keeps measuring (2 reports a second)
    time.sleep(6)
    agent.stop()  # and restarts meanwhile, with a spool full of reports
    assert "stay spooled for the next start" in agent.output()
    agent.start()
    time.sleep(6)
    broker = start_mosquitto(tmp_path / "broker", broker.port, persistent=True)

    # Everything spooled arrives, in order: the server saw every number, no gap.
    before = last_seq(server, "edge-1")
    # (The agent retries the broker at most every 15 s, then replays about 20 reports.)
    wait_for("the replay", lambda: last_seq(server, "edge-1") >= before + 18, timeout=90)
    shown = device(server, "edge-1")  # one snapshot: the replay goes on while it is read
    assert int(shown["telemetry_gaps"]) == 0
    seq = int((shown.get("last_telemetry") or {}).get("seq", 0))
    assert int(shown["telemetry_count"]) >= seq - 1
    assert shown["online_state"] == "online"
    agent.stop()
    broker.proc.stop()


def test_birth_will_and_stopped(
    tmp_path: Path,
    broker_url: str,
    server_factory: Callable[..., Server],
    agent_factory: Callable[..., Agent],
) -> None:
    server = server_factory(broker_url)
    agent = agent_factory("edge-2", server, telemetry_s=0.5)
    wait_for("online", lambda: device(server, "edge-2").get("online_state") == "online")

    # Commands are acknowledged on the events topic; system figures come with telemetry.
    out = server.admin("devices", "command", "edge-2", "birth").stdout
    command_id = out.split("(command ")[1].split(")")[0]

    def acked() -> bool:
        events = device(server, "edge-2").get("events", [])
        return any(e["state"] == "ACK" and command_id in e["detail"] for e in events)

    wait_for("the birth command's answer", acked)
    shown = server.admin("devices", "show", "edge-2").stdout
    assert "birth" in shown and "done: state published" in shown
    assert "system    cpu" in shown and "MiB" in shown
    refused = server.admin("devices", "command", "edge-2", "reboot", check=False)
    assert refused.returncode == 2  # not a command the CLI knows
    agent.stop()
    wait_for("stopped", lambda: device(server, "edge-2").get("online_state") == "stopped")
    agent.start()
    wait_for("online again", lambda: device(server, "edge-2").get("online_state") == "online")
    assert agent.proc is not None
    agent.proc.popen.send_signal(signal.SIGKILL)
    agent.proc.popen.wait()
    # The broker publishes the retained Will when the connection dies.
    wait_for("offline", lambda: device(server, "edge-2").get("online_state") == "offline")


def test_bad_payloads_are_dropped_and_many_devices_are_all_ingested(
    tmp_path: Path, broker_url: str, server_factory: Callable[..., Server]
) -> None:
    from fleet_server.simulator import SimDevice

    server = server_factory(broker_url, extra=("--metrics-listen", "127.0.0.1:0"))
    fleet, token = server.sim_fleet(), server.enrollment_token()
    ids = [SimDevice.enroll(fleet, token, f"sim-{i}").device_id for i in range(200)]
    host, port = broker_url.removeprefix("mqtt://").split(":")
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.connect(host, int(port))
    client.loop_start()
    base = "edgefleet/v1/default"
    bad = [
        (f"{base}/sim-0/telemetry", b"\xff\xfe not protobuf"),
        (f"{base}/sim-0/telemetry", b"x" * (300 * 1024)),
        # sim-1 claiming to be sim-0
        (
            f"{base}/sim-1/telemetry",
            telemetry_pb2.TelemetryReport(device_id="sim-0", seq=99, epoch="e").SerializeToString(),
        ),
        (f"{base}/not-enrolled/telemetry", b""),
    ]
    infos = [client.publish(topic, payload, qos=1) for topic, payload in bad]
    for seq in (1, 2, 3):
        for device_id in ids:
            report = telemetry_pb2.TelemetryReport(device_id=device_id, seq=seq, epoch="e1")
            infos.append(
                client.publish(f"{base}/{device_id}/telemetry", report.SerializeToString(), qos=1)
            )
    # One duplicate (a spool replaying): counted once.
    dup = telemetry_pb2.TelemetryReport(device_id=ids[5], seq=3, epoch="e1")
    infos.append(client.publish(f"{base}/{ids[5]}/telemetry", dup.SerializeToString(), qos=1))
    for info in infos:
        info.wait_for_publish(10)
    client.loop_stop()
    client.disconnect()

    def all_in() -> bool:
        devices = server.devices()
        return all(int(d.get("telemetry_count", 0)) == 3 for d in devices) and len(devices) == 200

    wait_for("every device's three reports", all_in, timeout=60)
    assert all(int(d["telemetry_gaps"]) == 0 for d in server.devices())

    # The same counts on the server's Prometheus endpoint.
    text = scrape_metrics(tmp_path, server.data_dir)
    assert 'edgefleet_mqtt_messages_total{outcome="accepted"} 600' in text
    assert 'edgefleet_mqtt_messages_total{outcome="duplicate"} 1' in text
    # Simulated: no birth message, but heard from just now.
    assert 'edgefleet_devices{state="online"} 200' in text
    server.proc.stop()
    assert "rejected" in server.proc.output()
    line = next(x for x in server.proc.output().splitlines() if "telemetry:" in x)
    accepted, rejected = [int(w) for w in line.split() if w.isdigit()][:2]
    assert accepted == 600 and rejected >= 3, line
