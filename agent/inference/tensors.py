"""OIP v2 tensors on the wire: datatypes, decoding a request's inputs (typed contents, raw bytes
or shared memory; real values for quantized inputs) into the arrays a model takes, and the
metadata of a tensor. Pure of gRPC servers: a bad request raises :class:`RequestError` with the
status it maps to."""

from __future__ import annotations

import struct
import weakref
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from agent.inference.engine import LoadedModel
from agent.inference.modelfile import TensorInfo
from agent.inference.shm import SharedMemoryRegistry
from agent.inference.validation import InputRule
from protos import inference_pb2 as pb

__all__ = [
    "DTYPE_TO_OIP",
    "OIP_TO_DTYPE",
    "RequestError",
    "as_values",
    "classification",
    "classify",
    "decode_inputs",
    "quantize",
    "shm_range",
    "tensor_metadata",
]

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


def tensor_metadata(
    tensor: TensorInfo, shape: tuple[int, ...] | None = None
) -> pb.ModelMetadataResponse.TensorMetadata:
    return pb.ModelMetadataResponse.TensorMetadata(
        name=tensor.name,
        datatype=DTYPE_TO_OIP.get(tensor.dtype, tensor.dtype.upper()),
        shape=list(tensor.shape if shape is None else shape),
    )


class RequestError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def quantize(values: np.ndarray, tensor: TensorInfo) -> np.ndarray:
    """Real values to the tensor's integer encoding: round(x / scale) + zero_point, clipped."""
    info = np.iinfo(np.dtype(tensor.dtype))
    q = np.round(values.astype(np.float64) / tensor.scale) + tensor.zero_point
    return np.clip(q, info.min, info.max).astype(np.dtype(tensor.dtype))


def _accepts_float(tensor: TensorInfo) -> bool:
    return tensor.quantized and tensor.dtype in ("uint8", "int8", "int16")


def shm_range(parameters: Any) -> tuple[str, int, int] | None:
    """(region, offset, byte_size) when a tensor's parameters point into shared memory.

    Raises:
        RequestError: a parameter of another type (as Triton: one read as 0 read the wrong bytes).
    """
    if "shared_memory_region" not in parameters:
        return None
    region = _shm_param(parameters, "shared_memory_region", "string_param", "")
    offset = _shm_param(parameters, "shared_memory_offset", "int64_param", 0)
    size = _shm_param(parameters, "shared_memory_byte_size", "int64_param", -1)
    return region, offset, size


def _shm_param(parameters: Any, key: str, kind: str, default: Any) -> Any:
    if key not in parameters:
        return default
    if parameters[key].WhichOneof("parameter_choice") != kind:
        raise RequestError(
            grpc.StatusCode.INVALID_ARGUMENT, f"parameter {key!r} must be given as {kind}"
        )
    return getattr(parameters[key], kind)


@dataclass(frozen=True)
class _InputSpec:
    """What decoding one input needs, computed once per loaded model."""

    index: int
    tensor: TensorInfo
    dtype: np.dtype[Any]
    oip: str
    count: int
    accepts_float: bool


_SPECS: weakref.WeakKeyDictionary[LoadedModel, dict[str, _InputSpec]] = weakref.WeakKeyDictionary()
_LE_FLOAT32 = np.dtype("<f4")


def _specs(model: LoadedModel) -> dict[str, _InputSpec]:
    specs = _SPECS.get(model)
    if specs is None:
        specs = {
            t.name: _InputSpec(
                index=i,
                tensor=t,
                dtype=np.dtype(t.dtype),
                oip=DTYPE_TO_OIP.get(t.dtype, t.dtype.upper()),
                count=int(np.prod(t.shape)) if t.shape else 1,
                accepts_float=_accepts_float(t),
            )
            for i, t in enumerate(model.info.inputs)
        }
        _SPECS[model] = specs
    return specs


