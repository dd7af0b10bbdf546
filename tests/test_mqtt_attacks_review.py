"""Attacks the fresh-eyes review of issue 17 found against the closed telemetry plane (the
embedded broker), each refused now; docs/mqtt.md (Attacks) lists what each measured before
the fixes."""

from __future__ import annotations

import contextlib
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from agent.identity import Identity
from protos import telemetry_pb2
from tests.harness import Agent, Server, wait_for
from tests.mqtt_clients import Client
from tests.test_mqtt_attacks import enroll_bare, rss_mib

pytestmark = pytest.mark.slow

BASE = "edgefleet/v1/default"


def _remaining(n: int) -> bytes:
    out = b""
    while True:
        byte, n = n % 128, n // 128
        out += bytes([byte | (0x80 if n else 0)])
        if not n:
            return out


def _str(s: bytes) -> bytes:
    return len(s).to_bytes(2, "big") + s


def _publish(topic: str, payload: bytes, *, retain: bool = False) -> bytes:
    body = _str(topic.encode()) + payload
    return bytes([0x30 | int(retain)]) + _remaining(len(body)) + body


def _tls(port: int, state: Path, timeout: float = 10.0):  # type: ignore[no-untyped-def]
    import socket
    import ssl

    ctx = ssl.create_default_context(cafile=str(Identity.ca_path(state)))
    ctx.check_hostname = False
    ctx.load_cert_chain(str(Identity.cert_path(state)), str(Identity.key_path(state)))
    return ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=timeout))


def _connect(  # type: ignore[no-untyped-def]
    port: int, state: Path, client_id: str, will: tuple[str, bytes, bool] | None = None
):
    flags = 0x02
    payload = _str(client_id.encode())
    if will is not None:
        flags |= 0x04 | 0x08 | (0x20 if will[2] else 0)
        payload += _str(will[0].encode()) + _str(will[1])
    body = _str(b"MQTT") + bytes([4, flags]) + b"\x00\x3c" + payload
    sock = _tls(port, state)
    sock.sendall(b"\x10" + _remaining(len(body)) + body)
    return sock, sock.recv(4)


def _port(server: Server) -> int:
    return int(server.mqtt_url.rsplit(":", 1)[1])


def test_a_will_is_held_to_the_topic_rights(
    tmp_path: Path,
    server_factory: Callable[..., Server],
    agent_factory: Callable[..., Agent],
) -> None:
    """amqtt publishes a Will without the topic check: mallory's Will on bob's commands topic
    makes bob's agent reload."""
    server = server_factory(None, folder=tmp_path / "srv")
    mallory = enroll_bare(server, "mallory", tmp_path)
    bob = agent_factory("bob", server, telemetry_s=0.5)
    wait_for("bob connected", lambda: "connected to MQTT broker" in bob.output(), timeout=60)
    command = telemetry_pb2.Command(id="will-cmd", kind="reload", device_id="bob")
    sock, _ack = _connect(
        _port(server), mallory, "mallory",
        will=(f"{BASE}/bob/commands", command.SerializeToString(), False),
    )  # fmt: skip
    time.sleep(0.5)
    sock.close()  # no DISCONNECT: the broker publishes the Will
    time.sleep(4)
    assert "will-cmd" not in bob.output(), "a device's Will commanded another device"


def test_retained_messages_under_made_up_fleet_levels_do_not_grow_the_server(
    tmp_path: Path, server_factory: Callable[..., Server]
) -> None:
    """may_publish ignores the fleet level: a device retains 300 KiB under every fleet name it
    makes up, kept by amqtt for good (and by mosquitto, on disk)."""
    server = server_factory(None, folder=tmp_path / "srv")
    mallory = enroll_bare(server, "mallory", tmp_path)
    pid = server.proc.popen.pid
    before = rss_mib(pid)
    sock, _ack = _connect(_port(server), mallory, "mallory")
    sock.settimeout(1.0)
    started, i = time.time(), 0
    with contextlib.suppress(TimeoutError, OSError):  # the byte budget makes it wait
        while time.time() - started < 15 and i < 1000:
            topic = f"edgefleet/v1/f{i}/mallory/telemetry"
            sock.sendall(_publish(topic, b"\0" * (300 * 1024), retain=True))
            i += 1
    time.sleep(3)
    sock.close()
    time.sleep(2)
    assert rss_mib(pid) < before + 100, (before, rss_mib(pid))


