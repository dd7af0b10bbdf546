"""The smoke test: a sample input, run before activation, compared with what the server saw.

Shared by the server (which computes the expectation at push time) and the agent (which checks
it before switching). The comparison is on the first output, flattened and dequantized: the
score the device gives to each expected top index must be within ``tolerance`` of the server's,
and no other class may beat the expected top-1 by more than ``tolerance`` (so a near tie between
two classes does not fail a model that is fine).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from agent.errors import InputError, ManifestError
from agent.inference.modelfile import ModelInfo, TensorInfo

if TYPE_CHECKING:
    from agent.inference.engine import LoadedModel
    from protos import manifest_pb2

__all__ = [
    "DEFAULT_TOLERANCE",
    "TOP_K",
    "check",
    "fingerprint",
    "random_sample",
    "run_on",
    "split_sample",
]

DEFAULT_TOLERANCE = 0.05
TOP_K = 5


def _nbytes(tensor: TensorInfo) -> int:
    return int(np.prod(tensor.shape)) * np.dtype(tensor.dtype).itemsize if tensor.shape else 0


def split_sample(info: ModelInfo, data: bytes) -> list[np.ndarray]:
    """The sample's bytes as one array per model input.

    Raises:
        InputError: the sample's length does not match the inputs.
    """
    sizes = [_nbytes(t) for t in info.inputs]
    if len(data) != sum(sizes):
        raise InputError(f"sample has {len(data)} bytes; the model's inputs need {sum(sizes)}")
    arrays, offset = [], 0
    for tensor, size in zip(info.inputs, sizes, strict=True):
        dtype = np.dtype(tensor.dtype).newbyteorder("<")
        chunk = np.frombuffer(data, dtype=dtype, count=size // dtype.itemsize, offset=offset)
        arrays.append(chunk.astype(np.dtype(tensor.dtype)).reshape(tensor.shape))
        offset += size
    return arrays


def random_sample(info: ModelInfo, seed: int = 0) -> bytes:
    """A deterministic sample for models pushed without one: it proves the numerics agree."""
    rng = np.random.default_rng(seed)
    parts = []
    for tensor in info.inputs:
        dtype = np.dtype(tensor.dtype)
        if dtype.kind in "iu":
            limits = np.iinfo(dtype)
            data = rng.integers(limits.min, limits.max, tensor.shape, dtype=dtype, endpoint=True)
        else:
            data = rng.standard_normal(tensor.shape).astype(dtype)
        parts.append(data.astype(dtype.newbyteorder("<")).tobytes())
    return b"".join(parts)


def _scores(output: np.ndarray, tensor: TensorInfo) -> np.ndarray:
    scores = output.astype(np.float64).reshape(-1)
    if tensor.quantized:
        scores = (scores - tensor.zero_point) * tensor.scale
    return scores


def fingerprint(
    output: np.ndarray, tensor: TensorInfo, k: int = TOP_K
) -> tuple[list[int], list[float]]:
    """The top ``k`` indices of the first output and their (dequantized) scores."""
    scores = _scores(output, tensor)
    order = np.argsort(-scores, kind="stable")[: min(k, scores.size)]
    return [int(i) for i in order], [float(scores[i]) for i in order]


def check(
    output: np.ndarray,
    tensor: TensorInfo,
    *,
    indices: Sequence[int],
    scores: Sequence[float],
    tolerance: float,
) -> None:
    """Compare a device's first output with the expectation.

    Raises:
        ManifestError: the output differs beyond the tolerance.
    """
    if not indices:
        return
    actual = _scores(output, tensor)
    if max(indices) >= actual.size:
        raise ManifestError(
            f"smoke test expects class {max(indices)}; the output has {actual.size}"
        )
    for index, expected in zip(indices, scores, strict=True):
        if abs(actual[index] - expected) > tolerance:
            raise ManifestError(
                f"smoke test failed: score of class {index} is {actual[index]:.4f}, expected "
                f"{expected:.4f} +/- {tolerance}"
            )
    best = int(np.argmax(actual))
    if actual[best] - actual[indices[0]] > tolerance:
        raise ManifestError(
            f"smoke test failed: top-1 is class {best} ({actual[best]:.4f}), expected class "
            f"{indices[0]} ({scores[0]:.4f})"
        )


def run_on(model: LoadedModel, test: manifest_pb2.SmokeTest | None, sample: bytes) -> None:
    """Run the manifest's smoke test (or, without one, the model once on zeros).

    Raises:
        ManifestError: the output differs from the expectation beyond its tolerance.
        InferenceError: the model fails to run.
        InputError: the sample does not fit the model.
    """
    if test is None or not sample:
        inputs = [np.zeros(t.shape, dtype=np.dtype(t.dtype)) for t in model.info.inputs]
    else:
        inputs = split_sample(model.info, sample)
    outputs = model.infer(inputs, record=False)
    if len(outputs) != len(model.info.outputs):
        raise ManifestError(f"model {model.name} produced {len(outputs)} outputs")
    if test is not None:
        check(
            outputs[0],
            model.info.outputs[0],
            indices=test.top_indices,
            scores=test.top_scores,
            tolerance=test.tolerance or DEFAULT_TOLERANCE,
        )
