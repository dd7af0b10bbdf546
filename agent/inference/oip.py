"""Open Inference Protocol v2 over gRPC, served from the agent's loaded models.

Standard clients (tritonclient, KServe/MLServer clients) call this on the agent's unix socket or
TCP port. Tensors travel as ``raw_input_contents``/``raw_output_contents`` (little-endian bytes)
or typed ``contents``; responses say which path served them in their parameters.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from agent import __version__
from agent.errors import InferenceError, InputError
from agent.inference.engine import Engine, LoadedModel
from agent.inference.modelfile import TensorInfo
from protos import inference_pb2 as pb
from protos import inference_pb2_grpc as pb_grpc

__all__ = ["DTYPE_TO_OIP", "InferenceServicer", "create_server"]

log = logging.getLogger(__name__)

DTYPE_TO_OIP = {
    "bool": "BOOL",
    "uint8": "UINT8",
    "uint16": "UINT16",
    "uint32": "UINT32",
    "uint64": "UINT64",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "float16": "FP16",
    "float32": "FP32",
    "float64": "FP64",
}
OIP_TO_DTYPE = {v: k for k, v in DTYPE_TO_OIP.items()}

# Which InferTensorContents field carries each OIP datatype (per the spec).
_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def _tensor_metadata(tensor: TensorInfo) -> pb.ModelMetadataResponse.TensorMetadata:
    return pb.ModelMetadataResponse.TensorMetadata(
        name=tensor.name,
        datatype=DTYPE_TO_OIP.get(tensor.dtype, tensor.dtype.upper()),
        shape=list(tensor.shape),
    )


class _AbortError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _decode_inputs(request: pb.ModelInferRequest, model: LoadedModel) -> list[np.ndarray]:
    expected = {t.name: (i, t) for i, t in enumerate(model.info.inputs)}
    if len(request.inputs) != len(expected):
        raise _AbortError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"model {model.name} takes {len(expected)} input(s), request has {len(request.inputs)}",
        )
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise _AbortError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs",
        )
    arrays: list[np.ndarray | None] = [None] * len(expected)
    for position, given in enumerate(request.inputs):
        if given.name not in expected:
            names = ", ".join(sorted(expected))
            raise _AbortError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"model {model.name} has no input {given.name!r} (inputs: {names})",
            )
        index, tensor = expected[given.name]
        want = DTYPE_TO_OIP.get(tensor.dtype)
        if given.datatype != want:
            raise _AbortError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"input {given.name!r} must be {want}, request says {given.datatype}",
            )
        if tuple(given.shape) != tensor.shape:
            raise _AbortError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"input {given.name!r} must have shape {list(tensor.shape)}, "
                f"request says {list(given.shape)}",
            )
        dtype = np.dtype(tensor.dtype).newbyteorder("<")
        count = int(np.prod(tensor.shape)) if tensor.shape else 1
        if raw:
            data = raw[position]
            if len(data) != count * dtype.itemsize:
                raise _AbortError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"input {given.name!r} needs {count * dtype.itemsize} raw bytes, "
                    f"got {len(data)}",
                )
            array = np.frombuffer(data, dtype=dtype)
        else:
            field_name = _CONTENTS_FIELD.get(given.datatype)
            values = getattr(given.contents, field_name) if field_name else []
            if len(values) != count:
                raise _AbortError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"input {given.name!r} needs {count} values in contents.{field_name}, "
                    f"got {len(values)}",
                )
            array = np.asarray(values).astype(dtype)
        arrays[index] = array.astype(np.dtype(tensor.dtype), copy=False).reshape(tensor.shape)
    return [a for a in arrays if a is not None]


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """OIP v2 handlers over an :class:`Engine`."""

    def __init__(self, engine: Engine, *, is_ready: Callable[[], bool] | None = None) -> None:
        self._engine = engine
        self._is_ready = is_ready or (lambda: bool(engine.models()))

    def ServerLive(self, request: pb.ServerLiveRequest, context: Any) -> pb.ServerLiveResponse:  # noqa: N802
        return pb.ServerLiveResponse(live=True)

    def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:  # noqa: N802
        return pb.ServerReadyResponse(ready=self._is_ready())

    def ServerMetadata(  # noqa: N802
        self, request: pb.ServerMetadataRequest, context: Any
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="edgefleet-agent", version=__version__, extensions=[])

    def _model(self, name: str, version: str, context: Any) -> LoadedModel:
        model = self._engine.get(name)
        if model is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"model {name!r} is not loaded on this device")
        assert model is not None  # noqa: S101 - abort raises; this informs the type checker
        if version and version != model.version:
            context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"model {name!r} version {version!r} is not loaded (loaded: {model.version})",
            )
        return model

    def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:  # noqa: N802
        model = self._engine.get(request.name)
        ready = model is not None and (not request.version or request.version == model.version)
        return pb.ModelReadyResponse(ready=ready)

    def ModelMetadata(  # noqa: N802
        self, request: pb.ModelMetadataRequest, context: Any
    ) -> pb.ModelMetadataResponse:
        model = self._model(request.name, request.version, context)
        return pb.ModelMetadataResponse(
            name=model.name,
            versions=[model.version],
            platform="tensorflow_lite",
            inputs=[_tensor_metadata(t) for t in model.info.inputs],
            outputs=[_tensor_metadata(t) for t in model.info.outputs],
        )

    def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:  # noqa: N802
        model = self._model(request.model_name, request.model_version, context)
        try:
            inputs = _decode_inputs(request, model)
            outputs = model.infer(inputs)
        except _AbortError as exc:
            context.abort(exc.code, exc.message)
        except InputError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except InferenceError as exc:
            log.warning("inference failed: %s", exc)
            context.abort(grpc.StatusCode.INTERNAL, str(exc))
        wanted = {o.name for o in request.outputs}
        known = {t.name for t in model.info.outputs}
        unknown = wanted - known
        if unknown:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"model {model.name} has no output(s) {sorted(unknown)} (outputs: {sorted(known)})",
            )
        response = pb.ModelInferResponse(
            model_name=model.name, model_version=model.version, id=request.id
        )
        response.parameters["edgefleet.path"].string_param = "local"
        response.parameters["edgefleet.backend"].string_param = model.backend
        for tensor, array in zip(model.info.outputs, outputs, strict=True):
            if wanted and tensor.name not in wanted:
                continue
            response.outputs.add(
                name=tensor.name,
                datatype=DTYPE_TO_OIP.get(tensor.dtype, tensor.dtype.upper()),
                shape=list(array.shape),
            )
            response.raw_output_contents.append(
                np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
            )
        return response


def create_server(
    engine: Engine,
    *,
    socket_path: Path | None = None,
    tcp_address: str | None = None,
    max_workers: int = 4,
    is_ready: Callable[[], bool] | None = None,
) -> tuple[grpc.Server, int | None]:
    """Build (not start) the OIP v2 server; return it and the bound TCP port, if any.

    Raises:
        OSError: a listener could not be bound.
    """
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="oip"),
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ],
    )
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(
        InferenceServicer(engine, is_ready=is_ready), server
    )
    port: int | None = None
    if socket_path is not None:
        socket_path.parent.mkdir(parents=True, exist_ok=True)
        if socket_path.is_socket():
            socket_path.unlink()  # left by a previous run that was killed
        if server.add_insecure_port(f"unix:{socket_path}") == 0:
            raise OSError(f"cannot listen on unix socket {socket_path}")
    if tcp_address:
        port = server.add_insecure_port(tcp_address)
        if port == 0:
            raise OSError(f"cannot listen on {tcp_address}")
    return server, port
