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

For predict's other kinds of output: ``color_float_meta.tflite`` (the float classifier with
TFLite metadata giving its input normalization: mean 0, std 255), ``detect_float.tflite`` (a
colour detector ending in a real ``TFLite_Detection_PostProcess`` op: boxes [1,10,4], classes
[1,10], scores [1,10], count [1]) and ``segment_float.tflite`` (per-pixel colour scores,
[1,32,32,3]).
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


def build(
    input_type: str,
    height: int = SIZE,
    width: int = SIZE,
    normalization: tuple[float, float] | None = None,
) -> bytes:
    """Serialize the colour classifier for a "float32", "int8" or "uint8" image input.

    Integer inputs are dequantized by the graph's first op (int8: scale 2/255, zero point 0;
    uint8: scale 2/255, zero point 128), so all variants compute the same thing.
    ``normalization`` (mean, std) is written into the model's TFLite metadata.
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
        metadata=None if normalization is None else tflite_metadata("image", *normalization),
    )


def tflite_metadata(input_name: str, mean: float, std: float) -> bytes:
    """A TFLite metadata flatbuffer (tflite-support's ``ModelMetadata``, identifier ``M001``)
    whose one input carries ``NormalizationOptions`` (mean, std): what the Model Maker and
    the metadata writers put into a model. Written field by field (field slots per
    ``metadata_schema.fbs``), so no tflite-support is needed."""
    b = flatbuffers.Builder(256)

    def floats(values: list[float]) -> int:
        b.StartVector(4, len(values), 4)
        for value in reversed(values):
            b.PrependFloat32(value)
        return int(b.EndVector())

    def tables(offsets: list[int]) -> int:
        b.StartVector(4, len(offsets), 4)
        for offset in reversed(offsets):
            b.PrependUOffsetTRelative(offset)
        return int(b.EndVector())

    mean_vec, std_vec = floats([mean]), floats([std])
    b.StartObject(2)  # NormalizationOptions: mean, std
    b.PrependUOffsetTRelativeSlot(0, mean_vec, 0)
    b.PrependUOffsetTRelativeSlot(1, std_vec, 0)
    options = b.EndObject()
    b.StartObject(2)  # ProcessUnit: options_type, options
    b.PrependUint8Slot(0, 1, 0)  # ProcessUnitOptions.NormalizationOptions
    b.PrependUOffsetTRelativeSlot(1, options, 0)
    units = tables([b.EndObject()])
    name = b.CreateString(input_name)
    b.StartObject(7)  # TensorMetadata: name 0 ... process_units 4
    b.PrependUOffsetTRelativeSlot(0, name, 0)
    b.PrependUOffsetTRelativeSlot(4, units, 0)
    inputs = tables([b.EndObject()])
    b.StartObject(7)  # SubGraphMetadata: input_tensor_metadata 2
    b.PrependUOffsetTRelativeSlot(2, inputs, 0)
    subgraphs = tables([b.EndObject()])
    model_name = b.CreateString("EdgeFleet test model")
    b.StartObject(8)  # ModelMetadata: name 0, subgraph_metadata 3
    b.PrependUOffsetTRelativeSlot(0, model_name, 0)
    b.PrependUOffsetTRelativeSlot(3, subgraphs, 0)
    b.Finish(b.EndObject(), file_identifier=b"M001")
    return bytes(b.Output())


GRID = 4  # the detector's anchors: a GRID x GRID grid of cells over the image
MAX_DETECTIONS = 10


def _colour_weights() -> np.ndarray:
    """Per colour (red, green, blue): 6 x own channel - 3 x each other channel, pixels in
    [-1, 1]. Bright pure colours score about 9, grey and black about -3 (with the bias)."""
    return np.array([[6, -3, -3], [-3, 6, -3], [-3, -3, 6]], dtype="<f4")


def build_detect() -> bytes:
    """A colour detector with a real ``TFLite_Detection_PostProcess`` op.

    Input ``image`` float32 [1,32,32,3] (pixels in [-1, 1]). Each 8x8 cell of a 4x4 grid is one
    anchor (its box is the cell: the box encodings are zeros); its class scores are
    sigmoid(colour weights . mean colour - 3), with a background column first as detection
    heads have. The post-process op keeps scores >= 0.1 and outputs ``boxes`` [1,10,4],
    ``classes`` [1,10], ``scores`` [1,10] and ``count`` [1]; the file declares no shape for
    them, as converted detection models do. Classes 0..2 are red, green, blue.
    """
    from flatbuffers import flexbuffers  # noqa: PLC0415

    f32, i32 = s.TensorType.FLOAT32, s.TensorType.INT32
    anchors_count = GRID * GRID
    weights = np.zeros((4, 3), dtype="<f4")
    weights[1:] = _colour_weights()
    bias = np.array([0, -3, -3, -3], dtype="<f4")
    cells = (np.arange(GRID, dtype="<f4") + 0.5) / GRID
    anchors = np.array(
        [[yc, xc, 1.0 / GRID, 1.0 / GRID] for yc in cells for xc in cells], dtype="<f4"
    )
    buffers = [
        _buffer(None),
        _buffer(np.array([1, anchors_count, 3], dtype="<i4").tobytes()),  # 1 reshape
        _buffer(weights.tobytes()),  # 2
        _buffer(bias.tobytes()),  # 3
        _buffer(np.zeros((1, anchors_count, 4), dtype="<f4").tobytes()),  # 4 box encodings
        _buffer(anchors.tobytes()),  # 5
    ]
    tensors = [
        _tensor("image", [1, SIZE, SIZE, 3], f32),  # 0
        _tensor("cells", [1, GRID, GRID, 3], f32),  # 1
        _tensor("shape", [3], i32, buffer=1),  # 2
        _tensor("cell_colours", [1, anchors_count, 3], f32),  # 3
        _tensor("weights", [4, 3], f32, buffer=2),  # 4
        _tensor("bias", [4], f32, buffer=3),  # 5
        _tensor("logits", [1, anchors_count, 4], f32),  # 6
        _tensor("class_scores", [1, anchors_count, 4], f32),  # 7
        _tensor("box_encodings", [1, anchors_count, 4], f32, buffer=4),  # 8
        _tensor("anchors", [anchors_count, 4], f32, buffer=5),  # 9
        _tensor("boxes", [], f32),  # 10
        _tensor("classes", [], f32),  # 11
        _tensor("scores", [], f32),  # 12
        _tensor("count", [], f32),  # 13
    ]
    for t in tensors[10:]:
        t.shape = None  # as the converter writes post-process outputs: no shape until run
    custom = s.OperatorCodeT()
    custom.builtinCode = s.BuiltinOperator.CUSTOM
    custom.deprecatedBuiltinCode = s.BuiltinOperator.CUSTOM
    custom.customCode = b"TFLite_Detection_PostProcess"
    custom.version = 1
    codes = [
        _opcode(s.BuiltinOperator.AVERAGE_POOL_2D),
        _opcode(s.BuiltinOperator.RESHAPE),
        _opcode(s.BuiltinOperator.FULLY_CONNECTED),
        _opcode(s.BuiltinOperator.LOGISTIC),
        custom,
    ]
    pool = s.Pool2DOptionsT()
    pool.padding = s.Padding.VALID
    pool.strideW = pool.strideH = pool.filterWidth = pool.filterHeight = SIZE // GRID
    reshape = s.ReshapeOptionsT()
    reshape.newShape = [1, anchors_count, 3]
    fc = s.FullyConnectedOptionsT()
    fc.keepNumDims = True
    postprocess = _operator(4, [8, 7, 9], [10, 11, 12, 13])
    postprocess.customOptions = np.frombuffer(
        flexbuffers.Dumps(
            {
                "max_detections": MAX_DETECTIONS,
                "max_classes_per_detection": 1,
                "detections_per_class": 100,
                "use_regular_nms": False,
                "nms_score_threshold": 0.1,
                "nms_iou_threshold": 0.5,
                "num_classes": len(LABELS),
                "y_scale": 10.0,
                "x_scale": 10.0,
                "h_scale": 5.0,
                "w_scale": 5.0,
            }
        ),
        dtype=np.uint8,
    )
    ops = [
        _operator(0, [0], [1], s.BuiltinOptions.Pool2DOptions, pool),
        _operator(1, [1, 2], [3], s.BuiltinOptions.ReshapeOptions, reshape),
        _operator(2, [3, 4, 5], [6], s.BuiltinOptions.FullyConnectedOptions, fc),
        _operator(3, [6], [7]),
        postprocess,
    ]
    return _finish(
        tensors,
        [0],
        [10, 11, 12, 13],
        ops=ops,
        codes=codes,
        buffers=buffers,
        description=b"EdgeFleet test colour detector (scripts/make_test_models.py)",
    )


def build_segment() -> bytes:
    """A colour segmenter: input ``image`` float32 [1,32,32,3] (pixels in [-1, 1]), output
    ``segmentation`` [1,32,32,3], per pixel softmax over red, green, blue (a 1x1 convolution
    with the detector's colour weights)."""
    f32 = s.TensorType.FLOAT32
    weights = _colour_weights().reshape(3, 1, 1, 3)  # out channels, 1x1, in channels
    tensors = [
        _tensor("image", [1, SIZE, SIZE, 3], f32),
        _tensor("weights", [3, 1, 1, 3], f32, buffer=1),
        _tensor("bias", [3], f32, buffer=2),
        _tensor("logits", [1, SIZE, SIZE, 3], f32),
        _tensor("segmentation", [1, SIZE, SIZE, 3], f32),
    ]
    conv = s.Conv2DOptionsT()
    conv.padding = s.Padding.VALID
    conv.strideW = conv.strideH = 1
    conv.dilationWFactor = conv.dilationHFactor = 1
    softmax = s.SoftmaxOptionsT()
    softmax.beta = 1.0
    return _finish(
        tensors,
        [0],
        [4],
        ops=[
            _operator(0, [0, 1, 2], [3], s.BuiltinOptions.Conv2DOptions, conv),
            _operator(1, [3], [4], s.BuiltinOptions.SoftmaxOptions, softmax),
        ],
        codes=[_opcode(s.BuiltinOperator.CONV_2D), _opcode(s.BuiltinOperator.SOFTMAX)],
        buffers=[
            _buffer(None),
            _buffer(weights.tobytes()),
            _buffer(np.zeros(3, dtype="<f4").tobytes()),
        ],
        description=b"EdgeFleet test colour segmenter (scripts/make_test_models.py)",
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
    metadata: bytes | None = None,
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
    if metadata is not None:
        entry = s.MetadataT()
        entry.name = b"TFLITE_METADATA"
        entry.buffer = len(buffers)
        model.buffers = [*buffers, _buffer(metadata)]
        model.metadata = [entry]
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
    (out / "color_float_meta.tflite").write_bytes(build("float32", normalization=(0.0, 255.0)))
    (out / "detect_float.tflite").write_bytes(build_detect())
    (out / "segment_float.tflite").write_bytes(build_segment())
    (out / "color_uint8_1080p.tflite").write_bytes(build("uint8", 1080, 1920))
    (out / "color_labels.txt").write_text("\n".join(LABELS) + "\n", encoding="utf-8")
    (out / "heavy_float.tflite").write_bytes(build_heavy())
    (out / "pair_float.tflite").write_bytes(build_pair())
    (out / "spin_float.tflite").write_bytes(build_spin())
    written = [
        "color_float.tflite",
        "color_int8.tflite",
        "color_float_meta.tflite",
        "detect_float.tflite",
        "segment_float.tflite",
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
