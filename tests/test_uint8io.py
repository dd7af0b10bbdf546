"""The Edge TPU-ready variant (issue 24 item 4): the int8 model with uint8 inputs and outputs,
exactly equivalent to it (values shifted by 128), still a full_int8 kind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter

from agent.inference.modelfile import inspect_model_file
from fleet_server.optimize.build import build
from fleet_server.optimize.uint8io import with_uint8_io
from fleet_server.routing.datasets import digits
from tests.harness import DATA


def run(path: Path, x: np.ndarray) -> np.ndarray:
    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    return np.asarray(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]))


@pytest.fixture(scope="module")
def int8_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("build") / "digits"
    data = digits()
    build(DATA / "digits_cloud_float.tflite", calibration=data.train_x[:100], out=out)
    return out / "int8.tflite"


def test_uint8_io_is_the_int8_model_shifted_by_128(int8_model: Path, tmp_path: Path) -> None:
    path = tmp_path / "u8.tflite"
    path.write_bytes(with_uint8_io(int8_model.read_bytes()))
    info, source = inspect_model_file(path), inspect_model_file(int8_model)
    assert [t.dtype for t in (*info.inputs, *info.outputs)] == ["uint8", "uint8"]
    assert info.inputs[0].scale == source.inputs[0].scale
    assert info.inputs[0].zero_point == source.inputs[0].zero_point + 128
    assert info.quantization == "full_int8"
    x = np.random.default_rng(0).integers(-128, 128, size=(20, 1, 64), dtype=np.int8)
    for row in x:
        expected = run(int8_model, row).astype(np.int16) + 128
        got = run(path, (row.astype(np.int16) + 128).astype(np.uint8)).astype(np.int16)
        assert np.array_equal(expected, got)


def test_a_model_without_int8_ends_is_refused() -> None:
    with pytest.raises(ValueError, match="not a per-tensor quantized int8 tensor"):
        with_uint8_io((DATA / "digits_cloud_float.tflite").read_bytes())
    with pytest.raises(ValueError, match="not a per-tensor quantized int8 tensor"):
        with_uint8_io((DATA / "mobilenet_v1_0.25_128_quant.tflite").read_bytes())  # uint8
