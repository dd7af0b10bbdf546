"""Per-model input validation ([validation.MODEL]): NaN, infinities and out-of-range values are
refused before the model runs, counted apart from the model's own errors, and changed by a
reload. The API is a real gRPC server on a unix socket, in this process."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from agent.config import AgentConfig, ValidationSection, load_config
from agent.daemon import plan_reload
from agent.errors import ConfigError
from agent.inference.engine import Engine, EngineOptions
from agent.inference.metrics_http import render
from agent.inference.modelfile import inspect_model_file
from agent.inference.oip import create_server
from agent.inference.validation import InputRule, InvalidInputError
from protos import inference_pb2 as pb
from protos import inference_pb2_grpc as pb_grpc

Api = tuple[Engine, pb_grpc.GRPCInferenceServiceStub]


@pytest.fixture
def api(tmp_path: Path, color_models: Path) -> Iterator[Api]:
    engine = Engine(EngineOptions(workers=1, queue_depth=2))
    engine.put(engine.load("float", "1.0.0", color_models / "color_float.tflite"))
    engine.put(engine.load("int8", "1.0.0", color_models / "color_int8.tflite"))
    server, _ = create_server(engine, socket_path=tmp_path / "oip.sock")
    server.start()
    channel = grpc.insecure_channel(f"unix:{tmp_path / 'oip.sock'}")
    yield engine, pb_grpc.GRPCInferenceServiceStub(channel)
    channel.close()
    server.stop(0)


def _request(engine: Engine, model: str, values: np.ndarray, datatype: str = "") -> Any:
    tensor = engine.get(model).info.inputs[0]
    datatype = datatype or {"float32": "FP32", "int8": "INT8", "uint8": "UINT8"}[tensor.dtype]
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name=tensor.name, datatype=datatype, shape=list(tensor.shape))
    wire = "<f4" if datatype == "FP32" else tensor.dtype
    request.raw_input_contents.append(np.broadcast_to(values, tensor.shape).astype(wire).tobytes())
    return request


def _refused(stub: pb_grpc.GRPCInferenceServiceStub, request: Any) -> str:
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    return str(caught.value.details())


def _counters(engine: Engine, model: str) -> tuple[int, int, int]:
    stats = engine.get(model).stats.snapshot()
    return stats.invalid, stats.errors, stats.requests


def test_nan_and_range_are_refused_only_where_a_rule_asks(api: Api) -> None:
    engine, stub = api
    nan = np.array(np.nan, dtype=np.float32)
    # Without a rule nothing is read: NaN runs (and answers NaN), as before.
    stub.ModelInfer(_request(engine, "float", nan))
    engine.set_input_rules({"float": InputRule(low=0.0, high=1.0)})
    detail = _refused(stub, _request(engine, "float", nan))
    assert "NaN or infinite" in detail and "[validation.float]" in detail
    detail = _refused(stub, _request(engine, "float", np.array(255.0)))
    assert "values from 255 to 255 are outside [0, 1]" in detail
    stub.ModelInfer(_request(engine, "float", np.array(0.5)))  # in range: served
    # Two refusals counted as invalid, neither as a request the model ran nor as its error
    # (a rollout's health gate reads those): the client's fault, not the release's.
    invalid, errors, _ = _counters(engine, "float")
    assert (invalid, errors) == (2, 0)
    assert 'edgefleet_inference_invalid_total{model="float"' in render(engine)
    # The other model has no rule.
    stub.ModelInfer(_request(engine, "int8", np.array(127)))
    # finite = false lets NaN through while keeping the range.
    engine.set_input_rules({"float": InputRule(finite=False, low=0.0, high=1.0)})
    stub.ModelInfer(_request(engine, "float", nan))


def test_a_quantized_input_is_judged_in_real_numbers(api: Api) -> None:
    engine, stub = api
    tensor = engine.get("int8").info.inputs[0]
    assert tensor.quantized
    engine.set_input_rules({"int8": InputRule(low=0.0, high=0.5)})
    # Raw integers stand for (q - zero_point) * scale: the highest one is far above 0.5.
    top = np.iinfo(np.dtype(tensor.dtype)).max
    detail = _refused(stub, _request(engine, "int8", np.array(top)))
    assert f"{(top - tensor.zero_point) * tensor.scale:g}" in detail
    inside = round(0.25 / tensor.scale + tensor.zero_point)
    stub.ModelInfer(_request(engine, "int8", np.array(inside)))
    # FP32 real values are judged before they are quantized (a cast would hide a NaN).
    assert "NaN or infinite" in _refused(
        stub, _request(engine, "int8", np.array(np.nan, dtype=np.float32), "FP32")
    )
    assert "outside [0, 0.5]" in _refused(stub, _request(engine, "int8", np.array(0.9), "FP32"))
    stub.ModelInfer(_request(engine, "int8", np.array(0.4), "FP32"))


def test_the_rule_alone(color_models: Path) -> None:
    info = inspect_model_file(color_models / "color_float.tflite").inputs[0]
    rule = InputRule(low=-1.0, high=1.0)
    rule.check("m", "x", np.array([], dtype=np.float32), info)  # nothing to judge
    with pytest.raises(InvalidInputError, match="1 value"):
        rule.check("m", "x", np.array([0.0, np.inf], dtype=np.float32), info)
    # Without finite, the range judges the finite values only.
    InputRule(finite=False, low=-1.0, high=1.0).check("m", "x", np.array([np.nan, 0.5]), info)
    with pytest.raises(ValueError, match="empty"):
        InputRule(low=1.0, high=0.0)
    with pytest.raises(ValueError, match="empty"):
        InputRule(low=math.nan)


def test_the_config_tables_and_a_reload(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text("[validation.cam]\nmin = 0\nmax = 1.0\n\n[validation.mic]\nfinite = false\n")
    config = load_config(path)
    assert config.validation == {
        "cam": ValidationSection(finite=True, min=0.0, max=1.0),
        "mic": ValidationSection(finite=False),
    }
    plan = plan_reload(AgentConfig(), config)
    assert plan.config.validation == config.validation
    assert "input validation of 2 model(s)" in plan.changes
    for text, error in (
        ("[validation.cam]\nmin = 2\nmax = 1\n", "validation.cam: min 2 must be at most max 1"),
        ("[validation.cam]\nmin = nan\n", "validation.cam: min nan"),
        ("[validation.cam]\nlow = 0\n", r"unknown key\(s\) in \[validation.cam\]: low"),
        ('[validation.cam]\nmax = "1"\n', "validation.cam.max must be a number"),
    ):
        path.write_text(text)
        with pytest.raises(ConfigError, match=error):
            load_config(path)
