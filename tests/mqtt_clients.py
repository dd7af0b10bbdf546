"""MQTT clients and brokers of the tests: the shipped mosquitto configuration started on a free
port, and a paho client holding a device's fleet certificate (an attacker's or a spy's)."""

from __future__ import annotations

import getpass
import shutil
import ssl
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.reasoncodes import ReasonCode

from agent.identity import Identity
from fleet_server.datadir import DataDir
from protos.topics import mosquitto_acl
from tests.harness import REPO, Server, free_port, port_open, run_cli, start, wait_for

PACKAGING = REPO / "packaging" / "mosquitto"


def start_tls_broker(
    folder: Path, server: Server, server_names: Sequence[str] = ()
) -> tuple[int, Any]:
    """mosquitto with packaging/mosquitto/edgefleet.conf and .acl, paths and port replaced
    (with ``server_names``, the ACL generated for those server identities instead)."""
    certs = folder / "certs"
    run_cli(
        "edgefleet-server", "broker-cert", "--data-dir", str(server.data_dir),
        "--out", str(certs), "--name", "127.0.0.1",
    )  # fmt: skip
    port = free_port()
    acl = folder / "edgefleet.acl"
    if server_names:
        fleet = DataDir.open(server.data_dir).fleet_id
        acl.write_text(mosquitto_acl(fleet, server_names), encoding="utf-8")
    else:
        shutil.copy(PACKAGING / "edgefleet.acl", acl)
    conf = (PACKAGING / "edgefleet.conf").read_text()
    for old, new in (
        ("/etc/mosquitto/conf.d/edgefleet.acl", str(acl)),
        ("/var/lib/mosquitto/", f"{folder}/"),
        ("listener 8883", f"listener {port} 127.0.0.1"),
        ("/etc/edgefleet/fleet-ca.crt", str(certs / "fleet-ca.crt")),
        ("/etc/edgefleet/fleet.crl", str(certs / "fleet.crl")),
        ("/etc/mosquitto/certs/broker.crt", str(certs / "broker.crt")),
        ("/etc/mosquitto/certs/broker.key", str(certs / "broker.key")),
    ):
        assert old in conf, old
        conf = conf.replace(old, new)
    conf += f"user {getpass.getuser()}\nlog_dest stdout\n"
    (folder / "mosquitto.conf").write_text(conf)
    return port, run_tls_broker(folder, port)


def run_tls_broker(folder: Path, port: int) -> Any:
    """(Re)start the mosquitto that start_tls_broker configured in ``folder``: it reads its
    certificates and CRL (``folder/certs/fleet.crl``) afresh."""
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    log = folder / f"mosquitto-{time.time_ns()}.log"
    proc = start([binary, "-c", str(folder / "mosquitto.conf")], log)
    wait_for("mosquitto (TLS)", lambda: port_open(port) or proc.popen.poll() is not None)
    assert proc.popen.poll() is None, proc.output()
    return proc


def sim_state_dir(sim: Any, folder: Path) -> Path:
    """A state dir holding a simulated device's key, certificate and CA (what Client reads)."""
    state = folder / sim.device_id / "state"
    state.mkdir(parents=True, exist_ok=True)
    Identity.key_path(state).write_bytes(sim.key_pem)
    Identity.cert_path(state).write_bytes(sim.certificate_pem)
    Identity.ca_path(state).write_bytes(sim.ca_pem)
    return state


class Client:
    """A paho client with a device's certificate (``state_dir``; None: no certificate at all),
    recording what it is told. MQTT v5 for mosquitto, 3.1.1 for the embedded broker."""

    def __init__(
        self,
        port: int,
        state_dir: Path | None,
        client_id: str,
        *,
        protocol: paho.MQTTProtocolVersion = paho.MQTTv5,
        ca_file: Path | None = None,
        must_connect: bool = True,
    ) -> None:
        self.client = paho.Client(
            paho.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol
        )
        self.client.tls_set(
            ca_certs=str(ca_file or Identity.ca_path(state_dir)),  # type: ignore[arg-type]
            certfile=str(Identity.cert_path(state_dir)) if state_dir else None,
            keyfile=str(Identity.key_path(state_dir)) if state_dir else None,
            cert_reqs=ssl.CERT_REQUIRED,
        )
        self.client.reconnect_delay_set(60, 60)  # an attacker's one try, not a retry loop
        self.received: list[str] = []
        self.suback: list[list[ReasonCode]] = []
        self.puback: dict[int, ReasonCode] = {}
        self.connack: list[ReasonCode] = []
        self.connected = threading.Event()
        self.answered = threading.Event()
        self.disconnected = threading.Event()

        def on_connect(_c: Any, _u: Any, _f: Any, reason: ReasonCode, _p: Any) -> None:
            self.connack.append(reason)
            if not reason.is_failure:
                self.connected.set()
            self.answered.set()

        def on_disconnect(*_args: Any) -> None:
            self.disconnected.set()
            self.answered.set()

        self.client.on_connect = on_connect
        self.client.on_disconnect = on_disconnect
        self.client.on_message = lambda _c, _u, m: self.received.append(m.topic)
        self.client.on_subscribe = lambda _c, _u, _mid, codes, _p: self.suback.append(codes)
        self.client.on_publish = lambda _c, _u, mid, code, _p: self.puback.__setitem__(mid, code)
        try:
            self.client.connect("127.0.0.1", port)
        except (OSError, ssl.SSLError):
            self.answered.set()
            assert not must_connect, "could not connect"
            return
        self.client.loop_start()
        self.answered.wait(10)
        if must_connect:
            assert self.connected.is_set(), self.connack

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> ReasonCode:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(10)
        wait_for("the PUBACK", lambda: info.mid in self.puback)
        return self.puback[info.mid]

    def send(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        """Publish without waiting for the broker's answer (the embedded broker, speaking
        3.1.1, has no refusing PUBACK: what a refusal does is seen in its effects)."""
        self.client.publish(topic, payload, qos=qos, retain=retain)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
