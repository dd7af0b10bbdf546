"""The smoke-test comparison (pure) and sample handling."""

from __future__ import annotations

import numpy as np
import pytest

from agent.errors import InputError, ManifestError
from agent.inference.modelfile import TensorInfo, inspect_model_file
from agent.updates.smoke import check, fingerprint, random_sample, split_sample
from tests.harness import DATA

FLOAT = TensorInfo("scores", "float32", (1, 4), 0.0, 0)
UINT8 = TensorInfo("scores", "uint8", (1, 4), 1 / 256, 0)


def test_fingerprint_dequantizes_and_ranks() -> None:
    indices, scores = fingerprint(np.array([[10, 200, 30, 200]], dtype=np.uint8), UINT8, k=3)
    assert indices == [1, 3, 2]  # a stable order for ties
    assert scores == pytest.approx([200 / 256, 200 / 256, 30 / 256])


def test_the_same_answer_passes_and_a_different_top1_fails() -> None:
    out = np.array([[0.1, 0.7, 0.15, 0.05]], dtype=np.float32)
    indices, scores = fingerprint(out, FLOAT)
    check(out, FLOAT, indices=indices, scores=scores, tolerance=0.05)
    other = np.array([[0.7, 0.1, 0.15, 0.05]], dtype=np.float32)
    with pytest.raises(ManifestError, match="smoke test failed"):
        check(other, FLOAT, indices=indices, scores=scores, tolerance=0.05)


def test_a_near_tie_within_tolerance_is_not_a_failure() -> None:
    expected = np.array([[0.40, 0.39, 0.11, 0.10]], dtype=np.float32)
    indices, scores = fingerprint(expected, FLOAT)
    device = np.array([[0.39, 0.41, 0.10, 0.10]], dtype=np.float32)  # classes 0 and 1 swap
    check(device, FLOAT, indices=indices, scores=scores, tolerance=0.05)


def test_no_expectation_only_requires_running() -> None:
    check(np.zeros((1, 4), np.float32), FLOAT, indices=[], scores=[], tolerance=0.05)


def test_samples_split_per_input_and_wrong_sizes_are_refused() -> None:
    info = inspect_model_file(DATA / "mobilenet_v1_0.25_128_quant.tflite")
    data = random_sample(info)
    assert data == random_sample(info)  # deterministic
    (array,) = split_sample(info, data)
    assert array.dtype == np.uint8 and array.shape == (1, 128, 128, 3)
    with pytest.raises(InputError, match="need 49152"):
        split_sample(info, data[:-1])
