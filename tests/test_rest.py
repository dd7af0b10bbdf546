"""The agent's KServe v2 / Triton REST API (issue 20, item 3) against a real agent process that
a real fleet server deployed two models to: tritonclient.http (its own environment,
.venv-triton) over loopback TCP, checked bit for bit against the gRPC API and raw LiteRT; curl
over the REST unix socket; and hostile clients (oversize and lying bodies, malformed JSON,
slow connections), after each of which the agent still serves another client."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import socket
import statistics
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from protos import inference_pb2 as pb
from tests.harness import DATA, REPO, Agent, free_port, make_agent, start_server, wait_for
from tests.oip import stub

pytestmark = pytest.mark.slow

MOBILENET = DATA / "mobilenet_v1_0.25_128_quant.tflite"
PAIR_A = np.array([[1.5, -2.0, 3.25, 4.0]], np.float32)
PAIR_B = np.array([[0.5, 0.5, -1.0, 2.0]], np.float32)


@dataclass
class Device:
    agent: Agent
    port: int  # the REST API's TCP port
    models: dict[str, Path]
    metrics_port: int

    def rejected(self, model: str) -> int:
        """The agent's count of refused requests of ``model`` (Prometheus)."""
        text = http(f"http://127.0.0.1:{self.metrics_port}/metrics")[2].decode()
        found = re.findall(rf'^edgefleet_inference_rejected_total{{model="{model}"[^}}]*}} (\d+)$',
                           text, re.M)  # fmt: skip
        return sum(int(n) for n in found)

    @property
    def rest_socket(self) -> Path:
        return self.agent.folder / "rest.sock"

    @property
    def pid(self) -> int:
        assert self.agent.proc is not None
        return self.agent.proc.popen.pid

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def rss_kib(self) -> int:
        status = Path(f"/proc/{self.pid}/status").read_text()
        return int(next(s.split()[1] for s in status.splitlines() if s.startswith("VmRSS:")))

    def fds(self) -> int:
        return sum(1 for _ in Path(f"/proc/{self.pid}/fd").iterdir())


def http(
    url: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of one request; an HTTP error status is an answer too."""
    request = urllib.request.Request(url, data=body, headers=headers or {})  # noqa: S310 - http
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310 - to the agent
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def pair_json() -> bytes:
    return json.dumps(
        {
            "inputs": [
                {"name": "a", "shape": [1, 4], "datatype": "FP32", "data": PAIR_A.ravel().tolist()},
                {"name": "b", "shape": [1, 4], "datatype": "FP32", "data": PAIR_B.tolist()},
            ]
        }
    ).encode()


def served(device: Device) -> None:
    """Another client is served, over TCP and the unix socket, REST and gRPC."""
    status, _, body = http(device.url("/v2/models/pair/infer"), pair_json())
    assert status == 200, body
    assert json.loads(body)["outputs"][0]["data"] == (PAIR_A + PAIR_B).ravel().tolist()
    assert curl(device, "/v2/health/ready")[0] == 200
    meta = stub(device.agent.socket).ModelMetadata(pb.ModelMetadataRequest(name="pair"), timeout=10)
    assert meta.name == "pair"


def curl(device: Device, path: str, *args: str) -> tuple[int, str]:
    """(status, body) of curl over the REST unix socket."""
    result = subprocess.run(
        [
            "curl",
            "-sS",
            "--max-time",
            "30",
            "--unix-socket",
            str(device.rest_socket),
            "-w",
            "\n%{http_code}",
            *args,
            f"http://agent{path}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    body, _, code = result.stdout.rpartition("\n")
    return int(code), body


@pytest.fixture(scope="module")
def device(tmp_path_factory: pytest.TempPathFactory, color_models: Path) -> Iterator[Device]:
    folder = tmp_path_factory.mktemp("rest")
    server = start_server(folder / "fleet", None)
    agent: Agent | None = None
    try:
        models = {"pair": color_models / "pair_float.tflite", "mobilenet": MOBILENET}
        for name, path in models.items():
            server.admin("models", "push", str(path), "--name", name, "--version", "1.0.0")
            server.admin("deploy", name, "1.0.0")
        port, metrics = free_port(), free_port()
        agent = make_agent(folder, "edge-rest", server, checkin_s=1.0, metrics_port=metrics,
                           extra="[inference]\nworkers = 1\nqueue_depth = 0\n")  # fmt: skip
        text = agent.config.read_text()
        agent.config.write_text(
            text.replace(
                'socket = "oip.sock"', f'socket = "oip.sock"\nrest_listen = "127.0.0.1:{port}"'
            )
        )
        agent.start()
        dev = Device(agent, port, models, metrics)
        for name in models:

            def ready(name: str = name) -> bool:
                return http(dev.url(f"/v2/models/{name}/ready"))[0] == 200

            wait_for(f"{name} over REST", ready, timeout=90)
        yield dev
    finally:
        if agent is not None and agent.proc is not None:
            agent.stop()
        server.proc.stop()


TRITON_HTTP = r"""
import json, sys
import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

url, (a, b, image) = sys.argv[1], json.load(sys.stdin)
client = httpclient.InferenceServerClient(url=url)
out = {"live": client.is_server_live(), "ready": client.is_server_ready(),
       "model_ready": client.is_model_ready("pair"), "nosuch_ready": client.is_model_ready("x"),
       "server": client.get_server_metadata(), "meta": client.get_model_metadata("pair"),
       "config": client.get_model_config("mobilenet")}

def pair_inputs(binary, a=a, b=b, dtype=np.float32, shape=(1, 4)):
    tensors = []
    for name, values in (("a", a), ("b", b)):
        t = httpclient.InferInput(name, list(shape), "FP32" if dtype == np.float32 else "INT32")
        t.set_data_from_numpy(np.array(values, dtype).reshape(shape), binary_data=binary)
        tensors.append(t)
    return tensors

for binary in (True, False):
    outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("sum", "product")]
    r = client.infer("pair", pair_inputs(binary), outputs=outputs)
    out[f"pair_{binary}"] = {n: r.as_numpy(n).tobytes().hex() for n in ("sum", "product")}
    out[f"pair_params_{binary}"] = r.get_response().get("parameters", {})
