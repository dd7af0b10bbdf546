"""Magnitude pruning of a .tflite model's weights.

The weights of every CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED operator (their second
input, when it is a float32 constant) lose their smallest-magnitude fraction: exactly
``floor(sparsity * n)`` values of each tensor become 0. Biases and every other tensor stay.
The file stays dense: LiteRT stores and runs a zero like any other number (its Python
interpreter cannot switch on XNNPACK's sparse kernels), so on a device a pruned model has the
same size and speed; what shrinks is the transport size after compression (the server sends a
zstd copy), and, for a pruned model quantized to int8, the same. No fine-tuning happens here:
accuracy is what pruning alone leaves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import zstandard
from ai_edge_litert import schema_py_generated as schema

from fleet_server.optimize.flat import dump, load

__all__ = ["PRUNABLE_OPS", "PruneResult", "prune", "transport_size", "weight_sparsity"]

# Operator -> the input that holds its weights.
PRUNABLE_OPS = {
    schema.BuiltinOperator.CONV_2D: 1,
    schema.BuiltinOperator.DEPTHWISE_CONV_2D: 1,
    schema.BuiltinOperator.FULLY_CONNECTED: 1,
}
_DTYPES: dict[int, np.dtype[Any]] = {
    schema.TensorType.FLOAT32: np.dtype("<f4"),
    schema.TensorType.INT8: np.dtype("i1"),
    schema.TensorType.UINT8: np.dtype("u1"),
}
TRANSPORT_LEVEL = 10  # the level of the server's zstd copies (fleet_server/artifacts/store.py)


@dataclass(frozen=True)
class PruneResult:
    model: bytes
    tensors: int  # weight tensors pruned
    weights: int  # values in them
    zeros: int  # of which 0 now

    @property
    def sparsity(self) -> float:
        return self.zeros / self.weights if self.weights else 0.0


def _weight_buffers(m: Any) -> list[tuple[int, np.dtype[Any]]]:
    """The buffer indices (and dtypes) of the prunable operators' constant weights."""
    codes = [c.builtinCode for c in m.operatorCodes]
    found: dict[int, np.dtype[Any]] = {}
    for graph in m.subgraphs:
        for op in graph.operators or []:
            position = PRUNABLE_OPS.get(codes[op.opcodeIndex])
            if position is None or op.inputs is None or len(op.inputs) <= position:
                continue
            index = int(op.inputs[position])
            if index < 0:
                continue
            tensor = graph.tensors[index]
            buffer = m.buffers[tensor.buffer]
            if tensor.type in _DTYPES and buffer.data is not None and len(buffer.data):
                found[tensor.buffer] = _DTYPES[tensor.type]
    return sorted(found.items())


def prune(model: bytes, sparsity: float) -> PruneResult:
    """``model`` with the smallest ``sparsity`` (0..1) of each float weight tensor zeroed.

    Raises:
        ValueError: a sparsity outside 0..1, or a model with no float weights to prune.
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity {sparsity} is outside [0, 1)")
    m = load(model)
    targets = [(i, d) for i, d in _weight_buffers(m) if d == np.dtype("<f4")]
    if not targets:
        raise ValueError("no float32 weights of CONV_2D, DEPTHWISE_CONV_2D or FULLY_CONNECTED")
    weights = zeros = 0
    for index, dtype in targets:
        buffer = m.buffers[index]
        values = np.frombuffer(bytes(buffer.data), dtype=dtype).copy()
        cut = int(np.floor(sparsity * values.size))
        if cut:
            values[np.argsort(np.abs(values), kind="stable")[:cut]] = 0.0
        buffer.data = np.frombuffer(values.tobytes(), dtype=np.uint8)
        weights += values.size
        zeros += int(np.count_nonzero(values == 0))
    return PruneResult(dump(m), len(targets), weights, zeros)


def weight_sparsity(model: bytes) -> float | None:
    """The share of zeros in the prunable operators' weights (float or int8), None when the
    model has none; an int8 zero is a stored 0 (symmetric weight quantization)."""
    m = load(model)
    total = zeros = 0
    for index, dtype in _weight_buffers(m):
        values = np.frombuffer(bytes(m.buffers[index].data), dtype=dtype)
        total += values.size
        zeros += int(np.count_nonzero(values == 0))
    return zeros / total if total else None


def transport_size(model: bytes) -> int:
    """Bytes of the zstd copy the server would send."""
    return len(zstandard.ZstdCompressor(level=TRANSPORT_LEVEL).compress(model))
