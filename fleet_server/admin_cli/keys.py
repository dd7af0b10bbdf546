"""``edgefleet keys``: the fleet's root and release keys, on a server data dir, offline."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from fleet_server.admin_cli import common
from fleet_server.errors import BadRequestError

__all__ = ["add_parsers"]


def _keys_dir(args: argparse.Namespace) -> Path:
    if not args.data_dir:
        raise BadRequestError("keys commands work on a server data dir: pass --data-dir")
    path = Path(args.data_dir) / "keys"
    if not (path / "keylist.bin").exists():
        raise BadRequestError(f"{path} holds no key list; is {args.data_dir} a data dir?")
    return path


def _cmd_keys_list(args: argparse.Namespace) -> int:
    from fleet_server.signing.keys import KeyStore  # noqa: PLC0415

    directory = _keys_dir(args)
    keylist = KeyStore(directory).keylist()
    print(
        f"key list version {keylist.version} for fleet {keylist.fleet_id}, "
        f"expires {common.fmt_time(keylist.expires_unix)}"
    )
    print(f"root keys ({keylist.root_threshold} of {len(keylist.root_keys)} must sign):")
    for key in keylist.root_keys:
        here = (directory / f"root-{key.keyid}.key").exists()
        print(f"  {key.keyid}  {'private key here' if here else 'offline'}")
    print(f"release keys ({keylist.release_threshold} of {len(keylist.release_keys)} must sign):")
    for key in keylist.release_keys:
        here = (directory / f"release-{key.keyid}.key").exists()
        until = common.fmt_time(key.expires_unix) if key.expires_unix else "with the list"
        where = "private key here" if here else "no key file here (in a token, or offline)"
        print(f"  {key.keyid}  until {until}  {where}")
    return 0


def _cmd_keys_rotate(args: argparse.Namespace) -> int:
    from fleet_server.signing.keys import KeyStore, load_public_key  # noqa: PLC0415

    store = KeyStore(_keys_dir(args))
    files, passphrase = args.root_key or (), common.read_passphrase(args.passphrase_file)
    if args.release_pub:
        keylist = store.publish_release_key(
            load_public_key(args.release_pub), root_key_files=files, passphrase=passphrase
        )
    else:
        keylist = store.rotate_release(root_key_files=files, passphrase=passphrase)
    print(
        f"published key list version {keylist.version}: release key "
        f"{keylist.release_keys[0].keyid}; devices adopt it at their next check-in"
    )
    return 0


def _cmd_keys_create(args: argparse.Namespace) -> int:

    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

    from fleet_server.signing.keys import generate_key, public_bytes  # noqa: PLC0415
    from protos.envelope import keyid  # noqa: PLC0415

    passphrase = common.read_passphrase(args.passphrase_file)
    pem = generate_key(passphrase)
    try:
        fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise BadRequestError(f"{args.out} exists; refusing to overwrite a key") from exc
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    key = serialization.load_pem_private_key(pem, password=passphrase)
    print(f"created {args.out} (key id {keyid(public_bytes(key))})")  # type: ignore[arg-type]
    return 0


def add_parsers(sub: Any) -> None:
    """Add this area's commands to the top-level subparsers."""
    keys = sub.add_parser(
        "keys",
        help="the fleet's signing keys (works on a server data dir, offline)",
        description="Root keys (k of n) sign the key list; release keys sign manifests. These "
        "commands read and write the key files of a data dir given with --data-dir.",
    )
    keys_sub = keys.add_subparsers(dest="action", required=True)
    klist = keys_sub.add_parser("list", help="show the current key list")
    klist.set_defaults(func=_cmd_keys_list)
    rotate = keys_sub.add_parser(
        "rotate", help="replace the release key; the root keys sign a new key list"
    )
    rotate.add_argument(
        "--root-key", type=Path, action="append", help="a root key file (repeat for k of n)"
    )
    rotate.add_argument("--passphrase-file", type=Path, help="passphrase of the root keys")
    rotate.add_argument(
        "--release-pub",
        type=Path,
        metavar="FILE",
        help="make this Ed25519 public key (PEM or DER; e.g. a PKCS#11 token's, from "
        "'pkcs11-tool --read-object --type pubkey') the release key instead of creating a key "
        "file; the server signs with it through --pkcs11-* (docs/security.md)",
    )
    rotate.set_defaults(func=_cmd_keys_rotate)
    create = keys_sub.add_parser("create", help="create an Ed25519 key file (0600)")
    create.add_argument("--out", type=Path, required=True)
    create.add_argument("--passphrase-file", type=Path, help="encrypt it with this passphrase")
    create.set_defaults(func=_cmd_keys_create)
