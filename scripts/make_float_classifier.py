"""Make a float32 image classifier from the Coral MobileNet in tests/data, by dequantizing it.

    python scripts/make_float_classifier.py OUT.tflite [--source tests/data/...quant.tflite]
                                            [--keep-signature]

``mobilenet_v1_0.25_128_quant.tflite`` (Apache-2.0, see tests/data/LICENSE) is a uint8 model
with per-tensor quantization: every constant becomes ``scale * (q - zero_point)`` in float32,
every tensor float32 without quantization parameters, every operator its float kernel (version
1). The input then takes pixels normalized to [-1, 1] (its quantization was scale 1/128, zero
point 128), as the model's TFLite metadata (mean 127.5, std 127.5) says, which is kept. The
result classifies as the quantized model does, up to rounding; it is a real 128x128x3 image
model for ``edgefleet model build`` tests: float, 1.9 MB, and like many real float models it
has no signature (the Coral file has none), unless ``--keep-signature`` adds the one the
TFLite converter would (``serving_default``, entries named after the tensors).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
from ai_edge_litert import schema_py_generated as s

from fleet_server.optimize.flat import dump, load
from fleet_server.optimize.signature import add_signature

REPO = Path(__file__).resolve().parent.parent
SOURCE = REPO / "tests" / "data" / "mobilenet_v1_0.25_128_quant.tflite"
_DTYPES = {s.TensorType.UINT8: np.uint8, s.TensorType.INT8: np.int8, s.TensorType.INT32: np.int32}


def _dequantized(data: bytes, tensor: Any) -> bytes:
    q = tensor.quantization
    values = np.frombuffer(data, dtype=_DTYPES[tensor.type]).astype(np.float64)
    scale = np.asarray(q.scale, dtype=np.float64)
    zero = np.asarray(q.zeroPoint, dtype=np.float64)
    if scale.size > 1:  # per channel, along quantizedDimension
        shape = [1] * len(tensor.shape)
        shape[q.quantizedDimension] = scale.size
        values = values.reshape(tensor.shape)
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return ((values - zero) * scale).astype("<f4").tobytes()


def dequantize(model: bytes, *, signature: bool = False) -> bytes:
    """The float32 version of a per-tensor or per-channel quantized TFLite model."""
    m = load(model)
    for graph in m.subgraphs:
        for tensor in graph.tensors:
            q = tensor.quantization
            quantized = q is not None and q.scale is not None and len(q.scale) > 0
            if not quantized:
                continue  # e.g. a reshape's int32 shape: stays as it is
            buffer = m.buffers[tensor.buffer]
            if buffer.data is not None and len(buffer.data):
                buffer.data = np.frombuffer(_dequantized(bytes(buffer.data), tensor), np.uint8)
            tensor.type = s.TensorType.FLOAT32
            tensor.quantization = None
    for code in m.operatorCodes:
        code.version = 1
    out = dump(m)
    return add_signature(out) if signature else out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--source", type=Path, default=SOURCE)
    parser.add_argument("--keep-signature", action="store_true",
                        help="add a serving_default signature (the source has none)")  # fmt: skip
    args = parser.parse_args(argv)
    args.out.write_bytes(dequantize(args.source.read_bytes(), signature=args.keep_signature))
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