r = client.infer("pair", pair_inputs(True))  # no outputs named: binary_data_output
out["pair_default"] = r.as_numpy("sum").tobytes().hex()
img = httpclient.InferInput("input", [1, 128, 128, 3], "UINT8")
img.set_data_from_numpy(np.array(image, np.uint8).reshape(1, 128, 128, 3))
meta = client.get_model_metadata("mobilenet")
first = meta["outputs"][0]["name"]
r = client.infer("mobilenet", [img])
out["mobilenet"] = r.as_numpy(first).tobytes().hex()
img_json = httpclient.InferInput(meta["inputs"][0]["name"], [1, 128, 128, 3], "UINT8")
img_json.set_data_from_numpy(np.array(image, np.uint8).reshape(1, 128, 128, 3), binary_data=False)
r = client.infer("mobilenet", [img_json],
                 outputs=[httpclient.InferRequestedOutput(first, binary_data=False)])
out["mobilenet_json"] = r.as_numpy(first).tobytes().hex()
for binary in (True, False):
    r = client.infer("pair", pair_inputs(True), outputs=[
        httpclient.InferRequestedOutput("sum", binary_data=binary, class_count=2)])
    out[f"classes_{binary}"] = [[c.decode() if isinstance(c, bytes) else c for c in row]
                                for row in r.as_numpy("sum")]
errors = {}
for key, call in {
    "name": lambda: client.infer("nosuch", pair_inputs(True)),
    "shape": lambda: client.infer("pair", pair_inputs(True, a=[1, 2, 3, 4, 5, 6, 7, 8],
                                                      b=[1] * 8, shape=(2, 4))),
    "dtype": lambda: client.infer("pair", pair_inputs(True, dtype=np.int32)),
    "input": lambda: client.infer("pair", pair_inputs(True)[:1]),
    "output": lambda: client.infer("pair", pair_inputs(True),
                                   outputs=[httpclient.InferRequestedOutput("nosuch")]),
    "classes": lambda: client.infer("pair", pair_inputs(True), outputs=[
        httpclient.InferRequestedOutput("sum", class_count=9)]),
    "meta": lambda: client.get_model_metadata("nosuch"),
    "unload": lambda: client.unload_model("nosuch"),
}.items():
    try:
        call()
        errors[key] = None
    except InferenceServerException as exc:
        errors[key] = [exc.status(), exc.message()]
