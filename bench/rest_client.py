"""A keep-alive KServe v2 REST client for the benchmarks (stdlib http.client, over TCP or a unix
socket): one infer call with JSON tensors, or with Triton's binary-data extension."""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Callable

import numpy as np

from agent.inference.tensors import DTYPE_TO_OIP

__all__ = ["rest_infer"]


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("agent", timeout=30)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(30)
        sock.connect(self._path)
        self.sock = sock


def rest_infer(
    where: str, model: str, name: str, array: np.ndarray, *, binary: bool
) -> Callable[[], bytes]:
    """A call that sends one infer request to ``where`` ("unix:/path" or "host:port") on one
    kept-alive connection and returns the answer's body.

    Raises (from the call):
        RuntimeError: the answer is not 200.
    """
    conn: http.client.HTTPConnection
    if where.startswith("unix:"):
        conn = _UnixConnection(where.removeprefix("unix:"))
    else:
        host, _, port = where.rpartition(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
    tensor = {"name": name, "shape": list(array.shape), "datatype": DTYPE_TO_OIP[array.dtype.name]}
    headers = {"Content-Type": "application/json"}
    if binary:
        doc = json.dumps({"inputs": [tensor | {"parameters": {"binary_data_size": array.nbytes}}],
                          "parameters": {"binary_data_output": True}}).encode()  # fmt: skip
        body = doc + array.tobytes()
        headers["Inference-Header-Content-Length"] = str(len(doc))
    else:
        body = json.dumps({"inputs": [tensor | {"data": array.ravel().tolist()}]}).encode()
    path = f"/v2/models/{model}/infer"

    def call() -> bytes:
        conn.request("POST", path, body=body, headers=headers)
        answer = conn.getresponse()
        data = answer.read()
        if answer.status != 200:
            raise RuntimeError(f"{path}: {answer.status} {data[:200]!r}")
        return data

    return call
