"""The shipped mosquitto config and ACL, on a real mosquitto: devices and the server connect with
fleet certificates over TLS; a device cannot publish as another device, read another device's
commands, or send commands; a real agent's telemetry gets through."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from paho.mqtt.reasoncodes import ReasonCode

from protos import telemetry_pb2
from tests.harness import REPO, Agent, Server, wait_for
from tests.mqtt_clients import Client, start_tls_broker

pytestmark = pytest.mark.slow


def test_devices_are_confined_to_their_own_topics(
    tmp_path: Path,
    server_factory: Callable[..., Server],
    agent_factory: Callable[..., Agent],
) -> None:
    # The server starts on the embedded broker only to enroll; then it moves to the TLS broker.
    bootstrap = server_factory(None, folder=tmp_path / "boot")
    port, broker = start_tls_broker(tmp_path / "broker", bootstrap)
    bootstrap.proc.stop()
    url = f"mqtts://127.0.0.1:{port}"
    server = server_factory(url, folder=tmp_path / "boot", extra=("--device-mqtt-url", url))
    alice = agent_factory("alice", server, telemetry_s=0.5)
    bob = agent_factory("bob", server, telemetry_s=0.5)

    def telemetry_count(device_id: str) -> int:
        out = server.admin("devices", "show", device_id, "--json").stdout
        return int(json.loads(out).get("telemetry_count", 0))

    # Real agents over TLS with their fleet certificates: their telemetry arrives.
    wait_for("alice's telemetry", lambda: telemetry_count("alice") >= 2, timeout=60)
    wait_for("bob's telemetry", lambda: telemetry_count("bob") >= 2, timeout=60)

    # Alice's certificate, in clients of our own (mosquitto drops the connection after each
    # refused publish, so one client per attempt).
    def publish_as_alice(topic: str, payload: bytes) -> ReasonCode:
        client = Client(port, alice.folder / "state", f"mallory-{time.monotonic_ns()}")
        try:
            return client.publish(topic, payload)
        finally:
            client.close()

    base = "edgefleet/v1/default"
    forged = telemetry_pb2.TelemetryReport(device_id="bob", seq=10**9, epoch="forged")
    code = publish_as_alice(f"{base}/bob/telemetry", forged.SerializeToString())
    assert code.is_failure and str(code) == "Not authorized", code
    command = telemetry_pb2.Command(id="x", kind="checkin").SerializeToString()
    assert publish_as_alice(f"{base}/bob/commands", command).is_failure
    assert publish_as_alice(f"{base}/alice/commands", command).is_failure  # not even her own
    # (mosquitto drops the connection after each refused publish; a fresh one for the rest)
    spy = Client(port, alice.folder / "state", "spy")
    spy.client.subscribe(f"{base}/bob/commands", qos=1)
    spy.client.subscribe(f"{base}/+/telemetry", qos=1)
    wait_for("two SUBACKs", lambda: len(spy.suback) == 2, timeout=90)  # busy cores: slow
    # Her own topics work.
    own = telemetry_pb2.TelemetryReport(device_id="alice", seq=10**9, epoch="x")
    assert not spy.publish(f"{base}/alice/telemetry", own.SerializeToString()).is_failure

    # The server's commands reach bob (a rollout nudges him), and none of bob's messages,
    # telemetry or commands, reach the spy: mosquitto grants the subscription but delivers
    # nothing the ACL does not let alice read.
    model = REPO / "tests" / "data" / "mobilenet_v1_0.25_128_quant.tflite"
    server.admin("models", "push", str(model), "--name", "m", "--version", "1.0.0")
    server.admin("rollouts", "create", "m", "1.0.0", "--waves", "100%")
    wait_for("bob's nudge", lambda: "the server asked for a check-in now" in bob.output())
    time.sleep(1)
    assert spy.received == []
    spy.close()

    shown = json.loads(server.admin("devices", "show", "bob", "--json").stdout)
    assert int((shown.get("last_telemetry") or {}).get("seq", 0)) < 10**9

    # Client ids are identities: alice's certificate asking for the server's client id, or
    # bob's, gets her own and disconnects neither (without use_username_as_clientid each try
    # kicked the server off the broker).
    lost = "MQTT connection to"
    before = server.proc.output().count(lost)
    for victim in ("edgefleet:server:main", "bob"):
        thief = Client(port, alice.folder / "state", victim)
        time.sleep(1)
        thief.close()
    count = telemetry_count("bob")
    wait_for("bob's telemetry after", lambda: telemetry_count("bob") >= count + 2, timeout=60)
    assert server.proc.output().count(lost) == before, server.proc.output()[-2000:]
    assert bob.output().count(lost) == 0
    broker.stop()
