"""A variant's kind comes from how the model computes, not from its inputs and outputs.

The Coral MobileNet computes in uint8 from its input to its output. The same graph ending in a
DEQUANTIZE (float scores, as converters emit for "integer only, float I/O") or in an ARG_MAX
(an int64 class index) still computes in uint8: it is a full-integer model and must be chosen
as one (issue 24: such models were called dynamic_int8). Its dequantized float twin
(scripts/make_float_classifier.py) is float32.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as s

from agent.inference.modelfile import inspect_model_file
from tests.harness import DATA

MOBILENET = DATA / "mobilenet_v1_0.25_128_quant.tflite"


def _with_last_op(op: int, out_type: int, tmp: Path) -> Path:
    """MobileNet with one more operator after its output, whose result is the new output."""
    m = s.ModelT.InitFromObj(s.Model.GetRootAsModel(MOBILENET.read_bytes(), 0))
    graph = m.subgraphs[0]
    code = s.OperatorCodeT()
    code.builtinCode, code.deprecatedBuiltinCode, code.version = op, op, 1
    m.operatorCodes.append(code)
    inputs = [int(graph.outputs[0])]
    if op == s.BuiltinOperator.ARG_MAX:
        axis = s.BufferT()
        axis.data = np.frombuffer(np.array([1], dtype="<i4").tobytes(), np.uint8)
        m.buffers.append(axis)
        t = s.TensorT()
        t.name, t.shape, t.type, t.buffer = b"axis", [1], s.TensorType.INT32, len(m.buffers) - 1
        graph.tensors.append(t)
        inputs.append(len(graph.tensors) - 1)
    out = s.TensorT()
    out.name = b"result"
    out.shape = [1] if op == s.BuiltinOperator.ARG_MAX else [1, 1001]
    out.type = out_type
    m.buffers.append(s.BufferT())
    out.buffer = len(m.buffers) - 1
    graph.tensors.append(out)
    operator: Any = s.OperatorT()
    operator.opcodeIndex = len(m.operatorCodes) - 1
    operator.inputs, operator.outputs = inputs, [len(graph.tensors) - 1]
    if op == s.BuiltinOperator.ARG_MAX:
        options = s.ArgMaxOptionsT()
        options.outputType = s.TensorType.INT64
        operator.builtinOptionsType, operator.builtinOptions = (
            s.BuiltinOptions.ArgMaxOptions,
            options,
        )
    graph.operators.append(operator)
    graph.outputs = [len(graph.tensors) - 1]
    builder = flatbuffers.Builder(1 << 20)
    builder.Finish(m.Pack(builder), file_identifier=b"TFL3")
    path = tmp / f"mobilenet_op{op}.tflite"
    path.write_bytes(bytes(builder.Output()))
    return path


def test_the_coral_model_is_full_int8() -> None:
    assert inspect_model_file(MOBILENET).quantization == "full_int8"


def test_full_integer_compute_with_float_outputs_is_full_int8(tmp_path: Path) -> None:
    path = _with_last_op(s.BuiltinOperator.DEQUANTIZE, s.TensorType.FLOAT32, tmp_path)
    info = inspect_model_file(path)
    assert info.outputs[0].dtype == "float32"
    assert info.quantization == "full_int8"


def test_full_integer_compute_with_an_int64_argmax_output_is_full_int8(tmp_path: Path) -> None:
    path = _with_last_op(s.BuiltinOperator.ARG_MAX, s.TensorType.INT64, tmp_path)
    info = inspect_model_file(path)
    assert info.outputs[0].dtype == "int64"
    assert info.quantization == "full_int8"


def test_the_dequantized_twin_is_float32(float_classifier: Path) -> None:
    info = inspect_model_file(float_classifier)
    assert info.inputs[0].dtype == "float32" and info.quantization == "float32"
