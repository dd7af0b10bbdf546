"""Model inspection without executing: real Coral models, corrupt files, truncations."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.errors import ModelFileError
from agent.inference.modelfile import inspect_model_bytes, inspect_model_file
from tests.harness import DATA

MOBILENET = DATA / "mobilenet_v1_0.25_128_quant.tflite"
MOBILENET_BYTES = MOBILENET.read_bytes()


def test_reads_tensors_quantization_and_operators_of_a_real_model() -> None:
    info = inspect_model_file(MOBILENET)
    (inp,) = info.inputs
    assert (inp.dtype, inp.shape) == ("uint8", (1, 128, 128, 3))
    assert inp.scale == pytest.approx(0.0078125)
    assert inp.zero_point == 128
    (out,) = info.outputs
    assert out.shape == (1, 1001)
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "SOFTMAX"} <= set(info.builtin_ops)
    assert not info.edgetpu


def test_detects_edgetpu_compiled_models() -> None:
    info = inspect_model_file(DATA / "mobilenet_v1_0.25_128_quant_edgetpu.tflite")
    assert info.edgetpu
    assert info.custom_ops == ("edgetpu-custom-op",)


def test_rejects_a_file_that_is_not_tflite() -> None:
    with pytest.raises(ModelFileError, match="not a TFLite model"):
        inspect_model_file(DATA / "cat.bmp")


def test_rejects_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="cannot read model"):
        inspect_model_file(tmp_path / "nope.tflite")


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=0, max_value=len(MOBILENET_BYTES) // 4))
def test_truncated_models_raise_model_file_error_and_nothing_else(cut: int) -> None:
    data = MOBILENET_BYTES[:cut]
    try:
        inspect_model_bytes(data)
    except ModelFileError:
        return
    # Some prefixes still hold a complete header; then the parse must be coherent.


def test_a_truncated_model_is_said_whole_not_cut_mid_number() -> None:
    # The parser's own text was cut at 120 characters: "(actual buffer size is 300" for a
    # file of 3000 bytes.
    with pytest.raises(ModelFileError) as refused:
        inspect_model_bytes(MOBILENET_BYTES[:3000])
    assert str(refused.value) == (
        "truncated or corrupt TFLite model: 3000 bytes, and its tables point past the end (a "
        "partial copy or download?)"
    )


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=0, max_size=512))
def test_random_bytes_after_the_identifier_never_crash(tail: bytes) -> None:
    data = tail[:4].ljust(4, b"\0") + b"TFL3" + tail[4:]
    with contextlib.suppress(ModelFileError):
        inspect_model_bytes(data)
