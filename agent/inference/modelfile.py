"""Read a .tflite model without executing it: tensors, quantization, operators, Edge TPU ops.

Used by the agent (before loading anything) and by the fleet server (when a model is pushed), so
that both sides agree on what a model file is and what it requires. Only LiteRT's bundled
flatbuffers schema is needed; no interpreter is created.
"""

from __future__ import annotations

import errno
import mmap
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from agent.errors import ModelFileError, RuntimeMissingError

__all__ = [
    "EDGETPU_CUSTOM_OP",
    "MAX_MODEL_BYTES",
    "ModelInfo",
    "SignatureInfo",
    "TensorInfo",
    "inspect_model_bytes",
    "inspect_model_file",
    "max_known_op_code",
    "open_model_file",
]

EDGETPU_CUSTOM_OP = "edgetpu-custom-op"
MAX_MODEL_BYTES = 512 * 1024 * 1024  # larger than any model an edge device should run
_TFLITE_IDENTIFIER = b"TFL3"
_MAX_TENSORS = 1_000_000


@dataclass(frozen=True)
class TensorInfo:
    """One graph input or output as the file declares it."""

    name: str
    dtype: str  # numpy dtype name: "uint8", "int8", "float32", ...
    shape: tuple[int, ...]
    scale: float  # 0.0 when not quantized
    zero_point: int

    @property
    def quantized(self) -> bool:
        """True when the tensor carries a single (per-tensor) affine quantization."""
        return self.scale != 0.0


@dataclass(frozen=True)
class SignatureInfo:
    """A named entry point (SignatureDef): its key and the names of its inputs and outputs."""

    key: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


@dataclass(frozen=True)
class ModelInfo:
    """What a model file is and what it needs, read from the file alone."""

    size: int
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    builtin_ops: tuple[str, ...]
    custom_ops: tuple[str, ...]
    description: str
    signatures: tuple[SignatureInfo, ...] = ()
    activation_bytes: int = 0  # bytes of non-constant tensors: what one interpreter allocates
    weight_dtypes: tuple[str, ...] = ()  # dtypes of the constant tensors
    # dtypes of the tensors its operators compute, but for its outputs
    activation_dtypes: tuple[str, ...] = ()
    max_op_code: int = 0  # the highest builtin operator code used: the runtime must know it

    @property
    def edgetpu(self) -> bool:
        """True when the model was compiled for the Edge TPU and cannot run on a CPU alone."""
        return EDGETPU_CUSTOM_OP in self.custom_ops

    @property
    def quantization(self) -> str:
        """What kind of variant this is, from how it computes: "edgetpu", "full_int8" (int8
        weights and activations, whatever its inputs and outputs: a quantizing first op, a
        dequantizing last one or an int64 argmax do not make it another kind), "int16x8",
        "dynamic_int8" (int8 weights, float activations: dynamic-range or weight-only),
        "float16" (float16 weights) or "float32"."""
        if self.edgetpu:
            return "edgetpu"
        index_types = {"int32", "int64", "bool"}  # biases, shapes, indices, argmax, masks
        weights = set(self.weight_dtypes) - index_types
        computed = set(self.activation_dtypes) - index_types
        if not computed:  # a one-op graph: its inputs and outputs are all it computes
            computed = {t.dtype for t in (*self.inputs, *self.outputs)} - index_types
        if "int16" in computed and weights <= {"int8", "int16"}:
            return "int16x8"
        if computed <= {"int8", "uint8"} and weights <= {"int8", "uint8"}:
            return "full_int8"
        if "float16" in weights:
            return "float16"
        if weights & {"int8", "uint8"}:
            return "dynamic_int8"
        return "float32"


_TYPE_TO_DTYPE = {
    "FLOAT32": "float32",
    "FLOAT16": "float16",
    "FLOAT64": "float64",
    "INT32": "int32",
    "UINT8": "uint8",
    "INT64": "int64",
    "STRING": "object",
    "BOOL": "bool",
    "INT16": "int16",
    "INT8": "int8",
    "UINT32": "uint32",
    "UINT16": "uint16",
    "UINT64": "uint64",
}


def _schema() -> Any:
    try:
        from ai_edge_litert import schema_py_generated  # noqa: PLC0415
    except ImportError as exc:  # pragma: no cover - depends on the device's install
        raise RuntimeMissingError(
            "reading .tflite files needs ai-edge-litert: pip install 'edgefleet[agent]'"
        ) from exc
    return schema_py_generated


def _enum_names(enum_cls: type) -> dict[int, str]:
    return {v: k for k, v in vars(enum_cls).items() if isinstance(v, int) and k.isupper()}