out["errors"] = errors
out["stats"] = client.get_inference_statistics("pair")
out["all_stats"] = client.get_inference_statistics()
out["index"] = client.get_model_repository_index()
client.unload_model("pair")
out["after_unload"] = [client.is_model_ready("pair"), client.get_model_repository_index()]
client.load_model("pair")
out["after_load"] = client.is_model_ready("pair")
print(json.dumps(out))
"""


def litert(model: Path, *inputs: np.ndarray) -> list[bytes]:
    """Every output of a raw LiteRT run, as bytes."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(model))
    interpreter.allocate_tensors()
    by_name = {d["name"]: d for d in interpreter.get_input_details()}
    for name, value in zip(("a", "b"), inputs, strict=False):
        detail = by_name.get(name) or interpreter.get_input_details()[0]
        interpreter.set_tensor(detail["index"], value)
    interpreter.invoke()
    return [interpreter.get_tensor(d["index"]).tobytes() for d in interpreter.get_output_details()]


def test_tritonclient_http_matches_grpc_and_raw_litert(device: Device) -> None:
    image = np.random.default_rng(7).integers(0, 256, (1, 128, 128, 3), dtype=np.uint8)
    python = os.environ.get("EDGEFLEET_TRITON_PYTHON") or str(REPO / ".venv-triton/bin/python")
    given = json.dumps([PAIR_A.tolist(), PAIR_B.tolist(), image.tolist()])
    result = subprocess.run(
        [python, "-c", TRITON_HTTP, f"127.0.0.1:{device.port}"],
        input=given,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout)
    assert out["live"] and out["ready"] and out["model_ready"] and not out["nosuch_ready"]
    server = out["server"]
    assert server["name"] == "edgefleet-agent"
    assert {"classification", "model_repository", "model_configuration", "statistics"} <= set(
        server["extensions"]
    )
    assert "system_shared_memory" not in server["extensions"]  # gRPC on the unix socket only
    assert out["meta"]["inputs"] == [
        {"name": "a", "datatype": "FP32", "shape": [1, 4]},
        {"name": "b", "datatype": "FP32", "shape": [1, 4]},
    ]
    config = out["config"]
    assert config["platform"] == "tensorflow_lite" and config["max_batch_size"] == 0
    assert config["input"][0]["data_type"] == "TYPE_UINT8"
    assert config["input"][0]["dims"] == [1, 128, 128, 3]
    # Bit for bit: REST binary, REST JSON, gRPC and raw LiteRT.
    raw_sum, raw_product = litert(device.models["pair"], PAIR_A, PAIR_B)
    request = pb.ModelInferRequest(model_name="pair")
    for name, value in (("a", PAIR_A), ("b", PAIR_B)):
        request.inputs.add(name=name, datatype="FP32", shape=[1, 4])
        request.raw_input_contents.append(value.tobytes())
    answer = stub(device.agent.socket).ModelInfer(request, timeout=10)
    assert answer.raw_output_contents[0] == raw_sum
    for binary in (True, False):
        got = out[f"pair_{binary}"]
        assert bytes.fromhex(got["sum"]) == raw_sum, binary
        assert bytes.fromhex(got["product"]) == raw_product, binary
        params = out[f"pair_params_{binary}"]
        assert params["edgefleet.path"] == "local" and params["edgefleet.backend"] == "cpu"
    assert bytes.fromhex(out["pair_default"]) == raw_sum
    (raw_mobilenet,) = litert(MOBILENET, image)
    assert bytes.fromhex(out["mobilenet"]) == raw_mobilenet
    assert bytes.fromhex(out["mobilenet_json"]) == raw_mobilenet
    # Classification: the top 2 of a + b = [2, -1.5, 2.25, 6] as "value:index".
    assert out["classes_True"] == out["classes_False"] == [["6:3", "2.25:2"]]
    errors = out["errors"]
    assert errors["name"][0] == "404" and "nosuch" in errors["name"][1]
    assert errors["shape"][0] == "400" and "shape [1, 4]" in errors["shape"][1]
    assert errors["dtype"][0] == "400" and "must be FP32" in errors["dtype"][1]
    assert errors["input"][0] == "400" and "takes 2 input(s)" in errors["input"][1]
    assert errors["output"][0] == "400" and "no output(s) ['nosuch']" in errors["output"][1]
    assert errors["classes"][0] == "400" and "4 classes" in errors["classes"][1]
    assert errors["meta"][0] == "404" and errors["unload"][0] == "404"
    stats = out["stats"]["model_stats"][0]
    assert stats["name"] == "pair" and stats["inference_count"] >= 5
    assert stats["inference_stats"]["success"]["count"] == stats["inference_count"]
    assert {s["name"] for s in out["all_stats"]["model_stats"]} == {"pair", "mobilenet"}
    assert {(m["name"], m["state"]) for m in out["index"]} == {
        ("pair", "READY"),
        ("mobilenet", "READY"),
    }
    ready_after_unload, index = out["after_unload"]
    assert not ready_after_unload
    assert {m["name"]: m["state"] for m in index}["pair"] == "UNAVAILABLE"
    assert out["after_load"]
    served(device)


