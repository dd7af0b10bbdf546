"""uint8 inputs and outputs around a full-int8 model, as the Coral pipelines expect them.

ai-edge-quantizer makes int8 inputs and outputs. Coral's camera and classification pipelines
(and models compiled for the Edge TPU by Google) take and give uint8. The TFLite converter's
``inference_input_type=tf.uint8`` does what this does: each int8 input gets a uint8 twin with
the same scale and its zero point + 128, and a QUANTIZE operator (a requantization, exact: the
values only shift by 128) from the twin to the int8 tensor; each int8 output gets a QUANTIZE
to a uint8 twin. The graph in between is unchanged, so the model still computes in int8
(its kind stays ``full_int8``) and edgetpu_compiler maps it as it maps the int8 one.
"""

from __future__ import annotations

from typing import Any

from ai_edge_litert import schema_py_generated as schema

from fleet_server.optimize.flat import dump, load

__all__ = ["with_uint8_io"]


def _uint8_twin(tensor: Any, suffix: str) -> Any:
    q = tensor.quantization
    if (
        tensor.type != schema.TensorType.INT8
        or q is None
        or q.scale is None
        or len(q.scale) != 1
        or q.zeroPoint is None
    ):
        name = (tensor.name or b"").decode("utf-8", "replace")
        raise ValueError(f"tensor {name!r} is not a per-tensor quantized int8 tensor")
    twin = schema.TensorT()
    twin.name = (tensor.name or b"") + suffix.encode()
    twin.shape = list(tensor.shape) if tensor.shape is not None else []
    twin.shapeSignature = tensor.shapeSignature
    twin.type = schema.TensorType.UINT8
    twin.buffer = 0  # no data: the empty buffer every model starts with
    quantization = schema.QuantizationParametersT()
    quantization.scale = [float(q.scale[0])]
    quantization.zeroPoint = [int(q.zeroPoint[0]) + 128]
    twin.quantization = quantization
    return twin


def with_uint8_io(model: bytes) -> bytes:
    """``model`` (int8 inputs and outputs, per-tensor) with uint8 inputs and outputs.

    Raises:
        ValueError: an input or output that is not a per-tensor quantized int8 tensor.
    """
    m = load(model)
    graph = m.subgraphs[0]
    codes = [c.builtinCode for c in m.operatorCodes]
    if schema.BuiltinOperator.QUANTIZE not in codes:
        code = schema.OperatorCodeT()
        code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.QUANTIZE
        code.version = 1
        m.operatorCodes.append(code)
        codes.append(schema.BuiltinOperator.QUANTIZE)
    quantize = codes.index(schema.BuiltinOperator.QUANTIZE)
    renamed: dict[int, int] = {}
    before, after = [], []
    for index in [int(i) for i in graph.inputs]:
        graph.tensors.append(_uint8_twin(graph.tensors[index], "_uint8"))
        renamed[index] = len(graph.tensors) - 1
        op = schema.OperatorT()
        op.opcodeIndex, op.inputs, op.outputs = quantize, [renamed[index]], [index]
        before.append(op)
    for index in [int(i) for i in graph.outputs]:
        graph.tensors.append(_uint8_twin(graph.tensors[index], "_uint8"))
        renamed[index] = len(graph.tensors) - 1
        op = schema.OperatorT()
        op.opcodeIndex, op.inputs, op.outputs = quantize, [index], [renamed[index]]
        after.append(op)
    graph.operators = [*before, *(graph.operators or []), *after]
    graph.inputs = [renamed[int(i)] for i in graph.inputs]
    graph.outputs = [renamed[int(i)] for i in graph.outputs]
    for signature in m.signatureDefs or []:
        if signature.subgraphIndex == 0:
            for entry in [*(signature.inputs or []), *(signature.outputs or [])]:
                entry.tensorIndex = renamed.get(entry.tensorIndex, entry.tensorIndex)
    return dump(m)
