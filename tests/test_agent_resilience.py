"""What a hostile command sender and a failing machine do to a running agent: the agent keeps
serving, keeps its memory bounded, and comes back on the broker by itself once the fault is gone.
Real processes: a private mosquitto, a fleet server, an agent."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from protos import telemetry_pb2
from tests.harness import Agent, DeviceCommands, Proc, Server, make_agent, wait_for
from tests.test_routing import CLOUD, LOCAL, push_digits, ready

pytestmark = pytest.mark.slow


@pytest.fixture
def started() -> Iterator[list[Agent]]:
    agents: list[Agent] = []
    yield agents
    for agent in agents:
        if agent.proc is not None:
            agent.stop()


def _rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))


def _start_piped(agent: Agent) -> Agent:
    """Start the agent with its output through a pipe that this process copies to the agent's
    log: a file-size limit set on the agent then limits its state files, not its log."""
    log = agent.folder / f"agent-{int(time.time() * 1000)}.log"
    popen = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "run", "--config", str(agent.config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )

    def copy() -> None:
        assert popen.stdout is not None
        with log.open("ab") as out:
            for line in popen.stdout:
                out.write(line)
                out.flush()

    threading.Thread(target=copy, daemon=True).start()
    agent.proc = Proc(popen, log)
    return agent


def _serving(
    tmp_path: Path,
    broker_url: str,
    server_factory: Callable[..., Server],
    name: str,
    *,
    piped: bool = False,
) -> tuple[Agent, DeviceCommands]:
    server = server_factory(broker_url)
    push_digits(server)
    agent = make_agent(tmp_path, name, server, checkin_s=1.0, telemetry_s=1.0)
    _start_piped(agent) if piped else agent.start()
    ready(agent, "digits")
    commands = DeviceCommands(broker_url, agent.folder / "state")
    assert commands.online.wait(30), "the agent is not on the broker"
    return agent, commands


def test_oversized_commands_are_dropped_not_kept(
    tmp_path: Path,
    broker_url: str,
    server_factory: Callable[..., Server],
    started: list[Agent],
) -> None:
    """A command is an id, a kind and a model name. A sender that publishes megabytes on the
    commands topic (nothing in the broker's config bounds a message) must not make the agent
    keep them: it remembers up to 1024 command ids, and 256 commands may wait."""
    agent, commands = _serving(tmp_path, broker_url, server_factory, "cmd-big")
    started.append(agent)
    try:
        assert agent.proc is not None
        pid = agent.proc.popen.pid
        before = _rss_kib(pid)
        padding = "x" * (1 << 20)
        for i in range(64):
            command = telemetry_pb2.Command(
                id=f"big-{i}-{padding}", kind="checkin", device_id=commands.device_id
            )
            commands.publish(command.SerializeToString())
        commands.send("checkin", "small-after")
        ack = wait_for(  # 64 MiB went through the broker first: slow on busy cores
            "the answer to a normal command", lambda: commands.ack("small-after"), timeout=120
        )
        assert ack.ok, ack.detail
        grown = _rss_kib(pid) - before
        assert grown < 32 << 10, f"64 commands of 1 MiB left the agent {grown >> 10} MiB larger"
        assert commands.ack(f"big-0-{padding}"[:64]) is None, "an oversized command was acted on"
    finally:
        commands.close()
    assert agent.stop() == 0


def test_telemetry_comes_back_after_its_spool_could_not_be_written(
    tmp_path: Path,
    broker_url: str,
    server_factory: Callable[..., Server],
    started: list[Agent],
) -> None:
    """A full disk for a moment (a log that filled the partition, then rotated): spooling a
    report fails. Inference goes on; so must the device's MQTT session once the disk has room
    again, or the device stays deaf to commands and silent on telemetry until restarted (the
    watchdog only watches the engine).

    The failing disk is a file-size limit set on the running agent (RLIMIT_FSIZE: every write
    past byte 1 of a file fails), lifted after a few telemetry intervals."""
    agent, commands = _serving(tmp_path, broker_url, server_factory, "disk-full", piped=True)
    started.append(agent)
    try:
        assert agent.proc is not None
        pid = agent.proc.popen.pid
        _, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (1, hard))
        try:
            signs = ("telemetry degraded", "the disk under the spool is full", "OperationalError")
            wait_for("a failed write", lambda: any(s in agent.output() for s in signs), timeout=20)
            time.sleep(3)  # several telemetry intervals with the disk "full"
        finally:
            resource.prlimit(pid, resource.RLIMIT_FSIZE, (hard, hard))
        # A command sent while no session is up is lost (QoS 1 to no subscriber): ask again
        # every few seconds until the device answers.
        deadline, sent = time.monotonic() + 60, 0
        while time.monotonic() < deadline:
            sent += 1
            commands.send("checkin", f"after-the-disk-{sent}")
            with contextlib.suppress(AssertionError):
                wait_for("an answer", lambda: commands.ack(f"after-the-disk-{sent}"), timeout=5)  # noqa: B023 - waited for here
                break
        else:
            pytest.fail(f"no answer to {sent} commands in the 60 s after the disk had room")
        assert agent.proc.popen.poll() is None
    finally:
        commands.close()
    assert agent.stop() == 0


_STEPPABLE_CLOCK = '''"""A wall clock the test can step, as `date -s` or NTP steps CLOCK_REALTIME:
time.time() plus the seconds in $EDGEFLEET_TEST_CLOCK_STEP; time.monotonic() stays real."""
import os
import time

_path = os.environ.get("EDGEFLEET_TEST_CLOCK_STEP")
if _path:
    _real = time.time

    def _stepped() -> float:
        try:
            with open(_path) as handle:
                return _real() + float(handle.read() or 0)
        except (OSError, ValueError):
            return _real()

    time.time = _stepped
'''


def test_a_wall_clock_step_does_not_end_a_health_window_early(
    tmp_path: Path,
    broker_url: str,
    server_factory: Callable[..., Server],
    started: list[Agent],
) -> None:
    """A Pi without a real-time clock boots with an old time and NTP steps it forward, often
    by hours, after the agent has started. A new version activated before that step must still
    be watched for its whole health window (ARCHITECTURE.md: "Health windows run on monotonic
    time, never the wall clock"): stepping the clock past the window must not pass it.

    The agent runs with a sitecustomize that offsets time.time() by a file's value (a fake
    clock: the machine's real clock is shared and not ours to step)."""
    fake = tmp_path / "clock"
    fake.mkdir()
    (fake / "sitecustomize.py").write_text(_STEPPABLE_CLOCK)
    step = tmp_path / "clock-step"
    step.write_text("0")
    server = server_factory(broker_url)
    push_digits(server)
    agent = make_agent(
        tmp_path, "clock", server, extra="[updates]\nhealth_window_s = 3600.0\n"
    ).start(env={"PYTHONPATH": str(fake), "EDGEFLEET_TEST_CLOCK_STEP": str(step)})
    started.append(agent)
    ready(agent, "digits")
    server.admin("models", "push", str(LOCAL), str(CLOUD), "--name", "digits", "--version", "1.1.0")
    server.admin("deploy", "digits", "1.1.0")
    wait_for("1.1.0 activated", lambda: "activated digits 1.1.0" in agent.output(), timeout=60)
    step.write_text(str(2 * 3600))  # NTP steps the clock 2 h forward
    time.sleep(5)  # the update loop judges open windows every second
    assert "digits 1.1.0 passed its health window" not in agent.output(), (
        "a 2 h step of the wall clock passed a 1 h health window 5 s after activation"
    )
    assert agent.stop() == 0


def test_a_sigterm_storm_still_stops_the_agent_cleanly(
    tmp_path: Path, server_factory: Callable[..., Server], started: list[Agent]
) -> None:
    """An operator's script that signals in a loop, or several tools stopping the agent at
    once: however many SIGTERMs arrive, the agent drains and stops as for one (exit 0, "agent
    stopped"), never by the signal's default action half-way through."""
    server = server_factory(None)
    agent = make_agent(tmp_path, "term-storm", server).start()
    started.append(agent)
    assert agent.proc is not None
    popen = agent.proc.popen
    wait_for("the local API", agent.socket.exists)
    start = time.monotonic()
    while popen.poll() is None and time.monotonic() - start < 20:
        with contextlib.suppress(ProcessLookupError):
            os.kill(popen.pid, signal.SIGTERM)
    assert popen.wait(30) == 0, f"exit {popen.returncode} under a SIGTERM storm"
    assert "agent stopped" in agent.output()


def test_only_commands_addressed_to_this_device_are_acted_on(
    tmp_path: Path,
    broker_url: str,
    server_factory: Callable[..., Server],
    started: list[Agent],
) -> None:
    """Whoever can publish on a device's commands topic (a broker without ACLs, a retained
    message another device left, a bug) does not command it: the command names its device."""
    agent, commands = _serving(tmp_path, broker_url, server_factory, "cmd-addressed")
    started.append(agent)
    try:
        commands.send("birth", "for-someone-else", device_id="another-device")
        commands.send("birth", "for-nobody", device_id="")
        commands.publish(b"\n\x05state\x12\x06online")  # a DeviceState read as a Command
        commands.send("birth", "for-me")
        # Commands are handled in order: once the last is answered, the others were seen.
        ack = wait_for("the answer to its own command", lambda: commands.ack("for-me"))
        assert ack.ok, ack.detail
        assert commands.ack("for-someone-else") is None
        assert commands.ack("for-nobody") is None
        assert commands.ack("state") is None
        assert "ignoring a 'birth' command addressed to 'another-device'" in agent.output()
    finally:
        commands.close()
    assert agent.stop() == 0
