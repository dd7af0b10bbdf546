"""A real agent stopped (SIGTERM) while REST clients stall: it stops in its grace period and says
so in at most one line, with no traceback (uvicorn logged a CancelledError traceback per stalled
request, under "timeout graceful shutdown exceeded")."""

from __future__ import annotations

import functools
import http.client as http_client
import json
import socket
import threading
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
        for name in ("pair", "spin"):
            server.admin("models", "push", str(color_models / f"{name}_float.tflite"), "--name",
                         name, "--version", "1.0.0", "--deploy")  # fmt: skip
        port = free_port()
        agent = make_agent(tmp_path, "edge-stop", server, checkin_s=1.0)
        text = agent.config.read_text()
        agent.config.write_text(
            text.replace(
                'socket = "oip.sock"', f'socket = "oip.sock"\nrest_listen = "127.0.0.1:{port}"'
            )
        )
        agent.start()
        for name in ("pair", "spin"):
            url = f"http://127.0.0.1:{port}/v2/models/{name}/ready"
            wait_for(f"{name} over REST", functools.partial(ready, url), timeout=90)
        yield agent, port
    finally:
        if agent is not None and agent.proc is not None and agent.proc.popen.poll() is None:
            agent.stop()
        server.proc.stop()


def ready(url: str) -> bool:
    return http(url)[0] == 200


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


def test_sigterm_while_a_rest_request_computes_for_ever(agent: tuple[Agent, int]) -> None:
    # A request on a wedged interpreter (spin: x > 1e30 never ends) at SIGTERM: uvicorn
    # cancelled it at the end of its grace with "ERROR Cancel 1 running task(s)", a second line.
    proc, port = agent
    doc = json.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32",
                                  "data": [1e31]}]}).encode()  # fmt: skip
    answers: list[object] = []

    def call() -> None:
        try:
            answers.append(http(f"http://127.0.0.1:{port}/v2/models/spin/infer", doc)[0])
        except (OSError, http_client.HTTPException) as exc:
            answers.append(exc)  # dropped by the stop: expected

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    time.sleep(1.0)  # the interpreter spins
    start = time.monotonic()
    code = proc.stop()
    took = time.monotonic() - start
    caller.join(10)
    output = proc.output()
    tail = output[output.rfind("stopping") :] if "stopping" in output else output
    assert code == 0 and took < 15, (code, took, tail)
    assert "Traceback" not in output and "CancelledError" not in output, tail
    warnings = [line for line in tail.splitlines() if " WARNING " in line or " ERROR " in line]
    assert len(warnings) == 1 and "dropped 1 connection(s)" in warnings[0], warnings
    assert answers and not isinstance(answers[0], int), answers  # no answer, cut
