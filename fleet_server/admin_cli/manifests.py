"""``edgefleet manifest``: release-key signatures made where the release keys are, away from
the server. ``pending`` fetches what the manifests in use need (after a rotation, or as their
expiry nears), ``sign`` signs files offline, one or a batch, and ``attach`` uploads them; the
server merges what it is given with the signatures it holds."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

from fleet_server.admin_cli import common
from fleet_server.errors import BadRequestError, FleetError
from protos import admin_pb2 as pb

__all__ = ["add_parsers"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _file_name(item: pb.PendingManifest) -> str:
    parts = (item.model_name, item.version, item.variant)
    stem = "-".join(_UNSAFE.sub("_", part) for part in parts)
    return f"{stem.lstrip('.-') or 'manifest'}.manifest"


def _cmd_pending(args: argparse.Namespace) -> int:
    answer = common.admin(args).call("ListPendingManifests", pb.ListPendingManifestsRequest())
    keys = ", ".join(answer.release_keyids) or "(none)"
    if not answer.manifests:
        print(
            f"no manifest in use needs signatures: key list version {answer.keylist_version}, "
            f"release keys {keys}"
        )
        return 0
    out: Path | None = args.out
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    print(
        f"{len(answer.manifests)} manifest(s) in use need {answer.release_threshold} "
        f"signature(s) of the release keys {keys} (key list version {answer.keylist_version}):"
    )
    written: list[Path] = []
    for item in answer.manifests:
        line = f"  {item.model_name} {item.version} ({item.variant}): {item.action}, {item.reason}"
        if out is not None:
            path = out / _file_name(item)
            n = 1
            while path in written:  # two releases whose names clean up alike
                n += 1
                path = out / f"{path.name.removesuffix('.manifest').rsplit('~', 1)[0]}~{n}.manifest"
            path.write_bytes(item.payload)
            written.append(path)
            line += f" -> {path}"
        print(line)
    if out is None:
        print("write them with --out DIR, sign them where the release keys are, and attach them")
        return 0
    print(
        f"next: 'edgefleet manifest sign {out}/*.manifest --key KEY' where the release key is, "
        f"then 'edgefleet manifest attach {out}/*.signed'"
        + (
            "; a re-issue expires once signed and attached later than its new date: attach "
            "within days"
            if any(i.action == "re-issue" for i in answer.manifests)
            else ""
        )
    )
    return 0


def _read_for_signing(path: Path) -> tuple[bytes, Any]:
    """The payload to sign and the envelope it came in (a ``.signed`` file signed again adds
    a signature, toward a threshold of several keys), or None for a bare manifest."""
    from google.protobuf.message import DecodeError  # noqa: PLC0415

    from protos import manifest_pb2  # noqa: PLC0415
    from protos.envelope import MANIFEST_PAYLOAD_TYPE  # noqa: PLC0415

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BadRequestError(f"cannot read {path}: {exc.strerror}") from exc
    envelope = manifest_pb2.Envelope()
    try:
        envelope.ParseFromString(data)
        is_envelope = envelope.payload_type == MANIFEST_PAYLOAD_TYPE
    except DecodeError:
        is_envelope = False
    payload = envelope.payload if is_envelope else data
    try:
        manifest = manifest_pb2.Manifest.FromString(payload)
    except DecodeError as exc:
        raise BadRequestError(f"{path} is not a manifest") from exc
    if not manifest.model_name or not manifest.sha256:
        raise BadRequestError(f"{path} is not a manifest")
    return payload, (envelope if is_envelope else None)


def _cmd_sign(args: argparse.Namespace) -> int:
    from fleet_server.signing.keys import load_private_key, sign_envelope  # noqa: PLC0415
    from fleet_server.signing.resign import merged  # noqa: PLC0415
    from protos import manifest_pb2  # noqa: PLC0415
    from protos.envelope import MANIFEST_PAYLOAD_TYPE  # noqa: PLC0415

    files: list[Path] = args.files
    if args.out is not None and len(files) > 1:
        raise BadRequestError("--out names one output: sign several files without it")
    # Read every file first: a batch with one bad file signs nothing.
    inputs = [(path, *_read_for_signing(path)) for path in files]
    passphrase = common.read_passphrase(args.passphrase_file)
    keys = [load_private_key(path, passphrase) for path in args.key]
    for path, payload, held in inputs:
        envelope = sign_envelope(MANIFEST_PAYLOAD_TYPE, payload, keys)
        if held is not None:
            envelope = merged(held, envelope, manifest_pb2.KeyList())
        out = args.out or (path if held is not None else path.with_suffix(".signed"))
        out.write_bytes(envelope.SerializeToString())
        manifest = manifest_pb2.Manifest.FromString(payload)
        print(
            f"signed {manifest.model_name} {manifest.version} ({manifest.variant or 'default'}, "
            f"release {manifest.release_counter}, sha256 {manifest.sha256[:16]}..., "
            f"{manifest.size} bytes, expires {common.fmt_time(manifest.expires_unix)}"
            + (", an explicit rollback" if manifest.explicit_rollback else "")
            + f") with {len(keys)} key(s), {len(envelope.signatures)} signature(s) in all: {out}"
        )
    return 0


def _cmd_attach(args: argparse.Namespace) -> int:
    from google.protobuf.message import DecodeError  # noqa: PLC0415

    from protos import manifest_pb2  # noqa: PLC0415

    admin = common.admin(args)
    failed = 0
    for path in args.files:
        try:
            try:
                envelope = manifest_pb2.Envelope.FromString(path.read_bytes())
            except OSError as exc:
                raise BadRequestError(f"cannot read {path}: {exc.strerror}") from exc
            except DecodeError as exc:
                raise BadRequestError(f"{path} is not a signed manifest") from exc
            if not envelope.signatures:
                raise BadRequestError(f"{path} is not signed: 'edgefleet manifest sign' it")
            response = admin.call("AttachSignatures", pb.AttachSignaturesRequest(envelope=envelope))
        except FleetError as exc:
            if len(args.files) == 1:
                raise
            failed += 1
            print(f"error: {path}: {exc}", file=sys.stderr)
            continue
        model = response.model
        print(f"attached {path}: {model.model_name} {model.version} ({model.variant}) is signed")
    if failed:
        print(f"{failed} of {len(args.files)} file(s) not attached", file=sys.stderr)
        return 1
    return 0


def add_parsers(sub: Any) -> None:
    """Add ``manifest`` to the top-level subparsers."""
    manifest = sub.add_parser(
        "manifest",
        help="release-key signatures made offline: what needs them, signing, attaching",
        description="For release keys kept away from the server: 'pending' writes the "
        "manifests in use that need signatures (after 'keys rotate', or within "
        "--renew-ahead-days of their expiry), 'sign' signs them where the keys are, and "
        "'attach' uploads the results (docs/security.md, Release keys kept offline).",
    )
    manifest_sub = manifest.add_subparsers(dest="action", required=True)
    mpending = manifest_sub.add_parser(
        "pending",
        help="list the manifests in use that need release-key signatures (asks the server)",
    )
    mpending.add_argument(
        "--out", type=Path, metavar="DIR", help="write each to DIR/MODEL-VERSION-VARIANT.manifest"
    )
    mpending.set_defaults(func=_cmd_pending)
    msign = manifest_sub.add_parser(
        "sign",
        help="sign manifests with release key files (offline; no server needed)",
        description="Sign each FILE: a manifest ('models push --sign-offline', 'manifest "
        "pending') becomes FILE.signed; a .signed file gets the keys' signatures added "
        "(several admins toward a threshold). A batch with one unreadable file signs nothing.",
    )
    msign.add_argument("files", type=Path, nargs="+", metavar="FILE")
    msign.add_argument(
        "--key", type=Path, action="append", required=True, help="release key file (repeatable)"
    )
    msign.add_argument("--passphrase-file", type=Path)
    msign.add_argument("--out", type=Path, help="one FILE only: write here instead")
    msign.set_defaults(func=_cmd_sign)
    mattach = manifest_sub.add_parser(
        "attach",
        help="upload signed manifests to the server (it keeps the signatures it had)",
        description="Upload each signed FILE. The server accepts the manifest it holds (its "
        "signatures are merged with the ones it had) or a re-issue of it from 'manifest "
        "pending', once the release threshold of valid signatures is met. Exit code 1 when "
        "any file was not attached.",
    )
    mattach.add_argument("files", type=Path, nargs="+", metavar="FILE")
    mattach.set_defaults(func=_cmd_attach)