def test_one_device_cannot_keep_the_others_off_the_broker(
    tmp_path: Path, server_factory: Callable[..., Server]
) -> None:
    """_MAX_PENDING (256) is global and counted after the TLS handshake: one device holding 300
    connections that never send CONNECT gets every other connection aborted."""
    server = server_factory(None, folder=tmp_path / "srv")
    mallory = enroll_bare(server, "mallory", tmp_path)
    alice = enroll_bare(server, "alice", tmp_path)
    port = _port(server)
    stop = threading.Event()

    def hold() -> None:
        while not stop.is_set():
            try:
                sock = _tls(port, mallory, timeout=15)
                with contextlib.suppress(OSError):
                    sock.recv(1)
                sock.close()
            except OSError:
                time.sleep(0.05)

    threads = [threading.Thread(target=hold, daemon=True) for _ in range(300)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(8)
        answers = []
        for _ in range(5):
            try:
                sock, ack = _connect(port, alice, "alice")
                sock.close()
            except OSError:
                ack = b""
            answers.append(ack)
            time.sleep(1)
    finally:
        stop.set()
    assert answers.count(b"\x20\x02\x00\x00") >= 4, answers


def test_a_device_flooding_its_own_topic_does_not_swell_the_server(
    tmp_path: Path, server_factory: Callable[..., Server]
) -> None:
    """Each packet is bounded, the total is not: 250 KiB duplicates sent as fast as TCP takes
    them pile up in amqtt and the ingest (measured: +1.3 GiB in 40 s, +2.9 GiB in 100 s)."""
    server = server_factory(None, folder=tmp_path / "srv")
    mallory = enroll_bare(server, "mallory", tmp_path)
    pid = server.proc.popen.pid
    before = rss_mib(pid)
    sock, _ack = _connect(_port(server), mallory, "mallory")
    report = telemetry_pb2.TelemetryReport(device_id="mallory", epoch="x", seq=1)
    report.models.add().model_name = "m" * (250 * 1024)
    packet = _publish(f"{BASE}/mallory/telemetry", report.SerializeToString())
    peak = before
    started = time.time()
    while time.time() - started < 20:
        sock.sendall(packet)
        peak = max(peak, rss_mib(pid))
    sock.close()
    assert peak < before + 256, (before, peak)


def test_one_device_cannot_flood_the_servers_log(
    tmp_path: Path, server_factory: Callable[..., Server]
) -> None:
    """Undecodable payloads (ingest: one WARNING each) and stray PUBACKs (amqtt: one WARNING
    each) are not throttled like the guard's refusals."""
    server = server_factory(None, folder=tmp_path / "srv")
    mallory = enroll_bare(server, "mallory", tmp_path)
    before = len(server.proc.output())
    sock, _ack = _connect(_port(server), mallory, "mallory")
    garbage = _publish(f"{BASE}/mallory/telemetry", b"\xff" * 50)
    pubacks = b"".join(bytes([0x40, 2]) + (i + 1).to_bytes(2, "big") for i in range(500))
    started = time.time()
    while time.time() - started < 5:
        sock.sendall(garbage * 50 + pubacks)
    sock.close()
    time.sleep(5)
    grown = len(server.proc.output()) - before
    assert grown < 256 * 1024, f"{grown} bytes of log in 10 s from one device"


def test_a_clean_stop_loses_nothing_the_embedded_broker_acknowledged(
    tmp_path: Path, server_factory: Callable[..., Server]
) -> None:
    """SIGTERM during a legitimate replay: the ingest stops before the broker, which goes on
    acknowledging; what amqtt held for the ingest dies with it (measured: 1,646 of 3,323
    acknowledged reports lost). The agent deleted them from its spool at the PUBACK."""
    server = server_factory(None, folder=tmp_path / "srv")
    state = enroll_bare(server, "replay", tmp_path)
    day_ago = int((time.time() - 86400) * 1000)
    with sqlite3.connect(server.data_dir / "fleet.db") as db:  # last heard a day ago
        db.execute(
            "UPDATE devices SET enrolled_at = ?, last_telemetry_at = ? WHERE device_id = ?",
            (day_ago // 1000 - 86400, day_ago // 1000, "replay"),
        )
    client = Client(_port(server), state, "replay", protocol=paho.MQTTv311)
    acked: set[int] = set()
    mids: dict[int, int] = {}
    client.client.on_publish = lambda _c, _u, mid, _rc, _p: acked.add(mids[mid])
    for seq in range(1, 10_001):
        report = telemetry_pb2.TelemetryReport(
            device_id="replay", seq=seq, epoch="e1", sent_unix_ms=day_ago + seq * 8640
        )
        info = client.client.publish(f"{BASE}/replay/telemetry", report.SerializeToString(), 1)
        mids[info.mid] = seq
    wait_for("3,000 acknowledged", lambda: len(acked) >= 3000, timeout=60)
    server.proc.popen.send_signal(signal.SIGTERM)
    server.proc.popen.wait(60)
    client.client.loop_stop()
    with sqlite3.connect(server.data_dir / "fleet.db") as db:
        (stored,) = db.execute(
            "SELECT telemetry_count FROM devices WHERE device_id = 'replay'"
        ).fetchone()
    assert stored >= len(acked), f"{len(acked)} acknowledged, {stored} stored"


def test_a_server_certificate_from_an_earlier_start_is_refused(
    tmp_path: Path, server_factory: Callable[..., Server]
) -> None:
    """Each start issues the server's MQTT certificate afresh; an old copy (from a backup of the
    data dir) was admitted, and with a clean session it ended the live ingest's subscriptions:
    a device's reports stopped being stored, silently."""
    server = server_factory(None, folder=tmp_path / "srv")
    state = enroll_bare(server, "dev", tmp_path)
    ca = server.data_dir / "ca"
    old = tmp_path / "old-server-cert"
    old.mkdir()
    Identity.key_path(old).write_bytes((ca / "mqtt-server.key").read_bytes())
    Identity.cert_path(old).write_bytes((ca / "mqtt-server.crt").read_bytes())
    Identity.ca_path(old).write_bytes((ca / "ca.crt").read_bytes())
    server.proc.stop()
    again = server_factory(None, folder=tmp_path / "srv", data_dir=server.data_dir)
    thief = Client(
        _port(again), old, "edgefleet:server:main", protocol=paho.MQTTv311, must_connect=False
    )
    assert not thief.connected.is_set(), "an old server certificate got in"
    thief.close()
    device = Client(_port(again), state, "dev", protocol=paho.MQTTv311)
    for seq in range(1, 6):
        report = telemetry_pb2.TelemetryReport(
            device_id="dev", seq=seq, epoch="e", sent_unix_ms=int(time.time() * 1000)
        )
        device.publish(f"{BASE}/dev/telemetry", report.SerializeToString())
    device.close()

    def stored() -> int:
        with sqlite3.connect(again.data_dir / "fleet.db") as db:
            row = db.execute("SELECT telemetry_count FROM devices WHERE device_id = 'dev'")
            return int(row.fetchone()[0] or 0)

    wait_for("the device's 5 reports", lambda: stored() >= 5)


def test_a_packet_whose_inner_lengths_overrun_it_ends_the_connection(
    tmp_path: Path, server_factory: Callable[..., Server]
) -> None:
    """Second review: a PUBLISH announcing a 2-byte body whose topic length says 1 made amqtt
    take the topic from the next packet and frame everything after differently from the front:
    a QoS 1 message of 2 MiB was acknowledged under the 320 KiB limit. Now the read that would
    cross the packet ends the connection."""
    server = server_factory(None, folder=tmp_path / "srv")
    evil = enroll_bare(server, "evil", tmp_path)
    sock, ack = _connect(_port(server), evil, "evil")
    assert ack == b"\x20\x02\x00\x00"
    topic = _str(b"edgefleet/v1/default/evil/telemetry")
    inner = b"\xff\xff\x7f" + topic + b"\x12\x34"  # what amqtt would have read as a header
    sock.sendall(b"\x30\x02\x00\x01" + b"\x30\x32" + inner + b"\0" * (0x32 - len(inner)))
    sock.settimeout(10)
    answer = b""
    with contextlib.suppress(OSError):
        while chunk := sock.recv(100):
            answer += chunk
    assert b"\x40\x02\x12\x34" not in answer  # no PUBACK for the smuggled message
    assert "inner lengths overrun it" in server.proc.output()  # closed, and said why


def test_a_device_that_never_reads_is_cut_off_and_others_get_in(
    tmp_path: Path, server_factory: Callable[..., Server]
) -> None:
    """Second review: a device sending PINGREQs without reading a single PINGRESP kept another
    device from finishing its TLS handshake, and SIGTERM needed a SIGKILL. With the per-device
    byte budget read by whole packets, the other device gets in and the server stops by itself
    (in 9-12 s here: the hand-over before the stop waits its 5 s for the silent device; a
    client more than 4 MiB of replies behind is cut off, as a backstop)."""
    server = server_factory(None, folder=tmp_path / "srv")
    slow = enroll_bare(server, "slow", tmp_path)
    good = enroll_bare(server, "good", tmp_path)
    sock, _ack = _connect(_port(server), slow, "slow")
    sock.setblocking(False)
    started = time.monotonic()
    pings = b"\xc0\x00" * 32768
    while time.monotonic() - started < 10:
        try:
            sock.send(pings)
        except (BlockingIOError, OSError):
            time.sleep(0.01)
    other, ack = _connect(_port(server), good, "good")
    assert ack == b"\x20\x02\x00\x00", ack
    other.close()
    sock.close()
    begun = time.monotonic()
    assert server.proc.stop(timeout=30) == 0  # before the fixes: SIGKILLed after 30 s
    assert time.monotonic() - begun < 25
