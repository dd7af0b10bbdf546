"""Staged rollouts end to end: a real server process, simulated devices on the real device API,
one real agent, both databases, a SIGKILL, and two replicas on one PostgreSQL database."""

from __future__ import annotations

import json
import re
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.updates.trust import count_signers, pin_keylist
from fleet_server.simulator import SimDevice
from protos import manifest_pb2
from tests.harness import Server, wait_for

pytestmark = pytest.mark.slow

FAST = ("--rollout-interval", "0.2")


@dataclass
class Fleet:
    server: Server
    devices: list[SimDevice]

    def enroll(self, name: str, fail: tuple[str, ...] = (), **labels: str) -> SimDevice:
        device = SimDevice.enroll(
            self.server.sim_fleet(),
            self.server.enrollment_token(),
            name,
            labels=labels,
            fail_versions=fail,
        )
        self.devices.append(device)
        return device

    def rollout(self, rollout_id: int) -> dict[str, Any]:
        out = self.server.admin("rollouts", "status", str(rollout_id), "--json").stdout
        return dict(json.loads(out))

    def create(self, *args: str) -> dict[str, Any]:
        out = self.server.admin("rollouts", "create", "color", *args, "--json").stdout
        return dict(json.loads(out))


def desired_version(device: SimDevice) -> str:
    """The version of 'color' the server tells this device to run, without acting on it."""
    for envelope in device.check_in(act=False).desired:
        manifest = manifest_pb2.Manifest.FromString(envelope.payload)
        if manifest.model_name == "color":
            return manifest.version
    return ""


def push_versions(server: Server, model: Path, *versions: str) -> None:
    for version in versions:
        server.admin("models", "push", str(model), "--name", "color", "--version", version)


@pytest.fixture
def fleet(
    server_factory: Callable[..., Server], color_models: Path, db_url: str
) -> Iterator[Fleet]:
    """A server with color 1.0.0 deployed fleet-wide and 2.0.0 pushed, on SQLite or
    PostgreSQL."""
    server = server_factory(None, db_url=db_url, extra=FAST)
    push_versions(server, color_models / "color_int8.tflite", "1.0.0", "2.0.0")
    server.admin("deploy", "color", "1.0.0")
    fleet = Fleet(server, [])
    yield fleet
    for device in fleet.devices:
        device.close()