def decode_inputs(
    request: pb.ModelInferRequest,
    model: LoadedModel,
    shm: SharedMemoryRegistry,
    rule: InputRule | None = None,
) -> tuple[list[np.ndarray], bool]:
    """The request's inputs as arrays in graph order, and whether the client sent real values
    for quantized inputs (then outputs go back dequantized too). ``rule``: the model's input
    validation, applied to each input as given (before real values are quantized).

    Raises:
        RequestError: with INVALID_ARGUMENT for any mismatch.
        InputError: a shared-memory range that is not registered or out of bounds.
        InvalidInputError: an input ``rule`` refuses.
    """
    specs = _specs(model)
    given_inputs = request.inputs
    if len(given_inputs) != len(specs):
        raise RequestError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"model {model.name} takes {len(specs)} input(s), request has {len(given_inputs)}",
        )
    raw = request.raw_input_contents
    in_shm = ["shared_memory_region" in g.parameters for g in given_inputs]
    inline = in_shm.count(False)
    if len(raw) and len(raw) != inline:
        raise RequestError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"raw_input_contents has {len(raw)} entries for {inline} inline inputs",
        )
    raw_position = 0
    arrays: list[np.ndarray | None] = [None] * len(specs)
    real_values = False
    for given, from_shm in zip(given_inputs, in_shm, strict=True):
        spec = specs.get(given.name)
        if spec is None:
            names = ", ".join(sorted(specs))
            raise RequestError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"model {model.name} has no input {given.name!r} (inputs: {names})",
            )
        as_float = False
        if given.datatype != spec.oip:
            if given.datatype == "FP32" and spec.accepts_float:
                as_float = real_values = True
            else:
                also = " (or FP32 real values)" if spec.accepts_float else ""
                raise RequestError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"input {given.name!r} must be {spec.oip}{also}, request says {given.datatype}",
                )
        shape = spec.tensor.shape
        if tuple(given.shape) != shape:
            raise RequestError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"input {given.name!r} must have shape {list(shape)}, "
                f"request says {list(given.shape)}",
            )
        wire = _LE_FLOAT32 if as_float else spec.dtype.newbyteorder("<")
        needed = spec.count * wire.itemsize
        if from_shm:
            region, offset, size = shm_range(given.parameters) or ("", 0, -1)
            if size != needed:
                raise RequestError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"input {given.name!r} needs {needed} bytes of shared memory, "
                    f"request says {size}",
                )
            array = shm.read(region, offset, size).view(wire)
        elif len(raw):
            data = raw[raw_position]
            raw_position += 1
            if len(data) != needed:
                raise RequestError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"input {given.name!r} needs {needed} raw bytes, got {len(data)}",
                )
            array = np.frombuffer(data, dtype=wire)
        else:
            field_name = _CONTENTS_FIELD.get(given.datatype)
            values = getattr(given.contents, field_name) if field_name else []
            if len(values) != spec.count:
                raise RequestError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"input {given.name!r} needs {spec.count} values in contents.{field_name}, "
                    f"got {len(values)}",
                )
            try:
                array = as_values(values, wire)
            except (ValueError, TypeError, OverflowError) as exc:
                raise RequestError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"input {given.name!r}: contents.{field_name} are not {given.datatype} "
                    f"values: {exc}",
                ) from exc
        array = array.reshape(shape)
        if rule is not None:
            rule.check(model.name, given.name, array, spec.tensor)
        if as_float:
            array = quantize(array, spec.tensor)
        arrays[spec.index] = array.astype(spec.dtype, copy=False)
    return [a for a in arrays if a is not None], real_values


def classification(parameters: Any) -> int:
    """The class count a requested output's ``classification`` parameter asks for (0: none).

    Raises:
        RequestError: not a positive int64_param.
    """
    if "classification" not in parameters:
        return 0
    if parameters["classification"].WhichOneof("parameter_choice") != "int64_param":
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           "parameter 'classification' must be given as int64_param")  # fmt: skip
    count = int(parameters["classification"].int64_param)
    if count <= 0:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"classification asks for {count} classes; give at least 1")  # fmt: skip
    return count


def classify(array: np.ndarray, count: int, name: str) -> tuple[list[int], bytes]:
    """Triton's classification extension: the ``count`` highest values of each batch row as
    BYTES elements "value:index", and the response shape ([batch, count], or [count] for an
    output without a batch dimension); returns (shape, raw contents, length-prefixed)."""
    rows = array.reshape(array.shape[0], -1) if array.ndim > 1 else array.reshape(1, -1)
    classes = rows.shape[1]
    if count > classes:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"output {name!r} has {classes} classes; classification asks for "
                           f"{count}")  # fmt: skip
    elements = []
    for row in rows:
        for index in np.argsort(-row.astype(np.float64), kind="stable")[:count]:
            value = row[index].item()
            text = f"{value:g}" if isinstance(value, float) else str(value)
            elements.append(f"{text}:{int(index)}".encode())
    raw = b"".join(struct.pack("<I", len(e)) + e for e in elements)
    return ([rows.shape[0], count] if array.ndim > 1 else [count]), raw


def as_values(values: Any, dtype: np.dtype[Any]) -> np.ndarray:
    """``values`` (a list, nested lists, a protobuf repeated field) as an array of ``dtype``,
    refusing what the type cannot hold instead of wrapping it: numpy 1.24 (Debian 12's, which
    the bookworm package runs on) turns 999 into a uint8 231 with only a warning, and every
    numpy wraps when it casts an int32 array (a request's int_contents) to uint8.

    Raises:
        ValueError: a number outside the type's range, a non-finite number for an integer
            type, or values that are not numbers of one shape.
    """
    probe = np.asarray(values)
    if dtype.kind in "iu" and probe.size and probe.dtype.kind in "iuf":
        if probe.dtype.kind == "f" and not np.isfinite(probe).all():
            raise ValueError(f"a value is not a finite number, which {dtype.name} cannot hold")
        info = np.iinfo(dtype)
        low, high = probe.min(), probe.max()
        if low < info.min or high > info.max:
            bad = high if high > info.max else low
            raise ValueError(f"{bad} is out of range for {dtype.name} ({info.min}..{info.max})")
    if probe.dtype.kind == "O":  # Python ints beyond 64 bits: the conversion decides
        return np.asarray(values, dtype=dtype)
    return probe.astype(dtype)
