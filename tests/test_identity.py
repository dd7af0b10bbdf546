"""Device identity end to end: enrollment tokens, CSRs, mTLS on the device port, revocation and
renewal, against a real server process."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import grpc
import pytest

from agent.identity import new_key_and_csr
from fleet_server.registry.ca import FleetCA
from fleet_server.simulator import SimDevice
from protos import device_pb2 as pb
from protos import device_pb2_grpc as pb_grpc
from tests.harness import Server

pytestmark = pytest.mark.slow


def enroll_raw(server: Server, token: str, name: str, csr_pem: bytes) -> pb.EnrollResponse:
    credentials = grpc.ssl_channel_credentials(root_certificates=server.ca_file.read_bytes())
    with grpc.secure_channel(server.address, credentials) as channel:
        response: pb.EnrollResponse = pb_grpc.DeviceServiceStub(channel).Enroll(
            pb.EnrollRequest(enrollment_token=token, requested_name=name, csr_pem=csr_pem),
            timeout=10,
        )
        return response


def device_stub(server: Server, key_pem: bytes, cert_pem: bytes) -> pb_grpc.DeviceServiceStub:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=server.ca_file.read_bytes(),
        private_key=key_pem,
        certificate_chain=cert_pem,
    )
    channel = grpc.secure_channel(f"127.0.0.1:{server.device_port}", credentials)
    return pb_grpc.DeviceServiceStub(channel)


def code_and_details(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details() or ""


def new_token(server: Server, *args: str) -> str:
    return server.admin("tokens", "create", *args).stdout.strip()


def test_single_use_tokens_labels_and_expiry(server_factory: Callable[..., Server]) -> None:
    server = server_factory(None, extra=("--no-bootstrap-token",))
    token = new_token(server, "--label", "site=dock", "--note", "dock camera")
    device = SimDevice.enroll(server.sim_fleet(), token, "cam-1", labels={"site": "lab", "a": "b"})
    shown = json.loads(server.admin("devices", "show", device.device_id, "--json").stdout)
    assert shown["labels"] == {"site": "dock", "a": "b"}  # the token's labels win
    device.check_in()

    _key, csr = new_key_and_csr("cam-2")
    code, details = code_and_details(lambda: enroll_raw(server, token, "cam-2", csr))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert "unknown, expired or used up" in details

    short = new_token(server, "--ttl", "1s")
    time.sleep(1.5)
    assert code_and_details(lambda: enroll_raw(server, short, "cam-2", csr))[0] == (
        grpc.StatusCode.UNAUTHENTICATED
    )
    # The data dir's reusable token is off on this server.
    bootstrap = server.enrollment_token()
    assert code_and_details(lambda: enroll_raw(server, bootstrap, "cam-2", csr))[0] == (
        grpc.StatusCode.UNAUTHENTICATED
    )
    listed = json.loads(server.admin("tokens", "list", "--json").stdout)
    assert sorted(t["uses_left"] for t in listed) == [0, 1]
    assert all("token" not in t for t in listed)  # the secrets never come back
    revoked = server.admin("tokens", "revoke", listed[0]["token_id"]).stdout
    assert "revoked 1 token(s)" in revoked
    assert any(e["action"] == "CreateEnrollmentToken" for e in audit(server))


def audit(server: Server) -> list[dict[str, object]]:
    return list(json.loads(server.admin("audit", "--json").stdout))


def test_bad_csrs_are_refused_without_spending_the_token(
    server_factory: Callable[..., Server],
) -> None:
    server = server_factory(None)
    token = new_token(server)
    _key, other_csr = new_key_and_csr("someone-else")
    code, details = code_and_details(lambda: enroll_raw(server, token, "cam-1", other_csr))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "the CSR is for 'someone-else', not 'cam-1'" in details
    code, details = code_and_details(lambda: enroll_raw(server, token, "cam-1", b"garbage"))
    assert (code, details) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "the certificate signing request is not a PEM CSR",
    )
    code, details = code_and_details(lambda: enroll_raw(server, token, "cam-1", b""))
    assert "needs a certificate signing request" in details
    # The token survived the bad requests.
    key, csr = new_key_and_csr("cam-1")
    response = enroll_raw(server, token, "cam-1", csr)
    assert response.device_id == "cam-1" and response.certificate_pem.startswith(b"-----BEGIN")
    assert response.device_address == f":{server.device_port}"
    stub = device_stub(server, key, response.certificate_pem)
    stub.CheckIn(pb.CheckInRequest(), timeout=10)


def test_device_calls_need_the_devices_current_certificate(
    server_factory: Callable[..., Server], tmp_path: object
) -> None:
    server = server_factory(None)
    key, csr = new_key_and_csr("cam-1")
    response = enroll_raw(server, server.enrollment_token(), "cam-1", csr)
    stub = device_stub(server, key, response.certificate_pem)
    stub.CheckIn(pb.CheckInRequest(), timeout=10)

    # Without a client certificate (the main port) a device call is refused.
    credentials = grpc.ssl_channel_credentials(root_certificates=server.ca_file.read_bytes())
    with grpc.secure_channel(server.address, credentials) as channel:
        code, details = code_and_details(
            lambda: pb_grpc.DeviceServiceStub(channel).CheckIn(pb.CheckInRequest(), timeout=10)
        )
    assert code == grpc.StatusCode.UNAUTHENTICATED and "no device certificate" in details

    # A certificate from another CA does not get through the TLS handshake.
    import pathlib

    rogue = FleetCA.create(pathlib.Path(str(tmp_path)) / "rogue-ca", "default")
    rogue_key, rogue_csr = new_key_and_csr("cam-1")
    rogue_cert = rogue.sign_device_csr(rogue_csr, "cam-1", expected_cn="cam-1").pem
    code, _ = code_and_details(
        lambda: device_stub(server, rogue_key, rogue_cert).CheckIn(pb.CheckInRequest(), timeout=5)
    )
    assert code == grpc.StatusCode.UNAVAILABLE

    # Renewal: a CSR for another device is refused; the new certificate replaces the old.
    _k, foreign = new_key_and_csr("cam-9")
    code, details = code_and_details(
        lambda: stub.RenewCertificate(pb.RenewRequest(csr_pem=foreign), timeout=10)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "'cam-9', not 'cam-1'" in details
    new_key, new_csr = new_key_and_csr("cam-1")
    renewed = stub.RenewCertificate(pb.RenewRequest(csr_pem=new_csr), timeout=10)
    fresh = device_stub(server, new_key, renewed.certificate_pem)
    fresh.CheckIn(pb.CheckInRequest(), timeout=10)
    code, details = code_and_details(lambda: stub.CheckIn(pb.CheckInRequest(), timeout=10))
    assert code == grpc.StatusCode.UNAUTHENTICATED and "replaced by a newer one" in details

    server.admin("devices", "revoke", "cam-1")
    code, details = code_and_details(lambda: fresh.CheckIn(pb.CheckInRequest(), timeout=10))
    assert code == grpc.StatusCode.UNAUTHENTICATED and "revoked" in details


def test_the_admin_cli_checks_the_servers_certificate(
    server_factory: Callable[..., Server], tmp_path: object
) -> None:
    import pathlib

    server = server_factory(None)
    rogue = FleetCA.create(pathlib.Path(str(tmp_path)) / "other-ca", "default")
    token = (server.data_dir / "admin.token").read_text().strip()
    from tests.harness import run_cli

    result = run_cli(
        "edgefleet",
        "--server",
        server.address,
        "--token",
        token,
        "--ca-file",
        str(pathlib.Path(str(tmp_path)) / "other-ca" / "ca.crt"),
        "devices",
        "list",
        check=False,
    )
    assert result.returncode == 1 and "unreachable" in result.stderr
    assert rogue.cert_pem != server.ca_file.read_bytes()
    missing = run_cli(
        "edgefleet", "--server", server.address, "--token", token, "devices", "list", check=False
    )
    assert "the server speaks TLS: give --ca-file" in missing.stderr


def test_a_busy_database_answers_unavailable_and_enrollment_works_after(
    server_factory: Callable[..., Server],
) -> None:
    """Another writer holding SQLite past its busy timeout is a transient fault: the device
    hears UNAVAILABLE (and retries), not an internal error, and nothing half-done remains."""
    import sqlite3

    server = server_factory(None)
    token = server.enrollment_token()
    _key, csr_pem = new_key_and_csr("cam-busy")
    holder = sqlite3.connect(server.data_dir / "fleet.db", timeout=1, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # (a backup job, a second server on the same file...)
    try:
        code, details = code_and_details(lambda: enroll_raw(server, token, "cam-busy", csr_pem))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert code == grpc.StatusCode.UNAVAILABLE, details
    assert "database is busy" in details and "Traceback" not in details
    assert "database unavailable in Enroll" in server.proc.output()
    response = enroll_raw(server, token, "cam-busy", csr_pem)
    assert response.device_id == "cam-busy" and response.certificate_pem
    assert [d["device_id"] for d in server.devices()] == ["cam-busy"]
