"""``edgefleet-agent status`` and ``infer`` against what is not a well-behaved agent: socket
paths that are something else, and a fake agent (a real gRPC server on a unix socket, in this
process) that never answers, answers too much, or answers nonsense.

Each ends with one error line and the documented exit status (docs/agent-cli.md), or a correct
answer; never a traceback, a hang or unbounded memory. The commands run in this process
(``agent.cli.main``), so a traceback fails the test.
"""

from __future__ import annotations

import json
import math
import os
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from PIL import Image

from agent.cli import main
from protos import agent_local_pb2, agent_local_pb2_grpc
from protos import inference_pb2 as pb
from protos import inference_pb2_grpc as pb_grpc

IMAGE_INPUT: dict[str, Any] = {"name": "image", "datatype": "FP32", "shape": [1, 32, 32, 3]}
SCORES: dict[str, Any] = {"name": "scores", "datatype": "FP32", "shape": [1, 3]}


class FakeAgent(pb_grpc.GRPCInferenceServiceServicer, agent_local_pb2_grpc.AgentLocalServicer):
    """A fake agent (the real one cannot be made to misbehave): answers each call as told."""

    def __init__(self) -> None:
        self.hang = False
        self.released = threading.Event()
        self.input: dict[str, Any] = dict(IMAGE_INPUT)
        self.output_raw = np.asarray([[0.1, 0.7, 0.2]], "<f4").tobytes()
        self.output: dict[str, Any] = dict(SCORES)
        self.metadata_name = "color"
        self.p50 = 1.5
        self.server: grpc.Server | None = None
        self.reason = ""
        self.die_in_infer = False

    def _wait(self) -> None:
        if self.hang:
            self.released.wait(30)

    def ServerReady(self, request: Any, context: Any) -> Any:  # noqa: N802 - gRPC's names
        self._wait()
        return pb.ServerReadyResponse(ready=True)

    def RepositoryIndex(self, request: Any, context: Any) -> Any:  # noqa: N802
        self._wait()
        entry = pb.RepositoryIndexResponse.ModelIndex(
            name="color", version="1", state="READY", reason=self.reason
        )
        return pb.RepositoryIndexResponse(models=[entry])

    def ModelStatistics(self, request: Any, context: Any) -> Any:  # noqa: N802
        self._wait()
        return pb.ModelStatisticsResponse()

    def ModelMetadata(self, request: Any, context: Any) -> Any:  # noqa: N802
        self._wait()
        tensor = pb.ModelMetadataResponse.TensorMetadata(**self.input)
        return pb.ModelMetadataResponse(name=self.metadata_name, inputs=[tensor])

    def Status(self, request: Any, context: Any) -> Any:  # noqa: N802
        self._wait()
        model = agent_local_pb2.Model(
            name="color",
            version="1",
            condition="failed" if self.reason else "ready",
            backend_reason=self.reason,
            p50_ms=self.p50,
            p95_ms=self.p50,
            p99_ms=self.p50,
            inputs=[agent_local_pb2.Tensor(**self.input)],
            outputs=[agent_local_pb2.Tensor(**SCORES)],
        )
        return agent_local_pb2.StatusResponse(agent_version="fake", uptime_s=self.p50,
                                              models=[model])  # fmt: skip

    def ModelInfer(self, request: Any, context: Any) -> Any:  # noqa: N802
        self._wait()
        if self.die_in_infer and self.server is not None:
            self.server.stop(0)  # the agent goes away mid-call
            time.sleep(1)
        out = pb.ModelInferResponse.InferOutputTensor(**self.output)
        return pb.ModelInferResponse(
            model_name="color", outputs=[out], raw_output_contents=[self.output_raw]
        )


