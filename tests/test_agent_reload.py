"""Reloading a running agent's config (SIGHUP, the MQTT ``reload`` command) whatever the agent is
doing: enrolling, serving while its fleet server is unreachable, or both kinds of reload arriving
at once. Real processes: a private mosquitto, a fleet server, an agent; behaviour is observed
through the agent's local inference API (the ``edgefleet.*`` routing parameters)."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from fleet_server.routing.datasets import digits
from tests.harness import Agent, DeviceCommands, Server, make_agent, wait_for
from tests.oip import infer
from tests.test_routing import ask, push_digits, ready

pytestmark = pytest.mark.slow

NO_CLOUD = "no cloud endpoint configured"


@pytest.fixture
def started() -> Iterator[list[Agent]]:
    agents: list[Agent] = []
    yield agents
    for agent in agents:
        if agent.proc is not None:
            agent.stop()


def _hup(agent: Agent) -> None:
    assert agent.proc is not None
    agent.proc.popen.send_signal(signal.SIGHUP)


def _reloads(agent: Agent) -> int:
    """How many reloads the agent has logged as applied."""
    return agent.output().count("reloaded agent.toml")


def _unsure() -> np.ndarray:
    """A digit the local model is unsure of (its top score is about 0.40)."""
    sample: np.ndarray = digits().test_x[588]
    return sample


def _serving_without_server(
    tmp_path: Path, broker_url: str, server_factory: Callable[..., Server], name: str
) -> tuple[Agent, str]:
    """An agent serving digits from its own store, its fleet server stopped (the broker stays);
    returns the agent (still running) and its original config text."""
    server = server_factory(broker_url)
    push_digits(server)
    agent = make_agent(tmp_path, name, server, checkin_s=1.0).start()
    ready(agent, "digits")
    assert ask(agent, "digits", _unsure())[1]["edgefleet.reason"] == "policy local"
    server.proc.stop()
    # The agent notices: its check-ins fail and it backs off (up to minutes).
    wait_for(
        "a failed check-in",
        lambda: "unreachable during check-in" in agent.output(),
        timeout=30,
    )
    return agent, agent.config.read_text()


def _cascade(threshold: float) -> str:
    return f'\n[routing.digits]\npolicy = "cascade"\nthreshold = {threshold}\n'


def test_sighup_applies_routing_while_the_server_is_unreachable(
    tmp_path: Path,
    broker_url: str,
    server_factory: Callable[..., Server],
    started: list[Agent],
) -> None:
    agent, original = _serving_without_server(tmp_path, broker_url, server_factory, "hup-1")
    started.append(agent)
    # A NaN frame runs before the reload: nothing asks for input validation yet.
    nan = np.full((1, 64), np.nan, dtype=np.float32)
    infer(agent.socket, "digits", "pixels", nan)
    validation = "\n[validation.digits]\nmin = 0\nmax = 16\n"  # the digits' pixel range
    agent.config.write_text(original + _cascade(0.5) + validation)
    _hup(agent)
    # No cloud anywhere: the cascade asks for it, is told there is none, and serves locally.

    def cascaded() -> dict[str, str] | None:
        params = ask(agent, "digits", _unsure())[1]
        return params if params["edgefleet.reason"].startswith("cascade:") else None

    params = wait_for("the cascade policy to apply", cascaded, timeout=20)
    assert params["edgefleet.path"] == "local"
    assert params["edgefleet.reason"].endswith(f"< 0.5; {NO_CLOUD}")
    assert params["edgefleet.cloud_skipped"] == NO_CLOUD
    # The same reload applied the validation: NaN and 255 are refused, the agent goes on.
    for bad, why in ((nan, "NaN or infinite"), (np.full((1, 64), 255.0, np.float32), "outside")):
        with pytest.raises(grpc.RpcError) as caught:
            infer(agent.socket, "digits", "pixels", bad)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert why in str(caught.value.details())
    assert "input validation of 1 model(s)" in agent.output()


def test_sighup_while_enrolling_applies_and_a_broken_file_changes_nothing(
    tmp_path: Path, server_factory: Callable[..., Server], started: list[Agent]
) -> None:
    server = server_factory(None)
    agent = make_agent(tmp_path, "hup-2", server)
    server.proc.stop()  # the agent never reaches its server: it stays enrolling
    agent.start()
    started.append(agent)
    wait_for(
        "a failed enrollment",
        lambda: "unreachable during enrollment" in agent.output(),
        timeout=30,
    )
    original = agent.config.read_text()
    sample = np.zeros((1, 64), np.float32)

    def refusal() -> str:
        try:
            infer(agent.socket, "digits", "pixels", sample)
        except grpc.RpcError as exc:
            return f"{exc.code().name}: {exc.details()}"
        return "served"

    # No model here yet: the local API does not know digits.
    assert refusal().startswith("NOT_FOUND"), refusal()
    agent.config.write_text(original + '\n[routing.digits]\npolicy = "cloud"\n')
    _hup(agent)
    wanted = f"UNAVAILABLE: model digits: policy cloud; {NO_CLOUD}"
    wait_for("the cloud policy to apply", lambda: refusal() == wanted, timeout=20)
    # A broken file: refused with the reason, the running policy stays, the agent goes on.
    agent.config.write_text(original + '\n[routing.digits]\npolicy = "sometimes"\n')
    _hup(agent)
    wait_for(
        "the refusal",
        lambda: "reload refused, nothing changed" in agent.output(),
        timeout=20,
    )
    refused = next(
        line for line in agent.output().splitlines() if "reload refused, nothing changed" in line
    )
    assert "'sometimes' is not one of" in refused, refused
    assert refusal() == wanted
    assert agent.proc is not None and agent.proc.popen.poll() is None
    assert agent.stop() == 0


def test_an_mqtt_reload_and_a_sighup_together_both_apply(
    tmp_path: Path,
    broker_url: str,
    server_factory: Callable[..., Server],
    started: list[Agent],
) -> None:
    agent, original = _serving_without_server(tmp_path, broker_url, server_factory, "hup-3")
    started.append(agent)
    commands = DeviceCommands(broker_url, agent.folder / "state")
    try:
        assert commands.online.wait(30), "the agent is not on the broker"
        for round_, threshold in enumerate((0.5, 0.6, 0.7), start=1):
            before = _reloads(agent)
            agent.config.write_text(original + _cascade(threshold))
            # Both at once: the command from the broker, the signal from the service manager.
            command_id = f"reload-{round_}"
            sender = threading.Thread(target=commands.send, args=("reload", command_id))
            sender.start()
            _hup(agent)
            sender.join(10)
            ack = wait_for(f"the ack of {command_id}", lambda: commands.ack(command_id))  # noqa: B023 - waited for here
            assert ack.ok, ack.detail
            assert ack.detail.startswith("reloaded agent.toml: 1 routing override(s)"), ack.detail
            wait_for(
                f"both reloads of round {round_} applied",
                lambda: _reloads(agent) >= before + 2,  # noqa: B023 - waited for here
                timeout=20,
            )
            # The file's config is the one that runs.
            reason = ask(agent, "digits", _unsure())[1]["edgefleet.reason"]
            assert reason.startswith("cascade:") and f"< {threshold:g};" in reason, reason
    finally:
        commands.close()
    assert agent.stop() == 0


def _catches(pid: int, signum: int) -> bool:
    """Whether process ``pid`` has a handler installed for ``signum`` (its SigCgt mask)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    mask = next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(mask, 16) >> (signum - 1) & 1)


