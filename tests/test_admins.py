"""Issue 22 item 1: named admins with roles. Each person has a token (kept as a hash) and a
role; every admin RPC needs the role docs/security.md gives it, checked before it runs; the
audit log names the person; a revoked token is refused at once; the bootstrap token stops once
a named admin exists and comes back only from the server host. A real server, the real CLI, and
every AdminService method called over gRPC."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from google.protobuf import message_factory

from fleet_server.admins.roles import ROLE_OF, Role
from fleet_server.simulator import SimDevice
from protos import admin_pb2
from tests.harness import Server, run_cli, wait_for

SERVICE = admin_pb2.DESCRIPTOR.services_by_name["AdminService"]


def test_every_admin_method_has_a_role_in_the_table() -> None:
    methods = {m.name for m in SERVICE.methods}
    assert methods == set(ROLE_OF), methods ^ set(ROLE_OF)
    # What only reads is for viewers; nothing that changes the fleet is.
    for name, role in ROLE_OF.items():
        if name.startswith(("Create", "Set", "Delete", "Revoke", "Commit", "Push", "Deploy")):
            assert role > Role.VIEWER, name


def _cli(server: Server, token_file: Path, *args: str, check: bool = True) -> str:
    result = run_cli("edgefleet", "--server", server.address, "--ca-file",
                     str(server.data_dir / "ca" / "ca.crt"), "--token-file", str(token_file),
                     *args, check=check)  # fmt: skip
    return result.stdout + result.stderr


def _call(server: Server, token: str, method: str) -> grpc.StatusCode:
    """Call ``method`` with an empty request; the status it ends with (OK when it answered)."""
    desc = SERVICE.methods_by_name[method]
    request = message_factory.GetMessageClass(desc.input_type)()
    credentials = grpc.ssl_channel_credentials((server.data_dir / "ca" / "ca.crt").read_bytes())
    path = f"/{SERVICE.full_name}/{method}"
    metadata = [("authorization", f"Bearer {token}")]
    with grpc.secure_channel(server.address, credentials) as channel:
        try:
            if desc.client_streaming:
                call = channel.stream_unary(
                    path, request_serializer=type(request).SerializeToString
                )
                call(iter([request]), timeout=30, metadata=metadata)
            else:
                call = channel.unary_unary(path, request_serializer=type(request).SerializeToString)
                call(request, timeout=30, metadata=metadata)
        except grpc.RpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


@pytest.mark.slow
def test_roles_names_revocation_and_the_bootstrap_token(
    server_factory: Callable[..., Server], broker_url: str, tmp_path: Path
) -> None:
    server = server_factory(broker_url)
    bootstrap = server.data_dir / "admin.token"
    files = {name: tmp_path / f"{name}.token" for name in ("alice", "bob", "carol")}
    # The first named admin with the admin role ends the bootstrap token's use: alice adds
    # the others.
    _cli(
        server, bootstrap, "admins", "add", "alice", "--role", "admin", "--out", str(files["alice"])
    )
    for name, role in (("bob", "operator"), ("carol", "viewer")):
        _cli(
            server, files["alice"], "admins", "add", name, "--role", role, "--out", str(files[name])
        )
    assert all(path.stat().st_mode & 0o777 == 0o600 for path in files.values())
    # The bootstrap token is for first setup: refused now, saying why and what to do.
    refused = _cli(server, bootstrap, "models", "list", check=False)
    assert "bootstrap admin token is disabled" in refused, refused
    assert _cli(server, files["bob"], "whoami").strip() == "bob (operator)"

    # A viewer is refused every call that changes anything, before it runs; an operator every
    # admin-only one; each may make the calls its role allows (answered, whatever the answer).
    tokens = {name: path.read_text().strip() for name, path in files.items()}
    for method, needed in ROLE_OF.items():
        if method == "RotateAdminToken":  # one's own, by any role: below
            continue
        for name, held in (("carol", Role.VIEWER), ("bob", Role.OPERATOR)):
            code = _call(server, tokens[name], method)
            if held < needed:
                assert code == grpc.StatusCode.PERMISSION_DENIED, (name, method, code)
            else:
                assert code not in (
                    grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED
                ), (name, method, code)  # fmt: skip
    denied = _cli(server, files["carol"], "rollouts", "pause", "1", check=False)
    assert "carol (viewer) may not call PauseRollout: it needs the operator role" in denied

    # The audit log names the person.
    _cli(server, files["bob"], "tokens", "create", "--label", "site=lab")
    audit = json.loads(_cli(server, files["carol"], "audit", "--json"))
    mine = [a for a in audit if a["action"] == "CreateEnrollmentToken"]
    assert mine and all(a["actor"].startswith("bob@") for a in mine), audit[:3]

    # Rotation: the old token stops, the new one works.
    files["carol"].rename(tmp_path / "carol-old")
    _cli(server, tmp_path / "carol-old", "admins", "rotate", "--out", str(files["carol"]))
    assert "credentials missing or wrong" in _cli(
        server, tmp_path / "carol-old", "whoami", check=False
    )
    assert "carol (viewer)" in _cli(server, files["carol"], "whoami")

    # Revocation: refused at once; the last admin cannot be revoked or demoted.
    _cli(server, files["alice"], "admins", "revoke", "bob")
    assert "credentials missing or wrong" in _cli(server, files["bob"], "whoami", check=False)
    last = _cli(server, files["alice"], "admins", "revoke", "alice", check=False)
    assert "last admin with the admin role" in last, last
    assert "last admin" in _cli(server, files["alice"], "admins", "set-role", "alice", "viewer",
                                check=False)  # fmt: skip
    again = _cli(server, files["alice"], "admins", "add", "bob", "--role", "viewer", check=False)
    assert "names are never reused" in again

    # From the server host only: the bootstrap token again, for a while.
    run_cli("edgefleet-server", "bootstrap-token", "--data-dir", str(server.data_dir),
            "--enable-for", "10m")  # fmt: skip
    wait_for(
        "the bootstrap token to work again",
        lambda: "bootstrap-token (admin)" in _cli(server, bootstrap, "whoami", check=False),
    )
    listed = _cli(server, files["alice"], "admins", "list")
    assert "bootstrap token: enabled until" in listed and "bob" in listed and "revoked" in listed
    run_cli("edgefleet-server", "bootstrap-token", "--data-dir", str(server.data_dir), "--disable")
    wait_for(  # what another process wrote to the database: within the 5 s cache
        "the bootstrap token to be refused again",
        lambda: "token is disabled" in _cli(server, bootstrap, "whoami", check=False),
    )


@pytest.mark.slow
def test_client_certificates_from_the_fleet_ca(
    server_factory: Callable[..., Server], tmp_path: Path
) -> None:
    """Item 1's option: an admin's own certificate instead of a token, on the mTLS port. The
    key never leaves the admin's machine; the certificate stands for that person and role only
    while it is the newest one issued and the admin is not revoked; a device's certificate is
    never an admin's."""
    server = server_factory(None)
    files = {name: tmp_path / f"{name}.token" for name in ("alice", "bob")}
    bootstrap = server.data_dir / "admin.token"
    _cli(
        server, bootstrap, "admins", "add", "alice", "--role", "admin", "--out", str(files["alice"])
    )
    _cli(server, files["alice"], "admins", "add", "bob", "--role", "operator",
         "--out", str(files["bob"]))  # fmt: skip
    made = _cli(server, files["bob"], "admins", "cert", "--out-dir", str(tmp_path / "bob"))
    assert "certificate" in made and "for bob (operator)" in made, made
    key, cert = tmp_path / "bob" / "bob.key", tmp_path / "bob" / "bob.crt"
    assert key.stat().st_mode & 0o777 == 0o600
    device_port = f"127.0.0.1:{server.device_port}"
    ca = str(server.data_dir / "ca" / "ca.crt")

    def by_cert(certificate: Path, *args: str, address: str = device_port) -> str:
        result = run_cli("edgefleet", "--server", address, "--ca-file", ca,
                         "--client-cert", str(certificate), *args, check=False)  # fmt: skip
        return result.stdout + result.stderr

    assert by_cert(cert, "whoami").strip() == "bob (operator)"
    _ = by_cert(cert, "tokens", "create", "--label", "site=lab")
    audit = json.loads(_cli(server, files["alice"], "audit", "--json"))
    assert any(a["action"] == "CreateEnrollmentToken" and a["actor"].startswith("bob@")
               for a in audit), audit[:3]  # fmt: skip
    # The role holds as with a token.
    assert "it needs the admin role" in by_cert(cert, "admins", "list")
    # Another's certificate needs the admin role.
    refused = _cli(server, files["bob"], "admins", "cert", "alice", "--out-dir",
                   str(tmp_path / "x"), check=False)  # fmt: skip
    assert "may not issue a certificate for alice" in refused, refused
    # On the main port no certificate is asked for: the CLI says where it counts.
    wrong_port = by_cert(cert, "whoami", address=server.address)
    assert "only on the server's device port" in wrong_port, wrong_port
    # A device's certificate (the fleet CA signed it too) is not an admin's.
    device = SimDevice.enroll(server.sim_fleet(), server.enrollment_token(), "dev-cert")
    (tmp_path / "dev.key").write_bytes(device.key_pem)
    (tmp_path / "dev.crt").write_bytes(device.certificate_pem)
    assert "credentials missing or wrong" in by_cert(tmp_path / "dev.crt", "whoami")
    # A new certificate replaces the old; revoking the admin ends the new one.
    (tmp_path / "bob").rename(tmp_path / "bob-old")
    _cli(server, files["bob"], "admins", "cert", "--out-dir", str(tmp_path / "bob"))
    old = tmp_path / "bob-old" / "bob.crt"
    assert "credentials missing or wrong" in by_cert(old, "whoami")
    assert by_cert(cert, "whoami").strip() == "bob (operator)"
    listed = json.loads(_cli(server, files["alice"], "admins", "list", "--json"))
    bob = next(a for a in listed["admins"] if a["name"] == "bob")
    assert bob["cert_serial"] and int(bob["cert_not_after_unix"]) > 0
    # Rotating the token (what one does after a theft) ends the certificate too: a stolen
    # token's holder may have got one.
    files["bob"].rename(tmp_path / "bob-old.token")
    _cli(server, tmp_path / "bob-old.token", "admins", "rotate", "--out", str(files["bob"]))
    assert "credentials missing or wrong" in by_cert(cert, "whoami")
    (tmp_path / "bob").rename(tmp_path / "bob-rotated")
    _cli(server, files["bob"], "admins", "cert", "--out-dir", str(tmp_path / "bob"))
    assert by_cert(cert, "whoami").strip() == "bob (operator)"
    _cli(server, files["alice"], "admins", "revoke", "bob")
    assert "credentials missing or wrong" in by_cert(cert, "whoami")
    # A certificate whose key is missing or not PEM is one line, not a traceback.
    assert "cannot read the client key" in by_cert(tmp_path / "nowhere.crt", "whoami")


def test_the_role_table_in_the_docs_is_the_one_the_server_checks() -> None:
    text = (Path(__file__).parent.parent / "docs" / "security.md").read_text(encoding="utf-8")
    documented: dict[str, Role] = {}
    for role in Role:
        row = next(line for line in text.splitlines() if line.startswith(f"| {role} | `"))
        for name in row.split("|")[2].split(","):
            documented[name.strip().strip("`")] = role
    assert documented == ROLE_OF, set(documented.items()) ^ set(ROLE_OF.items())
