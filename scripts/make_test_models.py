"""Build two tiny colour classifiers as .tflite files, without TensorFlow.

    python scripts/make_test_models.py OUT_DIR

Also writes ``color_uint8_1080p.tflite`` (the same classifier on a 1920x1080 uint8 frame, for
the shared-memory path) and ``heavy_float.tflite``, a small float CNN that takes milliseconds
per invoke, for benchmarks and engine tests that need a model busy long enough to observe.

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
    # A numpy array packs in one copy; a list of ints would take minutes for 100 MB.
    buf.data = np.frombuffer(data, dtype=np.uint8) if data else None
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


def build(input_type: str, height: int = SIZE, width: int = SIZE) -> bytes:
    """Serialize the colour classifier for a "float32", "int8" or "uint8" image input.

    Integer inputs are dequantized by the graph's first op (int8: scale 2/255, zero point 0;
    uint8: scale 2/255, zero point 128), so all variants compute the same thing.
    """
    f32, i32 = s.TensorType.FLOAT32, s.TensorType.INT32
    buffers = [
        _buffer(None),
        _buffer(np.array([1, 2], dtype="<i4").tobytes()),
        _buffer((np.eye(3, dtype="<f4") * 4.0).tobytes()),
        _buffer(np.zeros(3, dtype="<f4").tobytes()),
    ]
    image_shape = [1, height, width, 3]
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
    if input_type in ("int8", "uint8"):
        ttype = s.TensorType.INT8 if input_type == "int8" else s.TensorType.UINT8
        zero_point = 0 if input_type == "int8" else 128
        tensors.append(
            _tensor("image", image_shape, ttype, scale=2.0 / 255.0, zero_point=zero_point)
        )
        codes.append(_opcode(s.BuiltinOperator.DEQUANTIZE))
        ops.insert(0, _operator(3, [7], [0]))
        graph_input = 7
    else:
        tensors[0].name = b"image"
    return _finish(
        tensors,
        [graph_input],
        [6],
        ops=ops,
        codes=codes,
        buffers=buffers,
        description=b"EdgeFleet test colour classifier (scripts/make_test_models.py)",
    )


def build_heavy() -> bytes:
    """A float CNN whose single-thread invoke takes milliseconds, not microseconds.

    224x224x3 -> conv 3x3/2 (32) -> conv 3x3 (64) -> conv 3x3 (64) -> mean -> fully connected
    (10) -> softmax: about 1.5 GFLOP, for throughput and worker-scaling benchmarks.
    """
    f32, i32 = s.TensorType.FLOAT32, s.TensorType.INT32
    rng = np.random.default_rng(7)
    layers = [(32, 3, 2), (64, 32, 1), (64, 64, 1)]  # (out channels, in channels, stride)
    buffers = [_buffer(None)]
    tensors = [_tensor("image", [1, 224, 224, 3], f32)]
    codes = [
        _opcode(s.BuiltinOperator.CONV_2D),
        _opcode(s.BuiltinOperator.MEAN),
        _opcode(s.BuiltinOperator.FULLY_CONNECTED),
        _opcode(s.BuiltinOperator.SOFTMAX),
    ]
    ops = []
    current = 0
    for i, (out_c, in_c, stride) in enumerate(layers):
        weights = (rng.standard_normal((out_c, 3, 3, in_c)) * (1.0 / (3 * in_c))).astype("<f4")
        buffers += [_buffer(weights.tobytes()), _buffer(np.zeros(out_c, dtype="<f4").tobytes())]
        tensors += [
            _tensor(f"w{i}", [out_c, 3, 3, in_c], f32, buffer=len(buffers) - 2),
            _tensor(f"b{i}", [out_c], f32, buffer=len(buffers) - 1),
            _tensor(f"conv{i}", [1, 112, 112, out_c], f32),
        ]
        options = s.Conv2DOptionsT()
        options.padding = s.Padding.SAME
        options.strideW = options.strideH = stride
        options.dilationWFactor = options.dilationHFactor = 1
        options.fusedActivationFunction = s.ActivationFunctionType.RELU
        n = len(tensors)
        ops.append(
            _operator(0, [current, n - 3, n - 2], [n - 1], s.BuiltinOptions.Conv2DOptions, options)
        )
        current = n - 1
    fc = (rng.standard_normal((10, 64)) * 0.1).astype("<f4")
    buffers += [
        _buffer(np.array([1, 2], dtype="<i4").tobytes()),
        _buffer(fc.tobytes()),
        _buffer(np.zeros(10, dtype="<f4").tobytes()),
    ]
    base = len(tensors)
    nb = len(buffers)
    tensors += [
        _tensor("axes", [2], i32, buffer=nb - 3),  # base
        _tensor("pooled", [1, 64], f32),  # base + 1
        _tensor("fc_w", [10, 64], f32, buffer=nb - 2),  # base + 2
        _tensor("fc_b", [10], f32, buffer=nb - 1),  # base + 3
        _tensor("logits", [1, 10], f32),  # base + 4
        _tensor("scores", [1, 10], f32),  # base + 5
    ]
    reducer = s.ReducerOptionsT()
    reducer.keepDims = False
    softmax = s.SoftmaxOptionsT()
    softmax.beta = 1.0
    ops += [
        _operator(1, [current, base], [base + 1], s.BuiltinOptions.ReducerOptions, reducer),
        _operator(
            2,
            [base + 1, base + 2, base + 3],
            [base + 4],
            s.BuiltinOptions.FullyConnectedOptions,
            s.FullyConnectedOptionsT(),
        ),
        _operator(3, [base + 4], [base + 5], s.BuiltinOptions.SoftmaxOptions, softmax),
    ]
    return _finish(
        tensors,
        [0],
        [base + 5],
        ops=ops,
        codes=codes,
        buffers=buffers,
        description=b"EdgeFleet heavy test CNN",
    )


def build_pair() -> bytes:
    """Two float inputs ``a`` and ``b`` [1,4]; outputs ``sum`` = a + b and ``product`` = a * b.

    For the multi-input, multi-output paths of the local API.
    """
    f32 = s.TensorType.FLOAT32
    tensors = [
        _tensor("a", [1, 4], f32),
        _tensor("b", [1, 4], f32),
        _tensor("sum", [1, 4], f32),
        _tensor("product", [1, 4], f32),
    ]
    codes = [_opcode(s.BuiltinOperator.ADD), _opcode(s.BuiltinOperator.MUL)]
    ops = [
        _operator(0, [0, 1], [2], s.BuiltinOptions.AddOptions, s.AddOptionsT()),
        _operator(1, [0, 1], [3], s.BuiltinOptions.MulOptions, s.MulOptionsT()),
    ]
    return _finish(
        tensors,
        [0, 1],
        [2, 3],
        ops=ops,
        codes=codes,
        buffers=[_buffer(None)],
        description=b"EdgeFleet two-input test model",
    )


def build_large(width: int = 5120) -> bytes:
    """One float fully connected layer of ``width`` x ``width``: ~100 MB of weights for
    width 5120. For delivery benchmarks: a realistic artifact size that still runs fast."""
    f32 = s.TensorType.FLOAT32
    rng = np.random.default_rng(3)
    weights = (rng.standard_normal((width, width)) * 0.01).astype("<f4")
    tensors = [
        _tensor("x", [1, width], f32),
        _tensor("w", [width, width], f32, buffer=1),
        _tensor("b", [width], f32, buffer=2),
        _tensor("y", [1, width], f32),
    ]
    return _finish(
        tensors,
        [0],
        [3],
        ops=[
            _operator(
                0,
                [0, 1, 2],
                [3],
                s.BuiltinOptions.FullyConnectedOptions,
                s.FullyConnectedOptionsT(),
            )
        ],
        codes=[_opcode(s.BuiltinOperator.FULLY_CONNECTED)],
        buffers=[
            _buffer(None),
            _buffer(weights.tobytes()),
            _buffer(np.zeros(width, dtype="<f4").tobytes()),
        ],
        description=b"EdgeFleet large delivery benchmark model",
    )


def build_spin() -> bytes:
    """A model whose invoke never returns for inputs above 1e30: WHILE (x > 1e30) x = x + 0.
    Any other input (warm-up zeros, smoke-test samples) returns at once. For watchdog tests:
    a real interpreter, really wedged, by one request."""
    f32, boolean = s.TensorType.FLOAT32, s.TensorType.BOOL
    codes = [
        _opcode(s.BuiltinOperator.WHILE),
        _opcode(s.BuiltinOperator.GREATER),
        _opcode(s.BuiltinOperator.ADD),
    ]
    options = s.WhileOptionsT()
    options.condSubgraphIndex = 1
    options.bodySubgraphIndex = 2
    main_graph = s.SubGraphT()
    main_graph.tensors = [_tensor("x", [1], f32), _tensor("y", [1], f32)]
    main_graph.inputs, main_graph.outputs = [0], [1]
    main_graph.operators = [_operator(0, [0], [1], s.BuiltinOptions.WhileOptions, options)]
    main_graph.name = b"main"
    cond = s.SubGraphT()
    cond.tensors = [
        _tensor("x", [1], f32),
        _tensor("limit", [1], f32, buffer=2),
        _tensor("go_on", [1], boolean),
    ]
    cond.inputs, cond.outputs = [0], [2]
    cond.operators = [_operator(1, [0, 1], [2])]
    cond.name = b"cond"
    body = s.SubGraphT()
    body.tensors = [
        _tensor("x", [1], f32),
        _tensor("zero", [1], f32, buffer=1),
        _tensor("y", [1], f32),
    ]
    body.inputs, body.outputs = [0], [2]
    add = s.AddOptionsT()
    body.operators = [_operator(2, [0, 1], [2], s.BuiltinOptions.AddOptions, add)]
    body.name = b"body"
    model = s.ModelT()
    model.version = 3
    model.operatorCodes = codes
    model.subgraphs = [main_graph, cond, body]
    model.buffers = [
        _buffer(None),
        _buffer(np.zeros(1, dtype="<f4").tobytes()),
        _buffer(np.full(1, 1e30, dtype="<f4").tobytes()),
    ]
    model.description = b"EdgeFleet test model that never finishes (watchdog tests)"
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _finish(
    tensors: list[Any],
    inputs: list[int],
    outputs: list[int],
    *,
    ops: list[Any],
    codes: list[Any],
    buffers: list[Any],
    description: bytes,
) -> bytes:
    graph = s.SubGraphT()
    graph.tensors = tensors
    graph.inputs = inputs
    graph.outputs = outputs
    graph.operators = ops
    graph.name = b"main"
    model = s.ModelT()
    model.version = 3
    model.operatorCodes = codes
    model.subgraphs = [graph]
    model.buffers = buffers
    model.description = description
    builder = flatbuffers.Builder(4096)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__)
        return 2
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    (out / "color_float.tflite").write_bytes(build("float32"))
    (out / "color_int8.tflite").write_bytes(build("int8"))
    (out / "color_uint8_1080p.tflite").write_bytes(build("uint8", 1080, 1920))
    (out / "color_labels.txt").write_text("\n".join(LABELS) + "\n", encoding="utf-8")
    (out / "heavy_float.tflite").write_bytes(build_heavy())
    (out / "pair_float.tflite").write_bytes(build_pair())
    (out / "spin_float.tflite").write_bytes(build_spin())
    written = [
        "color_float.tflite",
        "color_int8.tflite",
        "color_uint8_1080p.tflite",
        "color_labels.txt",
        "heavy_float.tflite",
        "pair_float.tflite",
        "spin_float.tflite",
    ]
    print(f"wrote {', '.join(written)} to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
