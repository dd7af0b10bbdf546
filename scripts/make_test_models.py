"""Build two tiny colour classifiers as .tflite files, without TensorFlow.

    python scripts/make_test_models.py OUT_DIR

Writes ``color_float.tflite`` (float32 input), ``color_int8.tflite`` (int8 input, scale 2/255,
zero point 0, dequantized inside the graph) and ``color_labels.txt`` (red, green, blue). Both
compute softmax(4 * mean colour per channel), so the top-1 of an image is its dominant channel:
a result anyone can check by eye. They exercise the float and int8 input paths of
``edgefleet-agent predict`` with models that this repository can regenerate at any time.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as s

SIZE = 32
LABELS = ("red", "green", "blue")


def _opcode(op: int) -> Any:
    code = s.OperatorCodeT()
    code.builtinCode = op
    code.deprecatedBuiltinCode = min(op, 127)  # 127 = PLACEHOLDER_FOR_GREATER_OP_CODES
    code.version = 1
    return code


def _tensor(
    name: str,
    shape: list[int],
    ttype: int,
    *,
    buffer: int = 0,
    scale: float | None = None,
    zero_point: int = 0,
) -> Any:
    tensor = s.TensorT()
    tensor.name = name.encode()
    tensor.shape = shape
    tensor.type = ttype
    tensor.buffer = buffer
    if scale is not None:
        quant = s.QuantizationParametersT()
        quant.scale = [scale]
        quant.zeroPoint = [zero_point]
        tensor.quantization = quant
    return tensor


def _buffer(data: bytes | None) -> Any:
    buf = s.BufferT()
    buf.data = list(data) if data else None
    return buf


def _operator(
    opcode: int, inputs: list[int], outputs: list[int], options_type: int = 0, options: Any = None
) -> Any:
    op = s.OperatorT()
    op.opcodeIndex = opcode
    op.inputs = inputs
    op.outputs = outputs
    op.builtinOptionsType = options_type
    op.builtinOptions = options
    return op


def build(int8_input: bool) -> bytes:
    """Serialize the colour classifier; int8_input adds a DEQUANTIZE in front."""
    f32, i32, i8 = s.TensorType.FLOAT32, s.TensorType.INT32, s.TensorType.INT8
    buffers = [
        _buffer(None),
        _buffer(np.array([1, 2], dtype="<i4").tobytes()),
        _buffer((np.eye(3, dtype="<f4") * 4.0).tobytes()),
        _buffer(np.zeros(3, dtype="<f4").tobytes()),
    ]
    image_shape = [1, SIZE, SIZE, 3]
    tensors = [
        _tensor("image_float", image_shape, f32),  # 0
        _tensor("axes", [2], i32, buffer=1),  # 1
        _tensor("mean", [1, 3], f32),  # 2
        _tensor("weights", [3, 3], f32, buffer=2),  # 3
        _tensor("bias", [3], f32, buffer=3),  # 4
        _tensor("logits", [1, 3], f32),  # 5
        _tensor("scores", [1, 3], f32),  # 6
    ]
    codes = [
        _opcode(s.BuiltinOperator.MEAN),
        _opcode(s.BuiltinOperator.FULLY_CONNECTED),
        _opcode(s.BuiltinOperator.SOFTMAX),
    ]
    reducer = s.ReducerOptionsT()
    reducer.keepDims = False
    fc = s.FullyConnectedOptionsT()
    softmax = s.SoftmaxOptionsT()
    softmax.beta = 1.0
    ops = [
        _operator(0, [0, 1], [2], s.BuiltinOptions.ReducerOptions, reducer),
        _operator(1, [2, 3, 4], [5], s.BuiltinOptions.FullyConnectedOptions, fc),
        _operator(2, [5], [6], s.BuiltinOptions.SoftmaxOptions, softmax),
    ]
    graph_input = 0
    if int8_input:
        tensors.append(_tensor("image", image_shape, i8, scale=2.0 / 255.0, zero_point=0))
        codes.append(_opcode(s.BuiltinOperator.DEQUANTIZE))
        ops.insert(0, _operator(3, [7], [0]))
        graph_input = 7
    else:
        tensors[0].name = b"image"
    graph = s.SubGraphT()
    graph.tensors = tensors
    graph.inputs = [graph_input]
    graph.outputs = [6]
    graph.operators = ops
    graph.name = b"main"
    model = s.ModelT()
    model.version = 3
    model.operatorCodes = codes
    model.subgraphs = [graph]
    model.buffers = buffers
    model.description = b"EdgeFleet test colour classifier (scripts/make_test_models.py)"
    builder = flatbuffers.Builder(4096)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__)
        return 2
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    (out / "color_float.tflite").write_bytes(build(int8_input=False))
    (out / "color_int8.tflite").write_bytes(build(int8_input=True))
    (out / "color_labels.txt").write_text("\n".join(LABELS) + "\n", encoding="utf-8")
    print(f"wrote color_float.tflite, color_int8.tflite, color_labels.txt to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
