"""Rollout health gates fed by telemetry: a real server, a real mosquitto, simulated devices on
the real device API publishing real protobuf reports, on SQLite and PostgreSQL."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest

from fleet_server.simulator import SimDevice
from protos import telemetry_pb2
from tests.harness import Server, wait_for
from tests.test_rollouts import desired_version, push_versions

pytestmark = pytest.mark.slow

_SEQ = itertools.count(1)


class Reporter:
    """Publishes telemetry for simulated devices, as their agents would."""

    def __init__(self, broker_url: str) -> None:
        host, port = broker_url.removeprefix("mqtt://").split(":")
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self.client.connect(host, int(port))
        self.client.loop_start()

    def report(
        self, device_id: str, version: str, requests: int, errors: int, p95_ms: float
    ) -> None:
        model = telemetry_pb2.ModelTelemetry(
            model_name="color",
            version=version,
            window_requests=requests,
            window_errors=errors,
            latency=telemetry_pb2.LatencySummary(p95_ms=p95_ms),
        )
        report = telemetry_pb2.TelemetryReport(
            device_id=device_id, seq=next(_SEQ), epoch="e1", models=[model]
        )
        topic = f"edgefleet/v1/default/{device_id}/telemetry"
        self.client.publish(topic, report.SerializeToString(), qos=1).wait_for_publish(10)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def reporter(broker_url: str) -> Iterator[Reporter]:
    reporter = Reporter(broker_url)
    yield reporter
    reporter.close()


def start(
    server_factory: Callable[..., Server],
    broker_url: str,
    color_models: Path,
    reporter: Reporter,
    *,
    db_url: str,
    count: int,
) -> tuple[Server, list[SimDevice]]:
    """A server with color 1.0.0 deployed and 2.0.0 pushed; ``count`` devices that run 1.0.0
    and have reported a p95 of 10 ms on it."""
    server = server_factory(broker_url, db_url=db_url, extra=("--rollout-interval", "0.2"))
    push_versions(server, color_models / "color_int8.tflite", "1.0.0", "2.0.0")
    server.admin("deploy", "color", "1.0.0")
    fleet, token = server.sim_fleet(), server.enrollment_token()
    devices = [SimDevice.enroll(fleet, token, f"gate-{i}") for i in range(count)]
    for device in devices:
        device.check_in()
        reporter.report(device.device_id, "1.0.0", 100, 0, 10.0)
    wait_for(
        "the baseline telemetry",
        lambda: all(int(d.get("telemetry_count", 0)) >= 1 for d in server.devices()),
        timeout=30,
    )
    return server, devices


def status(server: Server, rollout_id: int) -> dict[str, Any]:
    return dict(json.loads(server.admin("rollouts", "status", str(rollout_id), "--json").stdout))


def canaries(server: Server, devices: list[SimDevice], rollout_id: int) -> list[SimDevice]:
    """Let every device check in until the first wave has installed 2.0.0; return that wave."""

    def installed() -> list[SimDevice] | None:
        for device in devices:
            device.check_in()
        done = [d for d in devices if d.running.get("color") == "2.0.0"]
        first = status(server, rollout_id)["wave_status"][0]
        return done if len(done) == int(first["devices"]) else None

    return wait_for("the first wave to install", installed, timeout=30, interval=0.2)


def test_errors_after_installing_fail_the_device_and_pause_the_rollout(
    server_factory: Callable[..., Server],
    broker_url: str,
    color_models: Path,
    db_url: str,
    reporter: Reporter,
) -> None:
    server, devices = start(
        server_factory, broker_url, color_models, reporter, db_url=db_url, count=10
    )
    created = json.loads(
        server.admin(
            "rollouts", "create", "color", "2.0.0", "--waves", "2,100%",
            "--min-requests", "40", "--bake", "600", "--json",
        ).stdout
    )  # fmt: skip
    rollout_id = int(created["rollout_id"])
    first = canaries(server, devices, rollout_id)
    bad, good = first
    # Too few requests to judge yet, however bad.
    reporter.report(bad.device_id, "2.0.0", 30, 30, 10.0)
    reporter.report(good.device_id, "2.0.0", 30, 0, 11.0)
    time.sleep(3)
    assert status(server, rollout_id)["state"] == "running"
    # Now 30 errors in 60 requests.
    reporter.report(bad.device_id, "2.0.0", 30, 0, 10.0)
    reporter.report(good.device_id, "2.0.0", 30, 1, 11.0)

    paused = wait_for(
        "the rollout to pause",
        lambda: (s := status(server, rollout_id))["state"] == "paused" and s,
        timeout=30,
    )
    assert "telemetry: error rate 50.0% over 60 requests" in paused["reason"], paused["reason"]
    assert bad.device_id in paused["reason"]
    assert [f["device_id"] for f in paused["failures"]] == [bad.device_id]
    assert int(paused["wave_status"][0]["unhealthy"]) == 1
    assert int(paused["wave_status"][0]["installed"]) == 1
    # The rest of the fleet was never told to move.
    for device in devices:
        if device not in first:
            assert desired_version(device) == "1.0.0"
    shown = server.admin("rollouts", "status", str(rollout_id)).stdout
    assert f"{bad.device_id} (wave 1): telemetry: error rate 50.0%" in shown


def test_a_latency_regression_fails_the_device_and_healthy_waves_advance_after_baking(
    server_factory: Callable[..., Server],
    broker_url: str,
    color_models: Path,
    reporter: Reporter,
) -> None:
    # SQLite only: the storage paths are the ones the test above runs on both databases.
    server, devices = start(server_factory, broker_url, color_models, reporter, db_url="", count=4)
    created = json.loads(
        server.admin(
            "rollouts", "create", "color", "2.0.0", "--waves", "1,2,100%",
            "--min-requests", "20", "--bake", "10", "--failure", "60%", "--json",
        ).stdout
    )  # fmt: skip
    rollout_id = int(created["rollout_id"])
    gate = created["health_gate"]
    assert gate["bake_s"] == 10 and gate["min_requests"] == 20

    installed_at = time.monotonic()  # no later than the canary's install
    (canary,) = canaries(server, devices, rollout_id)
    reporter.report(canary.device_id, "2.0.0", 50, 0, 12.0)  # 1.2x its 10 ms: healthy
    # Baking: the next wave waits although the canary installed. Install times are whole
    # seconds, so a 10 s bake lasts at least 9 s after the install; a machine so busy that the
    # admin CLI took that long may see the next wave here, and only then.
    time.sleep(1.0)
    wave = int(status(server, rollout_id)["current_wave"])
    assert wave == 0 or time.monotonic() - installed_at >= 8.9, wave

    def second_wave() -> bool:
        for device in devices:
            device.check_in()
        return int(status(server, rollout_id)["current_wave"]) == 1

    wait_for("the second wave", second_wave, timeout=30, interval=0.2)
    assert time.monotonic() - installed_at >= 8.9  # not before the bake ended

    def second_install() -> SimDevice | None:
        # The wave advanced during a round of check-ins: its device installs on the next one.
        for device in devices:
            device.check_in()
        return next(
            (d for d in devices if d.running.get("color") == "2.0.0" and d is not canary), None
        )

    slow = wait_for("the second wave's device to install", second_install, timeout=30)
    reporter.report(slow.device_id, "2.0.0", 50, 0, 16.0)  # 1.6x its 10 ms before

    def slow_failed() -> dict[str, Any] | None:
        s = status(server, rollout_id)
        return s if s.get("failures") else None

    failed = wait_for("the slow device to fail", slow_failed, timeout=30)
    (failure,) = failed["failures"]
    assert failure["device_id"] == slow.device_id
    assert failure["detail"] == (
        "telemetry: p95 latency 16.0 ms against 10.0 ms before the rollout (gate 1.5x)"
    )
    # One failure in two started devices stays under the 60% failure threshold.
    assert status(server, rollout_id)["state"] == "running"


def test_bad_gates_are_refused_with_the_reason(
    server_factory: Callable[..., Server], color_models: Path
) -> None:
    server = server_factory(None)
    push_versions(server, color_models / "color_int8.tflite", "1.0.0")
    for args, expected in (
        (("--max-error-rate", "0"), "--no-health-gate turns the gate off"),
        (("--max-latency-ratio", "0.5"), "'0.5' is outside 1..1000"),
        (("--bake", "400d"), "bake time 34560000 s is outside 0..30 days"),
        (("--bake", "soon"), "'soon' is not a duration"),
    ):
        result = server.admin(
            "rollouts", "create", "color", "1.0.0", "--allow-empty", *args, check=False
        )
        assert result.returncode != 0
        assert expected in result.stderr, result.stderr
