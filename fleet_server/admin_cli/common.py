"""What every command shares: the admin API client, output helpers and argument types."""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict

from agent.ports import split_tcp
from fleet_server.errors import AuthError, BadRequestError, FleetError
from protos import admin_pb2_grpc as pb_grpc

__all__ = [
    "ID",
    "INT32",
    "PROG",
    "Admin",
    "add_root_key_options",
    "admin",
    "as_dict",
    "duration",
    "fmt_time",
    "fraction",
    "number",
    "pairs",
    "print_json",
    "read_passphrase",
    "root_key_files",
    "root_keys",
    "whole",
]

PROG = "edgefleet"


class Admin:
    """The admin API, with a bearer token, or with a client certificate (``client``: key and
    certificate PEM) and no token."""

    def __init__(
        self,
        address: str,
        token: str,
        timeout_s: float,
        ca_pem: bytes,
        *,
        wait_s: float = 0.0,
        client: tuple[bytes, bytes] | None = None,
    ) -> None:
        self.address = address
        self._metadata = [("authorization", f"Bearer {token}")] if token else []
        self._timeout = timeout_s
        self._wait_s = wait_s
        self._by_certificate = client is not None
        key, chain = client if client is not None else (None, None)
        self._channel = grpc.secure_channel(
            address,
            grpc.ssl_channel_credentials(
                root_certificates=ca_pem, private_key=key, certificate_chain=chain
            ),
        )
        self.stub = pb_grpc.AdminServiceStub(self._channel)

    def call(self, method: str, request: Any) -> Any:
        if self._wait_s:
            wait_until_listening(self.address, self._wait_s)
            self._wait_s = 0.0
        try:
            return getattr(self.stub, method)(
                request, timeout=self._timeout, metadata=self._metadata
            )
        except grpc.RpcError as exc:
            error = _rpc_error(exc, self.address)
            if self._by_certificate and isinstance(error, AuthError):
                # The main port asks no client certificate: the call went without one.
                error = AuthError(
                    f"{error}; a client certificate counts only on the server's device port "
                    "(--device-listen, 7444 by default): is --server that port?"
                )
            raise error from exc


def wait_until_listening(address: str, wait_s: float) -> None:
    """Wait (at most ``wait_s``) while nothing listens at ``address`` yet: a server started in
    the background a moment ago (``edgefleet-server run &`` and then a command). Only a refused
    connection is waited for; anything else (an answer, a timeout, an unknown host) is left to
    the call, which reports it."""
    parsed = split_tcp(address)
    if parsed is None:
        return
    deadline, said = time.monotonic() + wait_s, False
    while True:
        try:
            socket.create_connection(parsed, timeout=min(5.0, wait_s)).close()
            return
        except ConnectionRefusedError:
            if time.monotonic() >= deadline:
                return
            if not said:
                print(f"{PROG}: waiting for the fleet server at {address} (nothing listens "
                      f"there yet; --wait {wait_s:g})", file=sys.stderr)  # fmt: skip
                said = True
            time.sleep(0.2)
        except OSError:
            return


def _rpc_error(exc: grpc.RpcError, address: str) -> FleetError:
    code = exc.code()
    if code == grpc.StatusCode.UNAVAILABLE:
        details = exc.details() or ""
        if "fleet database" in details:  # the server answered: its database did not
            return FleetError(f"fleet server {address}: {details}")
        return FleetError(f"fleet server {address} is unreachable ({details})")
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return AuthError(exc.details() or "not authenticated")
    return FleetError(f"{code.name.lower().replace('_', ' ')}: {exc.details()}")


