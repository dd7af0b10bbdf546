"""Connections that notice they are dead (issue 18), in one process: the agent's keepalive
pings against the server's ping policy, the download's stall timeout, and the fresh channel
after unanswered calls. The same with real processes: ``test_half_open.py``."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.client import FRESH_CHANNEL_AFTER, DeviceClient, stall_limit
from agent.errors import DownloadStalledError, ServerUnavailableError
from fleet_server.registry.ca import FleetCA
from protos import device_pb2 as pb
from protos import device_pb2_grpc as pb_grpc
from protos import keepalive
from tests.stall_proxy import StallProxy

CHUNK = 64 * 1024


class _Service(pb_grpc.DeviceServiceServicer):
    """Check-ins answer at once; a download sends ``chunks`` chunks, then, with ``hang``,
    sends nothing more until the test ends."""

    def __init__(self) -> None:
        self.check_ins = 0
        self.chunks = 3
        self.hang = False
        self.released = threading.Event()

    def CheckIn(self, request: pb.CheckInRequest, context: Any) -> pb.CheckInResponse:  # noqa: N802 - grpc's name
        self.check_ins += 1
        return pb.CheckInResponse()

    def DownloadArtifact(self, request: pb.DownloadRequest, context: Any) -> Iterator[Any]:  # noqa: N802 - grpc's name
        total = self.chunks * CHUNK
        for offset in range(request.offset, total, CHUNK):
            yield pb.ArtifactChunk(offset=offset, data=b"x" * CHUNK, total_size=total)
        if self.hang:
            self.released.wait(30)


@dataclass
class _Fleet:
    service: _Service
    port: int
    ca: FleetCA
    cert_pem: bytes
    key_pem: bytes

    def client(self, port: int, *, timeout_s: float = 5.0, stall_s: float = 5.0) -> DeviceClient:
        """A device client with a certificate, calling the device port at ``port``."""
        client = DeviceClient(
            f"127.0.0.1:{port}", timeout_s=timeout_s, stall_timeout_s=stall_s, ca_pem=b""
        )
        client.use_certificate(
            f"127.0.0.1:{port}",
            certificate_pem=self.cert_pem,
            key_pem=self.key_pem,
            ca_pem=self.ca.cert_pem,
        )
        return client


@pytest.fixture
def fleet_port(tmp_path: Path) -> Iterator[_Fleet]:
    """A device port (mTLS, the fleet CA) served in this process with the server's options."""
    ca = FleetCA.create(tmp_path / "ca", "f1")
    key_pem, cert_pem = ca.server_credentials(["127.0.0.1"])
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4), options=keepalive.server_options()
    )
    service = _Service()
    pb_grpc.add_DeviceServiceServicer_to_server(service, server)
    credentials = grpc.ssl_server_credentials(
        [(key_pem, cert_pem)], root_certificates=ca.cert_pem, require_client_auth=True
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    device_key, device_cert = ca.client_credentials("dev-1")
    try:
        yield _Fleet(service, port, ca, device_cert, device_key)
    finally:
        service.released.set()
        server.stop(0)


class _Sink:
    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: memoryview) -> None:
        self.data += data


def _watchers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "download-stall"]


