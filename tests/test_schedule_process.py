"""Scheduled rollouts and maintenance windows through a real server process, simulated devices
on the real device API and the real CLI, on SQLite and PostgreSQL: a scheduled rollout tells
nobody anything, then starts by itself; a device outside its window is not told to update while
one inside is (and one told inside its window, then caught outside, is held at its check-in);
a server that was down at the start time starts the rollout when it comes back."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from fleet_server.simulator import SimDevice
from protos import device_pb2 as pb
from protos import manifest_pb2
from tests.harness import Server, wait_for

pytestmark = pytest.mark.slow

FAST = ("--rollout-interval", "0.2")


def desired(device: SimDevice) -> str:
    """The version of 'color' the server tells this device to run, without acting on it."""
    for envelope in device.check_in(act=False).desired:
        manifest = manifest_pb2.Manifest.FromString(envelope.payload)
        if manifest.model_name == "color":
            return manifest.version
    return ""


def enroll(server: Server, name: str, zone: str, **labels: str) -> SimDevice:
    caps = pb.Capabilities(arch="x86_64", cpu_cores=4, memory_bytes=4 << 30, timezone=zone)
    return SimDevice.enroll(
        server.sim_fleet(), server.enrollment_token(), name, labels=labels, capabilities=caps
    )


def clock(zone: str, hours: float) -> str:
    """HH:MM in ``zone``, ``hours`` from now."""
    return (datetime.now(ZoneInfo(zone)) + timedelta(hours=hours)).strftime("%H:%M")


def iso_in(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def status(server: Server, rollout_id: int) -> dict[str, Any]:
    return dict(json.loads(server.admin("rollouts", "show", str(rollout_id), "--json").stdout))


def add_window(server: Server, selector: str, opens: str, closes: str) -> int:
    out = server.admin(
        "windows", "add", "--selector", selector, "--days", "daily", "--from", opens,
        "--to", closes, "--json",
    ).stdout  # fmt: skip
    return int(json.loads(out)["window_id"])


@pytest.fixture
def fleet_server(server_factory: Callable[..., Server], color_models: Path, db_url: str) -> Server:
    server = server_factory(None, db_url=db_url, extra=FAST)
    for version in ("1.0.0", "2.0.0"):
        server.admin("models", "push", str(color_models / "color_int8.tflite"),
                     "--name", "color", "--version", version)  # fmt: skip
    server.admin("deploy", "color", "1.0.0")
    return server


def test_a_scheduled_rollout_starts_by_itself_and_windows_hold_devices_outside(
    fleet_server: Server,
) -> None:
    server = fleet_server
    # "inside" keeps Tokyo time and its window is open now; "outside" keeps New York time and
    # its window opens in two hours; "free" matches no window.
    inside = enroll(server, "inside", "Asia/Tokyo", site="a")
    outside = enroll(server, "outside", "America/New_York", site="b")
    free = enroll(server, "free", "", site="c")
    devices = [inside, outside, free]
    add_window(server, "site=a", clock("Asia/Tokyo", -1), clock("Asia/Tokyo", 1))
    closed = add_window(
        server, "site=b", clock("America/New_York", 2), clock("America/New_York", 3)
    )
    listed = json.loads(server.admin("windows", "list", "--json").stdout)
    assert [w["devices"] for w in listed] == [1, 1]
    for device in devices:
        device.check_in()

    created = json.loads(
        server.admin(
            "rollouts", "create", "color", "2.0.0", "--waves", "100%", "--start-at", iso_in(6),
            "--json",
        ).stdout
    )  # fmt: skip
    rollout_id = int(created["rollout_id"])
    assert created["state"] == "scheduled"
    assert created["started_unix"] == "0"
    assert "(starts 20" in server.admin("rollouts", "list").stdout

    heard_early: list[list[str]] = []

    def started() -> dict[str, Any] | None:
        told = [desired(d) for d in devices]
        now = status(server, rollout_id)
        if now["state"] == "scheduled":  # still, so it was when they asked
            if told != ["1.0.0"] * 3:
                heard_early.append(told)
            return None
        return now

    running = wait_for("the scheduled start", started, timeout=60, interval=0.5)
    assert heard_early == []  # nobody hears of it before its start
    assert running["state"] == "running"
    assert int(running["started_unix"]) >= int(running["start_unix"])

    wait_for("the devices inside to be told", lambda: desired(inside) == desired(free) == "2.0.0")
    assert desired(outside) == "1.0.0"
    for device in devices:
        device.check_in()
    wave = wait_for(
        "two installs", lambda: [w for w in status(server, rollout_id)["wave_status"]
                                 if w["installed"] == 2] or None,
    )[0]  # fmt: skip
    assert (wave["waiting"], wave["outside_window"], wave["failed"]) == (1, 1, 0)
    shown = server.admin("rollouts", "show", str(rollout_id)).stdout
    assert "1 waiting device(s) wait for their maintenance window" in shown
    assert status(server, rollout_id)["state"] == "running"  # waiting is not failing

    # Its window opens (here: replaced by one open now): the controller tells it...
    server.admin("windows", "remove", str(closed))
    opened = add_window(
        server, "site=b", clock("America/New_York", -1), clock("America/New_York", 1)
    )
    wait_for(
        "the device to be told",
        lambda: status(server, rollout_id)["wave_status"][0]["assigned"] == 1,
    )
    # ... but it was offline, and when it checks in its window has closed: it is held.
    server.admin("windows", "remove", str(opened))
    add_window(server, "site=b", clock("America/New_York", 2), clock("America/New_York", 3))
    assert desired(outside) == "1.0.0"
    # No window for it any more: it updates, and the rollout completes.
    for window in json.loads(server.admin("windows", "list", "--json").stdout):
        if window["selector"] == {"site": "b"}:
            server.admin("windows", "remove", str(window["window_id"]))
    wait_for("the held device", lambda: desired(outside) == "2.0.0")
    outside.check_in()
    wait_for("completion", lambda: status(server, rollout_id)["state"] == "completed")

    audit = json.loads(server.admin("audit", "--json").stdout)
    actions = [(e["action"], e["actor"], e["target"]) for e in audit]
    assert ("StartScheduledRollout", "server", f"rollout {rollout_id}") in actions
    create = next(a for a in actions if a[0] == "CreateRollout")
    assert " at 20" in create[2] and create[2].endswith("Z")
    assert sum(a[0] == "AddMaintenanceWindow" for a in actions) == 4
    log = server.proc.output()
    assert f"rollout {rollout_id}: started at its scheduled time" in log
    for device in devices:
        device.close()


def test_bad_start_times_are_refused_with_one_line(fleet_server: Server) -> None:
    for start_at, code, message in (
        ("2026-12-24T02:00", 2, "has no UTC offset"),
        ("2020-01-01T00:00Z", 1, "is in the past"),
        ((datetime.now(UTC) + timedelta(days=400)).strftime("%Y-%m-%dT%H:%MZ"), 1,
         "more than a year ahead"),
    ):  # fmt: skip
        result = fleet_server.admin(
            "rollouts", "create", "color", "2.0.0", "--allow-empty", "--start-at", start_at,
            check=False,
        )  # fmt: skip
        assert result.returncode == code, result.stderr
        assert message in result.stderr.strip().splitlines()[-1]
        assert "Traceback" not in result.stderr


def test_a_server_down_at_the_start_time_starts_it_when_it_comes_back(
    server_factory: Callable[..., Server], color_models: Path
) -> None:
    server = server_factory(None, extra=FAST)
    server.admin("models", "push", str(color_models / "color_int8.tflite"),
                 "--name", "color", "--version", "1.0.0")  # fmt: skip
    device = enroll(server, "cam", "Europe/Berlin")
    start_at = time.time() + 5
    created = server.admin(
        "rollouts", "create", "color", "1.0.0", "--start-at", iso_in(5), "--json"
    ).stdout
    rollout_id = int(json.loads(created)["rollout_id"])
    server.proc.popen.send_signal(signal.SIGKILL)
    server.proc.popen.wait()
    # Down past the start time.
    time.sleep(max(0.0, start_at - time.time()) + 1)

    again = server_factory(None, extra=FAST)
    device.reconnect(f"127.0.0.1:{again.device_port}")
    wait_for("the start", lambda: status(again, rollout_id)["state"] == "running")
    wait_for("the device to be told", lambda: desired(device) == "1.0.0")
    assert f"rollout {rollout_id}: started" in again.proc.output()
    device.close()