def _tensor_info(schema: Any, subgraph: Any, index: int, type_names: dict[int, str]) -> TensorInfo:
    tensor = subgraph.Tensors(index)
    if tensor is None:
        raise ModelFileError(f"tensor {index} is missing from the graph")
    raw_name = tensor.Name()
    name = raw_name.decode("utf-8", "replace") if raw_name else f"tensor_{index}"
    type_name = type_names.get(tensor.Type(), f"type{tensor.Type()}")
    dtype = _TYPE_TO_DTYPE.get(type_name, type_name.lower())
    shape = tuple(int(d) for d in tensor.ShapeAsNumpy()) if tensor.ShapeLength() else ()
    scale, zero_point = 0.0, 0
    quant = tensor.Quantization()
    if quant is not None and quant.ScaleLength() == 1:
        scale = float(quant.Scale(0))
        zero_point = int(quant.ZeroPoint(0)) if quant.ZeroPointLength() else 0
    return TensorInfo(name=name, dtype=dtype, shape=shape, scale=scale, zero_point=zero_point)


def inspect_model_bytes(data: bytes) -> ModelInfo:
    """Parse a TFLite flatbuffer and describe it.

    Raises:
        ModelFileError: the bytes are not a TFLite model, or are truncated or corrupt.
    """
    if len(data) > MAX_MODEL_BYTES:
        raise ModelFileError(f"model is {len(data)} bytes; the limit is {MAX_MODEL_BYTES}")
    if len(data) < 8 or data[4:8] != _TFLITE_IDENTIFIER:
        raise ModelFileError(
            "not a TFLite model (no 'TFL3' file identifier); expected a .tflite flatbuffer"
        )
    schema = _schema()
    try:
        return _inspect(schema, data)
    except ModelFileError:
        raise
    except struct.error as exc:  # an offset or a length past the end of the bytes
        raise ModelFileError(
            f"truncated or corrupt TFLite model: {len(data)} bytes, and its tables point past "
            "the end (a partial copy or download?)"
        ) from exc
    except Exception as exc:
        raise ModelFileError(
            f"corrupt TFLite model ({exc.__class__.__name__}: {_clipped(str(exc), 160)})"
        ) from exc


def _clipped(text: str, limit: int) -> str:
    """``text`` cut at a word boundary near ``limit`` (a number is never cut in half)."""
    if len(text) <= limit:
        return text
    return text[:limit].rsplit(" ", 1)[0] + " ..."


def _inspect(schema: Any, data: bytes) -> ModelInfo:
    model = schema.Model.GetRootAs(data, 0)
    if model.SubgraphsLength() < 1:
        raise ModelFileError("TFLite model has no subgraph")
    type_names = _enum_names(schema.TensorType)
    op_names = _enum_names(schema.BuiltinOperator)
    builtin: set[str] = set()
    custom: set[str] = set()
    max_code = 0
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        # Newer files keep the code in BuiltinCode; old ones only in DeprecatedBuiltinCode.
        value = max(int(code.BuiltinCode()), int(code.DeprecatedBuiltinCode()))
        name = op_names.get(value, f"OP_{value}")
        if name != "CUSTOM":
            max_code = max(max_code, value)
        if name == "CUSTOM":
            raw = code.CustomCode()
            custom.add(raw.decode("utf-8", "replace") if raw else "")
        else:
            builtin.add(name)
    graph = model.Subgraphs(0)
    if graph.TensorsLength() > _MAX_TENSORS:
        raise ModelFileError(f"graph declares {graph.TensorsLength()} tensors; refusing")
    inputs = tuple(
        _tensor_info(schema, graph, int(graph.Inputs(i)), type_names)
        for i in range(graph.InputsLength())
    )
    outputs = tuple(
        _tensor_info(schema, graph, int(graph.Outputs(i)), type_names)
        for i in range(graph.OutputsLength())
    )
    if not inputs or not outputs:
        raise ModelFileError("TFLite model has no graph inputs or outputs")
    raw_desc = model.Description()
    signatures = []
    for i in range(model.SignatureDefsLength()):
        sig = model.SignatureDefs(i)
        signatures.append(
            SignatureInfo(
                key=_text(sig.SignatureKey()),
                inputs=tuple(_text(sig.Inputs(j).Name()) for j in range(sig.InputsLength())),
                outputs=tuple(_text(sig.Outputs(j).Name()) for j in range(sig.OutputsLength())),
            )
        )
    return ModelInfo(
        size=len(data),
        inputs=inputs,
        outputs=outputs,
        builtin_ops=tuple(sorted(builtin)),
        custom_ops=tuple(sorted(custom)),
        description=raw_desc.decode("utf-8", "replace") if raw_desc else "",
        signatures=tuple(signatures),
        activation_bytes=_activation_bytes(model, graph, type_names),
        weight_dtypes=_weight_dtypes(model, graph, type_names),
        activation_dtypes=_activation_dtypes(model, graph, type_names),
        max_op_code=max_code,
    )


