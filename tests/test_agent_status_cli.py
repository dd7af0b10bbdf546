"""``edgefleet-agent status`` and ``infer`` against a running agent (issue 20, item 4): an
operator on the device asks what it serves without writing a gRPC client. Real processes: a
fleet server, mosquitto, an agent serving a pushed model, the CLI as root and as an
unprivileged user outside the socket's group."""

from __future__ import annotations

import grp
import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from agent.inference.modelfile import inspect_model_file
from agent.inference.preprocess import image_to_tensor, load_image
from tests.harness import (
    DATA,
    Agent,
    app_folder,
    make_agent,
    run_as_app_user,
    run_cli,
    start_server,
    wait_for,
)
from tests.oip import infer, pb, stub
from tests.test_routing import ready

pytestmark = pytest.mark.slow

MOBILENET = DATA / "mobilenet_v1_0.25_128_quant.tflite"
CAT = DATA / "cat.bmp"
LABELS = DATA / "imagenet_labels.txt"


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory, broker_url: str) -> Iterator[Agent]:
    """An agent run by root, serving mobilenet with one interpreter and no queue (a few
    concurrent calls are refused), in a folder every user may enter: its socket (mode 0660,
    root's group) is what keeps other users out."""
    server = start_server(tmp_path_factory.mktemp("status-cli"), broker_url)
    try:
        server.admin("models", "push", str(MOBILENET), "--name", "mobilenet", "--version",
                     "1.0.0", "--deploy")  # fmt: skip
        with app_folder("status-cli-") as folder:
            agent = make_agent(
                folder, "status-1", server, extra="[inference]\nworkers = 1\nqueue_depth = 0\n"
            ).start()
            try:
                ready(agent, "mobilenet")
                yield agent
            finally:
                agent.stop()
    finally:
        server.proc.stop()


def _cli(*args: str) -> Any:
    return run_cli("edgefleet-agent", *args, check=False)


def _status(agent: Agent) -> dict[str, Any]:
    result = _cli("status", "--json", "--config", str(agent.config))
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def test_status_shows_the_model_its_version_variant_and_backend(
    agent: Agent, broker_url: str
) -> None:
    table = _cli("status", "--config", str(agent.config))
    assert table.returncode == 0, table.stderr
    row = next(line for line in table.stdout.splitlines() if line.startswith("mobilenet"))
    assert row.split()[:5] == ["mobilenet", "1.0.0", "ready", "int8", "cpu"], row
    assert "telemetry: device" in table.stdout
    doc = _status(agent)
    assert doc["ready"] is True
    assert doc["socket"] == str(agent.socket)
    (model,) = doc["models"]
    assert (model["name"], model["version"], model["backend"], model["variant"]) == (
        "mobilenet", "1.0.0", "cpu", "int8"
    )  # fmt: skip
    assert model["pinned"] is True  # deployed by the server
    assert model["release_counter"] > 0
    # Telemetry: enrolled, and connected to the test's broker once the session is up.
    doc = wait_for("telemetry connected in status", lambda: _connected(agent), timeout=60)
    assert doc["telemetry"]["enrolled"] is True
    assert doc["telemetry"]["device_id"]
    assert doc["telemetry"]["broker"] == broker_url


def _connected(agent: Agent) -> dict[str, Any] | None:
    doc = _status(agent)
    return doc if doc["telemetry"]["connected"] else None


def test_infer_gives_the_top_class_of_a_direct_call(agent: Agent) -> None:
    tensor = inspect_model_file(MOBILENET).inputs[0]
    direct, _ = infer(
        agent.socket, "mobilenet", tensor.name, image_to_tensor(load_image(CAT), tensor)
    )
    expected = int(np.argmax(direct))
    result = _cli("infer", "mobilenet", str(CAT), "--labels", str(LABELS), "--json",
                  "--socket", str(agent.socket))  # fmt: skip
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["top_k"][0]["index"] == expected
    labels = LABELS.read_text().splitlines()
    assert doc["top_k"][0]["label"] == labels[expected]
    assert doc["parameters"]["path"] == "local"
    assert doc["parameters"]["variant"] == "int8"  # the pushed variant's name
    text = _cli("infer", "mobilenet", str(CAT), "--labels", str(LABELS), "--config",
                str(agent.config))  # fmt: skip
    assert text.returncode == 0, text.stderr
    assert labels[expected] in text.stdout.splitlines()[0]
    assert "path local, variant int8" in text.stdout


