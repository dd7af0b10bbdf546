"""The shipped mosquitto config and ACL, on a real mosquitto: devices and the server connect with
fleet certificates over TLS; a device cannot publish as another device, read another device's
commands, or send commands; a real agent's telemetry gets through."""

from __future__ import annotations

import getpass
import json
import shutil
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.reasoncodes import ReasonCode

from agent.identity import Identity
from protos import telemetry_pb2
from tests.harness import REPO, Agent, Server, free_port, port_open, run_cli, start, wait_for

pytestmark = pytest.mark.slow

PACKAGING = REPO / "packaging" / "mosquitto"


def start_tls_broker(folder: Path, server: Server) -> tuple[int, Any]:
    """mosquitto with packaging/mosquitto/edgefleet.conf and .acl, paths and port replaced."""
    certs = folder / "certs"
    run_cli(
        "edgefleet-server", "broker-cert", "--data-dir", str(server.data_dir),
        "--out", str(certs), "--name", "127.0.0.1",
    )  # fmt: skip
    port = free_port()
    acl = folder / "edgefleet.acl"
    shutil.copy(PACKAGING / "edgefleet.acl", acl)
    conf = (PACKAGING / "edgefleet.conf").read_text()
    for old, new in (
        ("/etc/mosquitto/conf.d/edgefleet.acl", str(acl)),
        ("/var/lib/mosquitto/", f"{folder}/"),
        ("listener 8883", f"listener {port} 127.0.0.1"),
        ("/etc/edgefleet/fleet-ca.crt", str(certs / "fleet-ca.crt")),
        ("/etc/mosquitto/certs/broker.crt", str(certs / "broker.crt")),
        ("/etc/mosquitto/certs/broker.key", str(certs / "broker.key")),
    ):
        assert old in conf, old
        conf = conf.replace(old, new)
    conf += f"user {getpass.getuser()}\nlog_dest stdout\n"
    (folder / "mosquitto.conf").write_text(conf)
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    proc = start([binary, "-c", str(folder / "mosquitto.conf")], folder / "mosquitto.log")
    wait_for("mosquitto (TLS)", lambda: port_open(port) or proc.popen.poll() is not None)
    assert proc.popen.poll() is None, proc.output()
    return port, proc


class Client:
    """A paho client with a device's certificate, recording what it is told."""

    def __init__(self, port: int, state_dir: Path, client_id: str) -> None:
        self.client = paho.Client(
            paho.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5
        )
        self.client.tls_set(
            ca_certs=str(Identity.ca_path(state_dir)),
            certfile=str(Identity.cert_path(state_dir)),
            keyfile=str(Identity.key_path(state_dir)),
            cert_reqs=ssl.CERT_REQUIRED,
        )
        self.received: list[str] = []
        self.suback: list[list[ReasonCode]] = []
        self.puback: dict[int, ReasonCode] = {}
        self.connected = threading.Event()
        self.client.on_connect = lambda *a: self.connected.set()
        self.client.on_message = lambda _c, _u, m: self.received.append(m.topic)
        self.client.on_subscribe = lambda _c, _u, _mid, codes, _p: self.suback.append(codes)
        self.client.on_publish = lambda _c, _u, mid, code, _p: self.puback.__setitem__(mid, code)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self.connected.wait(10)

    def publish(self, topic: str, payload: bytes) -> ReasonCode:
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(10)
        wait_for("the PUBACK", lambda: info.mid in self.puback)
        return self.puback[info.mid]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


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
    wait_for("two SUBACKs", lambda: len(spy.suback) == 2)
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
