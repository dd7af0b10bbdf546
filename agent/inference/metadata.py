"""What a model file says about its pre- and post-processing, read without running it.

Two facts that :mod:`agent.inference.modelfile` does not cover:

- the input normalization of the TFLite metadata (the ``TFLITE_METADATA`` buffer, a
  ``ModelMetadata`` flatbuffer of tflite-support's ``metadata_schema.fbs``, file identifier
  ``M001``): ``NormalizationOptions`` (per-channel mean and std) among an input tensor's process
  units;
- the detection head: a ``TFLite_Detection_PostProcess`` custom op whose four outputs (boxes,
  classes, scores, count) are graph outputs, with its class count from the op's options.

Only the flatbuffers runtime that LiteRT already depends on is needed.
"""

from __future__ import annotations

import math
import mmap
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.errors import ModelFileError
from agent.inference.modelfile import MAX_MODEL_BYTES, open_model_file

__all__ = [
    "DETECTION_POSTPROCESS_OP",
    "DetectionHead",
    "ModelProcessing",
    "Normalization",
    "read_processing",
    "read_processing_bytes",
]

DETECTION_POSTPROCESS_OP = "TFLite_Detection_PostProcess"
_METADATA_NAME = b"TFLITE_METADATA"
_METADATA_IDENTIFIER = b"M001"
_NORMALIZATION_OPTIONS = 1  # ProcessUnitOptions union: NormalizationOptions
_MAX_CHANNELS = 64  # mean/std values per input: one per channel
_MAX_ITEMS = 4096  # tensors or process units listed in the metadata
_MAX_CLASSES = 100_000
_MAX_OPTIONS_BYTES = 64 * 1024  # a post-process op's options: a dozen numbers


