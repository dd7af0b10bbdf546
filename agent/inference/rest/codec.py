"""KServe v2 / Triton REST bodies to and from the protocol's messages: JSON tensors, Triton's
binary-data extension (``Inference-Header-Content-Length``, ``binary_data_size``,
``binary_data``, ``binary_data_output``) and the classification parameter.

An infer body becomes a :class:`protos.inference_pb2.ModelInferRequest` with every input as raw
little-endian bytes, which :class:`agent.inference.serving.Serving` decodes as it decodes a gRPC
request; the answer goes back the other way. Pure: bytes and dicts in, bytes and dicts out.
Bad input raises :class:`BodyError`.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from google.protobuf.message import Message

from agent.inference.tensors import OIP_TO_DTYPE, as_values
from protos import inference_pb2 as pb

__all__ = [
    "SHM_OVER_REST",
    "BodyError",
    "OutputPlan",
    "encode_infer",
    "parse_infer",
    "to_json",
]

SHM_OVER_REST = (
    "shared memory is served over gRPC on the agent's unix socket only, not over REST; send "
    'the tensor in the body (JSON "data" or binary_data_size)'
)
MAX_TENSORS = 256  # inputs or requested outputs in one request
MAX_NAME = 256
MAX_DIMS = 16
MAX_PARAMETERS = 64
_SHM_KEYS = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset")
_BYTES = "BYTES"


class BodyError(Exception):
    """A REST body the agent cannot read (HTTP 400)."""


@dataclass
class OutputPlan:
    """How each output goes back: in the binary part of the body, or as JSON ``data``."""

    binary_default: bool = False
    binary: dict[str, bool] = field(default_factory=dict)

    def is_binary(self, name: str) -> bool:
        return self.binary.get(name, self.binary_default)


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BodyError(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def _list(value: Any, what: str, limit: int) -> list[Any]:
    if not isinstance(value, list):
        raise BodyError(f"{what} must be a JSON array, got {type(value).__name__}")
    if len(value) > limit:
        raise BodyError(f"{what} has {len(value)} entries; at most {limit}")
    return value


def _name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_NAME:
        raise BodyError(f"{what} must be a string of 1 to {MAX_NAME} characters")
    return value


def _parameters(raw: Any, what: str, into: Any) -> dict[str, Any]:
    """Copy a JSON parameters object into a protobuf parameters map (bool, int64, double or
    string, as the JSON value is); return it as given."""
    if raw is None:
        return {}
    params = _object(raw, f"{what} parameters")
    if len(params) > MAX_PARAMETERS:
        raise BodyError(f"{what} has {len(params)} parameters; at most {MAX_PARAMETERS}")
    for key, value in params.items():
        if len(key) > MAX_NAME:
            raise BodyError(f"{what} has a parameter name over {MAX_NAME} characters")
        if key in _SHM_KEYS:
            raise BodyError(f"{what}: {SHM_OVER_REST}")
        if isinstance(value, bool):
            into[key].bool_param = value
        elif isinstance(value, int):
            if not -(2**63) <= value < 2**63:
                raise BodyError(f"{what} parameter {key!r} = {value} is out of the int64 range")
            into[key].int64_param = value
        elif isinstance(value, float):
            into[key].double_param = value
        elif isinstance(value, str):
            into[key].string_param = value[:4096]
        else:
            raise BodyError(f"{what} parameter {key!r} must be a bool, number or string")
    return params


def _shape(value: Any, what: str) -> list[int]:
    dims = _list(value, f"{what} shape", MAX_DIMS)
    if not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**31 for d in dims):
        raise BodyError(f"{what} shape must be a list of non-negative integers, got {dims}")
    return dims


def _bytes_elements(data: list[Any], what: str) -> bytes:
    """BYTES elements (strings) as the protocol's length-prefixed bytes."""
    out = []
    for element in data:
        if not isinstance(element, str):
            raise BodyError(f"{what} data must be strings for BYTES")
        encoded = element.encode()
        out.append(struct.pack("<I", len(encoded)) + encoded)
    return b"".join(out)


