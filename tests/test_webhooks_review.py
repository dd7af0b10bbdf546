"""Attacks on webhooks (issue 22 item 2) found by the review, against a real server process
and real receivers (tests/webhook_receiver.py): receivers that hang, a device that floods,
addresses where clouds serve credentials."""

from __future__ import annotations

import ipaddress
import json
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from fleet_server.catalog.store import CatalogStore, ModelRow
from fleet_server.errors import BadRequestError
from fleet_server.notify.sender import post
from fleet_server.registry.store import DeviceStore
from fleet_server.rollouts.outcomes import Outcome
from fleet_server.rollouts.store import RolloutStore
from fleet_server.simulator import SimDevice
from fleet_server.storage.db import Database, stored_text
from fleet_server.webhooks.policy import check_url, refused_address
from fleet_server.webhooks.store import WebhookStore
from protos import admin_pb2 as pb
from protos import admin_pb2_grpc as pb_grpc
from protos import device_pb2
from tests.harness import DATA, Server, wait_for
from tests.webhook_receiver import Receiver

FAST = ("--webhook-timeout", "1", "--webhook-retry-after", "0.2")
BACKLOG = 12


def _test_events(server: Server) -> Callable[[str], None]:
    """TestWebhook over gRPC (many at once, faster than a CLI process each)."""
    token = (server.data_dir / "admin.token").read_text(encoding="utf-8").strip()
    credentials = grpc.ssl_channel_credentials(server.ca_file.read_bytes())
    stub = pb_grpc.AdminServiceStub(grpc.secure_channel(server.address, credentials))

    def test(name: str) -> None:
        stub.TestWebhook(pb.TestWebhookRequest(name=name), timeout=30,
                         metadata=[("authorization", f"Bearer {token}")])  # fmt: skip

    return test


@pytest.mark.slow
def test_two_hanging_receivers_do_not_hold_back_a_working_one(
    server_factory: Callable[..., Server],
) -> None:
    """Two receivers that never answer, each with a backlog: the notifier's senders were all
    theirs as soon as one came free (oldest due first), so a working receiver got its event
    only after both backlogs had been tried (with the default 10 s timeout and the 10,000 a
    webhook keeps, hours). It gets the next free sender."""
    server = server_factory(None, extra=FAST)
    hangs = [Receiver(script=["hang"] * 1000) for _ in range(2)]
    working = Receiver()
    try:
        for name, receiver in (("hang-1", hangs[0]), ("hang-2", hangs[1]), ("ok", working)):
            server.admin("webhooks", "add", name, receiver.url(), "--allow-http",
                         "--event", "webhook.test")  # fmt: skip
        test = _test_events(server)
        for _ in range(BACKLOG):
            for name in ("hang-1", "hang-2"):
                test(name)
        for receiver in hangs:  # both hold senders now
            receiver.wait_for(2)
        test("ok")
        working.wait_for(1)
        tried = [len(r.received) for r in hangs]
        assert all(count < BACKLOG for count in tried), tried
    finally:
        for receiver in (*hangs, working):
            receiver.close()


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("https://[fd00:ec2::254]/latest/meta-data/", "metadata"),  # AWS's IPv6 endpoint
        ("http://100.100.100.200/latest/meta-data/", "metadata"),  # Alibaba Cloud's
        ("https://[::169.254.169.254]/", "link-local"),  # IPv4-compatible
        ("https://[64:ff9b::a9fe:a9fe]/", "link-local"),  # NAT64 (DNS64 networks)
        ("https://[2002:a9fe:a9fe::1]/", "link-local"),  # 6to4
        ("https://[64:ff9b::0:0]/", "not a host"),
    ],
)
def test_cloud_metadata_is_refused_in_every_form(url: str, why: str) -> None:
    """The webhook URL (and, the same rule, each address a name resolves to at each attempt)
    may not reach where clouds serve instance credentials: these were dialled."""
    with pytest.raises(BadRequestError, match=why):
        check_url(url, allow_http=True)
    host = url.split("//", 1)[1].split("/", 1)[0].strip("[]")
    assert refused_address(ipaddress.ip_address(host))