@dataclass(frozen=True)
class Normalization:
    """Per-channel ``(x - mean) / std`` of an input; one value applies to every channel."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str  # "metadata", "flags" or "default"


@dataclass(frozen=True)
class DetectionHead:
    """The graph outputs of a ``TFLite_Detection_PostProcess`` op, by role (graph output
    indices), and the number of classes it reports (class ids 0..num_classes-1: the
    background class of the score input is not among them)."""

    boxes: int
    classes: int
    scores: int
    count: int
    num_classes: int
    max_detections: int


@dataclass(frozen=True)
class ModelProcessing:
    """Pre- and post-processing facts of a model: one entry per graph input (None where the
    metadata gives no normalization), and its detection head if it has one."""

    input_normalization: tuple[Normalization | None, ...]
    detection: DetectionHead | None


def read_processing(path: Path) -> ModelProcessing:
    """Read the processing facts of a model file.

    Raises:
        ModelFileError: unreadable, too large, or its metadata or post-process op is corrupt.
    """
    try:
        with open_model_file(path) as handle:
            size = os.fstat(handle.fileno()).st_size
            if size == 0 or size > MAX_MODEL_BYTES:
                raise ModelFileError(f"{path}: {size} bytes; not a model this device can read")
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                try:
                    return read_processing_bytes(mapped)  # type: ignore[arg-type]
                except ModelFileError as exc:
                    raise ModelFileError(f"{path}: {exc}") from exc
    except OSError as exc:
        raise ModelFileError(f"cannot read model {path}: {exc.strerror or exc}") from exc


def read_processing_bytes(data: bytes) -> ModelProcessing:
    """Read the processing facts of a model's bytes (see :func:`read_processing`).

    Raises:
        ModelFileError: the metadata or the post-process op's options are corrupt.
    """
    from ai_edge_litert import schema_py_generated as schema  # noqa: PLC0415

    try:
        model = schema.Model.GetRootAs(data, 0)
        graph = model.Subgraphs(0)
        inputs = graph.InputsLength()
        raw = _metadata_buffer(model, data)
    except ModelFileError:
        raise
    except Exception as exc:
        raise ModelFileError(f"corrupt TFLite model ({exc.__class__.__name__})") from exc
    normalization: tuple[Normalization | None, ...] = (None,) * inputs
    if raw is not None:
        try:
            normalization = _input_normalization(raw, inputs)
        except ModelFileError:
            raise
        except Exception as exc:
            raise ModelFileError(
                f"corrupt TFLITE_METADATA ({exc.__class__.__name__}: {str(exc)[:120]})"
            ) from exc
    try:
        detection = _detection_head(schema, model, graph)
    except ModelFileError:
        raise
    except Exception as exc:
        raise ModelFileError(
            f"corrupt {DETECTION_POSTPROCESS_OP} options ({exc.__class__.__name__})"
        ) from exc
    return ModelProcessing(input_normalization=normalization, detection=detection)


def _metadata_buffer(model: Any, data: bytes) -> bytes | None:
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name() != _METADATA_NAME:
            continue
        index = entry.Buffer()
        if not 0 < index < model.BuffersLength():
            raise ModelFileError(f"TFLITE_METADATA names buffer {index}, which does not exist")
        buffer = model.Buffers(index)
        if buffer.DataLength():
            return bytes(buffer.DataAsNumpy().tobytes())
        # Files over 2 GB keep buffers after the flatbuffer, as offset and size.
        offset, size = int(buffer.Offset()), int(buffer.Size())
        if offset > 1 and offset + size <= len(data):
            return bytes(data[offset : offset + size])
        return None
    return None


def _input_normalization(raw: bytes, inputs: int) -> tuple[Normalization | None, ...]:
    from flatbuffers import encode, number_types, packer, table  # noqa: PLC0415

    buf = bytearray(raw)
    if len(buf) < 8 or bytes(buf[4:8]) != _METADATA_IDENTIFIER:
        raise ModelFileError("TFLITE_METADATA is not a ModelMetadata flatbuffer (no 'M001')")

    def field(tab: Any, slot: int) -> int:
        return int(tab.Offset(4 + 2 * slot))

    # Tables may be shared (offsets to the same one): a few kilobytes can list 4096 tensors
    # that each list the same 4096 process units. The tables listed, all together, are bounded.
    budget = [_MAX_ITEMS * 4]

    def tables(tab: Any, slot: int) -> list[Any]:
        off = field(tab, slot)
        if not off:
            return []
        count = tab.VectorLen(off)
        budget[0] -= count
        if count > _MAX_ITEMS:
            raise ModelFileError(f"TFLITE_METADATA lists {count} items; refusing")
        if budget[0] < 0:
            raise ModelFileError(
                f"TFLITE_METADATA lists more than {_MAX_ITEMS * 4} tensors and process units "
                "in all; refusing"
            )
        start = tab.Vector(off)
        return [table.Table(buf, tab.Indirect(start + 4 * i)) for i in range(count)]

    def floats(tab: Any, slot: int) -> tuple[float, ...]:
        off = field(tab, slot)
        if not off:
            return ()
        count = tab.VectorLen(off)
        if count > _MAX_CHANNELS:
            raise ModelFileError(f"a normalization in TFLITE_METADATA has {count} values")
        start = tab.Vector(off)
        return tuple(float(tab.Get(number_types.Float32Flags, start + 4 * i)) for i in range(count))

    root = table.Table(buf, encode.Get(packer.uoffset, buf, 0))
    subgraphs = tables(root, 3)  # ModelMetadata.subgraph_metadata
    if not subgraphs:
        return (None,) * inputs
    found: list[Normalization | None] = []
    for tensor in tables(subgraphs[0], 2)[:inputs]:  # SubGraphMetadata.input_tensor_metadata
        normalization = None
        for unit in tables(tensor, 4):  # TensorMetadata.process_units
            kind = field(unit, 0)  # ProcessUnit.options_type
            if not kind or unit.Get(number_types.Uint8Flags, unit.Pos + kind) != (
                _NORMALIZATION_OPTIONS
            ):
                continue
            options = table.Table(buf, 0)
            unit.Union(options, field(unit, 1))
            mean, std = floats(options, 0), floats(options, 1)
            if not mean or not std:
                raise ModelFileError("a NormalizationOptions in TFLITE_METADATA has no mean or std")
            if any(s == 0 for s in std):
                raise ModelFileError("a NormalizationOptions in TFLITE_METADATA has std 0")
            normalization = Normalization(mean=mean, std=std, source="metadata")
            break
        found.append(normalization)
    found += [None] * (inputs - len(found))
    return tuple(found)


def _detection_head(schema: Any, model: Any, graph: Any) -> DetectionHead | None:
    custom = schema.BuiltinOperator.CUSTOM
    op_index = None
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        value = max(int(code.BuiltinCode()), int(code.DeprecatedBuiltinCode()))
        if value == custom and code.CustomCode() == DETECTION_POSTPROCESS_OP.encode():
            op_index = i
    if op_index is None:
        return None
    graph_outputs = [int(graph.Outputs(i)) for i in range(graph.OutputsLength())]
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        if op.OpcodeIndex() != op_index or op.OutputsLength() != 4:
            continue
        produced = [int(op.Outputs(j)) for j in range(4)]
        if not all(t in graph_outputs for t in produced):
            return None  # post-processed further in the graph: not the standard head
        options = _flexbuffer_map(op.CustomOptionsAsNumpy().tobytes())
        num_classes = _int_option(options, "num_classes")
        max_detections = _int_option(options, "max_detections")
        if not 0 < num_classes <= _MAX_CLASSES:
            raise ModelFileError(f"{DETECTION_POSTPROCESS_OP} declares {num_classes} classes")
        boxes, classes, scores, count = (graph_outputs.index(t) for t in produced)
        return DetectionHead(
            boxes=boxes,
            classes=classes,
            scores=scores,
            count=count,
            num_classes=num_classes,
            max_detections=max_detections,
        )
    return None


def _flexbuffer_map(raw: bytes) -> Any:
    """The root map of a flexbuffer, not decoded: values are read only by key (a flexbuffer is
    a graph, so a few hundred bytes whose vectors all point at the same child decode to
    billions of values)."""
    from flatbuffers import flexbuffers  # noqa: PLC0415

    if len(raw) > _MAX_OPTIONS_BYTES:
        raise ModelFileError(f"{DETECTION_POSTPROCESS_OP} options are {len(raw)} bytes; refusing")
    root = flexbuffers.GetRoot(raw)
    if not root.IsMap:
        raise ModelFileError(f"{DETECTION_POSTPROCESS_OP} options are not a map")
    return root.AsMap


def _int_option(options: Any, key: str) -> int:
    """An integer option of a flexbuffer map (0 when absent), as the runtime reads it."""
    try:
        ref = options[key]
    except KeyError:
        return 0
    if ref.IsInt:
        return int(ref.AsInt)
    if ref.IsFloat and math.isfinite(ref.AsFloat) and float(ref.AsFloat).is_integer():
        return int(ref.AsFloat)
    raise ModelFileError(f"{DETECTION_POSTPROCESS_OP} option {key} is not an integer")
