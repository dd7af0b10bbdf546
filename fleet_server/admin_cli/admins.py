"""``edgefleet admins`` and ``whoami``: named admins with roles (viewer, operator, admin)."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fleet_server.admin_cli import common
from fleet_server.errors import BadRequestError
from protos import admin_pb2 as pb

__all__ = ["add_parsers"]

ROLES = ("viewer", "operator", "admin")


def _line(a: pb.AdminInfo) -> str:
    state = f"revoked {common.fmt_time(a.revoked_unix)}" if a.revoked_unix else "active"
    used = common.fmt_time(a.last_used_unix) if a.last_used_unix else "never"
    return (
        f"{a.name:24} {a.role:8} {state:26} last used {used:19}  added "
        f"{common.fmt_time(a.created_unix)} by {a.created_by}"
    )


def _token_out(args: argparse.Namespace) -> int | None:
    """The --out file, made (0600, never over another) before the server is asked: a token
    the server made (a new admin's, or a rotation's, which ends the old one) and could not
    write would be lost, and a rotation would have locked its admin out."""
    if args.out is None:
        return None
    try:
        return os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise BadRequestError(f"{args.out} exists: not overwritten (nothing was changed)") from None
    except OSError as exc:
        raise BadRequestError(
            f"cannot write {args.out}: {exc.strerror} (nothing was changed)"
        ) from None


def _with_token(
    args: argparse.Namespace, method: str, request: Any, what: Callable[[Any], str]
) -> None:
    """Call ``method`` for a token and give it once: into --out or on standard output."""
    fd = _token_out(args)
    try:
        answer = common.admin(args).call(method, request)
    except BaseException:
        if fd is not None:
            os.close(fd)
            args.out.unlink(missing_ok=True)
        raise
    if fd is None:
        print(answer.token)
        print(f"{what(answer)}: the token above is shown once; the server keeps only its hash",
              file=sys.stderr)  # fmt: skip
        return
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(answer.token + "\n")
    print(f"{what(answer)}: token written to {args.out} (0600); use it with --token-file")


def _cmd_add(args: argparse.Namespace) -> int:
    _with_token(
        args,
        "CreateAdmin",
        pb.CreateAdminRequest(name=args.name, role=args.role),
        lambda a: f"admin {a.admin.name} ({a.admin.role}) added",
    )
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    answer = common.admin(args).call("ListAdmins", pb.ListAdminsRequest())
    if args.json:
        print(json.dumps(common.as_dict(answer), indent=2, sort_keys=True))
        return 0
    for a in answer.admins:
        print(_line(a))
    if not answer.admins:
        print("no named admins: the bootstrap token (DATA_DIR/admin.token) is the only one")
    elif answer.bootstrap_enabled:
        until = answer.bootstrap_until_unix
        print("bootstrap token: enabled" + (f" until {common.fmt_time(until)}" if until else ""))
    else:
        print("bootstrap token: disabled (named admins exist)")
    return 0


def _cmd_set_role(args: argparse.Namespace) -> int:
    info = common.admin(args).call(
        "SetAdminRole", pb.SetAdminRoleRequest(name=args.name, role=args.role)
    )
    print(f"{info.name} is now {info.role}")
    return 0


def _cmd_rotate(args: argparse.Namespace) -> int:
    _with_token(
        args,
        "RotateAdminToken",
        pb.AdminRequest(name=args.name or ""),
        lambda a: f"new token for {a.admin.name}; the old one no longer works",
    )
    return 0


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Write a file that must not exist yet (a key is never overwritten)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise BadRequestError(f"{path} exists: not overwritten") from None
    except OSError as exc:
        raise BadRequestError(f"cannot write {path}: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _cmd_cert(args: argparse.Namespace) -> int:
    """A key made here (it never leaves this machine), a CSR for it, and the certificate."""
    admin = common.admin(args)
    name = args.name or admin.call("WhoAmI", pb.WhoAmIRequest()).name
    if not re.fullmatch(r"[a-z0-9][a-z0-9._@+-]{0,63}", name):  # names the files below
        raise BadRequestError(f"admin name {name[:80]!r} is not valid")
    folder: Path = args.out_dir
    key_path, cert_path = folder / f"{name}.key", folder / f"{name}.crt"
    for path in (key_path, cert_path):
        if path.exists():
            raise BadRequestError(f"{path} exists: not overwritten (move it away first)")
    key = ec.generate_private_key(ec.SECP256R1())
    # No subject: the server names the certificate (edgefleet-admin:NAME).
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    # The key is written before the server is asked: the new certificate ends the one before,
    # so a folder that cannot take the files must fail now, not after (a traceback, and the
    # admin left with no certificate that works).
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadRequestError(f"cannot make {folder}: {exc.strerror}") from None
    _write_new(key_path, key_pem, 0o600)
    try:
        answer = admin.call(
            "IssueAdminCertificate",
            pb.AdminCertificateRequest(
                name=args.name or "",
                csr_pem=csr.public_bytes(serialization.Encoding.PEM),
                days=args.days,
            ),
        )
    except BaseException:
        key_path.unlink(missing_ok=True)
        raise
    _write_new(cert_path, answer.cert_pem, 0o644)
    print(
        f"certificate {answer.admin.cert_serial} for {answer.admin.name} "
        f"({answer.admin.role}) until {common.fmt_time(answer.admin.cert_not_after_unix)}: "
        f"{cert_path}, key {key_path} (0600; it never left this machine). Use it on the "
        f"server's device port: edgefleet --server HOST:7444 --client-cert {cert_path} ..."
    )
    print("the certificate issued before it (if any) no longer works", file=sys.stderr)
    return 0


def _cmd_revoke(args: argparse.Namespace) -> int:
    info = common.admin(args).call("RevokeAdmin", pb.AdminRequest(name=args.name))
    print(f"{info.name} revoked: its token is refused from now on (on other replicas within 5 s)")
    return 0


def _cmd_whoami(args: argparse.Namespace) -> int:
    info = common.admin(args).call("WhoAmI", pb.WhoAmIRequest())
    if args.json:
        print(json.dumps(common.as_dict(info), indent=2, sort_keys=True))
    elif info.bootstrap:
        print(f"{info.name} ({info.role}): the bootstrap token, for first setup")
    else:
        print(f"{info.name} ({info.role})")
    return 0


def add_parsers(sub: Any) -> None:
    """Add this area's commands to the top-level subparsers."""
    admins = sub.add_parser(
        "admins",
        help="named admins and their roles (viewer, operator, admin)",
        description="Each person gets their own token and role; the audit log names them. "
        "The bootstrap token (DATA_DIR/admin.token) stops working once an admin with the "
        "admin role exists (docs/security.md, Admins and roles).",
    )
    admins_sub = admins.add_subparsers(dest="action", required=True)
    add = admins_sub.add_parser("add", help="add an admin and print its token once")
    add.add_argument("name", help="lowercase letters, digits and . _ @ + - (an email fits)")
    add.add_argument("--role", choices=ROLES, required=True)
    add.add_argument("--out", type=Path, metavar="FILE", help="write the token here (0600)")
    add.set_defaults(func=_cmd_add)
    listing = admins_sub.add_parser("list", help="every admin, role, and when last used")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=_cmd_list)
    role = admins_sub.add_parser("set-role", help="change an admin's role")
    role.add_argument("name")
    role.add_argument("role", choices=ROLES)
    role.set_defaults(func=_cmd_set_role)
    rotate = admins_sub.add_parser(
        "rotate", help="a new token (your own by default); the old one stops working"
    )
    rotate.add_argument("name", nargs="?", help="another admin's (needs the admin role)")
    rotate.add_argument("--out", type=Path, metavar="FILE", help="write the token here (0600)")
    rotate.set_defaults(func=_cmd_rotate)
    cert = admins_sub.add_parser(
        "cert",
        help="a client certificate from the fleet CA instead of a token (your own by default)",
        description="Makes a key here, sends only a CSR, and writes NAME.key (0600) and "
        "NAME.crt into --out-dir. The certificate authenticates on the server's device port "
        "(mTLS, 7444): edgefleet --server HOST:7444 --client-cert NAME.crt ... A new one "
        "replaces the one before; revoking the admin ends both token and certificate.",
    )
    cert.add_argument("name", nargs="?", help="another admin's (needs the admin role)")
    cert.add_argument("--out-dir", type=Path, required=True, metavar="DIR")
    cert.add_argument(
        "--days", type=common.whole(1, 365), default=90, help="valid this long (default 90)"
    )
    cert.set_defaults(func=_cmd_cert)
    revoke = admins_sub.add_parser("revoke", help="end an admin's access (the name stays)")
    revoke.add_argument("name")
    revoke.set_defaults(func=_cmd_revoke)
    who = sub.add_parser("whoami", help="who your token says you are, and your role")
    who.add_argument("--json", action="store_true")
    who.set_defaults(func=_cmd_whoami)
