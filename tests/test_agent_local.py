"""The operator's side of the agent's socket in this process: why a socket cannot be used, the
agent's own Status service beside OIP v2, and the status and infer documents over a real gRPC
server on a unix socket. The command line against a running agent is in
test_agent_status_cli.py."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from agent.config import ApiSection, load_config
from agent.errors import AgentError, InputError, ModelNotFoundError, SocketError
from agent.inference.engine import Engine, EngineOptions
from agent.inference.oip import create_server
from agent.local import (
    LocalClient,
    check_socket,
    infer_once,
    read_status,
    status_exit_code,
    status_table,
)
from protos import agent_local_pb2, agent_local_pb2_grpc
from tests.harness import REPO, free_port


@pytest.fixture
def agent_api(tmp_path: Path, color_models: Path) -> Iterator[tuple[Engine, Path, int]]:
    """An engine serving the int8 colour classifier, with a model that cannot load, on a unix
    socket and a TCP port."""
    engine = Engine(EngineOptions(workers=1, queue_depth=0))
    engine.put(engine.load("color", "1.0.0", color_models / "color_int8.tflite"))
    engine.register("broken", "2.0.0", tmp_path / "missing.tflite", pinned=False)
    port = free_port()
    path = tmp_path / "oip.sock"
    server, _ = create_server(engine, socket_path=path, tcp_address=f"127.0.0.1:{port}")
    server.start()
    yield engine, path, port
    server.stop(0)


def test_a_missing_socket_is_named_with_what_to_check(tmp_path: Path) -> None:
    with pytest.raises(SocketError, match=r"agent socket .*/nowhere\.sock does not exist"):
        check_socket(tmp_path / "nowhere.sock")


def test_a_file_that_is_no_socket_is_named(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("x")
    with pytest.raises(SocketError, match="is not a socket"):
        check_socket(tmp_path / "plain")


def test_a_socket_nobody_listens_on_says_connection_refused(tmp_path: Path) -> None:
    path = tmp_path / "stale.sock"
    with contextlib.closing(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)) as sock:
        sock.bind(str(path))  # bound, never listening: what a killed agent leaves
        with pytest.raises(SocketError, match=r"connection refused on agent socket .*stale\.sock"):
            check_socket(path)


def test_the_default_socket_is_the_shipped_configs() -> None:
    shipped = load_config(REPO / "packaging" / "config" / "agent.toml")
    assert shipped.api.socket == ApiSection().socket


def test_status_names_each_model_with_its_variant_and_a_failing_one_exits_1(
    agent_api: tuple[Engine, Path, int],
) -> None:
    _, path, _ = agent_api
    with LocalClient(path) as client:
        assert read_status(client)["problems"] == []  # "broken" has not been asked for yet
        # It fails once something asks for it; the agent says why (UNAVAILABLE: not the socket).
        with pytest.raises(AgentError, match=r"missing\.tflite") as caught:
            client.metadata("broken")
        assert not isinstance(caught.value, SocketError)
        doc = read_status(client)
    models = {m["name"]: m for m in doc["models"]}
    assert models["color"]["condition"] == "ready"
    assert models["color"]["variant"] == "cpu"  # loaded without a release: its backend
    assert models["color"]["backend"] == "cpu"
    assert models["broken"]["condition"] == "failed"
    assert "missing.tflite" in models["broken"]["reason"]
    assert doc["ready"] is True
    assert status_exit_code(doc) == 1
    assert any("broken 2.0.0 failed" in p for p in doc["problems"])
    table = status_table(doc)
    assert "color" in table
    assert any(
        line.split()[:4] == ["color", "1.0.0", "ready", "cpu"] for line in table.splitlines()
    )
    assert "problem: model broken 2.0.0 failed" in table


def test_status_is_served_on_the_socket_only(agent_api: tuple[Engine, Path, int]) -> None:
    _, _, port = agent_api
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = agent_local_pb2_grpc.AgentLocalStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.Status(agent_local_pb2.StatusRequest(), timeout=10)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_refusals_and_latency_are_counted_per_model(agent_api: tuple[Engine, Path, int]) -> None:
    engine, path, _ = agent_api
    model = engine.get("color")
    zeros = [np.zeros(t.shape, dtype=t.dtype) for t in model.info.inputs]
    model.infer(zeros)
    model.stats.reject()  # as the engine counts a refusal at admission
    with LocalClient(path) as client:
        doc = read_status(client)
    color = next(m for m in doc["models"] if m["name"] == "color")
    assert color["refused"] == 1
    assert color["requests"] == 2
    assert color["latency_ms"]["p50"] > 0


def test_infer_encodes_an_image_for_a_quantized_input(
    agent_api: tuple[Engine, Path, int], tmp_path: Path, color_models: Path
) -> None:
    _, path, _ = agent_api
    image = tmp_path / "blue.png"
    Image.new("RGB", (40, 30), (10, 20, 240)).save(image)
    labels = (color_models / "color_labels.txt").read_text().splitlines()
    with LocalClient(path) as client:
        doc = infer_once(client, "color", image, k=2, labels=labels)
    assert doc["top_k"][0]["label"] == "blue"
    assert doc["parameters"]["path"] == "local"
    assert doc["parameters"]["variant"] == "cpu"  # loaded without a release: its backend


def test_infer_names_an_unknown_model_and_a_wrong_shape(
    agent_api: tuple[Engine, Path, int], tmp_path: Path
) -> None:
    _, path, _ = agent_api
    array = tmp_path / "small.npy"
    np.save(array, np.zeros((1, 3), np.int8))
    with LocalClient(path) as client:
        with pytest.raises(ModelNotFoundError, match=r"'nope' is not on this agent.*color"):
            infer_once(client, "nope", array)
        with pytest.raises(InputError, match="shape"):
            infer_once(client, "color", array)