def test_the_server_accepts_the_agents_pings_and_grpcs_default_would_not() -> None:
    """A server that refuses the agent's pings closes its idle connections with GOAWAY
    "too_many_pings". The real option lists, every interval scaled down 100 times: the
    agent's pings get a connection closed by a server with grpc's defaults, never by ours."""
    assert keepalive.PING_INTERVAL_MS >= keepalive.SERVER_MIN_PING_INTERVAL_MS

    def scaled(options: list[tuple[str, int]]) -> list[tuple[str, int]]:
        return [(k, max(1, v // 100) if k.endswith("_ms") else v) for k, v in options]

    class Echo(pb_grpc.DeviceServiceServicer):
        def CheckIn(self, request: pb.CheckInRequest, context: Any) -> pb.CheckInResponse:  # noqa: N802 - grpc's name
            return pb.CheckInResponse()

    servers, left = [], {}
    try:
        for name, options in (("default", []), ("ours", scaled(keepalive.server_options()))):
            server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), options=options)
            pb_grpc.add_DeviceServiceServicer_to_server(Echo(), server)
            port = server.add_insecure_port("127.0.0.1:0")
            server.start()
            channel = grpc.insecure_channel(
                f"127.0.0.1:{port}", options=scaled(keepalive.client_options())
            )
            servers.append((server, channel))
            pb_grpc.DeviceServiceStub(channel).CheckIn(pb.CheckInRequest(), timeout=5)
            gone = left[name] = threading.Event()
            # After one call the connection is idle; only pings cross it.
            channel.subscribe(
                lambda state, gone=gone: (
                    gone.set() if state != grpc.ChannelConnectivity.READY else None
                )
            )
        assert left["default"].wait(30), "grpc's default policy never closed the connection"
        assert not left["ours"].is_set(), "our server closed a connection over the agent's pings"
    finally:
        for server, channel in servers:
            channel.close()
            server.stop(0)


def test_a_stalled_download_is_cancelled_and_keeps_what_arrived(fleet_port: _Fleet) -> None:
    fleet_port.service.hang = True
    client = fleet_port.client(fleet_port.port, stall_s=0.5)
    sink = _Sink()
    started = time.monotonic()
    with pytest.raises(DownloadStalledError) as info:
        client.download("a" * 64, offset=CHUNK, expected_size=3 * CHUNK, sink=sink, deadline_s=60)
    took = time.monotonic() - started
    assert f"stalled at byte {3 * CHUNK}" in str(info.value)
    assert len(sink.data) == 2 * CHUNK  # both chunks after the offset, kept to resume from
    assert 0.5 <= took < 10, took
    assert _watchers() == [], "the stall watch outlived its download"
    client.close()


def test_time_spent_pacing_a_download_is_not_a_stall(fleet_port: _Fleet) -> None:
    """A device on a thin link sleeps between chunks (max_download_kbps); that is not the
    server going quiet."""
    client = fleet_port.client(fleet_port.port, stall_s=0.5)
    client.check_in(pb.CheckInRequest())  # connected: the first chunk needs no handshake
    sink = _Sink()
    got = client.download(
        "a" * 64,
        offset=CHUNK,
        expected_size=3 * CHUNK,
        sink=sink,
        deadline_s=60,
        max_bytes_per_s=CHUNK,  # a second of pacing after each chunk, twice the stall timeout
    )
    assert got == 2 * CHUNK
    assert _watchers() == []
    client.close()


@given(
    base=st.floats(1, 600),
    fruitless=st.integers(0, 1000),
    deadline=st.floats(1, 7200),  # the updater gives a download 600 s
)
def test_the_stall_limit_grows_only_until_one_chunk_can_arrive(
    base: float, fruitless: int, deadline: float
) -> None:
    """A link too thin to carry one 1 MiB chunk within the stall timeout must not retry the
    same chunk forever: each stall that brought nothing doubles the wait, up to the deadline
    (never below the configured timeout)."""
    limit = stall_limit(base, fruitless, deadline)
    assert base <= limit <= max(base, deadline)
    assert stall_limit(base, fruitless + 1, deadline) >= limit
    assert stall_limit(base, 0, deadline) == base
    if fruitless >= 20:
        assert limit == max(base, deadline)


def test_unanswered_calls_abandon_the_connection_for_a_fresh_one(fleet_port: _Fleet) -> None:
    """Check-ins on a connection that went half-open (a dropped NAT entry) recover as soon as
    the link does, on a new connection, instead of waiting on the dead one."""
    proxy = StallProxy(fleet_port.port)
    client = fleet_port.client(proxy.port, timeout_s=3.0)  # a TLS handshake on a busy CI
    try:
        client.check_in(pb.CheckInRequest())
        assert proxy.accepted == 1
        proxy.stall()
        for _ in range(FRESH_CHANNEL_AFTER):
            with pytest.raises(ServerUnavailableError):
                client.check_in(pb.CheckInRequest())
        assert proxy.accepted == 1  # the calls waited on the dead connection
        proxy.forward()  # the link is back; the stalled connection stays dead
        answered = fleet_port.service.check_ins
        client.check_in(pb.CheckInRequest())
        assert fleet_port.service.check_ins == answered + 1
        assert proxy.accepted == 2
    finally:
        client.close()
        proxy.close()


def test_a_refusal_is_an_answer_and_keeps_the_connection(fleet_port: _Fleet) -> None:
    """Only calls that found no server count towards a fresh channel: a server that answers,
    even with an error, is reachable on this connection."""
    proxy = StallProxy(fleet_port.port)
    client = fleet_port.client(proxy.port, timeout_s=3.0)  # a TLS handshake on a busy CI
    try:
        client.check_in(pb.CheckInRequest())
        for _ in range(2 * FRESH_CHANNEL_AFTER):
            with pytest.raises(Exception, match="UNIMPLEMENTED"):
                client.report_benchmark(pb.BenchmarkReport())
        client.check_in(pb.CheckInRequest())
        assert proxy.accepted == 1
    finally:
        client.close()
        proxy.close()


def test_a_replica_listed_twice_does_not_hide_the_ones_after_it(fleet_port: _Fleet) -> None:
    """An operator's server.address naming one replica twice ("a, a, b"): calls that go
    unanswered move on to the next replica, and the one named twice is not the next of
    itself forever (b was never tried)."""
    port = fleet_port.port
    dead = "127.0.0.2:7443"  # nothing listens on 127.0.0.2 at the device port
    client = DeviceClient(
        f"{dead}, {dead} ,{dead},127.0.0.1:7443", timeout_s=3.0, stall_timeout_s=5.0, ca_pem=b""
    )
    client.use_certificate(
        f":{port}",
        certificate_pem=fleet_port.cert_pem,
        key_pem=fleet_port.key_pem,
        ca_pem=fleet_port.ca.cert_pem,
    )
    try:
        answered = fleet_port.service.check_ins
        for _ in range(4 * FRESH_CHANNEL_AFTER):
            try:
                client.check_in(pb.CheckInRequest())
                break
            except ServerUnavailableError:
                continue
        assert fleet_port.service.check_ins == answered + 1
    finally:
        client.close()