def test_an_unknown_model_and_a_wrong_shape_exit_1_and_say_so(agent: Agent, tmp_path: Path) -> None:
    unknown = _cli("infer", "nosuchmodel", str(CAT), "--socket", str(agent.socket))
    assert unknown.returncode == 1
    assert "nosuchmodel" in unknown.stderr
    assert "mobilenet" in unknown.stderr  # the models it has
    array = tmp_path / "wrong.npy"
    np.save(array, np.zeros((1, 64, 64, 3), np.uint8))
    wrong = _cli("infer", "mobilenet", str(array), "--socket", str(agent.socket))
    assert wrong.returncode == 1
    assert "[1, 128, 128, 3]" in wrong.stderr, wrong.stderr
    missing = _cli("infer", "mobilenet", str(tmp_path / "none.png"), "--socket", str(agent.socket))
    assert missing.returncode == 2
    assert "none.png does not exist" in missing.stderr


def test_a_missing_socket_exits_3_and_names_it(tmp_path: Path) -> None:
    path = tmp_path / "run" / "oip.sock"
    for command in (["status"], ["infer", "mobilenet", str(CAT)]):
        result = _cli(*command, "--socket", str(path))
        assert result.returncode == 3, result
        assert f"agent socket {path} does not exist" in result.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the CLI as another user")
def test_a_user_outside_the_sockets_group_is_told_which_group_to_join(
    agent: Agent, tmp_path: Path
) -> None:
    group = grp.getgrgid(agent.socket.stat().st_gid).gr_name
    cli = [sys.executable, "-m", "agent.cli", "status", "--socket"]
    result = run_as_app_user([*cli, str(agent.socket)], timeout=60)
    assert result.returncode == 3, result
    assert f"permission denied on agent socket {agent.socket}" in result.stderr
    assert f"add yourself to group {group}" in result.stderr
    # A folder on the way closed to the user (systemd's RuntimeDirectoryMode=0750) is named.
    closed = tmp_path / "oip.sock"
    result = run_as_app_user([*cli, str(closed)], timeout=60)
    assert result.returncode == 3, result
    assert "permission denied on folder" in result.stderr, result.stderr
    assert "add yourself to group" in result.stderr


def test_refusals_counted_after_a_flood_appear_in_status(agent: Agent) -> None:
    before = _status(agent)["models"][0]["refused"]
    tensor = inspect_model_file(MOBILENET).inputs[0]
    request = pb.ModelInferRequest(model_name="mobilenet")
    request.inputs.add(name=tensor.name, datatype="UINT8", shape=list(tensor.shape))
    request.raw_input_contents.append(np.zeros(tensor.shape, np.uint8).tobytes())
    oip = stub(agent.socket)
    codes: dict[str, int] = {}
    lock = threading.Lock()
    end = time.monotonic() + 3.0

    def caller() -> None:
        while time.monotonic() < end:
            try:
                oip.ModelInfer(request, timeout=30)
                code = "OK"
            except grpc.RpcError as exc:
                code = exc.code().name
            with lock:
                codes[code] = codes.get(code, 0) + 1

    with ThreadPoolExecutor(16) as pool:
        for future in [pool.submit(caller) for _ in range(16)]:
            future.result()
    refused = codes.get("RESOURCE_EXHAUSTED", 0)
    assert refused > 0, codes  # one interpreter, no queue: 16 callers at once are refused
    assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED"}, codes
    doc = _status(agent)
    assert doc["models"][0]["refused"] - before == refused, (codes, doc["models"][0])
    row = next(line for line in _cli("status", "--socket", str(agent.socket)).stdout.splitlines()
               if line.startswith("mobilenet"))  # fmt: skip
    assert str(doc["models"][0]["refused"]) in row.split()
