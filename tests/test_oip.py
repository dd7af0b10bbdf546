"""The local OIP v2 API against a real gRPC server on a unix socket, in this process."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agent.inference.engine import Engine, EngineOptions
from agent.inference.oip import create_server
from protos import inference_pb2 as pb
from protos import inference_pb2_grpc as pb_grpc


@pytest.fixture
def api(
    tmp_path: Path, color_models: Path
) -> Iterator[tuple[Engine, pb_grpc.GRPCInferenceServiceStub]]:
    engine = Engine(EngineOptions(workers=1, queue_depth=0))
    engine.put(engine.load("pair", "1.0.0", color_models / "pair_float.tflite"))
    engine.put(engine.load("heavy", "1.0.0", color_models / "heavy_float.tflite"))
    server, _ = create_server(engine, socket_path=tmp_path / "oip.sock")
    server.start()
    channel = grpc.insecure_channel(
        f"unix:{tmp_path / 'oip.sock'}",
        options=[("grpc.max_send_message_length", 128 * 1024 * 1024)],
    )
    yield engine, pb_grpc.GRPCInferenceServiceStub(channel)
    channel.close()
    server.stop(0)


def pair_request() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="pair")
    a = request.inputs.add(name="a", datatype="FP32", shape=[1, 4])
    a.contents.fp32_contents.extend([1.0, 2.0, 3.0, 4.0])
    b = request.inputs.add(name="b", datatype="FP32", shape=[1, 4])
    b.contents.fp32_contents.extend([2.0, 2.0, 2.0, 2.0])
    return request


def output(response: pb.ModelInferResponse, name: str) -> np.ndarray:
    for i, out in enumerate(response.outputs):
        if out.name == name:
            data = np.frombuffer(response.raw_output_contents[i], dtype="<f4")
            return data.reshape(tuple(out.shape))
    raise AssertionError(f"no output {name}")


def test_two_inputs_in_typed_contents_and_two_outputs(
    api: tuple[Engine, pb_grpc.GRPCInferenceServiceStub],
) -> None:
    _engine, stub = api
    response = stub.ModelInfer(pair_request())
    assert [o.name for o in response.outputs] == ["sum", "product"]
    assert output(response, "sum").tolist() == [[3.0, 4.0, 5.0, 6.0]]
    assert output(response, "product").tolist() == [[2.0, 4.0, 6.0, 8.0]]


def test_inputs_may_come_in_any_order_and_one_output_may_be_requested(
    api: tuple[Engine, pb_grpc.GRPCInferenceServiceStub],
) -> None:
    _engine, stub = api
    request = pb.ModelInferRequest(model_name="pair")
    request.inputs.add(name="b", datatype="FP32", shape=[1, 4])
    request.inputs.add(name="a", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(np.full((1, 4), 3.0, "<f4").tobytes())  # b
    request.raw_input_contents.append(np.arange(4, dtype="<f4").reshape(1, 4).tobytes())  # a
    request.outputs.add(name="product")
    response = stub.ModelInfer(request)
    assert [o.name for o in response.outputs] == ["product"]
    assert output(response, "product").tolist() == [[0.0, 3.0, 6.0, 9.0]]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: r.inputs[0].contents.fp32_contents.pop(), "needs 4 values"),
        (lambda r: r.inputs.pop(), "takes 2 input(s)"),
        (lambda r: setattr(r.inputs[0], "name", "c"), "has no input 'c'"),
        (lambda r: r.outputs.add(name="nope"), "has no output(s) ['nope']"),
        (lambda r: setattr(r, "model_version", "9"), "version '9' is not loaded"),
    ],
)
def test_bad_requests_get_a_status_and_the_model_keeps_serving(
    api: tuple[Engine, pb_grpc.GRPCInferenceServiceStub], mutate: object, message: str
) -> None:
    _engine, stub = api
    request = pair_request()
    assert callable(mutate)
    mutate(request)
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request)
    assert info.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)
    assert message in str(info.value.details())
    assert output(stub.ModelInfer(pair_request()), "sum").tolist() == [[3.0, 4.0, 5.0, 6.0]]


@pytest.mark.parametrize(
    ("values", "bad"), [([1] * 3071 + [300], "300"), ([-129] + [0] * 3071, "-129")]
)
def test_typed_contents_out_of_the_inputs_range_are_refused_not_wrapped(
    api: tuple[Engine, pb_grpc.GRPCInferenceServiceStub],
    color_models: Path,
    values: list[int],
    bad: str,
) -> None:
    """int_contents are int32 on the wire: an INT8 input of 300 used to become 44 (numpy wraps
    when it casts an array), and the model ran on it."""
    engine, stub = api
    engine.put(engine.load("color8", "1.0.0", color_models / "color_int8.tflite"))
    request = pb.ModelInferRequest(model_name="color8")
    tensor = request.inputs.add(name="image", datatype="INT8", shape=[1, 32, 32, 3])
    tensor.contents.int_contents.extend(values)
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"{bad} is out of range for int8 (-128..127)" in str(info.value.details())
    tensor.contents.ClearField("int_contents")
    tensor.contents.int_contents.extend([127] * 3072)
    assert len(stub.ModelInfer(request).raw_output_contents) == 1


def test_a_full_queue_answers_resource_exhausted(
    api: tuple[Engine, pb_grpc.GRPCInferenceServiceStub],
) -> None:
    _engine, stub = api
    request = pb.ModelInferRequest(model_name="heavy")
    request.inputs.add(name="image", datatype="FP32", shape=[1, 224, 224, 3])
    request.raw_input_contents.append(np.zeros((1, 224, 224, 3), "<f4").tobytes())
    codes: list[grpc.StatusCode] = []
    lock = threading.Lock()

    def client() -> None:
        for _ in range(10):
            try:
                stub.ModelInfer(request)
                code = grpc.StatusCode.OK
            except grpc.RpcError as exc:
                code = exc.code()
            with lock:
                codes.append(code)

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # One interpreter, no queue: with four clients some calls must be turned away at once.
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes
    assert grpc.StatusCode.OK in codes
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}


def test_an_oversized_request_is_refused_without_harm(
    api: tuple[Engine, pb_grpc.GRPCInferenceServiceStub],
) -> None:
    _engine, stub = api
    request = pair_request()
    request.raw_input_contents.append(b"\0" * (65 * 1024 * 1024))
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert output(stub.ModelInfer(pair_request()), "sum").tolist() == [[3.0, 4.0, 5.0, 6.0]]


def test_shared_memory_regions_are_bounded_to_dev_shm(
    api: tuple[Engine, pb_grpc.GRPCInferenceServiceStub],
) -> None:
    _engine, stub = api
    for key in ("/etc/passwd", "relative", "/../etc/passwd", "/no_such_object_edgefleet"):
        with pytest.raises(grpc.RpcError) as info:
            stub.SystemSharedMemoryRegister(
                pb.SystemSharedMemoryRegisterRequest(name="r", key=key, byte_size=16)
            )
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    request = pair_request()
    request.inputs[0].ClearField("contents")
    request.inputs[0].parameters["shared_memory_region"].string_param = "unregistered"
    request.inputs[0].parameters["shared_memory_byte_size"].int64_param = 16
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request)
    assert "register it first" in str(info.value.details())


def test_the_standard_grpc_health_service_follows_readiness(
    api: tuple[Engine, pb_grpc.GRPCInferenceServiceStub], tmp_path: Path
) -> None:
    # Issue 20: no standard health service (grpc_health_probe, Kubernetes' gRPC probes).
    engine, _stub = api
    channel = grpc.insecure_channel(f"unix:{tmp_path / 'oip.sock'}")
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "inference.GRPCInferenceService"):
        answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    engine.unload("pair")
    engine.unload("heavy")
    answer = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert answer.status == health_pb2.HealthCheckResponse.NOT_SERVING
    with pytest.raises(grpc.RpcError) as info:
        health.Check(health_pb2.HealthCheckRequest(service="nonsense"), timeout=5)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    channel.close()


def test_model_configuration_and_statistics_in_tritons_shape(
    api: tuple[Engine, pb_grpc.GRPCInferenceServiceStub],
) -> None:
    # Issue 20: both answered UNIMPLEMENTED.
    _engine, stub = api
    for _ in range(3):
        stub.ModelInfer(pair_request())
    bad = pair_request()
    bad.inputs[0].shape[:] = [1, 5]
    with pytest.raises(grpc.RpcError):
        stub.ModelInfer(bad)  # refused before it reaches the model: not a model failure
    config = stub.ModelConfig(pb.ModelConfigRequest(name="pair")).config
    assert (config.name, config.platform, config.max_batch_size) == ("pair", "tensorflow_lite", 0)
    assert config.backend == "cpu" and config.runtime in {"ai_edge_litert", "tflite_runtime"}
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [
        ("a", pb.TYPE_FP32, [1, 4]), ("b", pb.TYPE_FP32, [1, 4])]  # fmt: skip
    assert [o.name for o in config.output] == ["sum", "product"]
    stats = stub.ModelStatistics(pb.ModelStatisticsRequest(name="pair")).model_stats
    assert [s.name for s in stats] == ["pair"]
    pair = stats[0]
    assert pair.inference_count == pair.execution_count == 3
    assert pair.inference_stats.success.count == 3 and pair.inference_stats.success.ns > 0
    assert pair.inference_stats.compute_infer.count == 3
    assert pair.inference_stats.fail.count == 0
    assert pair.last_inference > 1_700_000_000_000  # milliseconds since the epoch
    assert pair.memory_usage[0].byte_size > 0
    every = stub.ModelStatistics(pb.ModelStatisticsRequest()).model_stats
    assert [s.name for s in every] == ["heavy", "pair"]
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelConfig(pb.ModelConfigRequest(name="nope"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_classification_asks_are_checked(
    api: tuple[Engine, pb_grpc.GRPCInferenceServiceStub],
) -> None:
    _engine, stub = api
    for value, expected in ((5, "has 4 classes; classification asks for 5"),
                            (0, "give at least 1")):  # fmt: skip
        request = pair_request()
        request.outputs.add(name="sum").parameters["classification"].int64_param = value
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(request)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert expected in str(info.value.details())
    request = pair_request()
    request.outputs.add(name="sum").parameters["classification"].double_param = 2.0
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request)
    assert "must be given as int64_param" in str(info.value.details())
    request = pair_request()
    request.outputs.add(name="sum").parameters["classification"].int64_param = 2
    response = stub.ModelInfer(request)
    assert (response.outputs[0].datatype, list(response.outputs[0].shape)) == ("BYTES", [1, 2])
    assert response.raw_output_contents[0] == b"\x03\x00\x00\x006:3\x03\x00\x00\x005:2"


def test_detection_post_process_outputs_report_the_shapes_they_run_with(
    tmp_path: Path, color_models: Path
) -> None:
    # Issue 20: a TFLite_Detection_PostProcess output declares no shape in the file; metadata
    # reported [] and a client sized its buffers from it.
    engine = Engine(EngineOptions(workers=1, queue_depth=0))
    engine.put(engine.load("detect", "1.0.0", color_models / "detect_float.tflite"))
    server, _ = create_server(engine, socket_path=tmp_path / "oip.sock")
    server.start()
    channel = grpc.insecure_channel(f"unix:{tmp_path / 'oip.sock'}")
    try:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        expected = [
            ("boxes", "FP32", [1, 10, 4]),
            ("classes", "FP32", [1, 10]),
            ("scores", "FP32", [1, 10]),
            ("count", "FP32", [1]),
        ]
        metadata = stub.ModelMetadata(pb.ModelMetadataRequest(name="detect"))
        assert [(o.name, o.datatype, list(o.shape)) for o in metadata.outputs] == expected
        config = stub.ModelConfig(pb.ModelConfigRequest(name="detect")).config
        assert [(o.name, list(o.dims)) for o in config.output] == [(n, s) for n, _, s in expected]
        request = pb.ModelInferRequest(model_name="detect")
        request.inputs.add(name="image", datatype="FP32", shape=[1, 32, 32, 3])
        red = np.full((1, 32, 32, 3), -1.0, "<f4")
        red[0, :8, :8, 0] = 1.0  # the top-left cell pure red, the rest black
        request.raw_input_contents.append(red.tobytes())
        response = stub.ModelInfer(request)
        assert [(o.name, list(o.shape)) for o in response.outputs] == [
            (n, s) for n, _, s in expected
        ]
        count = np.frombuffer(response.raw_output_contents[3], dtype="<f4")
        boxes = np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(10, 4)
        assert count.tolist() == [1.0]
        assert boxes[0].tolist() == pytest.approx([0.0, 0.0, 0.25, 0.25])
    finally:
        channel.close()
        server.stop(0)
