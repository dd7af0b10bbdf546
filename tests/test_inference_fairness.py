"""One app flooding one model cannot refuse or starve another app's calls to another model, and
every refusal is counted (issue 20). The API runs in a process of its own; the flooder is
another process keeping hundreds of calls in flight."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest

from protos import inference_pb2 as pb
from protos import inference_pb2_grpc as pb_grpc
from tests.harness import REPO, start, wait_for

pytestmark = pytest.mark.slow

FLOODER = r"""
import sys, threading, time
import grpc, numpy as np
from protos import inference_pb2 as pb, inference_pb2_grpc as pb_grpc

socket, seconds, width = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
shape = [int(x) for x in sys.argv[5].split(",")]
metadata = [("edgefleet-client-id", sys.argv[6])] if len(sys.argv) > 6 else None
stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(f"unix:{socket}"))
request = pb.ModelInferRequest(model_name="heavy")
request.inputs.add(name=sys.argv[4], datatype="FP32", shape=shape)
request.raw_input_contents.append(np.zeros(shape, "<f4").tobytes())
counts = {}
lock = threading.Lock()
end = time.monotonic() + seconds
slots = threading.Semaphore(width)

def done(future):
    code = future.code()
    with lock:
        counts[code.name] = counts.get(code.name, 0) + 1
    slots.release()

while time.monotonic() < end:
    slots.acquire()
    stub.ModelInfer.future(request, timeout=30, metadata=metadata).add_done_callback(done)
for _ in range(width):
    slots.acquire()
print(counts, flush=True)
"""


def pair_request() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="pair")
    request.inputs.add(name="a", datatype="FP32", shape=[1, 4])
    request.inputs.add(name="b", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.extend([np.ones((1, 4), "<f4").tobytes()] * 2)
    return request


@dataclass
class Api:
    socket: Path
    metrics_port: int
    stub: pb_grpc.GRPCInferenceServiceStub
    heavy_input: tuple[str, str]  # name, shape as "1,2,3"

    def flood(self, seconds: float, width: int, client: str = "") -> subprocess.Popen[str]:
        name, shape = self.heavy_input
        args = [
            str(self.socket),
            str(seconds),
            str(width),
            name,
            shape,
            *([client] if client else []),
        ]
        return subprocess.Popen([sys.executable, "-c", FLOODER, *args], cwd=REPO,
                                stdout=subprocess.PIPE, text=True)  # fmt: skip

    def rejected(self) -> dict[str, int]:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        text = urllib.request.urlopen(url, timeout=10).read().decode()
        found = re.findall(
            r'^edgefleet_inference_rejected_total\{model="(\w+)"[^}]*\} (\d+)$', text, re.M
        )
        return {name: int(value) for name, value in found}


@pytest.fixture
def api(tmp_path: Path, color_models: Path) -> Iterator[Api]:
    for name in ("pair_float.tflite", "heavy_float.tflite"):
        shutil.copyfile(color_models / name, tmp_path / name)
    socket = tmp_path / "oip.sock"
    cmd = [
        sys.executable,
        "-m",
        "tests.tools.oip_serve",
        str(socket),
        f"pair={tmp_path / 'pair_float.tflite'}",
        f"heavy={tmp_path / 'heavy_float.tflite'}",
    ]
    proc = start(cmd, tmp_path / "api.log", cwd=REPO)
    wait_for("the API", lambda: "ready" in proc.output() or proc.popen.poll() is not None, 60)
    port = int(re.findall(r"ready (\d+)", proc.output())[0])
    channel = grpc.insecure_channel(f"unix:{socket}")
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    meta = stub.ModelMetadata(pb.ModelMetadataRequest(name="heavy"), timeout=10)
    shape = ",".join(str(d) for d in meta.inputs[0].shape)
    yield Api(socket, port, stub, (meta.inputs[0].name, shape))
    channel.close()
    proc.stop()


def test_a_flood_on_one_model_refuses_no_call_to_another(api: Api) -> None:
    flooder = api.flood(5, 300)  # short: a flood loads the machine other tests share
    try:
        time.sleep(1.5)  # the flood is on
        answers: dict[str, int] = {}
        for _ in range(50):
            try:
                api.stub.ModelInfer(pair_request(), timeout=10)
                answers["OK"] = answers.get("OK", 0) + 1
            except grpc.RpcError as exc:
                answers[exc.code().name] = answers.get(exc.code().name, 0) + 1
        out, _ = flooder.communicate(timeout=60)
        counted = api.rejected()
    finally:
        flooder.kill()
    flood = ast.literal_eval(out)
    print(f"other app: {answers}; flooder: {flood}; counted as rejected: {counted}")
    # Issue 20: 46 of these 50 calls were refused (gRPC's 128 calls in progress, all threads
    # held by the flooded model's queue).
    assert answers == {"OK": 50}, answers
    assert flood.get("RESOURCE_EXHAUSTED", 0) > 0, flood
    # Every refusal the flooder saw is in the metrics (issue 20: 130 of 300 refused, 0 counted).
    assert counted.get("heavy", 0) == flood["RESOURCE_EXHAUSTED"], (counted, flood)


def test_apps_that_name_themselves_share_a_flooded_model(api: Api) -> None:
    name, shape = api.heavy_input
    request = pb.ModelInferRequest(model_name="heavy")
    request.inputs.add(name=name, datatype="FP32", shape=[int(x) for x in shape.split(",")])
    request.raw_input_contents.append(np.zeros([int(x) for x in shape.split(",")], "<f4").tobytes())
    flooder = api.flood(6, 300, client="flooder")
    try:
        time.sleep(1.5)
        refused = served = 0
        started = time.monotonic()
        while served < 30 and time.monotonic() - started < 20:
            try:
                api.stub.ModelInfer(request, timeout=10,
                                    metadata=[("edgefleet-client-id", "camera")])  # fmt: skip
                served += 1
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc.details()
                refused += 1
                time.sleep(0.05)
        out, _ = flooder.communicate(timeout=60)
    finally:
        flooder.kill()
    flood = ast.literal_eval(out)
    print(f"camera: {served} served, {refused} refused; flooder: {flood}")
    # Half the model's places stay the camera's: refused at most while the flooder held them
    # all, before the camera's first call was seen.
    assert served == 30 and refused <= 3, (served, refused)