def _json_data(data: Any, datatype: str, count: int, what: str) -> bytes:
    """JSON ``data`` (flat or nested, row-major) as raw little-endian bytes."""
    if not isinstance(data, list):
        raise BodyError(f"{what} data must be a JSON array")
    if datatype == _BYTES:
        flat = np.asarray(data, dtype=object).reshape(-1).tolist() if data else []
        if len(flat) != count:
            raise BodyError(f"{what} has {len(flat)} values for its shape's {count}")
        return _bytes_elements(flat, what)
    dtype = np.dtype(OIP_TO_DTYPE[datatype]).newbyteorder("<")
    try:
        array = as_values(data, dtype)
    except (ValueError, TypeError, OverflowError) as exc:
        raise BodyError(f"{what} data are not {datatype} values: {exc}") from exc
    if array.size != count:
        raise BodyError(f"{what} has {array.size} values for its shape's {count}")
    return array.tobytes()


def parse_infer(
    body: bytes, header_length: int | None, model_name: str, model_version: str = ""
) -> tuple[pb.ModelInferRequest, OutputPlan]:
    """An infer request's body (the JSON header, then binary tensors when ``header_length``
    says where the JSON ends) as a protocol request and the way its outputs go back.

    Raises:
        BodyError: malformed JSON, a field of the wrong type or size, binary sizes that do not
            add up, shared-memory parameters (gRPC only), an unknown datatype.
    """
    if header_length is None:
        header_length = len(body)
    elif not 0 < header_length <= len(body):
        raise BodyError(
            f"Inference-Header-Content-Length is {header_length}, the body has {len(body)} bytes"
        )
    try:
        # orjson: a request's tensors are tens of thousands of numbers (json: 4x the time).
        raw = orjson.loads(body[:header_length])
    except (ValueError, RecursionError) as exc:  # orjson.JSONDecodeError is a ValueError
        raise BodyError(f"the request is not valid JSON: {str(exc)[:200]}") from exc
    doc = _object(raw, "the request")
    request = pb.ModelInferRequest(model_name=model_name, model_version=model_version)
    if "id" in doc:
        request.id = _name(doc["id"], "id") if doc["id"] != "" else ""
    params = _parameters(doc.get("parameters"), "the request", request.parameters)
    binary_default = params.get("binary_data_output", False)
    if not isinstance(binary_default, bool):
        raise BodyError("parameter 'binary_data_output' must be a bool")
    request.parameters.pop("binary_data_output", None)
    binary = memoryview(body)[header_length:]
    position = 0
    for i, given in enumerate(_list(doc.get("inputs"), "inputs", MAX_TENSORS)):
        entry = _object(given, f"inputs[{i}]")
        name = _name(entry.get("name"), f"inputs[{i}] name")
        what = f"input {name!r}"
        datatype = entry.get("datatype")
        if datatype != _BYTES and datatype not in OIP_TO_DTYPE:
            known = ", ".join([*OIP_TO_DTYPE, _BYTES])
            raise BodyError(f"{what} has datatype {datatype!r}; known: {known}")
        shape = _shape(entry.get("shape"), what)
        tensor = request.inputs.add(name=name, datatype=datatype, shape=shape)
        size = _parameters(entry.get("parameters"), what, tensor.parameters).get("binary_data_size")
        tensor.parameters.pop("binary_data_size", None)
        if size is not None:
            if "data" in entry:
                raise BodyError(f"{what} has both data and binary_data_size")
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise BodyError(f"{what} binary_data_size must be a non-negative integer")
            if position + size > len(binary):
                raise BodyError(
                    f"{what} binary_data_size {size} runs past the body's binary part "
                    f"({len(binary) - position} bytes left)"
                )
            request.raw_input_contents.append(bytes(binary[position : position + size]))
            position += size
        elif "data" in entry:
            count = math.prod(shape)
            request.raw_input_contents.append(_json_data(entry["data"], datatype, count, what))
        else:
            raise BodyError(f"{what} has neither data nor binary_data_size")
    if not request.inputs:
        raise BodyError("the request has no inputs")
    if position != len(binary):
        raise BodyError(
            f"the body has {len(binary) - position} bytes after the last binary input "
            "(Inference-Header-Content-Length or binary_data_size is wrong)"
        )
    plan = OutputPlan(binary_default=binary_default)
    for i, wanted in enumerate(_list(doc.get("outputs", []), "outputs", MAX_TENSORS)):
        entry = _object(wanted, f"outputs[{i}]")
        name = _name(entry.get("name"), f"outputs[{i}] name")
        output = request.outputs.add(name=name)
        given = _parameters(entry.get("parameters"), f"output {name!r}", output.parameters)
        output.parameters.pop("binary_data", None)
        if "binary_data" in given:
            if not isinstance(given["binary_data"], bool):
                raise BodyError(f"output {name!r} parameter 'binary_data' must be a bool")
            plan.binary[name] = given["binary_data"]
    return request, plan