def test_curl_over_the_rest_unix_socket(device: Device) -> None:
    grpc_socket = device.agent.socket.stat()
    rest = device.rest_socket.stat()
    assert rest.st_mode & 0o777 == 0o660 and rest.st_gid == grpc_socket.st_gid
    assert curl(device, "/v2/health/live") == (200, '{"live":true}')
    assert curl(device, "/v2/health/ready") == (200, '{"ready":true}')
    code, body = curl(device, "/v2")
    assert code == 200 and json.loads(body)["name"] == "edgefleet-agent"
    code, body = curl(device, "/v2/models/pair")
    assert code == 200 and json.loads(body)["versions"] == ["1.0.0"]
    code, body = curl(
        device,
        "/v2/models/pair/infer",
        "-X",
        "POST",
        "--data-binary",
        pair_json().decode(),
        "-H",
        "edgefleet-client-id: curl-app",
    )
    assert code == 200, body
    answer = json.loads(body)
    assert answer["outputs"][0]["data"] == (PAIR_A + PAIR_B).ravel().tolist()
    assert answer["parameters"]["edgefleet.path"] == "local"
    code, body = curl(device, "/v2/systemsharedmemory/status")
    assert code == 400 and "gRPC" in json.loads(body)["error"]
    shm = json.dumps(
        {
            "inputs": [
                {
                    "name": "a",
                    "shape": [1, 4],
                    "datatype": "FP32",
                    "parameters": {"shared_memory_region": "r"},
                }
            ]
        }
    )
    code, body = curl(device, "/v2/models/pair/infer", "-X", "POST", "--data-binary", shm)
    assert code == 400 and "shared memory is served over gRPC" in json.loads(body)["error"]


def raw_request(device: Device, head: bytes, body: bytes = b"", *, wait: float = 10) -> bytes:
    """Send bytes on a fresh TCP connection; what the agent answers before closing or ``wait``."""
    with socket.create_connection(("127.0.0.1", device.port), timeout=wait) as sock:
        sock.sendall(head + body)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
                if b"\r\n\r\n" in answer and b'"}' in answer:
                    break
        except (TimeoutError, ConnectionResetError):
            pass
    return answer


