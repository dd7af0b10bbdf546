"""Issue 22 item 5: the server serves its admin and device APIs while its MQTT connection is
still being made. The broker here is behind a proxy that holds every connection open and says
nothing (a hung broker, a firewall that swallows): before, the start waited for the connect
timeout and then failed; a slow broker kept the README's `run &` + `models push` from working.
Events, not timings: each step waits for what it needs (a real server, a real mosquitto)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fleet_server.simulator import SimDevice
from tests.harness import free_port, run_cli, start, start_mosquitto, start_server, wait_for
from tests.stall_proxy import StallProxy

pytestmark = pytest.mark.slow


def test_the_apis_serve_while_the_broker_does_not_answer_and_telemetry_follows(
    tmp_path: Path,
) -> None:
    broker = start_mosquitto(tmp_path / "mosquitto")
    proxy = StallProxy(int(broker.url.rsplit(":", 1)[1]))
    proxy.stall()
    server = start_server(tmp_path, f"mqtt://127.0.0.1:{proxy.port}")
    try:
        # MQTT is pending (the proxy holds the ingest's connection): the APIs serve.
        assert proxy.accepted >= 1
        assert "ingesting" not in server.proc.output()
        server.admin("models", "list")
        device = SimDevice.enroll(server.sim_fleet(), server.enrollment_token(), "early")
        device.check_in()
        device.close()
        # What needs the broker says so, in one line.
        refused = server.admin("devices", "command", "early", "checkin", check=False)
        assert refused.returncode != 0
        assert "not connected to the broker" in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr
        # The broker answers again: the ingest connects on its next attempt.
        proxy.forward()
        wait_for("the ingest to connect", lambda: "ingesting" in server.proc.output(), 90)
        server.admin("devices", "command", "early", "checkin")
        assert "Traceback" not in server.proc.output()
    finally:
        assert server.proc.stop() == 0
        proxy.close()
        broker.proc.stop()


def test_a_server_whose_broker_never_answers_stops_promptly(tmp_path: Path) -> None:
    proxy = StallProxy(1)
    proxy.stall()
    server = start_server(tmp_path, f"mqtt://127.0.0.1:{proxy.port}")
    try:
        wait_for("a connect attempt", lambda: proxy.accepted >= 1)
        # SIGTERM during the attempt: the stop waits at most for its connect timeout (10 s),
        # well within the unit's TimeoutStopSec, and exits cleanly.
        assert server.proc.stop(signal.SIGTERM, timeout=40) == 0
        output = server.proc.output()
        assert "Traceback" not in output, output
        assert "server stopped" in output
    finally:
        server.proc.stop(signal.SIGKILL)
        proxy.close()


def test_a_command_right_after_run_in_the_background_waits_for_the_server(
    tmp_path: Path,
) -> None:
    # The README: `edgefleet-server run ... &` and then `edgefleet models push ...`. The
    # command came before the server listened and failed with "unreachable".
    data_dir = tmp_path / "server"
    run_cli("edgefleet-server", "init", "--data-dir", str(data_dir))
    port = free_port()
    command = subprocess.Popen(
        [sys.executable, "-m", "fleet_server.admin_cli", "--server", f"127.0.0.1:{port}",
         "--data-dir", str(data_dir), "--wait", "120", "models", "list"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert command.stderr is not None
    assert "waiting for the fleet server" in command.stderr.readline()
    server = start(
        [sys.executable, "-m", "fleet_server.cli", "run", "--data-dir", str(data_dir),
         "--listen", f"127.0.0.1:{port}", "--device-listen", "127.0.0.1:0",
         "--mqtt-listen", "127.0.0.1:0"],
        tmp_path / "server.log",
    )  # fmt: skip
    try:
        out, err = command.communicate(timeout=150)
        assert command.returncode == 0, err
        assert "NAME" in out or "no models" in out, out
    finally:
        command.kill()
        server.stop()
    # Nothing listening and no wait: the error at once.
    alone = run_cli("edgefleet", "--server", f"127.0.0.1:{free_port()}", "--data-dir",
                    str(data_dir), "--wait", "0", "models", "list", check=False)  # fmt: skip
    assert alone.returncode != 0 and "unreachable" in alone.stderr, alone.stderr