@pytest.fixture
def fake() -> Iterator[tuple[FakeAgent, Path]]:
    folder = Path(tempfile.mkdtemp(prefix="ef-fake-", dir="/tmp"))  # a short unix socket path
    path = folder / "agent.sock"
    agent = FakeAgent()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4),
        options=[("grpc.max_send_message_length", 200 * 1024 * 1024)],
    )
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(agent, server)
    agent_local_pb2_grpc.add_AgentLocalServicer_to_server(agent, server)
    server.add_insecure_port(f"unix:{path}")
    server.start()
    agent.server = server
    yield agent, path
    agent.released.set()
    server.stop(0).wait()
    path.unlink(missing_ok=True)
    folder.rmdir()


def image(tmp_path: Path) -> Path:
    path = tmp_path / "green.png"
    Image.new("RGB", (8, 8), (0, 255, 0)).save(path)
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("edgefleet-agent:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def strict_json(text: str) -> Any:
    def refuse(name: str) -> None:
        raise AssertionError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_the_fake_agent_is_answered_like_the_real_one(
    fake: tuple[FakeAgent, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, path = fake
    code, out, _ = run(capsys, "infer", "color", str(image(tmp_path)), "--socket", str(path),
                       "--json")  # fmt: skip
    assert code == 0 and strict_json(out)["top_k"][0]["index"] == 1
    code, out, _ = run(capsys, "status", "--socket", str(path), "--json")
    assert code == 0 and strict_json(out)["models"][0]["name"] == "color"


@pytest.mark.parametrize("command", ["status", "infer"])
def test_an_agent_that_never_answers_is_given_up_on_in_time(
    fake: tuple[FakeAgent, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    command: str,
) -> None:
    agent, path = fake
    agent.hang = True
    args = [command] + (["color", str(image(tmp_path))] if command == "infer" else [])
    start = time.monotonic()
    code, _, err = run(capsys, *args, "--socket", str(path), "--timeout", "0.5")
    assert time.monotonic() - start < 5
    assert code == 3 and "did not answer" in one_line(err)


@pytest.mark.parametrize("kind", ["fifo", "file", "folder", "dangling", "link to a fifo"])
def test_a_socket_path_that_is_no_socket_is_exit_3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    path = tmp_path / "agent.sock"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "file":
        path.write_text("")
    elif kind == "folder":
        path.mkdir()
    elif kind == "dangling":
        path.symlink_to(tmp_path / "gone")
    else:
        os.mkfifo(tmp_path / "fifo")
        path.symlink_to(tmp_path / "fifo")
    code, _, err = run(capsys, "status", "--socket", str(path), "--timeout", "1")
    assert code == 3, err
    assert str(path) in one_line(err)


def test_a_socket_nobody_listens_on_is_exit_3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = Path(tempfile.mkdtemp(dir="/tmp")) / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(path))  # bound, never listening: what a stopped agent leaves
    code, _, err = run(capsys, "status", "--socket", str(path), "--timeout", "1")
    assert code == 3 and "refused" in one_line(err)
    path.unlink()
    path.parent.rmdir()


def test_an_answer_larger_than_the_client_takes_is_one_error(
    fake: tuple[FakeAgent, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    agent, path = fake
    agent.metadata_name = "x" * (65 * 1024 * 1024)
    code, _, err = run(capsys, "infer", "color", str(image(tmp_path)), "--socket", str(path))
    assert code == 1
    assert "larger than" in one_line(err)


def test_status_json_stays_json_when_the_agent_reports_nan(
    fake: tuple[FakeAgent, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    agent, path = fake
    agent.p50 = math.nan
    code, out, err = run(capsys, "status", "--socket", str(path), "--json")
    assert code == 0, err
    doc = strict_json(out)
    assert doc["models"][0]["latency_ms"]["p50"] is None
    code, out, err = run(capsys, "status", "--socket", str(path))
    assert code == 0 and "Traceback" not in err


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        ({"shape": [1, 200000, 200000, 3]}, "shape"),
        ({"shape": [1, -32, 32, 3]}, "shape"),
        ({"datatype": "BOGUS"}, "dtype bogus"),
        ({"datatype": "BYTES"}, "dtype bytes"),
    ],
)
def test_an_input_the_agent_describes_absurdly_is_refused_before_encoding(
    fake: tuple[FakeAgent, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    tensor: dict[str, Any],
    message: str,
) -> None:
    agent, path = fake
    agent.input = IMAGE_INPUT | tensor
    code, _, err = run(capsys, "infer", "color", str(image(tmp_path)), "--socket", str(path))
    assert code == 1
    assert message in one_line(err)


@pytest.mark.parametrize(
    ("output", "raw"),
    [
        ({}, b"\x00" * 5),  # not a whole number of float32 values
        ({}, b""),
        ({"shape": [1, 4]}, np.zeros(3, "<f4").tobytes()),  # fewer values than its shape
        ({"datatype": "BOGUS"}, b"\x00" * 12),
        ({"shape": [1, 2**62]}, b"\x00" * 12),
    ],
)
def test_an_answer_whose_bytes_do_not_fit_its_shape_is_no_crash(
    fake: tuple[FakeAgent, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    output: dict[str, Any],
    raw: bytes,
) -> None:
    agent, path = fake
    agent.output = SCORES | output
    agent.output_raw = raw
    code, out, err = run(capsys, "infer", "color", str(image(tmp_path)), "--socket", str(path),
                         "--json")  # fmt: skip
    if code == 0:
        assert "top_k" not in strict_json(out)  # no classes from bytes that do not fit
    else:
        assert code == 1 and one_line(err)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("pickle", "not a readable .npy array"),
        ("object", "not a readable .npy array"),
        ("header", "not a readable .npy array"),
        ("short", "not a readable .npy array"),
        ("fifo", "not a regular file"),
    ],
)
def test_an_npy_input_that_is_not_a_plain_array_is_refused_unread(
    fake: tuple[FakeAgent, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    content: str,
    message: str,
) -> None:
    _, path = fake
    npy = tmp_path / "input.npy"
    if content == "pickle":
        np.save(npy, np.asarray([{"a": 1}], dtype=object), allow_pickle=True)
    elif content == "object":
        np.save(npy, np.asarray(["a", 1], dtype=object), allow_pickle=True)
    elif content == "header":
        npy.write_bytes(b"\x93NUMPY\x01\x00" + (60000).to_bytes(2, "little") + b" " * 60000)
    elif content == "short":
        np.save(npy, np.zeros((1, 32, 32, 3), "<f4"))
        npy.write_bytes(npy.read_bytes()[:200])
    else:
        os.mkfifo(npy)
    code, _, err = run(capsys, "infer", "color", str(npy), "--socket", str(path), "--timeout", "2")
    assert code == 2
    assert message in one_line(err)


def test_an_agent_that_goes_away_mid_call_is_one_error(
    fake: tuple[FakeAgent, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    agent, path = fake
    agent.die_in_infer = True
    code, _, err = run(capsys, "infer", "color", str(image(tmp_path)), "--socket", str(path),
                       "--timeout", "5")  # fmt: skip
    line = one_line(err)
    assert code in (1, 3), line
    assert "ModelInfer" in line or str(path) in line


def test_control_characters_from_the_agent_do_not_reach_the_terminal(
    fake: tuple[FakeAgent, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    # A string from the agent could retitle the terminal, move the cursor, or print a fake line.
    agent, path = fake
    agent.reason = "\x1b]0;owned\x07\x1b[2J\nproblem: none, all is well\x9b"
    code, out, _ = run(capsys, "status", "--socket", str(path))
    assert code == 1
    assert not any(ch in out for ch in "\x1b\x07\x9b"), out
    assert "\nproblem: none" not in out and "\\x1b]0;owned" in out


def test_an_agent_error_with_control_characters_is_one_escaped_line(
    fake: tuple[FakeAgent, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    agent, path = fake
    agent.output = SCORES | {"name": "ok"}
    agent.input = IMAGE_INPUT | {"datatype": "\x1b[2Jfake\nedgefleet-agent: fine"}
    code, _, err = run(capsys, "infer", "color", str(image(tmp_path)), "--socket", str(path))
    assert code == 1
    assert "\x1b" not in err and err.count("\n") == 1, err