def head(path: str, **headers: str | int) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        "Host: agent",
        *(f"{k.replace('_', '-')}: {v}" for k, v in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_oversize_and_lying_bodies_are_refused_without_the_agent_growing(device: Device) -> None:
    infer_path = "/v2/models/pair/infer"
    before = device.rss_kib()
    # 200 MiB announced and streamed: 413 by the announcement, before the agent reads it.
    with socket.create_connection(("127.0.0.1", device.port), timeout=30) as sock:
        sock.sendall(head(infer_path, Content_Length=200 << 20))
        sent = 0
        answer = b""
        try:
            chunk = bytes(1 << 20)
            sock.settimeout(0.2)
            while sent < 200 << 20 and b"\r\n\r\n" not in answer:
                sock.sendall(chunk)
                sent += len(chunk)
                with contextlib.suppress(TimeoutError):
                    answer += sock.recv(4096)
        except (BrokenPipeError, ConnectionResetError):
            pass
        sock.settimeout(10)
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            answer += sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    # Chunked (no length announced): refused once the JSON cap (16 MiB) is passed.
    with socket.create_connection(("127.0.0.1", device.port), timeout=30) as sock:
        sock.sendall(head(infer_path, Transfer_Encoding="chunked"))
        piece = b"%x\r\n%s\r\n" % (1 << 20, b" " * (1 << 20))
        try:
            for _ in range(40):
                sock.sendall(piece)
        except (BrokenPipeError, ConnectionResetError):
            pass
        sock.settimeout(10)
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    # A header claiming gigabytes, for the body or for its JSON part.
    answer = raw_request(device, head(infer_path, Content_Length=5 << 30))
    assert answer.startswith(b"HTTP/1.1 413"), answer
    answer = raw_request(
        device, head(infer_path, Content_Length=2, Inference_Header_Content_Length=5 << 30), b"{}"
    )
    assert answer.startswith(b"HTTP/1.1 413"), answer
    assert device.rss_kib() - before < 40_000, (before, device.rss_kib())
    served(device)
    body = pair_json()
    for header, expected in (
        (len(body) + 100, b"Inference-Header-Content-Length is"),  # longer than the body
        (10, b"not valid JSON"),  # cuts the JSON short; the rest is taken for binary
        ("-5", b"not a byte count"),
        ("12abc", b"not a byte count"),
    ):
        status, _, answer = http(
            device.url(infer_path), body, {"Inference-Header-Content-Length": str(header)}
        )
        assert status == 400 and expected in answer, (header, answer)
    # Binary sizes that do not add up with the body.
    doc = json.dumps(
        {
            "inputs": [
                {
                    "name": n,
                    "shape": [1, 4],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 16},
                }
                for n in "ab"
            ]
        }
    )
    for extra, expected in ((bytes(20), b"runs past"), (bytes(40), b"after the last")):
        status, _, answer = http(
            device.url(infer_path),
            doc.encode() + extra,
            {"Inference-Header-Content-Length": str(len(doc))},
        )
        assert status == 400 and expected in answer, answer
    served(device)


def test_malformed_json_gets_a_clear_400(device: Device) -> None:
    url = device.url("/v2/models/pair/infer")
    for body, expected in (
        (b"{not json", b"not valid JSON"),
        (b"[" * 200_000 + b"]" * 200_000, b"not valid JSON"),  # nesting past the recursion limit
        (b'"a string"', b"must be a JSON object"),
        (b'{"inputs": {}}', b"inputs must be a JSON array"),
        (
            b'{"inputs": [{"name": "a", "shape": [1, 4], "datatype": "FP99", "data": []}]}',
            b"datatype 'FP99'",
        ),
        (
            b'{"inputs": [{"name": "a", "shape": [1, -4], "datatype": "FP32", "data": []}]}',
            b"non-negative",
        ),
        (
            b'{"inputs": [{"name": "a", "shape": [1, 4], "datatype": "FP32", "data": ["x"]}]}',
            b"not FP32 values",
        ),
        (
            b'{"inputs": [{"name": "a", "shape": [1, 4], "datatype": "UINT8", "data": [1,2,3,999]}]}',  # noqa: E501
            b"not UINT8 values",
        ),
        (b'{"inputs": [{"name": "a", "shape": [4], "datatype": "FP32"}]}', b"neither data"),
    ):
        status, _, answer = http(url, body, {"Content-Type": "application/json"})
        assert status == 400 and expected in answer, (body[:80], answer)
        assert json.loads(answer)["error"]
    status, _, answer = http(device.url("/v2/models/nosuch/infer"), b"{}")
    assert status == 404 and b"nosuch" in answer
    status, _, answer = http(
        device.url("/v2/repository/models/pair/load"), b'{"parameters": {"config": "{}"}}'
    )
    assert status == 400 and b"not supported" in answer
    served(device)