def _text(raw: bytes | None) -> str:
    return raw.decode("utf-8", "replace") if raw else ""


_ITEM_SIZE = {
    "float32": 4,
    "float16": 2,
    "float64": 8,
    "int32": 4,
    "uint8": 1,
    "int64": 8,
    "bool": 1,
    "int16": 2,
    "int8": 1,
    "uint32": 4,
    "uint16": 2,
    "uint64": 8,
}


def _is_constant(model: Any, tensor: Any) -> bool:
    """True when the tensor carries data in the file (weights, biases), not activations."""
    buffer_index = tensor.Buffer()
    if 0 < buffer_index < model.BuffersLength():
        buffer = model.Buffers(buffer_index)
        return buffer is not None and (buffer.DataLength() > 0 or buffer.Size() > 0)
    return False


def _activation_bytes(model: Any, graph: Any, type_names: dict[int, str]) -> int:
    """Bytes of the tensors that hold no constant data: an upper bound of one arena."""
    total = 0
    for i in range(graph.TensorsLength()):
        tensor = graph.Tensors(i)
        if _is_constant(model, tensor):
            continue  # constant weights live in the (shared, mapped) model file
        count = 1
        for dim in tensor.ShapeAsNumpy() if tensor.ShapeLength() else ():
            count *= max(int(dim), 1)
        dtype = _TYPE_TO_DTYPE.get(type_names.get(tensor.Type(), ""), "")
        total += count * _ITEM_SIZE.get(dtype, 4)
    return total


def _activation_dtypes(model: Any, graph: Any, type_names: dict[int, str]) -> tuple[str, ...]:
    """The dtypes of what the graph's operators compute: their outputs, but for the graph's
    own outputs. (Not every non-constant tensor: an int8 LSTM keeps an int16 cell state and
    empty float placeholders as inputs of its op, which say nothing of how it computes.)"""
    ends = {int(i) for i in graph.OutputsAsNumpy()} if graph.OutputsLength() else set()
    found: set[str] = set()
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        for j in range(op.OutputsLength()):
            index = int(op.Outputs(j))
            if index < 0 or index in ends or index >= graph.TensorsLength():
                continue
            tensor = graph.Tensors(index)
            if not _is_constant(model, tensor):
                found.add(_TYPE_TO_DTYPE.get(type_names.get(tensor.Type(), ""), "unknown"))
    return tuple(sorted(found))


def _weight_dtypes(model: Any, graph: Any, type_names: dict[int, str]) -> tuple[str, ...]:
    """The dtypes of the tensors that carry constant data (weights, biases)."""
    found: set[str] = set()
    for i in range(graph.TensorsLength()):
        tensor = graph.Tensors(i)
        if _is_constant(model, tensor):
            found.add(_TYPE_TO_DTYPE.get(type_names.get(tensor.Type(), ""), "unknown"))
    return tuple(sorted(found))


def max_known_op_code() -> int:
    """The highest builtin operator code this device's runtime knows (0 when unknown).

    Operator codes only ever grow, so a model whose highest code is above this one uses an
    operator this runtime has never heard of.
    """
    try:
        schema = _schema()
    except RuntimeMissingError:
        return 0
    return max(_enum_names(schema.BuiltinOperator))


def open_model_file(path: Path) -> BinaryIO:
    """Open a model file for reading: a regular file only (symlinks followed).

    Raises:
        OSError: missing, unreadable, or not a regular file (a pipe would block the open, and
            the read, for ever).
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    handle = os.fdopen(fd, "rb")
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        handle.close()
        raise OSError(errno.EINVAL, "not a regular file (a pipe, device or folder)")
    return handle


def inspect_model_file(path: Path) -> ModelInfo:
    """Read and inspect a model file.

    Raises:
        ModelFileError: the file is missing, unreadable, too large, or not a TFLite model.
    """
    try:
        with open_model_file(path) as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > MAX_MODEL_BYTES:
                raise ModelFileError(f"{path}: {size} bytes; the limit is {MAX_MODEL_BYTES}")
            if size == 0:
                raise ModelFileError(f"{path}: empty file; expected a .tflite flatbuffer")
            # Mapped, not read: inspecting a 100 MB model touches only the pages it parses.
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                try:
                    return inspect_model_bytes(mapped)  # type: ignore[arg-type]
                except ModelFileError as exc:
                    raise ModelFileError(f"{path}: {exc}") from exc
    except OSError as exc:
        raise ModelFileError(f"cannot read model {path}: {exc.strerror or exc}") from exc
