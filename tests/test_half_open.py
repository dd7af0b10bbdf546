"""A half-open link between a real agent and a real fleet server (issue 18).

The agent reaches the server's device port through a proxy that the test switches to stalling:
connections stay open and carry nothing, as when a NAT entry is dropped or a proxy hangs; a
connection that stalled stays dead afterwards. Before the fix, such a stall held a download
for its 600 s deadline and then every check-in timed out on the same dead connection.
"""

from __future__ import annotations

import re
import runpy
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import REPO, Agent, Server, make_agent, start_server, wait_for
from tests.stall_proxy import StallProxy

pytestmark = pytest.mark.slow

STALL_S = 3.0  # the agent's server.stall_timeout_s
TIMEOUT_S = 2.0  # the agent's server.timeout_s (each check-in)
SLACK_S = 10.0  # scheduling on a busy machine


@pytest.fixture
def big_model(tmp_path: Path) -> Path:
    """A 4 MiB float model: four of the server's 1 MiB chunks, so a stall can come mid-way."""
    script = runpy.run_path(str(REPO / "scripts" / "make_test_models.py"))
    path = tmp_path / "big.tflite"
    path.write_bytes(script["build_large"](1024))
    return path


@pytest.fixture
def proxied(tmp_path: Path) -> Iterator[tuple[Server, StallProxy]]:
    """A fleet server whose device port is advertised behind a stall proxy."""
    proxy = StallProxy()
    server = start_server(tmp_path, None, extra=["--device-advertise", f"127.0.0.1:{proxy.port}"])
    proxy.target_port = server.device_port
    try:
        yield server, proxy
    finally:
        proxy.close()  # first: the server's handler of the stalled download sees its end
        server.proc.stop()


def last_seen(server: Server, device: str) -> int:
    for d in server.devices():
        if d["device_id"] == device:
            return int(d.get("last_seen_unix", 0))
    return 0


def installed(server: Server, device: str, model: str, version: str) -> bool:
    for d in server.devices():
        if d["device_id"] == device:
            return any(
                m["model_name"] == model and m["version"] == version and m["state"] == "INSTALLED"
                for m in d.get("models", [])
            )
    return False


def test_a_half_open_link_costs_seconds_not_the_download_deadline(
    tmp_path: Path, big_model: Path, proxied: tuple[Server, StallProxy]
) -> None:
    server, proxy = proxied
    server.admin(
        "models", "push", str(big_model), "--name", "big", "--version", "1.0.0", "--deploy"
    )
    # Stall every connection once the download has carried 1.5 MiB: mid-way, after a chunk.
    proxy.stall_after_bytes = 3 * 512 * 1024
    agent: Agent = make_agent(
        tmp_path, "dev-h", server, timeout_s=TIMEOUT_S, stall_timeout_s=STALL_S
    ).start()
    try:
        # (a) The stalled download is abandoned within its stall timeout, not 600 s.
        wait_for("the download to stall", lambda: proxy.stalled_at, timeout=60)
        assert proxy.stalled_at is not None
        wait_for(
            "the agent to give up the stalled download",
            lambda: "stalled at byte" in agent.output(),
            timeout=STALL_S + SLACK_S + 5,
            interval=0.05,
        )
        abandoned_s = time.monotonic() - proxy.stalled_at
        stalled_at = re.search(r"stalled at byte (\d+)", agent.output())
        assert stalled_at is not None and int(stalled_at.group(1)) > 0, agent.output()[-3000:]

        # Check-ins during the stall fail (the stall counts as the first failure); the second
        # in a row drops the connection for a new one, and a check-in fails on that one too
        # while the stall lasts: it is dead from birth and stays dead.
        marker = "went unanswered; dropping that connection"

        def failed_after_drop() -> int:
            log = agent.output()
            return (
                log.split(marker, 1)[1].count("unreachable during check-in") if marker in log else 0
            )

        wait_for(
            "a check-in to fail on the fresh connection",
            lambda: failed_after_drop() >= 2,
            timeout=4 * (TIMEOUT_S + 8) + SLACK_S,
        )

        # (b) The link comes back: check-ins resume within a minute, on a fresh connection.
        proxy.forward()
        restored, restored_wall = time.monotonic(), int(time.time())
        wait_for(
            "the server to see a check-in after the link came back",
            lambda: last_seen(server, agent.name) >= restored_wall,
            timeout=60,
            interval=0.5,
        )
        checkin_s = time.monotonic() - restored

        # (a) ... and the download resumes from what arrived and completes.
        wait_for(
            "big 1.0.0 to be installed",
            lambda: installed(server, agent.name, "big", "1.0.0"),
            timeout=60,
            interval=0.5,
        )
        installed_s = time.monotonic() - restored
        resumed = re.search(r"resuming download of \w+ at byte (\d+)", agent.output())
        assert resumed is not None and int(resumed.group(1)) > 0, agent.output()[-3000:]
    finally:
        agent.stop()
    print(  # the measured times, for the issue (pytest -s)
        f"stall abandoned after {abandoned_s:.1f} s (timeout {STALL_S:g} s) at byte "
        f"{stalled_at.group(1)}; check-in seen {checkin_s:.1f} s and install done "
        f"{installed_s:.1f} s after the link came back; resumed at byte {resumed.group(1)}"
    )
    assert abandoned_s <= STALL_S + SLACK_S, abandoned_s
    assert checkin_s <= 60, checkin_s