def test_slow_connections_are_bounded_and_closed(device: Device) -> None:
    fds_before = device.fds()
    slow: list[socket.socket] = []
    stop = threading.Event()
    try:
        for _ in range(100):  # more than the listener's 64 connections
            sock = socket.create_connection(("127.0.0.1", device.port), timeout=5)
            sock.sendall(b"POST /v2/models/pair/infer HTTP/1.1\r\n")
            slow.append(sock)

        def trickle() -> None:  # a header byte a second on each: never a whole head
            while not stop.wait(1.0):
                for sock in slow:
                    with contextlib.suppress(OSError):
                        sock.sendall(b"X")

        threading.Thread(target=trickle, daemon=True).start()
        time.sleep(1)
        refused = 0
        for sock in slow[64:]:
            sock.settimeout(5)
            with contextlib.suppress(OSError):
                refused += sock.recv(4096).startswith(b"HTTP/1.1 503")
        assert refused >= 30, refused
        assert device.fds() - fds_before <= 64 + 8, (fds_before, device.fds())
        # Meanwhile the unix sockets serve the device's apps, REST and gRPC.
        code, _ = curl(device, "/v2/health/ready")
        assert code == 200
        assert stub(device.agent.socket).ServerLive(pb.ServerLiveRequest(), timeout=10).live
        # Within the head deadline (10 s) the agent closes the slow ones by itself.
        started = time.monotonic()

        def closed(sock: socket.socket) -> bool:
            sock.settimeout(0.05)
            try:
                return sock.recv(4096) == b""
            except TimeoutError:
                return False
            except OSError:
                return True

        wait_for(
            "the agent to close the slow connections",
            lambda: all(closed(s) for s in slow[:64]),
            timeout=30,
        )
        assert time.monotonic() - started < 20
    finally:
        stop.set()
        for sock in slow:
            sock.close()
    wait_for("the agent's file descriptors back", lambda: device.fds() <= fds_before + 4, 20)
    served(device)