def _peak_rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))


def test_a_sighup_while_the_agent_starts_is_a_reload_not_its_death(
    tmp_path: Path, server_factory: Callable[..., Server], started: list[Agent]
) -> None:
    """SIGHUP's default action ends a process, and systemd counts an end by SIGHUP as a clean
    exit: Restart=on-failure does not bring the agent back. From the moment the agent handles
    SIGTERM it is running our code, and a SIGHUP (ExecReload, logrotate, an operator's
    ``kill -HUP`` right after a restart) must be a reload."""
    server = server_factory(None)
    agent = make_agent(tmp_path, "hup-early", server).start()
    started.append(agent)
    assert agent.proc is not None
    popen = agent.proc.popen
    wait_for("the agent to handle SIGTERM", lambda: _catches(popen.pid, signal.SIGTERM), 60, 0.001)
    _hup(agent)
    wait_for(
        "the early SIGHUP's reload, or the agent's end",
        lambda: "SIGHUP: reloaded agent.toml" in agent.output() or popen.poll() is not None,
    )
    assert popen.poll() is None, f"a SIGHUP at start ended the agent (exit {popen.returncode})"
    assert agent.stop() == 0


def test_a_sighup_storm_neither_ends_the_agent_nor_crowds_out_its_commands(
    tmp_path: Path,
    broker_url: str,
    server_factory: Callable[..., Server],
    started: list[Agent],
) -> None:
    """A script in a loop, a config tool that signals on every file it touches: the agent keeps
    serving, answers commands, and runs with the file as it was last written."""
    server = server_factory(broker_url)
    push_digits(server)
    agent = make_agent(tmp_path, "hup-storm", server, checkin_s=1.0).start()
    started.append(agent)
    ready(agent, "digits")
    commands = DeviceCommands(broker_url, agent.folder / "state")
    try:
        assert commands.online.wait(30), "the agent is not on the broker"
        assert agent.proc is not None
        popen, original = agent.proc.popen, agent.config.read_text()
        sent, start = 0, time.monotonic()
        while time.monotonic() - start < 3.0 and popen.poll() is None:
            if sent == 1000:  # mid-storm, the file changes: the last reload must read it
                agent.config.write_text(original + _cascade(0.5))
            with contextlib.suppress(ProcessLookupError):
                os.kill(popen.pid, signal.SIGHUP)
            sent += 1
        assert popen.poll() is None, f"{sent} SIGHUPs in 3 s ended the agent ({popen.returncode})"
        commands.send("checkin", "after-the-storm")
        # 90 s: in two full CI runs on 2 busy cores no answer came within 30 s, though the
        # agent acted on the command at once; where the answer waited is not known yet.
        ack = wait_for(
            "the answer to a command sent after the storm",
            lambda: commands.ack("after-the-storm"),
            timeout=90,
        )
        assert ack.ok, ack.detail
        reason = ask(agent, "digits", _unsure())[1]["edgefleet.reason"]
        assert reason.startswith("cascade:") and "< 0.5;" in reason, reason
    finally:
        commands.close()
    assert agent.stop() == 0