def settle(
    fleet: Fleet, rollout_id: int, until: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """Let every device check in (and act) until the rollout's status satisfies ``until``."""

    def step() -> dict[str, Any] | None:
        for device in fleet.devices:
            device.check_in()
        status = fleet.rollout(rollout_id)
        return status if until(status) else None

    return wait_for(f"rollout {rollout_id}", step, timeout=60, interval=0.3)


def test_waves_advance_as_devices_install_and_late_joiners_follow(fleet: Fleet) -> None:
    site_a = [fleet.enroll(f"a{i}", site="a") for i in range(10)]
    site_b = [fleet.enroll(f"b{i}", site="b") for i in range(3)]
    for device in fleet.devices:
        device.check_in()
    assert {d.running["color"] for d in fleet.devices} == {"1.0.0"}

    created = fleet.create("2.0.0", "--selector", "site=a", "--waves", "1,50%,100%")
    rollout_id = int(created["rollout_id"])
    assert created["previous_version"] == "1.0.0"
    assert [w["target"] for w in created["wave_status"]] == [1, 5, 10]

    # Only the canary is told to update until it has installed.
    wait_for("the canary", lambda: fleet.rollout(rollout_id)["wave_status"][0]["assigned"] == 1)
    assert sorted(desired_version(d) for d in site_a) == ["1.0.0"] * 9 + ["2.0.0"]
    assert fleet.rollout(rollout_id)["current_wave"] == 0  # the gate holds

    done = settle(fleet, rollout_id, lambda s: s["state"] == "completed")
    assert [w["installed"] for w in done["wave_status"]] == [1, 4, 5]
    assert all(d.running["color"] == "2.0.0" for d in site_a)
    assert all(d.running["color"] == "1.0.0" for d in site_b)

    # Devices that match later join the completed rollout; others keep the fleet's version.
    late_a = fleet.enroll("late-a", site="a")
    late_b = fleet.enroll("late-b", site="b")
    wait_for("the late device to join", lambda: desired_version(late_a) == "2.0.0")
    assert desired_version(late_b) == "1.0.0"
    status = settle(fleet, rollout_id, lambda s: s["wave_status"][-1]["installed"] == 6)
    assert status["state"] == "completed"


def test_failures_pause_the_rollout_and_abort_returns_the_devices(fleet: Fleet) -> None:
    for i in range(6):
        fleet.enroll(f"d{i}", fail=("2.0.0",))
    created = fleet.create("2.0.0", "--waves", "1,100%")
    rollout_id = int(created["rollout_id"])

    paused = settle(fleet, rollout_id, lambda s: s["state"] == "paused")
    (failure,) = paused["failures"]
    assert paused["reason"] == (
        "1 of 1 devices failed (failure threshold 10%); "
        f"latest: {failure['device_id']}: FAILED: simulated failure"
    )
    assert paused["wave_status"][0]["failed"] == 1
    assert paused["wave_status"][1]["waiting"] == 5  # the rest never heard of 2.0.0
    assert sorted(desired_version(d) for d in fleet.devices) == ["1.0.0"] * 5 + ["2.0.0"]

    # Resuming accepts the canary's failure; the next wave fails as well and pauses it again.
    fleet.server.admin("rollouts", "resume", str(rollout_id))
    again = settle(fleet, rollout_id, lambda s: s["state"] == "paused")
    # It pauses at the first new failure; how many more reported by then depends on timing.
    assert re.fullmatch(
        r"[2-6] of 6 devices failed \(1 before the last resume\) \(failure threshold 10%\); "
        r"latest: d[0-5]: FAILED: simulated failure",
        again["reason"],
    ), again["reason"]

    fleet.server.admin("rollouts", "abort", str(rollout_id))
    assert fleet.rollout(rollout_id)["state"] == "aborted"
    # The devices that failed go back to the fleet's version.
    assert {desired_version(d) for d in fleet.devices} == {"1.0.0"}

    # The pause by the gate and the abort by the admin are both on record.
    audit = json.loads(fleet.server.admin("audit", "--json").stdout)
    assert audit[0]["action"] == "AbortRollout"
    assert audit[0]["target"] == f"rollout {rollout_id}"
    assert audit[0]["ok"] is True
    assert audit[0]["actor"].startswith("bootstrap-token@")


def test_pause_holds_and_resume_finishes(fleet: Fleet) -> None:
    for i in range(4):
        fleet.enroll(f"d{i}")
    rollout_id = int(fleet.create("2.0.0", "--waves", "1,100%")["rollout_id"])
    wait_for("the canary", lambda: fleet.rollout(rollout_id)["wave_status"][0]["assigned"] == 1)
    fleet.server.admin("rollouts", "pause", str(rollout_id))
    for _ in range(3):
        for device in fleet.devices:
            device.check_in()
    held = fleet.rollout(rollout_id)
    assert held["state"] == "paused"
    assert held["reason"].startswith("paused by bootstrap-token@")
    # The canary, told before the pause, finishes; nobody else is told.
    assert held["wave_status"][0]["installed"] == 1
    assert held["wave_status"][1]["waiting"] == 3
    assert sorted(d.running["color"] for d in fleet.devices) == ["1.0.0"] * 3 + ["2.0.0"]

    fleet.server.admin("rollouts", "resume", str(rollout_id))
    done = settle(fleet, rollout_id, lambda s: s["state"] == "completed")
    assert sum(w["installed"] for w in done["wave_status"]) == 4


def test_max_concurrent_caps_the_devices_updating_at_once(fleet: Fleet) -> None:
    for i in range(7):
        fleet.enroll(f"d{i}")
    created = fleet.create("2.0.0", "--waves", "100%", "--max-concurrent", "2")
    rollout_id = int(created["rollout_id"])
    wait_for("two devices told", lambda: fleet.rollout(rollout_id)["wave_status"][0]["assigned"])
    seen = []

    def step() -> bool:
        for device in fleet.devices:
            device.check_in()
        status = fleet.rollout(rollout_id)["wave_status"][0]
        seen.append(status["assigned"])
        return status["installed"] == 7

    wait_for("every device", step, timeout=60, interval=0.2)
    assert max(seen) <= 2


def test_rollback_sends_the_devices_back_with_a_root_signed_manifest(fleet: Fleet) -> None:
    site_a = [fleet.enroll(f"a{i}", site="a") for i in range(3)]
    other = fleet.enroll("b0", site="b")
    rollout_id = int(fleet.create("2.0.0", "--selector", "site=a", "--waves", "100%")["rollout_id"])
    settle(fleet, rollout_id, lambda s: s["state"] == "completed")

    roots = ("--root-key-dir", str(fleet.server.root_key_dir))
    out = fleet.server.admin("rollouts", "rollback", str(rollout_id), *roots).stdout
    assert "return to color 1.0.0" in out
    status = fleet.rollout(rollout_id)
    assert status["state"] == "rolled_back"

    keylist = other.check_in(act=False).keylist.SerializeToString()
    trust = pin_keylist(keylist, fleet_id="default", now=float(status["updated_unix"]))
    for device in site_a:
        response = device.check_in(act=False)
        (envelope,) = response.desired
        manifest = manifest_pb2.Manifest.FromString(envelope.payload)
        assert (manifest.version, manifest.explicit_rollback) == ("1.0.0", True)
        assert len(count_signers(envelope, trust.root)) >= trust.root_threshold
    assert desired_version(other) == "1.0.0"
    (plain,) = other.check_in(act=False).desired
    assert not manifest_pb2.Manifest.FromString(plain.payload).explicit_rollback


def test_bad_rollout_requests_are_refused_with_the_reason(fleet: Fleet) -> None:
    fleet.enroll("d0")
    cases = [
        (("rollouts", "create", "nope", "1.0.0"), "model nope version 1.0.0 does not exist"),
        (("rollouts", "create", "color", "2.0.0", "--waves", "1,50%"), "last must be 100%"),
        (("rollouts", "create", "color", "2.0.0", "--selector", "site"), "is not KEY=VALUE"),
        (
            ("rollouts", "create", "color", "2.0.0", "--selector", "stie=lab"),
            "no enrolled device matches stie=lab",
        ),
        (("rollouts", "status", "999"), "rollout 999 does not exist"),
        (("rollouts", "rollback", "999"), "rollout 999 does not exist"),
    ]
    for args, message in cases:
        result = fleet.server.admin(*args, check=False)
        assert result.returncode == 1, result
        assert message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr

    rollout_id = int(fleet.create("2.0.0", "--waves", "1,100%")["rollout_id"])
    again = fleet.server.admin("rollouts", "create", "color", "2.0.0", check=False)
    assert f"rollout {rollout_id} of color (2.0.0) is still running" in again.stderr
    fleet.server.admin("rollouts", "abort", str(rollout_id))
    resumed = fleet.server.admin("rollouts", "resume", str(rollout_id), check=False)
    assert "is aborted; this needs it paused" in resumed.stderr

    failed = [e for e in json.loads(fleet.server.admin("audit", "--json").stdout) if not e["ok"]]
    assert {e["action"] for e in failed} >= {"CreateRollout", "ResumeRollout"}
    assert any("does not exist" in e["error"] for e in failed)

    # An empty rollout, when asked for, waits for the devices that will match.
    empty = fleet.create("2.0.0", "--selector", "site=new", "--allow-empty")
    late = fleet.enroll("late", site="new")
    wait_for("the late device", lambda: desired_version(late) == "2.0.0")
    fleet.devices = [late]
    settle(fleet, int(empty["rollout_id"]), lambda s: s["state"] == "completed")


def test_a_fleet_wide_deploy_replaces_a_rollout(fleet: Fleet) -> None:
    device = fleet.enroll("d0", site="a")
    rollout_id = int(fleet.create("2.0.0", "--selector", "site=a", "--waves", "100%")["rollout_id"])
    settle(fleet, rollout_id, lambda s: s["state"] == "completed")
    deployed = fleet.server.admin("deploy", "color", "1.0.0").stdout
    assert fleet.rollout(rollout_id)["state"] == "superseded"
    assert desired_version(device) == "1.0.0"
    # The command says that the device serving 2.0.0 refuses the older 1.0.0.
    assert "devices serving a newer release of color refuse 1.0.0 as older (d0)" in deployed
    assert f"ended rollout(s) {rollout_id}" in deployed


def test_a_deploy_does_not_end_a_running_rollout_unless_forced(fleet: Fleet) -> None:
    fleet.enroll("d1", site="a")
    fleet.enroll("d2", site="a")
    running = fleet.create("2.0.0", "--waves", "1,100%", "--bake", "600")
    rollout_id = int(running["rollout_id"])
    refused = fleet.server.admin("deploy", "color", "1.0.0", check=False)
    assert (
        refused.returncode == 1
        and f"rollout(s) {rollout_id} (running) of color are in effect" in (refused.stderr)
    )
    assert "--force" in refused.stderr
    assert fleet.rollout(rollout_id)["state"] == "running"
    forced = fleet.server.admin("deploy", "color", "1.0.0", "--force").stdout
    assert f"ended rollout(s) {rollout_id}" in forced
    assert fleet.rollout(rollout_id)["state"] == "superseded"


def test_a_rollout_survives_a_server_sigkill(
    tmp_path: Path, color_models: Path, server_factory: Callable[..., Server]
) -> None:
    server = server_factory(None, extra=FAST)
    push_versions(server, color_models / "color_int8.tflite", "1.0.0", "2.0.0")
    fleet = Fleet(server, [])
    for i in range(5):
        fleet.enroll(f"d{i}")
    rollout_id = int(fleet.create("2.0.0", "--waves", "1,100%")["rollout_id"])
    settle(fleet, rollout_id, lambda s: s["wave_status"][0]["installed"] == 1)
    before = fleet.rollout(rollout_id)
    server.proc.popen.send_signal(signal.SIGKILL)
    server.proc.popen.wait()

    again = server_factory(None, extra=FAST)
    for device in fleet.devices:
        device.reconnect(f"127.0.0.1:{again.device_port}")
    fleet = Fleet(again, fleet.devices)
    after = fleet.rollout(rollout_id)
    assert after["wave_status"][0] == before["wave_status"][0]
    done = settle(fleet, rollout_id, lambda s: s["state"] == "completed")
    assert sum(w["installed"] for w in done["wave_status"]) == 5


def test_a_real_agent_installs_through_a_rollout(
    tmp_path: Path,
    color_models: Path,
    server_factory: Callable[..., Server],
    agent_factory: Callable[..., Any],
) -> None:
    server = server_factory(None, extra=FAST)
    push_versions(server, color_models / "color_int8.tflite", "1.0.0", "2.0.0")
    server.admin("deploy", "color", "1.0.0")
    agent = agent_factory("edge-1", server, extra='[agent.labels]\nsite = "a"\n')
    wait_for("1.0.0 installed", lambda: _state(server, "edge-1") == ("1.0.0", "INSTALLED"))
    server.admin("rollouts", "create", "color", "2.0.0", "--selector", "site=a")
    wait_for(
        "2.0.0 installed by the rollout",
        lambda: _state(server, "edge-1") == ("2.0.0", "INSTALLED"),
        timeout=60,
    )
    wait_for(
        "the rollout to complete",
        lambda: (
            json.loads(server.admin("rollouts", "list", "--json").stdout)[0]["state"] == "completed"
        ),
    )
    assert agent.proc is not None and agent.proc.popen.poll() is None


def test_the_mqtt_nudge_brings_a_slow_polling_agent_in_at_once(
    color_models: Path,
    broker_url: str,
    server_factory: Callable[..., Server],
    agent_factory: Callable[..., Any],
) -> None:
    server = server_factory(broker_url, extra=FAST)
    push_versions(server, color_models / "color_int8.tflite", "1.0.0", "2.0.0")
    server.admin("deploy", "color", "1.0.0")
    # Polls every 10 minutes: only the nudge can bring it in within the test's minute.
    agent = agent_factory("edge-1", server, checkin_s=600.0)
    wait_for("1.0.0 installed", lambda: _state(server, "edge-1") == ("1.0.0", "INSTALLED"))
    wait_for("the command subscription", lambda: "connected to MQTT broker" in agent.output())
    server.admin("rollouts", "create", "color", "2.0.0", "--waves", "100%")
    # Its next poll is 600 s away: installing within this wait is the nudge's doing.
    wait_for(
        "2.0.0 installed after a nudge",
        lambda: _state(server, "edge-1") == ("2.0.0", "INSTALLED"),
        timeout=120,
    )
    assert "the server asked for a check-in now" in agent.output()


def _state(server: Server, device_id: str) -> tuple[str, str] | None:
    for device in server.devices():
        if device["device_id"] == device_id:
            for m in device.get("models", []):
                if m["model_name"] == "color":
                    return m["version"], m["state"]
    return None


def test_two_replicas_on_one_postgresql_serve_the_same_rollout(
    tmp_path: Path,
    color_models: Path,
    server_factory: Callable[..., Server],
    postgres_url: str,
    broker_url: str,
) -> None:
    import secrets

    import sqlalchemy as sa

    schema = f"replicas_{secrets.token_hex(4)}"
    engine = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    engine.dispose()
    url = f"{postgres_url}?options=-csearch_path%3D{schema}"
    first = server_factory(broker_url, folder=tmp_path / "one", db_url=url, extra=FAST)
    second = server_factory(
        broker_url, folder=tmp_path / "two", db_url=url, extra=FAST, data_dir=first.data_dir
    )
    push_versions(first, color_models / "color_int8.tflite", "1.0.0", "2.0.0")
    first.admin("deploy", "color", "1.0.0")
    # Devices enroll and check in through the second replica only.
    fleet = Fleet(second, [])
    for i in range(6):
        fleet.enroll(f"d{i}", site="a")
    # Created through the first replica, served by the second.
    rollout_id = int(
        json.loads(
            first.admin(
                "rollouts", "create", "color", "2.0.0", "--waves", "1,50%,100%", "--json"
            ).stdout
        )["rollout_id"]
    )
    done = settle(fleet, rollout_id, lambda s: s["state"] == "completed")
    assert [w["installed"] for w in done["wave_status"]] == [1, 2, 3]
    assert {d.running["color"] for d in fleet.devices} == {"2.0.0"}
    # Both replicas tick the same rollout; the row lock keeps the waves whole.
    first_view = json.loads(first.admin("rollouts", "status", str(rollout_id), "--json").stdout)
    assert first_view["wave_status"] == done["wave_status"]
