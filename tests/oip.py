"""A minimal OIP v2 client on our own stubs, for tests that are not about tritonclient."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np

from agent.inference.oip import DTYPE_TO_OIP, OIP_TO_DTYPE
from protos import inference_pb2 as pb
from protos import inference_pb2_grpc as pb_grpc

__all__ = ["infer", "pb", "stub"]


def stub(socket: Path) -> pb_grpc.GRPCInferenceServiceStub:
    """A stub on the agent's unix socket."""
    return pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(f"unix:{socket}"))


def infer(
    socket: Path, model: str, name: str, array: np.ndarray
) -> tuple[np.ndarray, pb.ModelInferResponse]:
    """Send one input as raw bytes; return the first output and the whole response."""
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name=name, datatype=DTYPE_TO_OIP[array.dtype.name], shape=list(array.shape))
    request.raw_input_contents.append(array.tobytes())
    response = stub(socket).ModelInfer(request, timeout=10)
    out = response.outputs[0]
    data = np.frombuffer(response.raw_output_contents[0], dtype=OIP_TO_DTYPE[out.datatype])
    return data.reshape(tuple(out.shape)), response