def test_admission_refuses_over_rest_as_over_grpc_and_counts_it(device: Device) -> None:
    # The model has one place (workers = 1, queue_depth = 0): concurrent calls beyond it are
    # refused at once, 503 over REST (RESOURCE_EXHAUSTED over gRPC), and each refusal counted.
    image = np.zeros((1, 128, 128, 3), np.uint8)
    doc = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [1, 128, 128, 3],
                    "datatype": "UINT8",
                    "parameters": {"binary_data_size": image.size},
                }
            ]
        }
    ).encode()
    body = doc + image.tobytes()
    before = device.rejected("mobilenet")
    statuses: list[int] = []
    refusals: list[str] = []
    lock = threading.Lock()

    def call(app: str) -> None:
        for _ in range(15):
            status, _, answer = http(
                device.url("/v2/models/mobilenet/infer"),
                body,
                {"Inference-Header-Content-Length": str(len(doc)), "edgefleet-client-id": app},
            )
            with lock:
                statuses.append(status)
                if status == 503:
                    refusals.append(json.loads(answer)["error"])

    threads = [threading.Thread(target=call, args=(f"app-{i % 2}",)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert set(statuses) <= {200, 503}, statuses
    assert statuses.count(200) > 0 and refusals, statuses
    assert all("mobilenet" in why for why in refusals), refusals[:3]
    wait_for("the refusals counted", lambda: device.rejected("mobilenet") - before == len(refusals),
             timeout=10)  # fmt: skip
    served(device)


def test_announced_bodies_that_never_come_hold_no_budget(device: Device) -> None:
    # Two TCP connections announce the largest body each (64 MiB, together the 128 MiB every
    # body shares) and send none of it. Before the fix the agent reserved the budget by the
    # announcement: for 30 s every app on the unix socket, and every other client, got 503.
    holders = []
    try:
        for _ in range(2):
            sock = socket.create_connection(("127.0.0.1", device.port), timeout=10)
            sock.sendall(head("/v2/models/pair/infer", Content_Length=64 << 20,
                              Inference_Header_Content_Length=10))  # fmt: skip
            holders.append(sock)
        time.sleep(0.5)  # the agent has read both heads
        code, body = curl(device, "/v2/models/pair/infer", "--data-binary", pair_json().decode())
        assert code == 200, body
        status, _, answer = http(device.url("/v2/models/pair/infer"), pair_json())
        assert status == 200, answer
    finally:
        for sock in holders:
            sock.close()


def test_a_non_ascii_digit_length_is_a_400_not_a_crash(device: Device) -> None:
    # "²" (latin-1 0xb2) passes str.isdigit() and then fails int(): before the fix a 500 and a
    # traceback in the agent's log for each such request.
    for value in (b"\xb2", b"1\xb9", b"\xd9\xa1"):
        raw = (
            b"POST /v2/models/pair/infer HTTP/1.1\r\nHost: agent\r\nContent-Length: 2\r\n"
            b"Inference-Header-Content-Length: " + value + b"\r\n\r\n{}"
        )
        answer = raw_request(device, raw)
        assert answer.startswith(b"HTTP/1.1 400"), (value, answer[:300])
        assert b"not a byte count" in answer, answer
    served(device)


def test_clients_that_never_read_their_answers_are_cut(device: Device) -> None:
    # Each connection pipelines requests and reads nothing: its answers fill the socket and the
    # agent waits to write. Before the fix such a connection was held for ever, and 64 of them
    # (the listener's cap) locked every app out of the REST socket ("too many connections").
    request = b"GET /v2/models/pair HTTP/1.1\r\nHost: agent\r\n\r\n"
    stalled = []
    try:
        for _ in range(64):
            sock = socket.socket(socket.AF_UNIX)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(str(device.rest_socket))
            sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                for _ in range(20_000):
                    sock.send(request)
            stalled.append(sock)
        # The head deadline (10 s) and as long again for a stalled answer.
        wait_for("the agent to cut the stalled clients",
                 lambda: curl(device, "/v2/health/live")[0] == 200, timeout=40)  # fmt: skip
    finally:
        for sock in stalled:
            sock.close()
    served(device)


def ready(url: str) -> bool:
    return http(url)[0] == 200


@pytest.fixture
def default_places(tmp_path: Path, color_models: Path) -> Iterator[Device]:
    """An agent with the default places per model (2 workers + 32 waiting: more than the REST
    API's threads once held), serving ``pair`` and the slower ``heavy``."""
    server = start_server(tmp_path / "fleet", None)
    agent: Agent | None = None
    try:
        models = {"pair": color_models / "pair_float.tflite",
                  "heavy": color_models / "heavy_float.tflite"}  # fmt: skip
        for name, path in models.items():
            server.admin("models", "push", str(path), "--name", name, "--version", "1.0.0")
            server.admin("deploy", name, "1.0.0")
        port = free_port()
        agent = make_agent(tmp_path, "edge-places", server, checkin_s=1.0)
        text = agent.config.read_text()
        listen = f'socket = "oip.sock"\nrest_listen = "127.0.0.1:{port}"'
        agent.config.write_text(text.replace('socket = "oip.sock"', listen))
        agent.start()
        dev = Device(agent, port, models, 0)
        for name in models:
            url = dev.url(f"/v2/models/{name}/ready")
            wait_for(f"{name} over REST", functools.partial(ready, url), timeout=90)
        yield dev
    finally:
        if agent is not None and agent.proc is not None:
            agent.stop()
        server.proc.stop()


def test_a_rest_flood_on_one_model_does_not_hold_every_thread(default_places: Device) -> None:
    # 60 connections keep calls to `heavy` in flight. Its places (34) outnumbered the REST
    # API's 16 threads, so every thread waited in heavy's queue and a call to `pair` waited
    # behind the whole flood for a thread (issue 20's gRPC starvation, over REST).
    device = default_places
    image = np.zeros((1, 224, 224, 3), "<f4").tobytes()
    given = {"name": "image", "shape": [1, 224, 224, 3], "datatype": "FP32",
             "parameters": {"binary_data_size": len(image)}}  # fmt: skip
    doc = json.dumps({"inputs": [given]}).encode()
    stop = threading.Event()
    flooded: list[float] = []  # the flood's own calls that were served, in seconds

    def flood() -> None:
        while not stop.is_set():
            started = time.monotonic()
            code, _, _ = http(device.url("/v2/models/heavy/infer"), doc + image,
                              {"Inference-Header-Content-Length": str(len(doc))})  # fmt: skip
            if code == 200:
                flooded.append(time.monotonic() - started)

    flooders = [threading.Thread(target=flood, daemon=True) for _ in range(60)]
    for thread in flooders:
        thread.start()
    try:
        time.sleep(2)  # the flood is on
        took = []
        for _ in range(15):
            started = time.monotonic()
            code, _, body = http(device.url("/v2/models/pair/infer"), pair_json())  # same listener
            took.append(time.monotonic() - started)
            assert code == 200, body
    finally:
        stop.set()
        for thread in flooders:
            thread.join(30)
    # Judged against the flood's own calls in the same run, not a clock: before the fix a call
    # to pair waited for a thread behind the flood, as long as a heavy call (about 0.25 s
    # each); with a thread at once it takes a small part of what a flooded heavy call takes.
    pair_median, heavy_median = statistics.median(took), statistics.median(flooded)
    assert pair_median < heavy_median / 4, (took, heavy_median, len(flooded))
