"""The slice end to end, with real processes: server, mosquitto, two agents, real models."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from agent.inference.modelfile import inspect_model_file
from agent.inference.preprocess import image_to_tensor, load_image
from agent.ports import EXIT_PORT_IN_USE
from protos import inference_pb2, manifest_pb2
from tests import oip
from tests.harness import (
    DATA,
    REPO,
    Agent,
    Server,
    app_folder,
    free_port,
    make_agent,
    make_app_agent,
    run_as_app_user,
    run_cli,
    start_server,
    wait_for,
)

pytestmark = pytest.mark.slow

MOBILENET = DATA / "mobilenet_v1_0.25_128_quant.tflite"


def model_state(server: Server, device: str, model: str) -> dict[str, Any] | None:
    for d in server.devices():
        if d["device_id"] == device:
            for m in d.get("models", []):
                if m["model_name"] == model:
                    return dict(m)
    return None


def wait_state(server: Server, device: str, model: str, version: str, state: str) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        m = model_state(server, device, model)
        return m if m and m["version"] == version and m["state"] == state else None

    return wait_for(f"{device} to report {model} {version} {state}", probe, timeout=60)


def cat_tensor() -> np.ndarray:
    tensor = inspect_model_file(MOBILENET).inputs[0]
    return image_to_tensor(load_image(DATA / "cat.bmp"), tensor)


def predict_top1() -> int:
    out = run_cli("edgefleet-agent", "predict", str(MOBILENET), str(DATA / "cat.bmp"), "--json")
    return int(json.loads(out.stdout)["top_k"][0]["index"])


@pytest.fixture(scope="module")
def fleet(
    tmp_path_factory: pytest.TempPathFactory, broker_url: str
) -> Iterator[tuple[Server, list[Agent]]]:
    """A server on mosquitto with mobilenet 1.0.0 deployed and two agents running it."""
    folder = tmp_path_factory.mktemp("fleet")
    server = start_server(folder, broker_url)
    server.admin(
        "models",
        "push",
        str(MOBILENET),
        "--name",
        "mobilenet",
        "--version",
        "1.0.0",
        "--variant",
        "int8",
        "--deploy",
    )
    agents = [
        make_agent(folder, "dev-a", server, metrics_port=free_port()).start(),
        make_agent(folder, "dev-b", server).start(),
    ]
    try:
        for agent in agents:
            wait_state(server, agent.name, "mobilenet", "1.0.0", "INSTALLED")
        yield server, agents
    finally:
        for agent in agents:
            agent.stop()
        server.proc.stop()


def test_both_agents_install_the_signed_model_and_classify_the_cat(
    fleet: tuple[Server, list[Agent]],
) -> None:
    _server, agents = fleet
    expected = predict_top1()
    for agent in agents:
        scores, response = oip.infer(agent.socket, "mobilenet", "input", cat_tensor())
        assert int(np.argmax(scores)) == expected
        assert response.model_version == "1.0.0"
        assert response.parameters["edgefleet.path"].string_param == "local"


def test_telemetry_reaches_the_server_over_mqtt_v5(fleet: tuple[Server, list[Agent]]) -> None:
    server, agents = fleet
    agent = agents[0]
    for _ in range(3):
        oip.infer(agent.socket, "mobilenet", "input", cat_tensor())

    def telemetry() -> dict[str, Any] | None:
        for d in server.devices():
            report = d.get("last_telemetry") or {}
            for m in report.get("models", []):
                if d["device_id"] == agent.name and int(m.get("requests", 0)) >= 3:
                    return dict(report)
        return None

    report = wait_for("telemetry with 3 requests", telemetry)
    assert int(report["seq"]) >= 1
    model = report["models"][0]
    assert model["model_name"] == "mobilenet" and model["version"] == "1.0.0"
    assert model["backend"] == "cpu"
    listing = server.admin("devices", "list").stdout
    assert "dev-a" in listing and "dev-b" in listing and "mobilenet 1.0.0 INSTALLED" in listing
    # mosquitto speaks MQTT v5: the agent must not have fallen back.
    assert "falling back to 3.1.1" not in agent.output()


def test_tritonclient_gets_the_same_top1_as_predict(
    fleet: tuple[Server, list[Agent]], tmp_path: Path
) -> None:
    _server, agents = fleet
    python = os.environ.get("EDGEFLEET_TRITON_PYTHON") or str(REPO / ".venv-triton/bin/python")
    assert Path(python).exists(), "tritonclient's environment is missing: run `make test`"
    sample = tmp_path / "cat.npy"
    np.save(sample, cat_tensor())
    result = subprocess.run(
        [
            python,
            str(REPO / "tests/tools/oip_client.py"),
            f"unix:{agents[1].socket}",
            "mobilenet",
            str(sample),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["server"] == "edgefleet-agent"
    assert answer["input"] == "input"
    assert answer["top1"] == predict_top1()
    assert answer["parameters"]["edgefleet.path"]["string_param"] == "local"


def test_float_requests_are_quantized_and_answered_in_float(
    fleet: tuple[Server, list[Agent]],
) -> None:
    _server, agents = fleet
    tensor = inspect_model_file(MOBILENET).inputs[0]
    real = (cat_tensor().astype(np.float32) - tensor.zero_point) * tensor.scale
    scores, response = oip.infer(agents[0].socket, "mobilenet", "input", real)
    assert response.outputs[0].datatype == "FP32"
    assert int(np.argmax(scores)) == predict_top1()
    assert 0.0 < float(scores.max()) <= 1.0  # dequantized softmax, not raw uint8


def test_tritonclient_drives_the_model_repository_extension(
    fleet: tuple[Server, list[Agent]], tmp_path: Path
) -> None:
    _server, agents = fleet
    python = os.environ.get("EDGEFLEET_TRITON_PYTHON") or str(REPO / ".venv-triton/bin/python")
    result = subprocess.run(
        [
            python,
            str(REPO / "tests/tools/oip_client.py"),
            f"unix:{agents[1].socket}",
            "mobilenet",
            "-",
            "--repository",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["before"] == [{"name": "mobilenet", "version": "1.0.0", "state": "READY"}]
    assert answer["ready_after_unload"] is False
    assert answer["after_unload"][0]["state"] == "UNAVAILABLE"
    assert answer["ready_after_load"] is True
    # Unloaded on request means unloaded: inference is refused until it is loaded again,
    # and the load above brought it back.
    scores, _ = oip.infer(agents[1].socket, "mobilenet", "input", cat_tensor())
    assert int(np.argmax(scores)) == predict_top1()


def test_prometheus_metrics_count_the_requests(fleet: tuple[Server, list[Agent]]) -> None:
    _server, agents = fleet
    config = agents[0].config.read_text()
    port = int(config.split('metrics_listen = "127.0.0.1:')[1].split('"')[0])
    before = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    oip.infer(agents[0].socket, "mobilenet", "input", cat_tensor())
    after = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    labels = 'model="mobilenet",version="1.0.0",backend="cpu"'

    def count(text: str) -> int:
        prefix = f"edgefleet_inference_requests_total{{{labels}}} "
        return int(next(line for line in text.splitlines() if line.startswith(prefix)).split()[-1])

    assert count(after) == count(before) + 1
    assert "edgefleet_engine_loaded_models 1" in after
    assert f'edgefleet_inference_compute_seconds_bucket{{{labels},le="+Inf"}}' in after
    assert "edgefleet_agent_telemetry_degraded 0" in after
    assert "edgefleet_agent_spool_dropped_total 0" in after


def test_the_local_socket_is_owner_and_group_only(fleet: tuple[Server, list[Agent]]) -> None:
    _server, agents = fleet
    assert agents[0].socket.stat().st_mode & 0o777 == 0o660


def test_oip_errors_are_status_codes_not_crashes(fleet: tuple[Server, list[Agent]]) -> None:
    _server, agents = fleet
    stub = oip.stub(agents[0].socket)
    assert stub.ServerLive(inference_pb2.ServerLiveRequest()).live
    assert stub.ServerReady(inference_pb2.ServerReadyRequest()).ready
    assert not stub.ModelReady(inference_pb2.ModelReadyRequest(name="nope")).ready
    meta = stub.ModelMetadata(inference_pb2.ModelMetadataRequest(name="mobilenet"))
    assert meta.inputs[0].datatype == "UINT8" and list(meta.inputs[0].shape) == [1, 128, 128, 3]
    with pytest.raises(grpc.RpcError) as info:
        oip.infer(agents[0].socket, "nope", "input", cat_tensor())
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as info:
        oip.infer(agents[0].socket, "mobilenet", "input", cat_tensor().astype(np.int8))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "must be UINT8 (or FP32 real values)" in str(info.value.details())
    request = inference_pb2.ModelInferRequest(model_name="mobilenet")
    request.inputs.add(name="input", datatype="UINT8", shape=[1, 128, 128, 3])
    request.raw_input_contents.append(b"\0" * 10)
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture
def one_agent_fleet(
    tmp_path: Path,
    broker_url: str,
    server_factory: Callable[..., Server],
    agent_factory: Callable[..., Agent],
    color_models: Path,
) -> tuple[Server, Agent]:
    """A server with colors 1.0.0 (float) installed on one agent."""
    server = server_factory(broker_url)
    server.admin(
        "models",
        "push",
        str(color_models / "color_float.tflite"),
        "--name",
        "colors",
        "--version",
        "1.0.0",
        "--deploy",
    )
    agent = agent_factory("dev-c", server)
    wait_state(server, "dev-c", "colors", "1.0.0", "INSTALLED")
    return server, agent


def colors_still_served(agent: Agent, version: str) -> bool:
    stub = oip.stub(agent.socket)
    assert stub.ModelReady(inference_pb2.ModelReadyRequest(name="colors", version=version)).ready
    red = np.zeros((1, 32, 32, 3), dtype=np.float32)
    red[..., 0] = 1.0
    scores, _ = oip.infer(agent.socket, "colors", "image", red)
    assert int(np.argmax(scores)) == 0
    return True


def test_tampered_manifest_is_refused_and_the_working_model_stays(
    one_agent_fleet: tuple[Server, Agent], color_models: Path
) -> None:
    server, agent = one_agent_fleet
    server.admin(
        "models",
        "push",
        str(color_models / "color_int8.tflite"),
        "--name",
        "colors",
        "--version",
        "1.1.0",
    )
    # An attacker with write access to the server's database changes the signed manifest.
    with sqlite3.connect(server.data_dir / "fleet.db") as db:
        (raw,) = db.execute(
            "SELECT envelope FROM models WHERE model_name='colors' AND version='1.1.0'"
        ).fetchone()
        envelope = manifest_pb2.Envelope.FromString(raw)
        manifest = manifest_pb2.Manifest.FromString(envelope.payload)
        manifest.size += 1
        envelope.payload = manifest.SerializeToString()
        db.execute(
            "UPDATE models SET envelope=? WHERE model_name='colors' AND version='1.1.0'",
            (envelope.SerializeToString(),),
        )
    server.admin("deploy", "colors", "1.1.0")
    state = wait_state(server, "dev-c", "colors", "1.1.0", "FAILED")
    assert "signature does not verify" in state["detail"]
    colors_still_served(agent, "1.0.0")


def test_artifact_that_does_not_match_its_hash_is_discarded(
    one_agent_fleet: tuple[Server, Agent], color_models: Path
) -> None:
    server, agent = one_agent_fleet
    pushed = server.admin(
        "models",
        "push",
        str(color_models / "color_int8.tflite"),
        "--name",
        "colors",
        "--version",
        "1.1.0",
        "--no-compress",
        check=True,
    )
    assert "signed" in pushed.stdout
    # Corrupt the stored artifact after signing (disk rot, or a swapped file), same length,
    # before the deployment: deployed at once, a fast agent could fetch it before the damage.
    (artifact,) = [
        p
        for p in (server.data_dir / "artifacts").glob("*.tflite")
        if p.read_bytes() == (color_models / "color_int8.tflite").read_bytes()
    ]
    data = bytearray(artifact.read_bytes())
    data[-1] ^= 0xFF
    artifact.write_bytes(bytes(data))
    server.admin("deploy", "colors", "1.1.0")
    state = wait_state(server, "dev-c", "colors", "1.1.0", "FAILED")
    assert "does not match the signed manifest" in state["detail"]
    colors_still_served(agent, "1.0.0")
    assert not list((agent.folder / "state" / "staging").glob("*.part"))


def test_tritonclient_sends_a_1080p_frame_through_shared_memory(
    broker_url: str,
    server_factory: Callable[..., Server],
    color_models: Path,
) -> None:
    server = server_factory(broker_url)
    server.admin(
        "models",
        "push",
        str(color_models / "color_uint8_1080p.tflite"),
        "--name",
        "frames",
        "--version",
        "1.0.0",
        "--deploy",
    )
    # The agent refuses shared memory as root (issue 20): it and the app run unprivileged.
    with app_folder("edgefleet-e2e-shm-") as shared:
        agent = make_app_agent(shared, "dev-s", server).start(as_app_user=True)
        try:
            wait_state(server, "dev-s", "frames", "1.0.0", "INSTALLED")
            frame = np.zeros((1, 1080, 1920, 3), dtype=np.uint8)
            frame[..., 2] = 200  # a blue frame
            sample = shared / "frame.npy"
            np.save(sample, frame)
            python = os.environ.get("EDGEFLEET_TRITON_PYTHON") or str(
                REPO / ".venv-triton/bin/python"
            )
            result = run_as_app_user(
                [python, str(REPO / "tests/tools/oip_client.py"), f"unix:{agent.socket}",
                 "frames", str(sample), "--shm"],
                timeout=120,
            )  # fmt: skip
        finally:
            agent.stop()
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["regions"] == ["frame_in", "scores_out"]
    assert answer["after_unregister"] == ["scores_out"]
    assert answer["shm"] == pytest.approx(answer["inline"], abs=1e-6)
    assert int(np.argmax(answer["shm"])) == 2  # blue
    print(f"1080p frame: inline {answer['inline_ms']:.2f} ms, shm {answer['shm_ms']:.2f} ms")


def test_killed_agent_restarts_serving_its_model_with_the_server_down(
    one_agent_fleet: tuple[Server, Agent],
) -> None:
    server, agent = one_agent_fleet
    assert agent.stop(9) == -9
    server.proc.stop()
    agent.start()
    wait_for("the restarted agent to serve colors", lambda: colors_still_served(agent, "1.0.0"))
    wait_for("a logged retry", lambda: "unreachable" in agent.output())
    assert agent.proc is not None and agent.proc.popen.poll() is None


def test_new_version_replaces_the_old_one(
    one_agent_fleet: tuple[Server, Agent], color_models: Path
) -> None:
    server, agent = one_agent_fleet
    server.admin(
        "models",
        "push",
        str(color_models / "color_int8.tflite"),
        "--name",
        "colors",
        "--version",
        "1.1.0",
        "--deploy",
    )
    wait_state(server, "dev-c", "colors", "1.1.0", "INSTALLED")
    meta = oip.stub(agent.socket).ModelMetadata(inference_pb2.ModelMetadataRequest(name="colors"))
    assert list(meta.versions) == ["1.1.0"] and meta.inputs[0].datatype == "INT8"


def test_embedded_broker_default_with_mqtt_311_fallback(
    server_factory: Callable[..., Server], agent_factory: Callable[..., Agent]
) -> None:
    server = server_factory(None)  # no --mqtt-url: the server starts amqtt in process
    server.admin(
        "models", "push", str(MOBILENET), "--name", "mobilenet", "--version", "1.0.0", "--deploy"
    )
    agent = agent_factory("dev-e", server)
    wait_state(server, "dev-e", "mobilenet", "1.0.0", "INSTALLED")
    oip.infer(agent.socket, "mobilenet", "input", cat_tensor())

    def telemetry() -> bool:
        return any(
            (d.get("last_telemetry") or {}).get("models", [{}])[0].get("requests", 0)
            for d in server.devices()
        )

    wait_for("telemetry through the embedded broker", telemetry)
    assert "falling back to 3.1.1" in agent.output()


def test_a_taken_api_port_stops_the_agent_with_one_clear_line(
    tmp_path: Path, broker_url: str, server_factory: Callable[..., Server]
) -> None:
    """grpcio reports a taken port with RuntimeError, which came out as a traceback. That such
    a start is no crash of the model: tests/test_lifecycle_process.py."""
    server = server_factory(broker_url)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        agent = make_agent(tmp_path, "dev-p", server)
        text = agent.config.read_text().replace("[api]\n", f'[api]\nlisten = "127.0.0.1:{port}"\n')
        agent.config.write_text(text)
        agent.start()
        assert agent.proc is not None
        assert agent.proc.popen.wait(30) == EXIT_PORT_IN_USE  # RestartPreventExitStatus
    out = agent.output()
    assert f"edgefleet-agent: error: api.listen 127.0.0.1:{port} is in use by another" in out, out[
        -2000:
    ]
    assert "Traceback" not in out


def test_a_refused_enrollment_is_logged_once_and_a_reload_with_the_right_token_enrolls(
    tmp_path: Path, broker_url: str, server_factory: Callable[..., Server]
) -> None:
    # A refusal used to end the agent (and its local API with it); now it keeps serving, says
    # why once, and tries again slowly or as soon as its enrollment settings change.
    server = server_factory(broker_url)
    agent = make_agent(tmp_path, "dev-x", server)
    right = agent.config.read_text()
    agent.config.write_text(right.replace(server.enrollment_token(), "wrong-token"))
    agent.start()
    assert agent.proc is not None
    refused = "enrollment token is unknown, expired"
    wait_for("the refusal", lambda: refused in agent.output(), timeout=30)
    assert oip.stub(agent.socket).ServerLive(oip.pb.ServerLiveRequest(), timeout=5).live
    agent.config.write_text(right)
    agent.proc.popen.send_signal(signal.SIGHUP)
    wait_for("the enrollment", lambda: "enrolled as dev-x" in agent.output(), timeout=30)
    out = agent.output()
    assert out.count(refused) == 1, out
    assert "Traceback" not in out and agent.proc.popen.poll() is None
    assert agent.stop() == 0


def test_admin_cli_errors_are_one_line(
    tmp_path: Path, broker_url: str, server_factory: Callable[..., Server]
) -> None:
    server = server_factory(broker_url)
    bad = server.admin(
        "models", "push", str(DATA / "cat.bmp"), "--name", "cat", "--version", "1.0.0", check=False
    )
    assert bad.returncode == 1 and "not a TFLite model" in bad.stderr
    assert "Traceback" not in bad.stderr
    # The user's file is named, and the unnamed variant is "the model" (was "variant :").
    assert f"{DATA / 'cat.bmp'}: " in bad.stderr and "rejected the model:" in bad.stderr
    version = server.admin(
        "models", "push", str(MOBILENET), "--name", "m", "--version", "one", check=False
    )
    assert version.returncode == 1 and "not a semantic version" in version.stderr
    server.admin("models", "push", str(MOBILENET), "--name", "m", "--version", "1.0.0")
    again = server.admin(
        "models", "push", str(MOBILENET), "--name", "m", "--version", "1.0.0", check=False
    )
    assert again.returncode == 1 and "exists already" in again.stderr
    ca = ("--ca-file", str(server.ca_file))
    wrong = run_cli(
        "edgefleet", "--server", server.address, *ca, "--token", "nope", "devices", "list",
        check=False,
    )  # fmt: skip
    assert wrong.returncode == 1 and "admin credentials" in wrong.stderr
    down = run_cli(
        "edgefleet",
        "--server",
        "127.0.0.1:1",
        *ca,
        "--token",
        "x",
        "--timeout",
        "3",
        "devices",
        "list",
        check=False,
    )
    assert down.returncode == 1 and "unreachable" in down.stderr
    assert "Traceback" not in down.stderr
    listing = server.admin("models", "list").stdout
    assert "m" in listing and "1.0.0" in listing


def test_server_refuses_to_overwrite_a_data_dir(tmp_path: Path) -> None:
    run_cli("edgefleet-server", "init", "--data-dir", str(tmp_path / "d"))
    again = run_cli("edgefleet-server", "init", "--data-dir", str(tmp_path / "d"), check=False)
    assert again.returncode == 1 and "refusing to overwrite" in again.stderr
    missing = run_cli("edgefleet-server", "run", "--data-dir", str(tmp_path / "none"), check=False)
    assert missing.returncode == 1 and "not an EdgeFleet data dir" in missing.stderr


@pytest.mark.parametrize("torn", [False, True], ids=["intact-prefix", "torn-prefix"])
def test_an_interrupted_download_resumes_from_its_offset(
    tmp_path: Path,
    broker_url: str,
    server_factory: Callable[..., Server],
    color_models: Path,
    torn: bool,
) -> None:
    server = server_factory(broker_url)
    model = (color_models / "color_float.tflite").read_bytes()
    server.admin(
        "models",
        "push",
        str(color_models / "color_float.tflite"),
        "--name",
        "colors",
        "--version",
        "1.0.0",
        "--no-compress",
        "--deploy",
    )
    agent = make_agent(tmp_path, "dev-r", server)
    # What a download cut off half-way leaves behind (or, torn, a prefix with a bad block).
    staging = agent.folder / "state" / "staging"
    staging.mkdir(parents=True)
    prefix = bytearray(model[: len(model) // 2])
    if torn:
        prefix[100] ^= 0xFF
    (staging / f"{hashlib.sha256(model).hexdigest()}.part").write_bytes(bytes(prefix))
    # And a superseded version's partial download, which nothing will ever resume.
    (staging / f"{'ab' * 32}.part").write_bytes(b"\0" * 4096)
    agent.start()
    try:
        wait_state(server, "dev-r", "colors", "1.0.0", "INSTALLED")
        log = agent.output()
        assert f"at byte {len(prefix)}" in log
        assert ("did not verify; starting over" in log) == torn
        assert colors_still_served(agent, "1.0.0")
        assert not list(staging.iterdir()), "staging keeps only the download in progress"
    finally:
        agent.stop()


EDGETPU_MODEL = DATA / "mobilenet_v1_0.25_128_quant_edgetpu.tflite"


def test_an_edgetpu_model_with_a_cpu_fallback_serves_on_a_device_without_a_tpu(
    tmp_path: Path,
    broker_url: str,
    server_factory: Callable[..., Server],
    agent_factory: Callable[..., Agent],
) -> None:
    server = server_factory(broker_url)
    pushed = server.admin(
        "models",
        "push",
        str(EDGETPU_MODEL),
        "--name",
        "mobilenet",
        "--version",
        "2.0.0",
        "--variant",
        "edgetpu",
        "--fallback",
        str(MOBILENET),
        "--deploy",
    )
    assert "CPU fallback" in pushed.stdout
    agent = agent_factory("dev-f", server)
    state = wait_state(server, "dev-f", "mobilenet", "2.0.0", "INSTALLED")
    assert "active on cpu" in state["detail"]
    scores, response = oip.infer(agent.socket, "mobilenet", "input", cat_tensor())
    assert int(np.argmax(scores)) == predict_top1()
    assert response.parameters["edgefleet.backend"].string_param == "cpu"
    # The variant serving is named: the fallback's (the full-integer model's automatic name).
    assert response.parameters["edgefleet.variant"].string_param == "int8"

    def reason() -> str | None:
        for d in server.devices():
            for m in (d.get("last_telemetry") or {}).get("models", []):
                if m.get("backend_reason"):
                    return str(m["backend_reason"])
        return None

    assert "fell back to the CPU variant" in wait_for("the fallback reason", reason)
    assert "has no Edge TPU" in reason()  # type: ignore[operator]
    # The restarted agent serves the fallback again, from its store.
    agent.stop()
    agent.start()
    restarted = wait_for(
        "the restarted agent",
        lambda: oip.infer(agent.socket, "mobilenet", "input", cat_tensor())[1],
    )
    assert restarted.model_version == "2.0.0"
    assert restarted.parameters["edgefleet.variant"].string_param == "int8"  # from the journal
    # A damaged fallback is found at start, dropped, fetched again, and serves again.
    entry = json.loads((agent.folder / "state" / "active.json").read_text())["models"]["mobilenet"]
    fallback = agent.folder / "state" / "models" / "mobilenet" / entry["fallback_filename"]
    intact = fallback.read_bytes()
    assert agent.stop(9) == -9
    fallback.write_bytes(intact[: len(intact) // 2])
    agent.start()
    wait_for("the fallback to be fetched again", lambda: fallback.read_bytes() == intact)
    wait_for(
        "the fetched fallback to serve",
        lambda: (
            oip.infer(agent.socket, "mobilenet", "input", cat_tensor())[1].model_version == "2.0.0"
        ),
    )
    assert "the CPU fallback of mobilenet 2.0.0 is unusable" in agent.output()


def test_an_edgetpu_only_model_is_routed_to_the_cloud_for_a_cpu_device(
    broker_url: str, server_factory: Callable[..., Server], agent_factory: Callable[..., Agent]
) -> None:
    server = server_factory(broker_url)
    server.admin(
        "models",
        "push",
        str(EDGETPU_MODEL),
        "--name",
        "mobilenet",
        "--version",
        "2.0.0",
        "--deploy",
    )
    agent = agent_factory("dev-g", server)
    # The server does not send a model the device cannot run; the agent hears why.
    wait_for("the cloud route", lambda: "routes mobilenet 2.0.0 to the cloud" in agent.output())
    assert "needs an Edge TPU and libedgetpu" in agent.output()
    explained = server.admin("devices", "explain", "dev-g", "mobilenet").stdout
    assert "the cloud (no variant fits)" in explained
    assert model_state(server, "dev-g", "mobilenet") is None


def test_push_rejects_fallbacks_that_cannot_stand_in(
    broker_url: str, server_factory: Callable[..., Server], color_models: Path
) -> None:
    server = server_factory(broker_url)
    cpu_with_fallback = server.admin(
        "models",
        "push",
        str(MOBILENET),
        "--name",
        "m",
        "--version",
        "1.0.0",
        "--fallback",
        str(MOBILENET),
        check=False,
    )
    assert cpu_with_fallback.returncode == 1
    assert "a CPU fallback is for Edge TPU-compiled models" in cpu_with_fallback.stderr
    other_io = server.admin(
        "models",
        "push",
        str(EDGETPU_MODEL),
        "--name",
        "m",
        "--version",
        "1.0.0",
        "--fallback",
        str(color_models / "color_float.tflite"),
        check=False,
    )
    assert other_io.returncode == 1 and "differ from the model's" in other_io.stderr
    tpu_fallback = server.admin(
        "models",
        "push",
        str(EDGETPU_MODEL),
        "--name",
        "m",
        "--version",
        "1.0.0",
        "--fallback",
        str(EDGETPU_MODEL),
        check=False,
    )
    assert (
        tpu_fallback.returncode == 1 and "itself compiled for the Edge TPU" in tpu_fallback.stderr
    )
    assert "no models" in server.admin("models", "list").stdout
    # Nothing rejected is left behind in the artifact store.
    assert not list((server.data_dir / "artifacts").glob("*.tflite"))


def test_release_key_rotation_reaches_devices_and_a_forged_key_list_does_not(
    one_agent_fleet: tuple[Server, Agent], color_models: Path, tmp_path: Path
) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from fleet_server.signing.keys import generate_key, public_bytes, sign_envelope
    from protos.envelope import KEYLIST_PAYLOAD_TYPE, keyid

    server, agent = one_agent_fleet
    before = server.admin("keys", "list").stdout
    assert "key list version 1" in before and "1 of 1 must sign" in before
    rotated = server.admin("keys", "rotate", "--root-key-dir", str(server.root_key_dir)).stdout
    assert "published key list version 2" in rotated
    server.admin(
        "models",
        "push",
        str(color_models / "color_int8.tflite"),
        "--name",
        "colors",
        "--version",
        "1.1.0",
        "--deploy",
    )
    wait_state(server, "dev-c", "colors", "1.1.0", "INSTALLED")
    assert "key list rotated to version 2" in agent.output()

    # Someone with write access to the server's disk publishes a key list of their own, and a
    # release key to go with it, then pushes a model signed by that key.
    keys = server.data_dir / "keys"
    stranger = Ed25519PrivateKey.generate()
    pem = generate_key()
    (keys / "evil.pem").write_bytes(pem)
    from fleet_server.signing.keys import load_private_key

    evil_release = load_private_key(keys / "evil.pem")
    evil_id = keyid(public_bytes(evil_release))
    (keys / f"release-{evil_id}.key").write_bytes(pem)
    forged = manifest_pb2.KeyList(
        version=3,
        expires_unix=int(time.time()) + 3600,
        fleet_id="default",
        root_keys=[
            manifest_pb2.PublicKey(
                keyid=keyid(public_bytes(stranger)), public_key=public_bytes(stranger)
            )
        ],
        root_threshold=1,
        release_keys=[manifest_pb2.PublicKey(keyid=evil_id, public_key=public_bytes(evil_release))],
        release_threshold=1,
    )
    envelope = sign_envelope(KEYLIST_PAYLOAD_TYPE, forged.SerializeToString(), [stranger])
    (keys / "keylist.bin").write_bytes(envelope.SerializeToString())
    server.admin(
        "models",
        "push",
        str(color_models / "color_float.tflite"),
        "--name",
        "colors",
        "--version",
        "1.2.0",
        "--deploy",
    )
    state = wait_state(server, "dev-c", "colors", "1.2.0", "FAILED")
    assert "does not verify with enough pinned release keys" in state["detail"]
    assert "refusing the server's key list" in agent.output()
    meta = oip.stub(agent.socket).ModelMetadata(inference_pb2.ModelMetadataRequest(name="colors"))
    assert list(meta.versions) == ["1.1.0"]


def test_keys_create_writes_a_private_key_for_offline_use(tmp_path: Path) -> None:
    out = tmp_path / "root-offline.key"
    result = run_cli("edgefleet", "keys", "create", "--out", str(out))
    assert "key id" in result.stdout and out.stat().st_mode & 0o777 == 0o600
    again = run_cli("edgefleet", "keys", "create", "--out", str(out), check=False)
    assert again.returncode == 1 and "refusing to overwrite" in again.stderr


def test_a_k_of_n_fleet_needs_k_root_keys_to_rotate(tmp_path: Path) -> None:
    data = tmp_path / "d"
    secret = tmp_path / "pass"
    secret.write_text("correct horse\n")
    run_cli(
        "edgefleet-server",
        "init",
        "--data-dir",
        str(data),
        "--root-keys",
        "3",
        "--root-threshold",
        "2",
        "--root-passphrase-file",
        str(secret),
    )
    listing = run_cli("edgefleet", "--data-dir", str(data), "keys", "list").stdout
    assert "2 of 3 must sign" in listing
    no_pass = run_cli(
        "edgefleet",
        "--data-dir",
        str(data),
        "keys",
        "rotate",
        "--root-key-dir",
        str(tmp_path / "d.root-keys"),
        check=False,
    )
    assert no_pass.returncode == 1 and "passphrase" in no_pass.stderr
    roots = sorted((tmp_path / "d.root-keys").glob("root-*.key"))
    offline = tmp_path / "offline"
    offline.mkdir()
    for key in roots[1:]:
        key.rename(offline / key.name)  # two of the three root keys go elsewhere
    one = run_cli(
        "edgefleet",
        "--data-dir",
        str(data),
        "keys",
        "rotate",
        "--passphrase-file",
        str(secret),
        "--root-key-dir",
        str(tmp_path / "d.root-keys"),
        check=False,
    )
    assert one.returncode == 1 and "1 of the fleet's root keys at hand; 2 must sign" in one.stderr
    two = run_cli(
        "edgefleet",
        "--data-dir",
        str(data),
        "keys",
        "rotate",
        "--passphrase-file",
        str(secret),
        "--root-key",
        str(roots[0]),
        "--root-key",
        str(offline / roots[1].name),
    )
    assert "published key list version 2" in two.stdout


def test_push_with_an_image_sample_records_what_the_model_answers(
    broker_url: str, server_factory: Callable[..., Server], agent_factory: Callable[..., Agent]
) -> None:
    server = server_factory(broker_url)
    pushed = server.admin(
        "models",
        "push",
        str(MOBILENET),
        "--name",
        "mobilenet",
        "--version",
        "1.0.0",
        "--sample",
        str(DATA / "cat.bmp"),
        "--deploy",
    )
    top = json.loads(pushed.stdout.split("smoke top ")[1].split("]")[0] + "]")
    assert top[0] == predict_top1()
    agent_factory("dev-k", server)
    wait_state(server, "dev-k", "mobilenet", "1.0.0", "INSTALLED")


def test_a_model_that_fails_its_smoke_test_is_never_activated(
    one_agent_fleet: tuple[Server, Agent], color_models: Path
) -> None:
    from fleet_server.signing.keys import KeyStore

    server, agent = one_agent_fleet
    server.admin(
        "models",
        "push",
        str(color_models / "color_int8.tflite"),
        "--name",
        "colors",
        "--version",
        "1.1.0",
    )
    # A validly signed manifest whose expectation this device cannot reproduce: what a broken
    # runtime, delegate or accelerator on the device would look like.
    with sqlite3.connect(server.data_dir / "fleet.db") as db:
        (raw,) = db.execute(
            "SELECT envelope FROM models WHERE model_name='colors' AND version='1.1.0'"
        ).fetchone()
        manifest = manifest_pb2.Manifest.FromString(manifest_pb2.Envelope.FromString(raw).payload)
        manifest.smoke.top_scores[0] += 0.5
        signed = KeyStore(server.data_dir / "keys").manifest_signer().sign(manifest)
        db.execute(
            "UPDATE models SET envelope=? WHERE model_name='colors' AND version='1.1.0'",
            (signed.SerializeToString(),),
        )
    server.admin("deploy", "colors", "1.1.0")
    state = wait_state(server, "dev-c", "colors", "1.1.0", "FAILED")
    assert "smoke test failed" in state["detail"]
    colors_still_served(agent, "1.0.0")


def test_a_model_that_cannot_run_is_rejected_at_push(
    broker_url: str, server_factory: Callable[..., Server]
) -> None:
    server = server_factory(broker_url)
    result = server.admin(
        "models",
        "push",
        str(DATA / "invalid_model_invoking_error.tflite"),
        "--name",
        "broken",
        "--version",
        "1.0.0",
        check=False,
    )
    assert result.returncode == 1
    assert "does not run on its sample" in result.stderr
    assert "Traceback" not in result.stderr


HEALTH = """
[updates]
health_window_s = 120.0
health_min_requests = 20
crash_loop_starts = 3
"""


def colors_input(agent: Agent) -> tuple[str, np.ndarray]:
    meta = oip.stub(agent.socket).ModelMetadata(inference_pb2.ModelMetadataRequest(name="colors"))
    tensor = meta.inputs[0]
    return tensor.name, np.zeros(tuple(tensor.shape), dtype=np.float32)


def test_a_much_slower_new_version_is_rolled_back_in_its_health_window(
    broker_url: str,
    server_factory: Callable[..., Server],
    agent_factory: Callable[..., Agent],
    color_models: Path,
) -> None:
    server = server_factory(broker_url)
    server.admin(
        "models",
        "push",
        str(color_models / "color_float.tflite"),
        "--name",
        "colors",
        "--version",
        "1.0.0",
        "--deploy",
    )
    agent = agent_factory("dev-h", server, extra=HEALTH)
    wait_state(server, "dev-h", "colors", "1.0.0", "INSTALLED")
    name, data = colors_input(agent)
    for _ in range(30):  # the baseline: the old version's latency
        oip.infer(agent.socket, "colors", name, data)
    # The new "colors" is a 10 ms network where the old one took microseconds.
    server.admin(
        "models",
        "push",
        str(color_models / "heavy_float.tflite"),
        "--name",
        "colors",
        "--version",
        "2.0.0",
        "--deploy",
    )
    wait_state(server, "dev-h", "colors", "2.0.0", "INSTALLED")
    name, data = colors_input(agent)
    for _ in range(30):
        try:
            oip.infer(agent.socket, "colors", name, data)
        except grpc.RpcError as exc:
            # The health window may judge (and roll back) before all 30 requests are sent;
            # then 1.0.0 answers, and refuses 2.0.0's input shape.
            assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, exc
            break
    state = wait_state(server, "dev-h", "colors", "2.0.0", "ROLLED_BACK")
    assert "the previous version's" in state["detail"] and "back to 1.0.0" in state["detail"]
    colors_still_served(agent, "1.0.0")
    # The server still asks for 2.0.0; the device does not install it again.
    wait_for(
        "the device to refuse 2.0.0 again",
        lambda: "refusing to install it again" in agent.output(),
        timeout=60,
    )
    assert model_state(server, "dev-h", "colors")["version"] == "2.0.0"  # type: ignore[index]
    colors_still_served(agent, "1.0.0")


def test_a_crash_loop_after_an_update_rolls_back_to_the_last_known_good(
    broker_url: str,
    server_factory: Callable[..., Server],
    agent_factory: Callable[..., Agent],
    color_models: Path,
) -> None:
    server = server_factory(broker_url)
    server.admin(
        "models",
        "push",
        str(color_models / "color_float.tflite"),
        "--name",
        "colors",
        "--version",
        "1.0.0",
        "--deploy",
    )
    agent = agent_factory("dev-l", server, extra=HEALTH)
    wait_state(server, "dev-l", "colors", "1.0.0", "INSTALLED")
    server.admin(
        "models",
        "push",
        str(color_models / "color_int8.tflite"),
        "--name",
        "colors",
        "--version",
        "1.1.0",
        "--deploy",
    )
    wait_state(server, "dev-l", "colors", "1.1.0", "INSTALLED")

    def stub_ready() -> bool:
        request = inference_pb2.ServerLiveRequest()
        return bool(oip.stub(agent.socket).ServerLive(request, timeout=1).live)

    for _ in range(3):  # the new version "crashes" the agent three times in its window
        assert agent.stop(9) == -9
        agent.start()
        wait_for("the agent to come up", stub_ready)
    state = wait_state(server, "dev-l", "colors", "1.1.0", "ROLLED_BACK")
    assert "crash loop" in state["detail"]
    colors_still_served(agent, "1.0.0")


def test_a_replayed_older_release_is_refused_anti_rollback(
    one_agent_fleet: tuple[Server, Agent], color_models: Path
) -> None:
    server, agent = one_agent_fleet
    server.admin(
        "models",
        "push",
        str(color_models / "color_int8.tflite"),
        "--name",
        "colors",
        "--version",
        "1.1.0",
        "--deploy",
    )
    wait_state(server, "dev-c", "colors", "1.1.0", "INSTALLED")
    # Deploying the older, validly signed release again is what a rollback attack replays.
    server.admin("deploy", "colors", "1.0.0")
    state = wait_state(server, "dev-c", "colors", "1.0.0", "FAILED")
    assert "anti-rollback" in state["detail"] and state["active_version"] == "1.1.0"
    meta = oip.stub(agent.socket).ModelMetadata(inference_pb2.ModelMetadataRequest(name="colors"))
    assert list(meta.versions) == ["1.1.0"]


def test_a_truncated_artifact_on_the_server_is_a_clear_failure(
    one_agent_fleet: tuple[Server, Agent], color_models: Path
) -> None:
    server, agent = one_agent_fleet
    data = (color_models / "heavy_float.tflite").read_bytes()
    server.admin(
        "models",
        "push",
        str(color_models / "heavy_float.tflite"),
        "--name",
        "colors",
        "--version",
        "2.0.0",
        "--no-compress",
    )
    artifact = server.data_dir / "artifacts" / f"{hashlib.sha256(data).hexdigest()}.tflite"
    artifact.write_bytes(data[: len(data) // 2])
    server.admin("deploy", "colors", "2.0.0")
    state = wait_state(server, "dev-c", "colors", "2.0.0", "FAILED")
    assert f"has {len(data) // 2} bytes; the signed manifest names {len(data)}" in state["detail"]
    colors_still_served(agent, "1.0.0")


def test_a_release_key_kept_offline_signs_manifests_the_devices_accept(
    one_agent_fleet: tuple[Server, Agent], color_models: Path, tmp_path: Path
) -> None:
    server, agent = one_agent_fleet
    # The admin takes the release key off the server.
    (online_key,) = (server.data_dir / "keys").glob("release-*.key")
    offline_key = tmp_path / online_key.name
    online_key.rename(offline_key)
    refused = server.admin(
        "models",
        "push",
        str(color_models / "color_int8.tflite"),
        "--name",
        "colors",
        "--version",
        "1.1.0",
        check=False,
    )
    assert refused.returncode == 1 and "usable release key" in refused.stderr
    manifest = tmp_path / "colors-1.1.0.manifest"
    pushed = server.admin(
        "models",
        "push",
        str(color_models / "color_int8.tflite"),
        "--name",
        "colors",
        "--version",
        "1.1.0",
        "--sign-offline",
        "--manifest-out",
        str(manifest),
    )
    assert "not signed" in pushed.stdout and manifest.exists()
    early = server.admin("deploy", "colors", "1.1.0", check=False)
    assert early.returncode == 1 and "not signed yet" in early.stderr
    # A key that is not in the key list does not make it deployable.
    stranger = tmp_path / "stranger.key"
    run_cli("edgefleet", "keys", "create", "--out", str(stranger))
    run_cli(
        "edgefleet",
        "manifest",
        "sign",
        str(manifest),
        "--key",
        str(stranger),
        "--out",
        str(tmp_path / "bad.signed"),
    )
    bad = server.admin("manifest", "attach", str(tmp_path / "bad.signed"), check=False)
    assert bad.returncode == 1 and "0 valid release-key signature(s)" in bad.stderr
    signed = run_cli("edgefleet", "manifest", "sign", str(manifest), "--key", str(offline_key))
    assert "signed colors 1.1.0" in signed.stdout
    server.admin("manifest", "attach", str(manifest.with_suffix(".signed")))
    server.admin("deploy", "colors", "1.1.0")
    wait_state(server, "dev-c", "colors", "1.1.0", "INSTALLED")
    assert agent.proc is not None and agent.proc.popen.poll() is None


def test_models_travel_zstd_compressed_and_a_bad_compressed_copy_is_refused(
    one_agent_fleet: tuple[Server, Agent], color_models: Path
) -> None:
    server, agent = one_agent_fleet
    server.admin(
        "models", "push", str(MOBILENET), "--name", "mobilenet", "--version", "1.0.0", "--deploy"
    )
    wait_state(server, "dev-c", "mobilenet", "1.0.0", "INSTALLED")
    assert "zstd bytes (76% of 525598)" in agent.output()  # a quarter less on the wire
    scores, _ = oip.infer(agent.socket, "mobilenet", "input", cat_tensor())
    assert int(np.argmax(scores)) == predict_top1()
    # A damaged compressed copy on the server: its own hash catches it.
    heavy = (color_models / "heavy_float.tflite").read_bytes()
    server.admin(
        "models",
        "push",
        str(color_models / "heavy_float.tflite"),
        "--name",
        "colors",
        "--version",
        "2.0.0",
    )
    (row,) = [
        m
        for m in json.loads(server.admin("models", "list", "--json").stdout)
        if m["version"] == "2.0.0"
    ]
    assert row["sha256"] == hashlib.sha256(heavy).hexdigest()
    known = {hashlib.sha256(heavy).hexdigest()}
    for path in (server.data_dir / "artifacts").glob("*.tflite"):
        if path.stem not in known and path.stat().st_size > 100_000:
            data = bytearray(path.read_bytes())  # the compressed heavy model
            data[len(data) // 2] ^= 0xFF
            path.write_bytes(bytes(data))
    server.admin("deploy", "colors", "2.0.0")
    state = wait_state(server, "dev-c", "colors", "2.0.0", "FAILED")
    assert "does not match the signed manifest" in state["detail"]
    colors_still_served(agent, "1.0.0")


def test_an_explicit_root_signed_rollback_is_installed_and_cannot_be_abused(
    one_agent_fleet: tuple[Server, Agent], color_models: Path, tmp_path: Path
) -> None:
    server, agent = one_agent_fleet
    server.admin(
        "models",
        "push",
        str(color_models / "color_int8.tflite"),
        "--name",
        "colors",
        "--version",
        "1.1.0",
        "--deploy",
    )
    wait_state(server, "dev-c", "colors", "1.1.0", "INSTALLED")
    # A stranger's key is not a root key: the server refuses to deploy the rollback.
    stranger = tmp_path / "stranger.key"
    run_cli("edgefleet", "keys", "create", "--out", str(stranger))
    bad = server.admin(
        "models", "rollback", "colors", "1.0.0", "--root-key", str(stranger), check=False
    )
    assert bad.returncode == 1 and "0 valid root-key signature(s)" in bad.stderr
    # Without the root keys (init put them beside the data dir, to go offline) it is refused.
    missing = server.admin("models", "rollback", "colors", "1.0.0", check=False)
    assert missing.returncode == 1 and "--root-key-dir DIR" in missing.stderr
    done = server.admin(
        "models", "rollback", "colors", "1.0.0", "--root-key-dir", str(server.root_key_dir)
    )
    assert "rolled colors back to 1.0.0" in done.stdout
    wait_state(server, "dev-c", "colors", "1.0.0", "INSTALLED")
    colors_still_served(agent, "1.0.0")
    # The release rolled back from cannot be replayed by a plain deploy ...
    server.admin("deploy", "colors", "1.1.0")
    state = wait_state(server, "dev-c", "colors", "1.1.0", "FAILED")
    assert "different artifact" in state["detail"]
    # ... but a new release goes through.
    server.admin(
        "models",
        "push",
        str(color_models / "color_int8.tflite"),
        "--name",
        "colors",
        "--version",
        "1.2.0",
        "--deploy",
    )
    wait_state(server, "dev-c", "colors", "1.2.0", "INSTALLED")


def test_the_server_runs_on_postgresql(
    broker_url: str,
    postgres_url: str,
    server_factory: Callable[..., Server],
    agent_factory: Callable[..., Agent],
) -> None:
    server = server_factory(broker_url, db_url=postgres_url)
    server.admin(
        "models", "push", str(MOBILENET), "--name", "mobilenet", "--version", "1.0.0", "--deploy"
    )
    agent = agent_factory("dev-pg", server)
    wait_state(server, "dev-pg", "mobilenet", "1.0.0", "INSTALLED")
    oip.infer(agent.socket, "mobilenet", "input", cat_tensor())

    def telemetry() -> bool:
        return any(d.get("last_telemetry") for d in server.devices())

    wait_for("telemetry stored in PostgreSQL", telemetry)
    import sqlalchemy as sa

    engine = sa.create_engine(postgres_url)
    with engine.connect() as conn:
        count = conn.execute(sa.text("SELECT count(*) FROM devices")).scalar()
    engine.dispose()
    assert count == 1


def test_devices_show_label_and_revoke(one_agent_fleet: tuple[Server, Agent]) -> None:
    server, agent = one_agent_fleet
    shown = server.admin("devices", "show", "dev-c").stdout
    assert "device    dev-c" in shown and "colors 1.0.0 INSTALLED" in shown
    assert "runtime ai-edge-litert" in shown
    labelled = server.admin("devices", "label", "dev-c", "site=lab", "floor=2").stdout
    assert "floor=2, site=lab" in labelled
    server.admin("devices", "label", "dev-c", "--remove", "floor")
    data = json.loads(server.admin("devices", "show", "dev-c", "--json").stdout)
    assert data["labels"] == {"site": "lab"}
    bad = server.admin("devices", "label", "dev-c", "no equals", check=False)
    assert bad.returncode == 1 and "KEY=VALUE" in bad.stderr
    missing = server.admin("devices", "show", "nope", check=False)
    assert missing.returncode == 1 and "not enrolled" in missing.stderr
    # A stolen device: its credentials stop working, the model it has keeps serving locally.
    assert "revoked" in server.admin("devices", "revoke", "dev-c").stdout
    assert "REVOKED" in server.admin("devices", "list").stdout
    wait_for("the agent to be refused", lambda: "was revoked by the fleet admin" in agent.output())
    colors_still_served(agent, "1.0.0")
    assert agent.proc is not None and agent.proc.popen.poll() is None


def _active_artifact(agent: Agent, model: str) -> Path:
    journal = json.loads((agent.folder / "state" / "active.json").read_text())
    entry = journal["models"][model]
    return agent.folder / "state" / "models" / model / entry["filename"]


def test_a_model_damaged_on_disk_gives_way_to_the_last_known_good_and_is_fetched_again(
    one_agent_fleet: tuple[Server, Agent], color_models: Path
) -> None:
    server, agent = one_agent_fleet
    server.admin("models", "push", str(color_models / "color_int8.tflite"), "--name", "colors",
                 "--version", "1.1.0", "--deploy")  # fmt: skip
    wait_state(server, "dev-c", "colors", "1.1.0", "INSTALLED")
    artifact = _active_artifact(agent, "colors")
    good = artifact.read_bytes()
    assert agent.stop(9) == -9
    # What a power cut during writeback leaves: the file's tail never reached the disk.
    artifact.write_bytes(good[: len(good) // 2])
    agent.start()
    wait_for("1.1.0 to be served again", lambda: colors_still_served(agent, "1.1.0"))
    log = agent.output()
    assert "active colors 1.1.0 is damaged on disk" in log
    assert "serving 1.0.0 until it is downloaded again" in log
    assert artifact.read_bytes() == good  # fetched again and verified
    # Without a last-known-good (first install only), the model is fetched again too.
    assert agent.stop(9) == -9
    journal = agent.folder / "state" / "active.json"
    state = json.loads(journal.read_text())
    state["previous"] = {}
    journal.write_text(json.dumps(state))
    flipped = bytearray(good)
    flipped[len(flipped) // 3] ^= 0xFF  # bit rot on an SD card
    artifact.write_bytes(bytes(flipped))
    agent.start()
    wait_for("the damaged model to be fetched again", lambda: artifact.read_bytes() == good)
    wait_for("1.1.0 to be served again", lambda: colors_still_served(agent, "1.1.0"))
    assert "downloading it again at the next check-in" in agent.output()