def test_a_fifo_in_the_configs_place_is_refused_and_later_reloads_apply(
    tmp_path: Path, server_factory: Callable[..., Server], started: list[Agent]
) -> None:
    """A careless operator's named pipe (or a FIFO a tool left behind) where agent.toml was: a
    reload that waits for a writer forever would wedge the control loop, and every later
    reload and command with it, while the watchdog goes on pinging."""
    server = server_factory(None)
    agent = make_agent(tmp_path, "hup-fifo", server).start()
    started.append(agent)
    wait_for("the local API", agent.socket.exists)
    original = agent.config.read_text()
    agent.config.unlink()
    os.mkfifo(agent.config)
    _hup(agent)
    try:
        wait_for(
            "the FIFO's refusal",
            lambda: "reload refused, nothing changed" in agent.output(),
            timeout=10,
        )
    finally:
        agent.config.unlink()
        agent.config.write_text(original + '\n[routing.digits]\npolicy = "cloud"\n')
    assert "not a regular file" in agent.output()
    _hup(agent)
    wait_for(
        "the next reload to apply",
        lambda: "reloaded agent.toml: 1 routing override(s) (digits cloud)" in agent.output(),
        timeout=10,
    )
    assert agent.stop() == 0


def test_a_huge_file_in_the_configs_place_is_refused_without_reading_it(
    tmp_path: Path, server_factory: Callable[..., Server], started: list[Agent]
) -> None:
    """A log or an image copied over agent.toml: the reload must not read 512 MiB (twice that
    in memory as text) on a device that may have 1 GiB."""
    server = server_factory(None)
    agent = make_agent(tmp_path, "hup-huge", server).start()
    started.append(agent)
    assert agent.proc is not None
    wait_for("the local API", agent.socket.exists)
    original = agent.config.read_text()
    with agent.config.open("r+b") as handle:  # sparse: no disk used
        handle.truncate(512 << 20)
    before = _peak_rss_kib(agent.proc.popen.pid)
    _hup(agent)
    wait_for("the refusal", lambda: "reload refused, nothing changed" in agent.output())
    grown = _peak_rss_kib(agent.proc.popen.pid) - before
    agent.config.write_text(original)
    assert grown < 64 << 10, f"the reload of a 512 MiB file took {grown >> 10} MiB more memory"
    assert "is larger than" in agent.output()
    assert agent.stop() == 0


def test_a_reload_whose_cloud_token_is_a_fifo_is_refused_and_later_reloads_apply(
    tmp_path: Path, server_factory: Callable[..., Server], started: list[Agent]
) -> None:
    """A reload that changes [cloud] reads its token file on the control loop. A FIFO there
    (or any read that never returns) wedged the loop for good: later reloads and commands were
    never applied, and the watchdog, which watches only the engine, went on pinging (measured
    under NOTIFY_SOCKET and WATCHDOG_USEC=2000000: 10 WATCHDOG=1 in the 10 s after the wedge),
    so systemd never learns."""
    server = server_factory(None)
    agent = make_agent(tmp_path, "hup-token", server).start()
    started.append(agent)
    wait_for("the local API", agent.socket.exists)
    original = agent.config.read_text()
    fifo = tmp_path / "cloud.token"
    os.mkfifo(fifo)
    try:
        agent.config.write_text(
            original + f'\n[cloud]\nurl = "grpc://127.0.0.1:9"\ntoken_file = "{fifo}"\n'
        )
        _hup(agent)
        wait_for(
            "the token's refusal",
            lambda: "reload refused, nothing changed" in agent.output(),
            timeout=10,
        )
    finally:
        with contextlib.suppress(OSError):  # release a reader that waits, so the agent can end
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    assert "is not a regular file" in agent.output()
    agent.config.write_text(original + '\n[routing.digits]\npolicy = "cloud"\n')
    _hup(agent)
    wait_for(
        "the next reload to apply",
        lambda: "reloaded agent.toml: 1 routing override(s) (digits cloud)" in agent.output(),
        timeout=10,
    )
    assert agent.stop() == 0