def _token(args: argparse.Namespace) -> str:
    """The caller's token: --token, --token-file, $EDGEFLEET_ADMIN_TOKEN,
    $EDGEFLEET_ADMIN_TOKEN_FILE, then the bootstrap token of --data-dir."""
    if args.token:
        return str(args.token)
    token_file = getattr(args, "token_file", None)
    if token_file is None and not os.environ.get("EDGEFLEET_ADMIN_TOKEN"):
        token_file = os.environ.get("EDGEFLEET_ADMIN_TOKEN_FILE") or None
    if token_file is None and os.environ.get("EDGEFLEET_ADMIN_TOKEN"):
        return os.environ["EDGEFLEET_ADMIN_TOKEN"]
    if token_file is None and args.data_dir:
        token_file = Path(args.data_dir) / "admin.token"
    if token_file is None:
        raise AuthError(
            "no admin token: pass --token-file (or --token, EDGEFLEET_ADMIN_TOKEN_FILE, "
            "EDGEFLEET_ADMIN_TOKEN), or --data-dir for the bootstrap token"
        )
    path = Path(token_file)
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise AuthError(f"cannot read {path}: {exc.strerror}") from exc
    if not token:
        raise AuthError(f"the token file {path} is empty")
    return token


def _ca_pem(args: argparse.Namespace) -> bytes:
    """The fleet CA the server's TLS certificate must chain to."""
    path: Path | None = args.ca_file or (
        Path(os.environ["EDGEFLEET_CA_FILE"]) if os.environ.get("EDGEFLEET_CA_FILE") else None
    )
    if path is None and args.data_dir:
        path = args.data_dir / "ca" / "ca.crt"
    if path is None:
        raise AuthError(
            "the server speaks TLS: give --ca-file (the fleet CA, DATA_DIR/ca/ca.crt), set "
            "EDGEFLEET_CA_FILE, or --data-dir"
        )
    try:
        return path.read_bytes()
    except OSError as exc:
        raise AuthError(f"cannot read the fleet CA {path}: {exc.strerror}") from exc


def _client_certificate(args: argparse.Namespace) -> tuple[bytes, bytes] | None:
    """(key, certificate) PEM from --client-cert/--client-key (or their env), or None."""
    cert: Path | None = getattr(args, "client_cert", None) or (
        Path(os.environ["EDGEFLEET_CLIENT_CERT"])
        if os.environ.get("EDGEFLEET_CLIENT_CERT")
        else None
    )
    key: Path | None = getattr(args, "client_key", None) or (
        Path(os.environ["EDGEFLEET_CLIENT_KEY"]) if os.environ.get("EDGEFLEET_CLIENT_KEY") else None
    )
    if cert is None:
        if key is not None:
            raise BadRequestError("--client-key without --client-cert")
        return None
    key = key or cert.with_suffix(".key")
    pems = []
    for path, what in ((key, "client key"), (cert, "client certificate")):
        try:
            pems.append(path.read_bytes())
        except OSError as exc:
            raise AuthError(f"cannot read the {what} {path}: {exc.strerror}") from exc
    if b"PRIVATE KEY-----" not in pems[0]:
        raise AuthError(f"{key} is not a PEM private key")
    if b"-----BEGIN CERTIFICATE-----" not in pems[1]:
        raise AuthError(f"{cert} is not a PEM certificate")
    return pems[0], pems[1]


def admin(args: argparse.Namespace) -> Admin:
    client = _client_certificate(args)
    token = "" if client is not None and not _token_given(args) else _token(args)
    wait = getattr(args, "wait", 0.0)
    return Admin(args.server, token, args.timeout, _ca_pem(args), wait_s=wait, client=client)


def _token_given(args: argparse.Namespace) -> bool:
    """Whether the caller named a token (beside a certificate, the token decides)."""
    return bool(
        args.token
        or getattr(args, "token_file", None)
        or os.environ.get("EDGEFLEET_ADMIN_TOKEN")
        or os.environ.get("EDGEFLEET_ADMIN_TOKEN_FILE")
    )


def as_dict(message: Any) -> dict[str, Any]:
    """A message for JSON output: proto field names, default values included."""
    return MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def print_json(messages: Any) -> None:
    """Messages as a JSON list, for scripts."""
    print(json.dumps([as_dict(m) for m in messages], indent=2))