def test_ordinary_addresses_stay_allowed() -> None:
    for host in ("10.0.0.5", "127.0.0.1", "::1", "fd00::1", "64:ff9b::808:808", "2001:db8::1"):
        assert refused_address(ipaddress.ip_address(host)) == "", host


@pytest.mark.slow
def test_a_device_repeating_failures_is_told_once(server_factory: Callable[..., Server]) -> None:
    """A hostile device reporting a failed update in a loop, of a real release and of versions
    that never were: each report was a notice (the operator's receiver flooded, the outbox
    grown by one row per report and webhook). Told once, for the real release."""
    server = server_factory(None, extra=FAST)
    receiver = Receiver()
    try:
        server.admin("models", "push", str(DATA / "digits_local_float.tflite"), "--name",
                     "digits", "--version", "1.0.0")  # fmt: skip
        server.admin("webhooks", "add", "ops", receiver.url(), "--allow-http")
        device = SimDevice.enroll(server.sim_fleet(), server.enrollment_token(), "hostile")
        for i in range(40):
            for model, version in (("digits", "1.0.0"), (f"made-up-{i}", "1.0.0")):
                device.stub.ReportStatus(
                    device_pb2.StatusReport(
                        model_name=model, version=version, state=device_pb2.FAILED, detail="no"
                    ),
                    timeout=30,
                )
        _test_events(server)("ops")  # recorded after every report: its delivery ends the wait
        wait_for(
            "the test event",
            lambda: any(r.payload["type"] == "webhook.test" for r in receiver.received),
        )
        wait_for(
            "nothing pending",
            lambda: (
                json.loads(server.admin("webhooks", "list", "--json").stdout)[0]["pending"] == 0
            ),
        )
        told = [r.payload["data"] for r in receiver.received if r.payload["type"] != "webhook.test"]
        assert [(d["model"], d["version"], d["state"]) for d in told] == [
            ("digits", "1.0.0", "FAILED")
        ], told
    finally:
        receiver.close()


def test_a_refusals_detail_is_escaped_once(tmp_path: Path) -> None:
    """The device's words reach the notice as stored: escaped once. They were escaped again on
    the way into the payload, so a backslash came out as four and an escape as ``\\\\x1b``."""
    db = Database(f"sqlite:///{tmp_path / 'fleet.db'}")
    db.create_schema()
    catalog = CatalogStore(db)
    catalog.add_model(ModelRow("m", "1.0.0", "int8", 1, "ab" * 32, 10, False, b"x", 0))
    device = DeviceStore(db).add_device("cam", "t", {}, {})
    webhooks = WebhookStore(db)
    webhooks.add(name="ops", url="http://127.0.0.1:9/x", secret="s" * 20, events=[],
                 allow_http=True, ca_pem=None, created_by="test", now=0)  # fmt: skip
    said = "C:\\models\\m.tflite \x1b[2J"
    detail = stored_text(said, 1024)  # as both ways in (ReportStatus, MQTT) store it
    RolloutStore(db, catalog).apply_update(Outcome(device, "m", "1.0.0", device_pb2.FAILED, detail))
    (notice,) = webhooks.claim("test", now=time.time() + 1, lease_s=60, limit=10, per_webhook=10)
    assert notice.data["detail"] == detail == "C:\\\\models\\\\m.tflite \\x1b[2J"


def test_a_receivers_own_bytes_in_an_error_are_escaped() -> None:
    """A receiver answering a malformed status line had its bytes quoted in the attempt's error
    as they came: stored in the delivery log, shown to viewers and written to the server's log,
    where an escape sequence could clear a screen or forge a line."""
    listener = socket.create_server(("127.0.0.1", 0))

    def answer() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"\x1b[2J\x1b]0;owned\x07 all good\r\n\r\n")

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        port = listener.getsockname()[1]
        got = post(f"http://127.0.0.1:{port}/x", b"{}", {}, timeout_s=10)
    finally:
        thread.join(10)
        listener.close()
    assert not got.ok and "\\x1b[2J" in got.error, got.error
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in got.error), repr(got.error)
