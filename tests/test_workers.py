"""Server worker processes (run --workers): they serve the device port, and a killed one is
replaced."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from fleet_server.simulator import SimDevice
from tests.harness import Server, wait_for

pytestmark = pytest.mark.slow


def children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found.update(int(c) for c in text)
    return found


def test_a_killed_worker_is_replaced_and_check_ins_go_on(
    server_factory: Callable[..., Server],
) -> None:
    server = server_factory(None, extra=("--workers", "2"))
    main = server.proc.popen.pid
    (first,) = wait_for("the worker", lambda: children(main) or None)
    devices = [
        SimDevice.enroll(server.sim_fleet(), server.enrollment_token(), f"d{i}") for i in range(8)
    ]
    for device in devices:
        device.check_in()
    os.kill(first, signal.SIGKILL)
    replaced = wait_for("a new worker", lambda: (children(main) - {first}) or None)
    assert len(replaced) == 1
    assert "exited -9; started" in server.proc.output()
    # New connections land on either process; every device keeps checking in.
    for device in devices:
        device.reconnect(f"127.0.0.1:{server.device_port}")
        for _ in range(3):
            assert device.check_in(act=False).state_version