def _output_bytes(response: pb.ModelInferResponse, index: int) -> bytes:
    """An output's raw bytes: from raw_output_contents, or typed contents (a cloud's answer)."""
    if index < len(response.raw_output_contents):
        return response.raw_output_contents[index]
    tensor = response.outputs[index]
    if tensor.datatype == _BYTES:
        return b"".join(struct.pack("<I", len(b)) + b for b in tensor.contents.bytes_contents)
    dtype = np.dtype(OIP_TO_DTYPE.get(tensor.datatype, "float32")).newbyteorder("<")
    contents = tensor.contents
    for values in (
        contents.fp32_contents,
        contents.fp64_contents,
        contents.int_contents,
        contents.int64_contents,
        contents.uint_contents,
        contents.uint64_contents,
        contents.bool_contents,
    ):
        if len(values):
            return np.asarray(values).astype(dtype).tobytes()
    return b""


def _split_bytes(raw: bytes) -> list[str]:
    """Length-prefixed BYTES elements as strings (invalid UTF-8 replaced)."""
    out, position = [], 0
    while position + 4 <= len(raw):
        (size,) = struct.unpack_from("<I", raw, position)
        out.append(raw[position + 4 : position + 4 + size].decode(errors="replace"))
        position += 4 + size
    return out


def _parameter_value(value: pb.InferParameter) -> Any:
    kind = value.WhichOneof("parameter_choice")
    return getattr(value, kind) if kind else None


def encode_infer(response: pb.ModelInferResponse, plan: OutputPlan) -> tuple[bytes, int | None]:
    """The response body and, when outputs travel in binary, the length of its JSON part (the
    ``Inference-Header-Content-Length`` header)."""
    outputs, chunks = [], []
    for index, tensor in enumerate(response.outputs):
        raw = _output_bytes(response, index)
        entry: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.shape),
        }
        if plan.is_binary(tensor.name):
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        elif tensor.datatype == _BYTES:
            entry["data"] = _split_bytes(raw)
        else:
            dtype = np.dtype(OIP_TO_DTYPE.get(tensor.datatype, "float32")).newbyteorder("<")
            entry["data"] = np.frombuffer(raw, dtype=dtype).astype(dtype.newbyteorder("="))
        outputs.append(entry)
    doc: dict[str, Any] = {"model_name": response.model_name}
    if response.model_version:
        doc["model_version"] = response.model_version
    if response.id:
        doc["id"] = response.id
    if response.parameters:
        doc["parameters"] = {k: _parameter_value(v) for k, v in response.parameters.items()}
    doc["outputs"] = outputs
    # Arrays are written by orjson itself (no Python float per value); NaN becomes null.
    header = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)


def to_json(message: Message) -> Any:
    """A protocol message as Triton's REST JSON: field names as in the .proto, 64-bit integers
    as numbers (not the strings of protobuf's JSON mapping), enums by name, every scalar (zeros
    too, as Triton gives them), sub-messages that are set, oneof members that are chosen."""
    out: dict[str, Any] = {}
    for descriptor in message.DESCRIPTOR.fields:
        value = getattr(message, descriptor.name)
        if descriptor.message_type is not None and descriptor.message_type.GetOptions().map_entry:
            value_field = descriptor.message_type.fields_by_name["value"]
            if value:
                out[descriptor.name] = {
                    k: to_json(v) if value_field.message_type is not None else v
                    for k, v in value.items()
                }
        elif descriptor.is_repeated:
            if value:
                out[descriptor.name] = [_value(descriptor, v) for v in value]
        elif descriptor.message_type is not None or descriptor.containing_oneof is not None:
            if message.HasField(descriptor.name):
                out[descriptor.name] = _value(descriptor, value)
        else:
            out[descriptor.name] = _value(descriptor, value)
    return out


def _value(descriptor: Any, value: Any) -> Any:
    if descriptor.message_type is not None:
        return to_json(value)
    if descriptor.enum_type is not None:
        return descriptor.enum_type.values_by_number[value].name
    return value