def fmt_time(unix: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(unix)) if unix else "-"


def read_passphrase(path: Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes().strip() or None
    except OSError as exc:
        raise BadRequestError(f"cannot read {path}: {exc.strerror}") from exc


def add_root_key_options(parser: argparse.ArgumentParser) -> None:
    """--root-key, --root-key-dir and --passphrase-file: how a command gets the root keys."""
    parser.add_argument(
        "--root-key", type=Path, action="append", help="a root key file (repeat for k of n)"
    )
    parser.add_argument(
        "--root-key-dir",
        type=Path,
        help="a folder of root-*.key files, e.g. the DATA_DIR.root-keys folder init wrote",
    )
    parser.add_argument("--passphrase-file", type=Path, help="passphrase of the root keys")


def root_key_files(args: argparse.Namespace, what: str) -> list[Path]:
    """The root key files given (--root-key, --root-key-dir), or those in DATA_DIR/keys (a
    data dir made with ``init --keep-root-online``).

    Raises:
        BadRequestError: none given or found; the message says where they were looked for.
    """
    from fleet_server.signing.keys import find_root_keys  # noqa: PLC0415

    files = list(args.root_key or [])
    if args.root_key_dir:
        found = find_root_keys(Path(args.root_key_dir))
        if not found:
            raise BadRequestError(f"--root-key-dir {args.root_key_dir} holds no root-*.key file")
        files += found
    if not files and args.data_dir:
        files = find_root_keys(Path(args.data_dir) / "keys")
    if not files:
        online = f"; none in {Path(args.data_dir) / 'keys'}" if args.data_dir else ""
        raise BadRequestError(
            f"{what} is signed by root keys: give --root-key FILE or --root-key-dir DIR (init "
            f"wrote them to DATA_DIR.root-keys/ to be moved off the machine{online})"
        )
    return files


def root_keys(args: argparse.Namespace) -> list[Any]:
    """The root private keys an explicit rollback is signed with.

    Raises:
        BadRequestError: none given or found.
        DataDirError: a key cannot be loaded.
    """
    from fleet_server.signing.keys import load_private_key  # noqa: PLC0415

    passphrase = read_passphrase(args.passphrase_file)
    return [
        load_private_key(path, passphrase) for path in root_key_files(args, "an explicit rollback")
    ]


def fraction(text: str) -> float:
    """ "90%" or "0.9" -> 0.9."""
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a fraction like 90% or 0.9") from exc
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} is outside 0%..100%")
    return value


MAX_DURATION_S = 10 * 365 * 86400


def duration(text: str) -> int:
    """ "90s", "15m", "24h", "7d" or plain seconds -> seconds (0 to ten years)."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        if text and text[-1] in units:
            value = float(text[:-1]) * units[text[-1]]
        else:
            value = float(int(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 24h or 7d") from exc
    if not 0 <= value <= MAX_DURATION_S:  # also refuses inf and nan
        raise argparse.ArgumentTypeError(f"{text!r} is outside 0s..{MAX_DURATION_S // 86400}d")
    return int(value)


def whole(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: an integer from ``low`` to ``high``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from exc
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is outside {low}..{high}")
        return value

    return parse


def number(low: float, high: float) -> Callable[[str], float]:
    """An argparse type: a finite number from ``low`` to ``high``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from exc
        if not low <= value <= high:  # also refuses inf and nan
            raise argparse.ArgumentTypeError(f"{text!r} is outside {low:g}..{high:g}")
        return value

    return parse


# Bounds of the admin API's integer fields, for the types above.
INT32 = 2**31 - 1
ID = whole(1, INT32)


def pairs(items: Sequence[str] | None, what: str) -> dict[str, str]:
    result: dict[str, str] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise BadRequestError(f"{what} {item!r} is not KEY=VALUE")
        result[key] = value
    return result
