"""A device's recent log over real processes (issue 22 item 8): a real agent's log lines arrive
through `edgefleet devices log`, the run a SIGKILL ended included; and the server against hostile
devices over the real mTLS device port (simulated devices with their own certificates): an
upload nobody asked for, one for another device's request, one past the cap, terminal escapes
in log lines; a viewer is refused, and every request names its operator in the audit log."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from fleet_server.simulator import SimDevice
from protos import device_pb2 as pb
from protos.logs import MAX_PART_RECORDS, MAX_UPLOAD_BYTES
from tests.harness import Agent, Server, run_cli, wait_for

pytestmark = pytest.mark.slow

HOSTILE = "ok\x1b[2J\x1b]0;owned\x07\r2026-01-01 00:00:00.000 INFO     agent: all fine\x9b31m"


def refused(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        call()
    return raised.value


def upload(device: SimDevice, *messages: pb.LogUpload) -> pb.LogReceipt:
    receipt: pb.LogReceipt = device.stub.UploadLog(iter(messages), timeout=30)
    return receipt


def log_request(device: SimDevice) -> pb.LogRequest:
    answer = device.stub.CheckIn(pb.CheckInRequest(capabilities=device.capabilities), timeout=10)
    request: pb.LogRequest = answer.log_request
    return request


def test_hostile_devices_are_refused_and_their_text_is_escaped(
    server_factory: Callable[..., Server], tmp_path: Path
) -> None:
    server = server_factory(None)
    fleet, token = server.sim_fleet(), server.enrollment_token()
    dev_a = SimDevice.enroll(fleet, token, "dev-a")
    dev_b = SimDevice.enroll(fleet, token, "dev-b")

    # Nobody asked: refused before anything is stored.
    error = refused(lambda: upload(dev_a, pb.LogUpload(request_id="made-up")))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no log was asked of this device" in (error.details() or "")
    shown = server.admin("devices", "log", "dev-a", "--show", check=False)
    assert shown.returncode == 1
    assert shown.stderr.strip() == "edgefleet: dev-a has not uploaded a log"

    # An operator asks, without waiting: said in one line, with how to see it later.
    asked = server.admin("devices", "log", "dev-a", "--wait", "0", "--level", "debug", check=False)
    assert asked.returncode == 1 and asked.stdout == ""
    assert asked.stderr.startswith("edgefleet: dev-a has not uploaded its log yet; it does at "
                                   "its next check-in")  # fmt: skip
    assert "'edgefleet devices log dev-a --show' prints it then" in asked.stderr
    request = log_request(dev_a)
    assert request.id and (request.lines, request.level) == (200, 10)
    assert not log_request(dev_b).id  # the request is dev-a's alone

    # Another device cannot answer it: its certificate says who it is, and it was asked nothing.
    error = refused(lambda: upload(dev_b, pb.LogUpload(request_id=request.id)))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    # Nor can dev-a answer a request it was not given.
    error = refused(lambda: upload(dev_a, pb.LogUpload(request_id="0" * 32)))
    assert "the one pending for this device is another" in (error.details() or "")

    # dev-a's log line tries to clear the screen, retitle the terminal and forge a record.
    record = pb.LogRecord(unix_ms=1_767_225_600_000, level=40, logger="agent\x1b[1m",
                          message=f"boom\n{HOSTILE}")  # fmt: skip
    receipt = upload(dev_a, pb.LogUpload(request_id=request.id, records=[record]))
    assert (receipt.stored, receipt.truncated) == (1, False)
    assert not log_request(dev_a).id  # answered: check-ins stop carrying it
    error = refused(lambda: upload(dev_a, pb.LogUpload(request_id=request.id, records=[record])))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION  # once per request

    shown = server.admin("devices", "log", "dev-a", "--show")
    for control in ("\x1b", "\x07", "\r", "\x9b"):
        assert control not in shown.stdout + shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].startswith("-- this run of the agent")
    assert lines[1].endswith("ERROR    agent\\x1b[1m: boom")
    assert lines[2].startswith("    ok\\x1b[2J\\x1b]0;owned\\x07\\x0d2026-01-01")  # indented
    assert "log of dev-a: 1 record(s)" in shown.stderr
    as_json = json.loads(server.admin("devices", "log", "dev-a", "--show", "--json").stdout)
    assert as_json["records"][0]["logger"] == "agent\\x1b[1m"

    # Past the cap: the server keeps what fits and reads no further.
    server.admin("devices", "log", "dev-a", "--wait", "0", check=False)
    request = log_request(dev_a)
    big = pb.LogRecord(level=20, logger="agent", message="y" * 2000)

    def flood() -> Iterator[pb.LogUpload]:
        yield pb.LogUpload(request_id=request.id, records=[big] * MAX_PART_RECORDS)
        for _ in range(200):  # 80 MB if it were all read
            yield pb.LogUpload(records=[big] * MAX_PART_RECORDS)

    receipt = dev_a.stub.UploadLog(flood(), timeout=60)
    assert receipt.truncated and receipt.stored * 2000 <= MAX_UPLOAD_BYTES
    log = json.loads(server.admin("devices", "log", "dev-a", "--show", "--json").stdout)
    assert log["truncated"] and len(log["records"]) == receipt.stored
    shown = server.admin("devices", "log", "dev-a", "--show", "--lines", "3")
    assert len(shown.stdout.splitlines()) == 4  # the run's line and 3 records
    assert "truncated: the device sent more than the server keeps" in shown.stderr

    # Who asked is recorded; a viewer may neither ask nor read.
    audit = json.loads(server.admin("audit", "--json").stdout)
    entries = [e for e in audit if e["action"] == "RequestDeviceLog"]
    assert len(entries) == 2 and all(e["target"] == "device dev-a" for e in entries)
    assert all(e["actor"].startswith("bootstrap-token@") and e["ok"] for e in entries)
    viewer = tmp_path / "vic.token"
    server.admin("admins", "add", "vic", "--role", "viewer", "--out", str(viewer))
    for args in (("--show",), ("--wait", "0")):
        denied = run_cli("edgefleet", "--server", server.address, "--ca-file",
                         str(server.ca_file), "--token-file", str(viewer), "devices", "log",
                         "dev-a", *args, check=False)  # fmt: skip
        assert denied.returncode == 1
        assert "vic (viewer) may not call" in denied.stderr and "operator role" in denied.stderr
    unknown = server.admin("devices", "log", "nobody", "--wait", "0", check=False)
    assert unknown.returncode == 1 and unknown.stderr.count("\n") == 1


def test_a_real_agents_log_arrives_through_the_cli_with_the_run_a_kill_ended(
    broker_url: str,
    server_factory: Callable[..., Server],
    agent_factory: Callable[..., Agent],
) -> None:
    server = server_factory(broker_url)
    agent = agent_factory("dev-x", server)
    wait_for("dev-x to enroll", lambda: any(d["device_id"] == "dev-x" for d in server.devices()))
    got = server.admin("devices", "log", "dev-x", "--wait", "60s")
    assert "log of dev-x:" in got.stderr
    lines = got.stdout.splitlines()
    assert lines[0].startswith("-- this run of the agent, started ")
    assert any("INFO     agent.daemon._agent: local inference API on unix:" in line
               for line in lines), got.stdout  # fmt: skip
    assert "uploaded" in agent.output() and "as the server asked" in agent.output()

    # A kill -9 (a crash loop's end): the next run uploads the killed run's records too.
    assert agent.stop(9) == -9
    agent.start()
    got = server.admin("devices", "log", "dev-x", "--wait", "60s", "--lines", "2000")
    out = got.stdout
    assert "-- the run before of the agent, started " in out
    assert "-- this run of the agent, started " in out
    before, _, this = out.partition("-- this run of the agent")
    assert "local inference API on unix:" in before and "local inference API on unix:" in this
    # Errors only: the warnings and info lines stay on the device.
    got = server.admin("devices", "log", "dev-x", "--wait", "60s", "--level", "error")
    assert all(" ERROR " in line or " CRITICAL " in line or line.startswith(("--", "    "))
               for line in got.stdout.splitlines()), got.stdout  # fmt: skip
    assert server.enrollment_token() not in out  # in agent.toml, never in a record
