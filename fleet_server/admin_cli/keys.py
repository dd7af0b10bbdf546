"""``edgefleet keys``: the fleet's root and release keys, on a server data dir, offline; and
``keys status``, which asks the running server what expires when."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from fleet_server.admin_cli import common
from fleet_server.errors import BadRequestError, FleetError

__all__ = ["add_parsers"]

_MAX_OVERLAP_DAYS = 90
# A release counter above the floor must still fit the database's signed 64-bit integers.
_MAX_FLOOR = 2**63 - 2


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
        if key.expires_unix:  # a replaced key in its overlap: what it signed still verifies
            until = f"{common.fmt_time(key.expires_unix)} (replaced: verifies only, signs nothing)"
            retired = (directory / "retired" / f"release-{key.keyid}.key").exists()
            where = "in retired/" if retired else "no key file here"
            where = "private key here" if here else where
        else:
            until = "with the list"
            where = "private key here" if here else "no key file here (in a token, or offline)"
        print(f"  {key.keyid}  until {until}  {where}")
    return 0


def _cmd_keys_rotate(args: argparse.Namespace) -> int:
    from fleet_server.signing.keys import KeyStore, load_public_key  # noqa: PLC0415

    if not 0 <= args.overlap_days <= _MAX_OVERLAP_DAYS:
        raise BadRequestError(
            f"--overlap-days {args.overlap_days:g} is out of range (0 to {_MAX_OVERLAP_DAYS})"
        )
    # New key files and folders in the data dir are the server user's alone; the umask is
    # restored after (a process that goes on, as a test's, must not keep it).
    umask = os.umask(0o077)
    try:
        return _rotate(args, KeyStore(_keys_dir(args)), load_public_key)
    finally:
        os.umask(umask)


def _rotate(args: argparse.Namespace, store: Any, load_public_key: Any) -> int:
    before = [k.keyid for k in store.keylist().release_keys]
    files = common.root_key_files(args, "a new key list") if args.root_key_dir else args.root_key
    passphrase = common.read_passphrase(args.passphrase_file)
    overlap_s = args.overlap_days * 86400
    if args.release_pub:
        keylist = store.publish_release_key(
            load_public_key(args.release_pub),
            root_key_files=files or (),
            passphrase=passphrase,
            overlap_s=overlap_s,
        )
    else:
        keylist = store.rotate_release(
            root_key_files=files or (), passphrase=passphrase, overlap_s=overlap_s
        )
    print(
        f"published key list version {keylist.version}: release key "
        f"{keylist.release_keys[0].keyid}; devices adopt it at their next check-in"
    )
    kept = [k for k in keylist.release_keys[1:] if k.keyid in before]
    if kept:
        print(
            f"kept the replaced release key(s) {', '.join(k.keyid for k in kept)} in the list "
            f"until {common.fmt_time(max(k.expires_unix for k in kept))} (--overlap-days "
            f"{args.overlap_days:g}): what they signed verifies meanwhile, and the running "
            "server adds the new key's signatures to the deployed manifests"
        )
    for path in store.purge_retired(time.time()):
        print(f"deleted {path}: its overlap in the key list has ended")
    new_key = keylist.release_keys[0].keyid
    if not (store.directory / f"release-{new_key}.key").exists():
        _list_offline_work(args, new_key)
    retired = [k for k in before if (store.retired_dir / f"release-{k}.key").exists()]
    if retired:
        print(
            f"moved the replaced release key(s) {', '.join(retired)} to {store.retired_dir} "
            "(no longer used to sign"
            + ("; the server deletes them once the overlap has passed)" if kept else ")")
        )
    return 0


def _list_offline_work(args: argparse.Namespace, new_key: str) -> None:
    """The new release key is not on the server: say what devices need signed by it, as the
    running server sees it (it reads the new key list at once)."""
    from protos import admin_pb2 as pb  # noqa: PLC0415

    print(
        f"the new release key {new_key} is not on this server: unless the server signs "
        "through --pkcs11-*, the manifests in use need its signature from where it is kept "
        "('edgefleet manifest pending --out DIR', 'edgefleet manifest sign DIR/*.manifest "
        "--key KEY', 'edgefleet manifest attach DIR/*.signed')"
    )
    try:
        answer = common.admin(args).call("ListPendingManifests", pb.ListPendingManifestsRequest())
    except FleetError as exc:
        print(f"(the server did not say what is pending: {exc})")
        return
    waiting = [f"{m.model_name} {m.version} ({m.variant})" for m in answer.manifests]
    print(
        f"{len(waiting)} manifest(s) in use wait for it"
        + (f": {', '.join(waiting)}" if waiting else "")
    )


def _release(text: str) -> tuple[str, str]:
    name, sep, version = text.partition("=")
    if not sep or not name or not version:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=VERSION")
    return name, version


def _cmd_keys_recover(args: argparse.Namespace) -> int:
    from fleet_server.signing.keys import KeyStore, load_private_key, sign_envelope  # noqa: PLC0415
    from protos import admin_pb2 as pb  # noqa: PLC0415
    from protos.envelope import MANIFEST_PAYLOAD_TYPE  # noqa: PLC0415

    if not 0 <= args.floor <= _MAX_FLOOR:
        raise BadRequestError(f"--floor {args.floor} is out of range (0 to {_MAX_FLOOR})")
    os.umask(0o077)
    store = KeyStore(_keys_dir(args))
    admin = common.admin(args)
    # The server judges the request first (an unknown model, version or key id is that error,
    # not a missing root key); preparing changes nothing.
    prepared = admin.call(
        "PrepareRecovery",
        pb.PrepareRecoveryRequest(
            revoke_keyids=args.revoke,
            models=[pb.DeployRequest(model_name=n, version=v) for n, v in args.model],
            floor=args.floor,
        ),
    )
    if prepared.stranded and not args.leave_stranded:
        raise BadRequestError(
            "only the revoked key(s) signed these releases in use, and devices refuse them "
            f"once they adopt the revoking key list: {', '.join(prepared.stranded)}; name each "
            "with --model NAME=VERSION to keep it (the root keys sign it; check first that it "
            "is yours, not the thief's), or pass --leave-stranded and push them again"
        )
    local = store.keylist()
    before = local.version
    if local.fleet_id != prepared.fleet_id or before not in (
        prepared.keylist_version,
        prepared.keylist_version - 1,
    ):
        raise BadRequestError(
            f"{store.directory} holds fleet {local.fleet_id}'s key list version {before}; the "
            f"server runs fleet {prepared.fleet_id}: is --data-dir the server's? (nothing "
            "published)"
        )
    files = common.root_key_files(args, "a recovery")
    passphrase = common.read_passphrase(args.passphrase_file)
    keylist = store.revoke_release(args.revoke, root_key_files=files, passphrase=passphrase)
    if keylist.version != prepared.keylist_version:
        raise BadRequestError(
            f"the server prepared for key list version {prepared.keylist_version}, "
            f"{store.directory} holds version {keylist.version}: is --data-dir the server's?"
        )
    if keylist.version == before:
        said = f"key list version {keylist.version} already revokes"
    else:
        said = f"published key list version {keylist.version}: revokes"
    print(f"{said} {', '.join(args.revoke)}; release key {keylist.release_keys[0].keyid}")
    roots = [load_private_key(path, passphrase) for path in files]
    envelopes = [
        sign_envelope(MANIFEST_PAYLOAD_TYPE, payload, roots)
        for payload in prepared.unsigned_manifests
    ]
    done = admin.call("CommitRecovery", pb.CommitRecoveryRequest(envelopes=envelopes))
    for model in done.models:
        print(
            f"deployed {model.model_name} {model.version} as a recovery (root-signed, key list "
            f"version {keylist.version}): devices that adopt the key list and whose floor the "
            f"revoked key(s) set install it at their next check-in"
        )
    print(
        "devices whose journal predates floor signer ids (older agents) refuse it with 'the "
        "floor's signers are unknown': 'edgefleet devices list' shows them FAILED and "
        "'edgefleet devices show DEVICE' that detail; remove active.json from their state "
        "dir and they install it"
    )
    return 0


def _when(expires_unix: int, now: float) -> str:
    days = int((expires_unix - now) // 86400)
    if expires_unix <= now:
        return f"expired {common.fmt_time(expires_unix)} ({-days} days ago)"
    return f"expires {common.fmt_time(expires_unix)} (in {days} days)"


def _cmd_keys_status(args: argparse.Namespace) -> int:
    from protos import admin_pb2 as pb  # noqa: PLC0415

    status = common.admin(args).call("GetKeyStatus", pb.GetKeyStatusRequest())
    due = [i for i in status.items if i.due]
    if args.json:
        print(json.dumps(common.as_dict(status), indent=2))
        return 1 if due else 0
    now = float(status.checked_unix or time.time())
    for folder in status.root_key_folders:
        print(f"WARNING root keys are on this server: move {folder} off the machine")
    if not status.root_key_folders:
        print("root keys: not on this server")
    for item in status.items:
        label = f"{item.kind} {item.name}"
        if item.kind == "manifest":
            label += f" (the nearest of {status.deployed_manifests} deployed)"
        print(f"{label}: {_when(item.expires_unix, now)}")
    for item in due:
        print(
            f"WARNING {item.kind} {item.name} {_when(item.expires_unix, now)}, within "
            f"{status.warn_days} days: {item.advice}"
        )
    return 1 if due else 0


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
        description="Root keys (k of n) sign the key list; release keys sign manifests. list, "
        "rotate and create read and write the key files of a data dir given with --data-dir; "
        "status asks the running server; recover does both.",
    )
    keys_sub = keys.add_subparsers(dest="action", required=True)
    klist = keys_sub.add_parser("list", help="show the current key list")
    klist.set_defaults(func=_cmd_keys_list)
    rotate = keys_sub.add_parser(
        "rotate",
        help="replace the release key; the root keys sign a new key list",
        description="Make a new release key (or --release-pub's) the one that signs; the root "
        "keys sign a key list of version + 1. The replaced keys stay in it for "
        "--overlap-days so that deployed models stay valid while the running server re-signs "
        "their manifests with the new key (docs/security.md, Rotating the release key).",
    )
    common.add_root_key_options(rotate)
    rotate.add_argument(
        "--release-pub",
        type=Path,
        metavar="FILE",
        help="make this Ed25519 public key (PEM or DER; e.g. a PKCS#11 token's, from "
        "'pkcs11-tool --read-object --type pubkey') the release key instead of creating a key "
        "file; the server signs with it through --pkcs11-* (docs/security.md)",
    )
    rotate.add_argument(
        "--overlap-days",
        type=float,
        default=7.0,
        metavar="DAYS",
        help="keep the replaced release key(s) in the new key list this long (default 7; "
        "fractions allowed; 0 = drop them at once, after a key compromise): the manifests "
        "they signed verify until the running server has added the new key's signatures. "
        "Their private files move to DATA_DIR/keys/retired at once either way",
    )
    rotate.set_defaults(func=_cmd_keys_rotate)
    recover = keys_sub.add_parser(
        "recover",
        help="after a release key was stolen: revoke it and send devices back to a release "
        "(root keys; asks the server)",
        description="Publish a key list (version + 1, signed by the root keys) that revokes "
        "the --revoke release key(s) and makes a fresh release key the one that signs, and "
        "deploy root-signed recovery manifests for each --model NAME=VERSION: devices whose "
        "release floor only revoked keys set (a fast-forward with a stolen key) install that "
        "release at their next check-in. Needs --data-dir (the key files) and the running "
        "server; the server checks the model, version and key ids before the root keys are "
        "read (docs/security.md, A release key was stolen).",
    )
    recover.add_argument(
        "--revoke",
        action="append",
        required=True,
        metavar="KEYID",
        help="a stolen release key's id ('edgefleet keys list'); repeat for several",
    )
    recover.add_argument(
        "--model",
        action="append",
        required=True,
        type=_release,
        metavar="NAME=VERSION",
        help="the release devices go back to; repeat for several models",
    )
    recover.add_argument(
        "--floor",
        type=int,
        default=0,
        metavar="N",
        help="rollback_from at least N: the release devices report in 'older than installed "
        "release N' ('edgefleet devices show'), when the server does not know it (optional: "
        "devices whose floor only revoked keys set accept the recovery without it)",
    )
    recover.add_argument(
        "--leave-stranded",
        action="store_true",
        help="go on although releases in use that are not named with --model were signed only "
        "by the revoked key(s): devices refuse them until they are pushed again (without it "
        "the command lists them and stops before anything is signed)",
    )
    common.add_root_key_options(recover)
    recover.set_defaults(func=_cmd_keys_recover)
    kstatus = keys_sub.add_parser(
        "status",
        help="what expires when: key list, release keys, deployed manifests, certificates "
        "(asks the server)",
        description="Asks the running server (--server, --data-dir or --token/--ca-file) about "
        "its root keys, key list, release keys, the nearest expiry among deployed manifests, "
        "its TLS certificate and its embedded broker's. A WARNING line for root keys on the "
        "server and for each item within 30 days of its expiry or past it. Exit code 1 when "
        "any item is within 30 days or expired, else 0.",
    )
    kstatus.add_argument("--json", action="store_true")
    kstatus.set_defaults(func=_cmd_keys_status)
    create = keys_sub.add_parser("create", help="create an Ed25519 key file (0600)")
    create.add_argument("--out", type=Path, required=True)
    create.add_argument("--passphrase-file", type=Path, help="encrypt it with this passphrase")
    create.set_defaults(func=_cmd_keys_create)
