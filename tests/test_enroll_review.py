"""Kill-safe enrollment, ghost devices and refusal clears under attack: the findings of issue
18's second review (branch attack-18b), each of which failed before its fix. Real servers; a
thief is a simulated device with a key of its own."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from cryptography import x509

from agent.identity import new_key_and_csr
from fleet_server.simulator import SimDevice
from protos import device_pb2 as pb
from protos import device_pb2_grpc as pb_grpc
from tests.harness import Server, wait_for

pytestmark = pytest.mark.slow


def _audit(server: Server, action: str) -> list[dict[str, object]]:
    entries = json.loads(server.admin("audit", "--json").stdout)
    return [e for e in entries if e["action"] == action]


def test_a_deleted_ghosts_certificate_is_revoked_before_its_id_is_given_again(
    server_factory: Callable[..., Server],
) -> None:
    # A thief who saw a token enrolls "cam" with a key of their own and never checks in. The
    # ghost reaper deletes the row and frees the id for the real "cam"; the thief's certificate
    # (CN=cam, fleet CA, valid for months) must be in the CRL, or mosquitto (which knows
    # devices only by CN and the CRL) would take the thief for the real cam.
    server = server_factory(None, extra=["--ghost-device-after", "1"])
    fleet, token = server.sim_fleet(), server.enrollment_token()
    thief = SimDevice.enroll(fleet, token, "cam")
    assert thief.device_id == "cam"
    wait_for(
        "the ghost to be deleted",
        lambda: not any(d["device_id"] == "cam" for d in server.devices()),
        timeout=30,
    )
    real = SimDevice.enroll(fleet, token, "cam")
    assert real.device_id == "cam"  # the ghost's id, given again
    real.check_in()
    stolen = x509.load_pem_x509_certificate(thief.certificate_pem).serial_number

    def revoked() -> bool:
        crl = x509.load_pem_x509_crl((server.data_dir / "ca" / "fleet.crl").read_bytes())
        return crl.get_revoked_certificate_by_serial_number(stolen) is not None

    wait_for("the deleted ghost's certificate in fleet.crl", revoked, timeout=30)
    thief.close()
    real.close()


def test_a_clear_refusal_audit_entry_stays_valid_json(
    server_factory: Callable[..., Server], color_models: Path
) -> None:
    # The audit log keeps 8192 characters of a detail; a selector of 32 labels of 255
    # characters (valid) must still leave an entry that parses and names the devices.
    server = server_factory(None)
    model = color_models / "color_float.tflite"
    server.admin("models", "push", str(model), "--name", "colors", "--version", "1.0.0")
    sha = hashlib.sha256(model.read_bytes()).hexdigest()
    labels = {f"k{i:02d}": chr(ord("a") + i % 26) * 255 for i in range(32)}
    fleet, token = server.sim_fleet(), server.enrollment_token()
    device = SimDevice.enroll(fleet, token, "lab-1", labels=labels)
    request = pb.CheckInRequest(capabilities=device.capabilities)
    request.refused.refusals.add(model_name="colors", sha256=sha)
    device.stub.CheckIn(request, timeout=10)
    words = [w for k, v in labels.items() for w in ("--selector", f"{k}={v}")]
    server.admin("devices", "clear-refusal", *words, "--model", "colors")
    (entry,) = [e for e in _audit(server, "ClearRefusal") if e["ok"]]
    detail = json.loads(str(entry["detail"]))
    assert detail["devices"] == ["lab-1"]
    device.close()


def _enroll(server: Server, token: str, name: str, csr_pem: bytes) -> pb.EnrollResponse:
    fleet = server.sim_fleet()
    with grpc.secure_channel(
        fleet.address, grpc.ssl_channel_credentials(root_certificates=fleet.ca_pem)
    ) as channel:
        request = pb.EnrollRequest(
            enrollment_token=token,
            requested_name=name,
            capabilities=pb.Capabilities(arch="x86_64"),
            csr_pem=csr_pem,
        )
        response: pb.EnrollResponse = pb_grpc.DeviceServiceStub(channel).Enroll(request, timeout=30)
        return response


def test_a_killed_agents_repeat_within_ten_minutes_is_answered_whatever_the_ghost_age(
    server_factory: Callable[..., Server],
) -> None:
    # The agent killed before it saved its identity asks again with the same token and key.
    # A ghost age below the 10-minute repeat window deletes its device first: the token's use
    # is given back with it, so the repeat enrolls (as a new device under the same name).
    server = server_factory(None, extra=["--ghost-device-after", "2"])
    token = json.loads(server.admin("tokens", "create", "--json").stdout)["token"]
    _key, csr = new_key_and_csr("cam")
    first = _enroll(server, token, "cam", csr)  # the agent is killed before it saves this
    wait_for(
        "the ghost to be deleted",
        lambda: not any(d["device_id"] == "cam" for d in server.devices()),
        timeout=30,
    )
    try:
        again = _enroll(server, token, "cam", csr)  # its restart, well within 10 minutes
    except grpc.RpcError as exc:
        pytest.fail(f"the repeat within the window was refused: {exc.code()} {exc.details()}")
    assert again.device_id == first.device_id  # the same name, free again
    assert [d["device_id"] for d in server.devices()] == ["cam"]
