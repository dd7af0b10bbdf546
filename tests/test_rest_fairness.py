"""Fair sharing of one model between apps across transports: one app floods a model over REST,
another calls the same model over REST (the same listener) and over gRPC. Apps name themselves
with ``edgefleet-client-id`` (gRPC metadata, REST header); the model's places are shared by
client in the engine whatever the transport, and REST's own per-model threads must not queue
the second app behind the whole flood before the engine sees it."""

from __future__ import annotations

import json
import statistics
import threading
import time

import numpy as np
import pytest

from tests.oip import pb, stub
from tests.test_rest import Device, default_places, http

pytestmark = pytest.mark.slow

__all__ = ["default_places"]  # the fixture, used by name

IMAGE = np.zeros((1, 224, 224, 3), "<f4").tobytes()
GIVEN = {"name": "image", "shape": [1, 224, 224, 3], "datatype": "FP32",
         "parameters": {"binary_data_size": len(IMAGE)}}  # fmt: skip
DOC = json.dumps({"inputs": [GIVEN]}).encode()


def rest_heavy(device: Device, client: str) -> int:
    headers = {"Inference-Header-Content-Length": str(len(DOC)), "edgefleet-client-id": client}
    return http(device.url("/v2/models/heavy/infer"), DOC + IMAGE, headers)[0]


def grpc_heavy(device: Device, client: str) -> None:
    request = pb.ModelInferRequest(model_name="heavy")
    request.inputs.add(name="image", datatype="FP32", shape=[1, 224, 224, 3])
    request.raw_input_contents.append(IMAGE)
    stub(device.agent.socket).ModelInfer(
        request, timeout=60, metadata=[("edgefleet-client-id", client)]
    )


def test_an_app_flooding_a_model_over_rest_leaves_another_app_its_share(
    default_places: Device,
) -> None:
    device = default_places
    stop = threading.Event()
    flooded: list[float] = []  # the flood's calls that were served, in seconds

    def flood() -> None:
        while not stop.is_set():
            started = time.monotonic()
            if rest_heavy(device, "flooder") == 200:
                flooded.append(time.monotonic() - started)

    flooders = [threading.Thread(target=flood, daemon=True) for _ in range(48)]
    for thread in flooders:
        thread.start()
    over_rest, over_grpc = [], []
    try:
        time.sleep(2)  # the flood is on
        for _ in range(8):
            started = time.monotonic()
            assert rest_heavy(device, "other") == 200
            over_rest.append(time.monotonic() - started)
            started = time.monotonic()
            grpc_heavy(device, "other")
            over_grpc.append(time.monotonic() - started)
    finally:
        stop.set()
        for thread in flooders:
            thread.join(60)
    rest_median, grpc_median = statistics.median(over_rest), statistics.median(over_grpc)
    flood_median = statistics.median(flooded)
    # Judged against the flood's own calls in the same run. Before the fix the other app's REST
    # call waited in REST's per-model threads behind the flood's whole backlog: as long as a
    # flooded call (0.96 to 1.05 of it, in six runs; 2 to 3.6 times its gRPC call). Now it
    # waits for a share of the engine's queue, as over gRPC (0.26 to 0.44 of a flooded call).
    assert rest_median < 0.6 * flood_median, (over_rest, flood_median, len(flooded))
    assert rest_median < 2 * grpc_median + 0.05, (over_rest, over_grpc, flood_median)
