"""Several variants per version: pushed together, each device given the one that fits it, the
cloud when none does, and `devices explain` saying why. Real server process, simulated devices
on the real device API, the real Coral models (CPU and Edge TPU-compiled)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from fleet_server.simulator import SimDevice
from protos import device_pb2, manifest_pb2
from tests.harness import REPO, Server

pytestmark = pytest.mark.slow

DATA = REPO / "tests" / "data"
CPU = DATA / "mobilenet_v1_0.25_128_quant.tflite"
TPU = DATA / "mobilenet_v1_0.25_128_quant_edgetpu.tflite"
GB = 1 << 30


def caps(*, tpu: bool = False, memory: int = 4 * GB) -> device_pb2.Capabilities:
    return device_pb2.Capabilities(
        arch="aarch64",
        memory_bytes=memory,
        disk_free_bytes=8 * GB,
        edgetpu_count=1 if tpu else 0,
        edgetpus=[device_pb2.EdgeTpu(device="usb:0", kind="usb", state="ready")] if tpu else [],
        libedgetpu=tpu,
        runtime="ai-edge-litert",
        max_builtin_op=209,
    )


def manifests(device: SimDevice) -> dict[str, manifest_pb2.Manifest]:
    return {
        m.model_name: m
        for m in (
            manifest_pb2.Manifest.FromString(e.payload) for e in device.check_in(act=False).desired
        )
    }


@pytest.fixture
def server(server_factory: Callable[..., Server]) -> Iterator[Server]:
    yield server_factory(None)


def test_each_device_gets_the_variant_that_fits_it(server: Server) -> None:
    out = server.admin(
        "models", "push", str(CPU), str(TPU), "--name", "mobilenet", "--version", "1.0.0"
    ).stdout
    assert "2 variant(s), signed" in out
    assert "note:" not in out  # the Edge TPU variant's answer is checked on its CPU fallback
    # Alone, the server cannot run it: the push says so (it was silent).
    alone = server.admin("models", "push", str(TPU), "--name", "tpu-only", "--version", "1.0.0")
    assert "note: variant edgetpu: the server cannot run it" in alone.stdout, alone.stdout
    every = json.loads(server.admin("models", "list", "--json").stdout)
    listed = {m["variant"]: m for m in every if m["model_name"] == "mobilenet"}
    assert set(listed) == {"int8", "edgetpu"}
    assert listed["int8"]["quantization"] == "full_int8"
    assert listed["edgetpu"]["quantization"] == "edgetpu"
    # The Edge TPU variant travels with the release's CPU variant as its fallback.
    assert listed["edgetpu"]["fallback_sha256"] == listed["int8"]["sha256"]
    server.admin("deploy", "mobilenet", "1.0.0")

    token = server.enrollment_token()
    coral = SimDevice.enroll(server.sim_fleet(), token, "coral", capabilities=caps(tpu=True))
    pi = SimDevice.enroll(server.sim_fleet(), token, "pi", capabilities=caps())
    tiny = SimDevice.enroll(server.sim_fleet(), token, "tiny", capabilities=caps(memory=512 << 10))

    on_coral = manifests(coral)["mobilenet"]
    assert on_coral.variant == "edgetpu" and on_coral.requirements.edgetpu
    assert on_coral.cpu_fallback.sha256 == listed["int8"]["sha256"]
    assert manifests(pi)["mobilenet"].variant == "int8"
    response = tiny.check_in(act=False)
    assert not response.desired
    (route,) = response.cloud
    assert (route.model_name, route.version) == ("mobilenet", "1.0.0")
    assert "no variant fits" in route.reason and "MB of memory" in route.reason

    explained = json.loads(
        server.admin("devices", "explain", pi.device_id, "mobilenet", "--json").stdout
    )
    assert explained["variant"] == "int8"
    assert explained["hardware_class"] == "aarch64"
    verdicts = {v["variant"]: v for v in explained["verdicts"]}
    assert verdicts["int8"]["chosen"] is True
    assert verdicts["edgetpu"]["reason"].startswith("no Edge TPU here, so it would run its CPU")
    text = server.admin("devices", "explain", tiny.device_id, "mobilenet").stdout
    assert "gets mobilenet 1.0.0: the cloud (no variant fits)" in text

    # A Coral whose only Edge TPU failed: check-in and explain both say int8 (explain said
    # edgetpu while check-in gave int8 when they had a rule each).
    broken_tpu = caps(tpu=True)
    broken_tpu.edgetpus[0].state = "error"
    broken = SimDevice.enroll(server.sim_fleet(), token, "broken", capabilities=broken_tpu)
    assert manifests(broken)["mobilenet"].variant == "int8"
    explained = json.loads(
        server.admin("devices", "explain", broken.device_id, "mobilenet", "--json").stdout
    )
    assert (explained["variant"], explained["hardware_class"]) == ("int8", "aarch64")


def test_a_bad_variant_rejects_the_whole_push_and_keeps_nothing(
    server: Server, color_models: Path, tmp_path: Path
) -> None:
    artifacts = server.data_dir / "artifacts"
    before = sorted(p.name for p in artifacts.rglob("*") if p.is_file())
    not_a_model = tmp_path / "notes.tflite"
    not_a_model.write_bytes(b"definitely not a flatbuffer" * 50)
    cases = [
        (
            (str(CPU), str(not_a_model)),
            f"{not_a_model}: invalid argument: rejected model file 2: not a TFLite",
        ),
        ((str(CPU), str(color_models / "color_float.tflite")), "input and output shapes"),
        ((str(CPU), str(CPU)), "two variants are both named 'int8'"),
    ]
    for files, message in cases:
        result = server.admin(
            "models", "push", *files, "--name", "m", "--version", "1.0.0", check=False
        )
        assert result.returncode == 1
        assert message in result.stderr, result.stderr
    assert json.loads(server.admin("models", "list", "--json").stdout) == []
    assert sorted(p.name for p in artifacts.rglob("*") if p.is_file()) == before
    # Named apart, the same kind twice is fine.
    server.admin(
        "models", "push", str(CPU), str(CPU), "--variant", "a", "--variant", "b",
        "--name", "m", "--version", "1.0.0",
    )  # fmt: skip
    assert len(json.loads(server.admin("models", "list", "--json").stdout)) == 2


def test_rollback_of_a_multi_variant_release_signs_every_variant(
    server: Server,
) -> None:
    for version in ("1.0.0", "1.1.0"):
        server.admin("models", "push", str(CPU), str(TPU), "--name", "mn", "--version", version)
    server.admin("deploy", "mn", "1.1.0")
    token = server.enrollment_token()
    coral = SimDevice.enroll(server.sim_fleet(), token, "coral", capabilities=caps(tpu=True))
    pi = SimDevice.enroll(server.sim_fleet(), token, "pi", capabilities=caps())
    server.admin("models", "rollback", "mn", "1.0.0", "--root-key-dir", str(server.root_key_dir))
    for device, variant in ((coral, "edgetpu"), (pi, "int8")):
        manifest = manifests(device)["mn"]
        assert (manifest.version, manifest.variant) == ("1.0.0", variant)
        assert manifest.explicit_rollback and manifest.rollback_from == 2


def test_an_unchanged_state_is_a_short_answer_until_something_changes(server: Server) -> None:
    server.admin("models", "push", str(CPU), "--name", "mn", "--version", "1.0.0", "--deploy")
    device = SimDevice.enroll(
        server.sim_fleet(), server.enrollment_token(), "pi", capabilities=caps()
    )
    full = device.check_in(act=False)
    assert full.state_version and not full.unchanged and len(full.desired) == 1
    request = device_pb2.CheckInRequest(capabilities=caps(), state_version=full.state_version)
    short = device.stub.CheckIn(request, timeout=10)
    assert short.unchanged and short.state_version == full.state_version
    assert not short.desired and not short.HasField("keylist")
    # A deployment changes the state: the same request gets the full, new answer.
    server.admin("models", "push", str(CPU), "--name", "mn", "--version", "1.1.0", "--deploy")
    changed = device.stub.CheckIn(request, timeout=10)
    assert not changed.unchanged and changed.state_version != full.state_version
    (envelope,) = changed.desired
    assert manifest_pb2.Manifest.FromString(envelope.payload).version == "1.1.0"


def test_uploads_that_lie_about_their_size_are_refused_and_leave_nothing(server: Server) -> None:
    from protos import admin_pb2, admin_pb2_grpc

    token = (server.data_dir / "admin.token").read_text().strip()
    credentials = grpc.ssl_channel_credentials(root_certificates=server.ca_file.read_bytes())
    artifacts = server.data_dir / "artifacts"
    before = sorted(p.name for p in artifacts.iterdir())
    data = CPU.read_bytes()
    cases = [
        (len(data) - 100, [data], "exceeds the"),  # more bytes than announced
        (len(data) + 100, [data], "announced"),  # fewer
        (600 * 1024 * 1024, [data], "outside 1.."),  # over the model size limit
    ]
    with grpc.secure_channel(server.address, credentials) as channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        for size, chunks, message in cases:
            meta = admin_pb2.PushModelMeta(model_name="m", version="1.0.0", size=size)
            stream = [admin_pb2.PushModelRequest(meta=meta)] + [
                admin_pb2.PushModelRequest(data=c) for c in chunks
            ]
            with pytest.raises(grpc.RpcError) as info:
                stub.PushModel(
                    iter(stream), timeout=30, metadata=[("authorization", f"Bearer {token}")]
                )
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert message in (info.value.details() or ""), info.value.details()
    assert sorted(p.name for p in artifacts.iterdir()) == before
    assert json.loads(server.admin("models", "list", "--json").stdout) == []
