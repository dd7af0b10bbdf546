"""Train the handwritten-digit classifiers used for routing and optimization, offline.

    python scripts/train_digits.py OUT_DIR

Data: the digits dataset bundled with scikit-learn (1,797 8x8 images, UCI), split in half by
``fleet_server.routing.datasets.digits`` (stratified, fixed seed): the first half trains, the
second half is what ``edgefleet routing evaluate --data sklearn:digits`` scores.

Writes, as committed in ``tests/data/``:
- ``digits_cloud_float.tflite``: a float32 MLP 64-512-256-10, the "large" cloud model;
- ``digits_local_float.tflite``: a float32 MLP 64-16-10, the small device model before
  quantization;
- ``digits_local_int8.tflite``: the same quantized to full int8 (int8 weights and activations,
  float input and output) with ai-edge-quantizer, calibrated on the training half.

Needs scikit-learn and ai-edge-quantizer (the ``dev`` extra); no TensorFlow. Training is
deterministic for a given scikit-learn version, so the files are regenerated only on purpose.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
from ai_edge_litert import schema_py_generated as s

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from make_test_models import _buffer, _finish, _opcode, _operator, _tensor

from fleet_server.routing.datasets import digits


def build_mlp(layers: list[tuple[np.ndarray, np.ndarray]], description: str) -> bytes:
    """A float32 TFLite MLP: FULLY_CONNECTED (+RELU) per hidden layer, then SOFTMAX, with a
    ``serving_default`` signature (input ``pixels`` [1, 64], output ``scores`` [1, 10])."""
    f32 = s.TensorType.FLOAT32
    buffers = [_buffer(None)]
    tensors = [_tensor("pixels", [1, layers[0][0].shape[0]], f32)]
    codes = [_opcode(s.BuiltinOperator.FULLY_CONNECTED), _opcode(s.BuiltinOperator.SOFTMAX)]
    ops = []
    current = 0
    for i, (weights, bias) in enumerate(layers):
        last = i == len(layers) - 1
        # TFLite keeps FC weights as [out, in]; scikit-learn's coefs_ are [in, out].
        buffers += [
            _buffer(np.ascontiguousarray(weights.T, dtype="<f4").tobytes()),
            _buffer(np.asarray(bias, dtype="<f4").tobytes()),
        ]
        out = weights.shape[1]
        tensors += [
            _tensor(f"dense{i}/weights", [out, weights.shape[0]], f32, buffer=len(buffers) - 2),
            _tensor(f"dense{i}/bias", [out], f32, buffer=len(buffers) - 1),
            _tensor("logits" if last else f"dense{i}", [1, out], f32),
        ]
        options = s.FullyConnectedOptionsT()
        options.fusedActivationFunction = (
            s.ActivationFunctionType.NONE if last else s.ActivationFunctionType.RELU
        )
        n = len(tensors)
        ops.append(
            _operator(
                0, [current, n - 3, n - 2], [n - 1], s.BuiltinOptions.FullyConnectedOptions, options
            )
        )
        current = n - 1
    tensors.append(_tensor("scores", [1, layers[-1][0].shape[1]], f32))
    softmax = s.SoftmaxOptionsT()
    softmax.beta = 1.0
    ops.append(
        _operator(1, [current], [len(tensors) - 1], s.BuiltinOptions.SoftmaxOptions, softmax)
    )
    return _with_signature(
        _finish(
            tensors,
            [0],
            [len(tensors) - 1],
            ops=ops,
            codes=codes,
            buffers=buffers,
            description=description.encode(),
        )
    )


def _with_signature(model_bytes: bytes) -> bytes:
    import flatbuffers  # noqa: PLC0415 - optional

    model = s.ModelT.InitFromPackedBuf(model_bytes, 0)
    graph = model.subgraphs[0]
    signature = s.SignatureDefT()
    signature.signatureKey = b"serving_default"
    signature.subgraphIndex = 0
    for index, names in ((graph.inputs, "inputs"), (graph.outputs, "outputs")):
        entries = []
        for tensor in index:
            entry = s.TensorMapT()
            entry.name = graph.tensors[tensor].name
            entry.tensorIndex = tensor
            entries.append(entry)
        setattr(signature, names, entries)
    model.signatureDefs = [signature]
    builder = flatbuffers.Builder(4096)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def train(hidden: tuple[int, ...], x: np.ndarray, y: np.ndarray) -> Any:
    from sklearn.neural_network import MLPClassifier  # noqa: PLC0415 - optional

    model = MLPClassifier(
        hidden_layer_sizes=hidden, max_iter=2000, alpha=1e-3, random_state=0, tol=1e-6
    )
    return model.fit(x, y)


def quantize_int8(float_model: Path, calibration: np.ndarray, out: Path) -> None:
    from ai_edge_quantizer import quantizer, recipe  # noqa: PLC0415 - optional

    q = quantizer.Quantizer(str(float_model))
    q.load_quantization_recipe(recipe.static_wi8_ai8())
    samples = {"serving_default": [{"pixels": row[None, :]} for row in calibration]}
    result = q.calibrate(samples)
    q.quantize(result).export_model(str(out), overwrite=True)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__)
        return 2
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    data = digits()
    for name, hidden in (("digits_cloud_float", (512, 256)), ("digits_local_float", (16,))):
        model = train(hidden, data.train_x, data.train_y)
        layers = list(zip(model.coefs_, model.intercepts_, strict=True))
        accuracy = float((model.predict(data.test_x) == data.test_y).mean())
        text = f"EdgeFleet digits MLP {hidden} (scripts/train_digits.py)"
        (out / f"{name}.tflite").write_bytes(build_mlp(layers, text))
        print(f"{name}: held-out accuracy {accuracy:.4f} (scikit-learn)")
    quantize_int8(out / "digits_local_float.tflite", data.train_x, out / "digits_local_int8.tflite")
    print(f"wrote {out}/digits_*.tflite")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
