"""A real agent stopped (SIGTERM) while REST clients stall: it stops in its grace period and says
so in at most one line, with no traceback (uvicorn logged a CancelledError traceback per stalled
request, under "timeout graceful shutdown exceeded")."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import Agent, free_port, make_agent, start_server, wait_for
from tests.test_rest import head, http

pytestmark = pytest.mark.slow


@pytest.fixture
def agent(tmp_path: Path, color_models: Path) -> Iterator[tuple[Agent, int]]:
    server = start_server(tmp_path / "fleet", None)
    agent: Agent | None = None
    try:
        server.admin("models", "push", str(color_models / "pair_float.tflite"), "--name", "pair",
                     "--version", "1.0.0")  # fmt: skip
        server.admin("deploy", "pair", "1.0.0")
        port = free_port()
        agent = make_agent(tmp_path, "edge-stop", server, checkin_s=1.0)
        text = agent.config.read_text()
        agent.config.write_text(
            text.replace(
                'socket = "oip.sock"', f'socket = "oip.sock"\nrest_listen = "127.0.0.1:{port}"'
            )
        )
        agent.start()
        url = f"http://127.0.0.1:{port}/v2/models/pair/ready"
        wait_for("pair over REST", lambda: http(url)[0] == 200, timeout=90)
        yield agent, port
    finally:
        if agent is not None and agent.proc is not None and agent.proc.popen.poll() is None:
            agent.stop()
        server.proc.stop()


def test_sigterm_with_stalled_rest_clients_stops_cleanly(agent: tuple[Agent, int]) -> None:
    proc, port = agent
    held = []
    try:
        for sent in (b"", b'{"inputs": ['):  # announced bodies that never come (whole)
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(head("/v2/models/pair/infer", Content_Length=4096) + sent)
            held.append(sock)
        partial = socket.create_connection(("127.0.0.1", port), timeout=10)
        partial.sendall(b"POST /v2/models/pair/infer HTTP/1.1\r\nHost: x\r\n")  # half a head
        held.append(partial)
        time.sleep(0.5)  # the agent has read what they sent
        start = time.monotonic()
        code = proc.stop()
        took = time.monotonic() - start
    finally:
        for sock in held:
            sock.close()
    output = proc.output()
    tail = output[output.rfind("stopping") :] if "stopping" in output else output
    assert code == 0, tail
    assert took < 15, took
    assert "Traceback" not in output and "CancelledError" not in output, tail
    # One line says what the stop did to the REST clients; nothing else warns (the MQTT
    # disconnection the stop asks for was logged as a lost connection).
    warnings = [line for line in tail.splitlines() if " WARNING " in line or " ERROR " in line]
    assert len(warnings) == 1 and "dropped 2 connection(s)" in warnings[0], warnings
