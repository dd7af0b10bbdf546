"""The update lifecycle under a real agent: what counts as a crash loop (issue 18).

A clean restart (SIGTERM) or a start that fails before serving (the API port taken) is not
the new release's fault; a SIGKILL while it serves is. Each is shown on a real agent with a
real server, the release under watch, and the journal read from the agent's disk.
"""

from __future__ import annotations

import signal
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.ports import EXIT_PORT_IN_USE
from agent.updates.store import ModelStore
from protos import inference_pb2
from tests import oip
from tests.harness import Agent, Server, wait_for
from tests.test_fleet_e2e import HEALTH, colors_still_served, model_state, wait_state

pytestmark = pytest.mark.slow

# A window no test outlasts: only deaths can end it here.
WATCH = HEALTH.replace("health_window_s = 120.0", "health_window_s = 3600.0")


def serving(agent: Agent) -> bool:
    try:
        request = inference_pb2.ServerLiveRequest()
        return bool(oip.stub(agent.socket).ServerLive(request, timeout=1).live)
    except Exception:  # noqa: BLE001 - not up yet
        return False


def crashes(agent: Agent) -> int:
    window = ModelStore(agent.folder / "state").health().get("colors")
    assert window is not None, "the window closed: the release is no longer watched"
    return window.crashes


def test_clean_restarts_and_a_taken_port_are_not_a_crash_loop_but_kills_are(
    broker_url: str,
    server_factory: Callable[..., Server],
    agent_factory: Callable[..., Agent],
    color_models: Path,
) -> None:
    server = server_factory(broker_url)
    push = ("models", "push", "--name", "colors", "--deploy")
    server.admin(*push, str(color_models / "color_float.tflite"), "--version", "1.0.0")
    agent = agent_factory("dev-r", server, extra=WATCH)
    wait_state(server, "dev-r", "colors", "1.0.0", "INSTALLED")
    server.admin(*push, str(color_models / "color_int8.tflite"), "--version", "1.1.0")
    wait_state(server, "dev-r", "colors", "1.1.0", "INSTALLED")
    assert crashes(agent) == 0

    for _ in range(4):  # more clean restarts than the crash-loop limit (3)
        assert agent.stop(signal.SIGTERM) == 0
        agent.start()
        wait_for("the agent to serve again", lambda: serving(agent))
    assert crashes(agent) == 0

    # Starts that fail because the API port is taken: the agent exits with one line, and
    # the release serving before it is not blamed.
    config = agent.config.read_text()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        agent.config.write_text(config.replace("[api]\n", f'[api]\nlisten = "127.0.0.1:{port}"\n'))
        assert agent.stop(signal.SIGTERM) == 0
        for _ in range(4):
            agent.start()
            assert agent.proc is not None
            assert agent.proc.popen.wait(30) == EXIT_PORT_IN_USE
    assert f"api.listen 127.0.0.1:{port} is in use by another process" in agent.output()
    agent.config.write_text(config)
    agent.start()
    wait_for("the agent to serve again", lambda: serving(agent))
    assert crashes(agent) == 0
    state = model_state(server, "dev-r", "colors")
    assert state is not None and state["state"] == "INSTALLED", state
    colors_still_served(agent, "1.1.0")

    # A SIGKILL while it serves is a death the release is blamed for (a hostile local app
    # that crashes the agent counts too, until the local API cannot be crashed: issue 20).
    assert agent.stop(signal.SIGKILL) == -signal.SIGKILL
    agent.start()
    wait_for("the agent to serve again", lambda: serving(agent))
    assert crashes(agent) == 1
