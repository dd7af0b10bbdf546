"""``edgefleet``: the fleet admin's command line (talks to AdminService over gRPC)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict

from fleet_server import __version__
from fleet_server.errors import AuthError, BadRequestError, FleetError
from fleet_server.optimize import cli as optimize_cli
from fleet_server.routing import cli as routing_cli
from protos import admin_pb2 as pb
from protos import admin_pb2_grpc as pb_grpc

__all__ = ["main"]

PROG = "edgefleet"
_CHUNK = 256 * 1024


class _Admin:
    def __init__(self, address: str, token: str, timeout_s: float, ca_pem: bytes) -> None:
        self.address = address
        self._metadata = [("authorization", f"Bearer {token}")]
        self._timeout = timeout_s
        self._channel = grpc.secure_channel(
            address, grpc.ssl_channel_credentials(root_certificates=ca_pem)
        )
        self.stub = pb_grpc.AdminServiceStub(self._channel)

    def call(self, method: str, request: Any) -> Any:
        try:
            return getattr(self.stub, method)(
                request, timeout=self._timeout, metadata=self._metadata
            )
        except grpc.RpcError as exc:
            raise _rpc_error(exc, self.address) from exc


def _rpc_error(exc: grpc.RpcError, address: str) -> FleetError:
    code = exc.code()
    if code == grpc.StatusCode.UNAVAILABLE:
        return FleetError(f"fleet server {address} is unreachable ({exc.details()})")
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return AuthError(exc.details() or "not authenticated")
    return FleetError(f"{code.name.lower().replace('_', ' ')}: {exc.details()}")


def _token(args: argparse.Namespace) -> str:
    if args.token:
        return str(args.token)
    if os.environ.get("EDGEFLEET_ADMIN_TOKEN"):
        return os.environ["EDGEFLEET_ADMIN_TOKEN"]
    if args.data_dir:
        path = args.data_dir / "admin.token"
        try:
            return path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise AuthError(f"cannot read {path}: {exc.strerror}") from exc
    raise AuthError("no admin token: pass --token, set EDGEFLEET_ADMIN_TOKEN, or --data-dir")


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


def _admin(args: argparse.Namespace) -> _Admin:
    return _Admin(args.server, _token(args), args.timeout, _ca_pem(args))


def _as_dict(message: Any) -> dict[str, Any]:
    """A message for JSON output: proto field names, default values included."""
    return MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def _print_json(messages: Any) -> None:
    """Messages as a JSON list, for scripts."""
    print(json.dumps([_as_dict(m) for m in messages], indent=2))


def _fmt_time(unix: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(unix)) if unix else "-"


def _sample_bytes(sample: Path, model: Path) -> bytes:
    """The smoke-test input: an image (prepared like `edgefleet-agent predict` does), a .npy
    array for a one-input model, or raw bytes (.bin) of every input in order."""
    import numpy as np  # noqa: PLC0415

    from agent.errors import AgentError  # noqa: PLC0415
    from agent.inference.modelfile import inspect_model_file  # noqa: PLC0415

    try:
        if sample.suffix == ".bin":
            return sample.read_bytes()
        if sample.suffix == ".npy":
            array = np.load(sample, allow_pickle=False)
            return bytes(np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).data)
        from agent.inference.preprocess import image_to_tensor, load_image  # noqa: PLC0415

        tensor = inspect_model_file(model).inputs[0]
        return image_to_tensor(load_image(sample), tensor).tobytes()
    except (OSError, ValueError) as exc:
        raise BadRequestError(f"cannot read sample {sample}: {exc}") from exc
    except AgentError as exc:
        raise BadRequestError(f"sample {sample}: {exc}") from exc
    except ImportError as exc:
        raise BadRequestError("an image sample needs Pillow: pip install pillow") from exc


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError as exc:
        raise BadRequestError(f"cannot read {path}: {exc.strerror}") from exc


class _Progress:
    """Upload progress on stderr, when it is a terminal (never in scripts' captured output)."""

    def __init__(self, total: int) -> None:
        self.total = max(total, 1)
        self.sent = 0
        self._shown = -1
        self._tty = sys.stderr.isatty()

    def add(self, count: int) -> None:
        self.sent += count
        percent = self.sent * 100 // self.total
        if self._tty and percent != self._shown:
            self._shown = percent
            bar = "#" * (percent // 4)
            end = "\n" if self.sent >= self.total else ""
            print(
                f"\ruploading [{bar:<25}] {percent:3d}% of {self.total / 1e6:.1f} MB",
                end=end,
                file=sys.stderr,
                flush=True,
            )


def _send_file(
    path: Path, part: str, progress: _Progress | None = None
) -> Iterator[pb.PushModelRequest]:
    with path.open("rb") as handle:
        while block := handle.read(_CHUNK):
            message = pb.PushModelRequest()
            setattr(message, part, block)
            if progress is not None:
                progress.add(len(block))
            yield message


def _from_build(folder: Path) -> tuple[list[Path], list[str], list[pb.Evidence | None]]:
    """The accepted variants of an `edgefleet model build` directory, with their evidence.

    Raises:
        BadRequestError: no report there, or no variant passed.
    """
    from fleet_server.optimize.build import REPORT, BuildReport  # noqa: PLC0415

    try:
        report = BuildReport.from_json((folder / REPORT).read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise BadRequestError(
            f"{folder} is a directory without a readable {REPORT}; push files, or a directory "
            f"made by 'edgefleet model build' ({exc})"
        ) from exc
    accepted = [v for v in report.variants if v.status == "ok" and v.file]
    if not accepted:
        raise BadRequestError(f"no variant in {folder} passed its checks (see report.txt)")
    skipped = [f"{v.name} ({v.status})" for v in report.variants if v not in accepted]
    if skipped:
        print(f"not pushed: {', '.join(skipped)}", file=sys.stderr)
    evidence: list[pb.Evidence | None] = []
    for v in accepted:
        e = pb.Evidence(source=f"model build on {report.host}, {report.samples_eval} samples")
        if v.median_ms > 0:
            e.latency_ms[report.hardware_class] = v.median_ms
        if v.accuracy is not None:
            e.accuracy = v.accuracy
        if v.top1_agreement is not None:
            e.top1_agreement = v.top1_agreement
        evidence.append(e)
    return [folder / v.file for v in accepted], [v.name for v in accepted], evidence


def _cmd_push(args: argparse.Namespace) -> int:
    files: list[Path] = args.files
    names: list[str] = args.variant or []
    evidence: list[pb.Evidence | None] = [None] * len(files)
    if len(files) == 1 and files[0].is_dir():
        if names or args.fallback:
            raise BadRequestError("a build directory names its variants; drop --variant/--fallback")
        files, names, evidence = _from_build(files[0])
    if len(names) > len(files):
        raise BadRequestError(f"{len(names)} --variant names for {len(files)} file(s)")
    names += [""] * (len(files) - len(names))  # the server names the rest by their kind
    sizes = [_size(path) for path in files]
    fallback: Path | None = args.fallback
    samples = [_sample_bytes(args.sample, path) if args.sample else b"" for path in files]
    meta = pb.PushModelMeta(
        model_name=args.name,
        version=args.version,
        variant=names[0],
        size=sizes[0],
        fallback_size=_size(fallback) if fallback else 0,
        sample=samples[0],
        smoke_tolerance=args.smoke_tolerance,
        sign_offline=args.sign_offline,
        no_compression=args.no_compress,
    )
    if evidence[0] is not None:
        meta.evidence.CopyFrom(evidence[0])
    if args.sign_offline and args.deploy:
        raise BadRequestError("a version signed offline is deployed after 'manifest attach'")

    progress = _Progress(sum(sizes) + (meta.fallback_size or 0))

    def requests() -> Iterator[pb.PushModelRequest]:
        yield pb.PushModelRequest(meta=meta)
        yield from _send_file(files[0], "data", progress)
        if fallback is not None:
            yield from _send_file(fallback, "fallback_data", progress)
        more = zip(files[1:], names[1:], sizes[1:], samples[1:], evidence[1:], strict=True)
        for path, name, size, sample, measured in more:
            header = pb.VariantHeader(variant=name, size=size, sample=sample)
            if measured is not None:
                header.evidence.CopyFrom(measured)
            yield pb.PushModelRequest(variant=header)
            yield from _send_file(path, "data", progress)

    admin = _admin(args)
    response = admin.call("PushModel", requests())
    variants = list(response.variants) or [response.model]
    first = variants[0]
    print(
        f"pushed {first.model_name} {first.version}, release {first.release_counter}, "
        f"{len(variants)} variant(s)" + ("" if response.unsigned_manifests else ", signed")
    )
    for m in variants:
        profile = m.profile
        transport = profile.transport_size
        measured = "".join(f"  {k}: {v:.4f} ms" for k, v in sorted(profile.latency_ms.items())) + (
            f"  accuracy {profile.accuracy:.2%}" if profile.HasField("accuracy") else ""
        )
        print(
            f"  {m.variant:16} {m.quantization:13} {m.size:10d} bytes"
            + (f" ({transport} zstd)" if transport else "")
            + f"  sha256 {m.sha256[:16]}..."
            + measured
            + (f"  CPU fallback {m.fallback_sha256[:12]}..." if m.fallback_sha256 else "")
            + (f"  smoke top {list(m.smoke_top_indices)}" if m.smoke_top_indices else "")
        )
    unsigned = list(response.unsigned_manifests)
    for m, payload in zip(variants, unsigned, strict=False):  # unsigned is empty when signed
        out = args.manifest_out or Path(f"{args.name}-{args.version}.manifest")
        if len(unsigned) > 1:
            out = out.with_name(f"{out.stem}-{m.variant}{out.suffix}")
        out.write_bytes(payload)
        print(
            f"not signed: wrote {m.variant}'s manifest to {out}; sign it where the release key "
            f"is ('edgefleet manifest sign {out} --key KEY') and attach the result"
        )
    if args.deploy:
        admin.call("Deploy", pb.DeployRequest(model_name=args.name, version=args.version))
        print(f"deployed {args.name} {args.version} to the fleet")
    return 0


def _cmd_models_list(args: argparse.Namespace) -> int:
    response = _admin(args).call("ListModels", pb.ListModelsRequest())
    if args.json:
        print(
            json.dumps(
                [MessageToDict(m, preserving_proto_field_name=True) for m in response.models],
                indent=2,
            )
        )
        return 0
    if not response.models:
        print("no models; push one with: edgefleet models push FILE --name N --version V")
        return 0
    print(f"{'MODEL':24} {'VERSION':10} {'VARIANT':10} {'RELEASE':>7} {'SIZE':>10}  DEPLOYED")
    for m in response.models:
        print(
            f"{m.model_name:24} {m.version:10} {m.variant:10} {m.release_counter:7d} "
            f"{m.size:10d}  {'yes' if m.deployed else ''}"
        )
    return 0


def _root_keys(args: argparse.Namespace) -> list[Any]:
    """The root private keys an explicit rollback is signed with."""
    from fleet_server.signing.keys import load_private_key  # noqa: PLC0415

    files = list(args.root_key or [])
    if not files and args.data_dir:
        files = sorted((Path(args.data_dir) / "keys").glob("root-*.key"))
    if not files:
        raise BadRequestError("an explicit rollback is signed by root keys: give --root-key")
    passphrase = _read_passphrase(args.passphrase_file)
    return [load_private_key(path, passphrase) for path in files]


def _cmd_rollback(args: argparse.Namespace) -> int:
    from fleet_server.signing.keys import sign_envelope  # noqa: PLC0415
    from protos import manifest_pb2  # noqa: PLC0415
    from protos.envelope import MANIFEST_PAYLOAD_TYPE  # noqa: PLC0415

    keys = _root_keys(args)
    admin = _admin(args)
    prepared = admin.call(
        "PrepareRollback", pb.DeployRequest(model_name=args.name, version=args.version)
    )
    first, *rest = [
        sign_envelope(MANIFEST_PAYLOAD_TYPE, payload, keys)
        for payload in prepared.unsigned_manifests or [prepared.unsigned_manifest]
    ]
    admin.call("CommitRollback", pb.AttachSignaturesRequest(envelope=first, envelopes=rest))
    manifest = manifest_pb2.Manifest.FromString(prepared.unsigned_manifest)
    print(
        f"rolled {manifest.model_name} back to {manifest.version} (release "
        f"{manifest.release_counter}, signed by {len(keys)} root key(s)); devices install it "
        "at their next check-in"
    )
    return 0


def _cmd_deploy(args: argparse.Namespace) -> int:
    response = _admin(args).call(
        "Deploy", pb.DeployRequest(model_name=args.name, version=args.version)
    )
    print(f"deployed {response.model.model_name} {response.model.version} to the fleet")
    return 0


def _telemetry_summary(device: pb.DeviceInfo) -> str:
    if not device.HasField("last_telemetry"):
        return "-"
    report = device.last_telemetry
    parts = [
        f"{m.model_name}: {m.requests} req, p50 {m.latency.p50_ms:.1f} ms" for m in report.models
    ]
    return f"seq {report.seq}; " + ("; ".join(parts) if parts else "no models")


def _model_state(m: pb.DeviceModelState) -> str:
    text = f"{m.model_name} {m.version} {m.state}"
    if m.active_version and m.active_version != m.version:
        text += f" (serving {m.active_version})"
    return text


def _cmd_devices_list(args: argparse.Namespace) -> int:
    response = _admin(args).call("ListDevices", pb.ListDevicesRequest())
    if args.json:
        devices = [_device_dict(d) for d in response.devices]
        print(json.dumps(devices, indent=2, sort_keys=True))
        return 0
    if not response.devices:
        print("no devices enrolled yet")
        return 0
    print(f"{'DEVICE':20} {'STATE':8} {'LAST SEEN':19}  {'MODELS':32} LAST TELEMETRY")
    for d in response.devices:
        if d.revoked_unix:
            print(f"{d.device_id:20} REVOKED {_fmt_time(d.revoked_unix)}")
            continue
        models = ", ".join(_model_state(m) for m in d.models) or "-"
        print(
            f"{d.device_id:20} {d.online_state or '-':8} {_fmt_time(d.last_seen_unix):19}  "
            f"{models:32} {_telemetry_summary(d)}"
        )
    return 0


def _keys_dir(args: argparse.Namespace) -> Path:
    if not args.data_dir:
        raise BadRequestError("keys commands work on a server data dir: pass --data-dir")
    path = Path(args.data_dir) / "keys"
    if not (path / "keylist.bin").exists():
        raise BadRequestError(f"{path} holds no key list; is {args.data_dir} a data dir?")
    return path


def _read_passphrase(path: Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes().strip() or None
    except OSError as exc:
        raise BadRequestError(f"cannot read {path}: {exc.strerror}") from exc


def _cmd_keys_list(args: argparse.Namespace) -> int:
    from fleet_server.signing.keys import KeyStore  # noqa: PLC0415

    directory = _keys_dir(args)
    keylist = KeyStore(directory).keylist()
    print(
        f"key list version {keylist.version} for fleet {keylist.fleet_id}, "
        f"expires {_fmt_time(keylist.expires_unix)}"
    )
    print(f"root keys ({keylist.root_threshold} of {len(keylist.root_keys)} must sign):")
    for key in keylist.root_keys:
        here = (directory / f"root-{key.keyid}.key").exists()
        print(f"  {key.keyid}  {'private key here' if here else 'offline'}")
    print(f"release keys ({keylist.release_threshold} of {len(keylist.release_keys)} must sign):")
    for key in keylist.release_keys:
        here = (directory / f"release-{key.keyid}.key").exists()
        until = _fmt_time(key.expires_unix) if key.expires_unix else "with the list"
        print(f"  {key.keyid}  until {until}  {'private key here' if here else 'missing'}")
    return 0


def _cmd_keys_rotate(args: argparse.Namespace) -> int:
    from fleet_server.signing.keys import KeyStore  # noqa: PLC0415

    store = KeyStore(_keys_dir(args))
    keylist = store.rotate_release(
        root_key_files=args.root_key or (),
        passphrase=_read_passphrase(args.passphrase_file),
    )
    print(
        f"published key list version {keylist.version}: release key "
        f"{keylist.release_keys[0].keyid}; devices adopt it at their next check-in"
    )
    return 0


def _cmd_keys_create(args: argparse.Namespace) -> int:
    import os  # noqa: PLC0415

    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

    from fleet_server.signing.keys import generate_key, public_bytes  # noqa: PLC0415
    from protos.envelope import keyid  # noqa: PLC0415

    passphrase = _read_passphrase(args.passphrase_file)
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


def _cmd_manifest_sign(args: argparse.Namespace) -> int:
    from google.protobuf.message import DecodeError  # noqa: PLC0415

    from fleet_server.signing.keys import load_private_key, sign_envelope  # noqa: PLC0415
    from protos import manifest_pb2  # noqa: PLC0415
    from protos.envelope import MANIFEST_PAYLOAD_TYPE  # noqa: PLC0415

    try:
        payload = args.file.read_bytes()
        manifest = manifest_pb2.Manifest.FromString(payload)
    except OSError as exc:
        raise BadRequestError(f"cannot read {args.file}: {exc.strerror}") from exc
    except DecodeError as exc:
        raise BadRequestError(f"{args.file} is not a manifest") from exc
    passphrase = _read_passphrase(args.passphrase_file)
    keys = [load_private_key(path, passphrase) for path in args.key]
    envelope = sign_envelope(MANIFEST_PAYLOAD_TYPE, payload, keys)
    out = args.out or args.file.with_suffix(".signed")
    out.write_bytes(envelope.SerializeToString())
    print(
        f"signed {manifest.model_name} {manifest.version} (release {manifest.release_counter}, "
        f"sha256 {manifest.sha256[:16]}..., {manifest.size} bytes) with {len(keys)} key(s): "
        f"{out}"
    )
    return 0


def _cmd_manifest_attach(args: argparse.Namespace) -> int:
    from google.protobuf.message import DecodeError  # noqa: PLC0415

    from protos import manifest_pb2  # noqa: PLC0415

    try:
        envelope = manifest_pb2.Envelope.FromString(args.file.read_bytes())
    except OSError as exc:
        raise BadRequestError(f"cannot read {args.file}: {exc.strerror}") from exc
    except DecodeError as exc:
        raise BadRequestError(f"{args.file} is not a signed manifest") from exc
    response = _admin(args).call("AttachSignatures", pb.AttachSignaturesRequest(envelope=envelope))
    model = response.model
    print(f"attached: {model.model_name} {model.version} ({model.variant}) is signed")
    return 0


def _device_dict(d: pb.DeviceInfo) -> dict[str, Any]:
    item = _as_dict(d)
    item.setdefault("last_telemetry", None)  # never reported: null rather than absent
    return item


def _cmd_devices_show(args: argparse.Namespace) -> int:
    device = _admin(args).call("GetDevice", pb.DeviceRequest(device_id=args.device))
    if args.json:
        print(json.dumps(_device_dict(device), indent=2, sort_keys=True))
        return 0
    caps = device.capabilities
    print(f"device    {device.device_id} ({device.name})")
    revoked = f"REVOKED {_fmt_time(device.revoked_unix)}" if device.revoked_unix else "active"
    print(f"status    {revoked}")
    print(f"labels    {', '.join(f'{k}={v}' for k, v in sorted(device.labels.items())) or '-'}")
    seen = _fmt_time(device.last_seen_unix)
    print(f"enrolled  {_fmt_time(device.enrolled_unix)}   last seen {seen}")
    tpus = ", ".join(t.device or "?" for t in caps.edgetpus) or "none"
    print(
        f"hardware  {caps.arch or '?'}, {caps.cpu_cores or '?'} cores, "
        f"Edge TPUs: {tpus}, runtime {caps.runtime or '?'} {caps.runtime_version}"
    )
    for m in device.models:
        print(f"model     {_model_state(m)}: {m.detail}")
    print(f"telemetry {_telemetry_summary(device)}")
    if device.last_telemetry.HasField("system"):
        system = device.last_telemetry.system
        temps = ", ".join(f"{k} {v:.0f} C" for k, v in sorted(system.temperatures_c.items()))
        print(
            f"system    cpu {system.cpu_percent:.0f}%, memory "
            f"{system.memory_used_bytes >> 20}/{system.memory_total_bytes >> 20} MiB, disk free "
            f"{system.disk_free_bytes >> 20} MiB" + (f", {temps}" if temps else "")
        )
    for event in device.events[:10]:
        what = f"{event.model_name} {event.version} " if event.model_name else ""
        print(f"event     {_fmt_time(event.at_unix)} {what}{event.state} {event.detail}")
    print(
        f"mqtt      {device.online_state or 'never connected'}"
        + (f" since {_fmt_time(device.online_unix)}" if device.online_unix else "")
        + f"; {device.telemetry_count} message(s) received, {device.telemetry_gaps} lost"
    )
    return 0


def _cmd_devices_label(args: argparse.Namespace) -> int:
    labels = {}
    for item in args.labels:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise BadRequestError(f"label {item!r} must be KEY=VALUE")
        labels[key] = value
    device = _admin(args).call(
        "LabelDevice",
        pb.LabelDeviceRequest(device_id=args.device, set=labels, remove=args.remove or []),
    )
    shown = ", ".join(f"{k}={v}" for k, v in sorted(device.labels.items())) or "none"
    print(f"{device.device_id}: labels {shown}")
    return 0


def _duration(text: str) -> int:
    """ "90s", "15m", "24h", "7d" or plain seconds -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        if text and text[-1] in units:
            return int(float(text[:-1]) * units[text[-1]])
        return int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 24h or 7d") from exc


def _cmd_tokens_create(args: argparse.Namespace) -> int:
    response = _admin(args).call(
        "CreateEnrollmentToken",
        pb.CreateTokenRequest(
            ttl_s=args.ttl,
            uses=args.uses,
            labels=_pairs(args.label, "label"),
            note=args.note or "",
        ),
    )
    if args.json:
        print(json.dumps(MessageToDict(response, preserving_proto_field_name=True), indent=2))
        return 0
    print(response.token)
    print(
        f"token {response.token_id}: {args.uses} use(s), expires {_fmt_time(response.expires_unix)}"
        "; shown once: put it in the device's agent.toml (server.enrollment_token)",
        file=sys.stderr,
    )
    return 0


def _cmd_tokens_list(args: argparse.Namespace) -> int:
    response = _admin(args).call("ListEnrollmentTokens", pb.ListTokensRequest())
    if args.json:
        _print_json(response.tokens)
        return 0
    if not response.tokens:
        print("no enrollment tokens; create one with: edgefleet tokens create")
        return 0
    now = time.time()
    print(f"{'ID':12}  {'USES LEFT':>9}  {'EXPIRES':19}  {'STATE':8}  LABELS / NOTE")
    for t in response.tokens:
        state = "usable" if t.uses_left and t.expires_unix > now else "spent"
        labels = ",".join(f"{k}={v}" for k, v in sorted(t.labels.items()))
        print(
            f"{t.token_id:12}  {t.uses_left:9d}  {_fmt_time(t.expires_unix):19}  {state:8}  "
            f"{labels} {t.note}".rstrip()
        )
    return 0


def _cmd_tokens_revoke(args: argparse.Namespace) -> int:
    response = _admin(args).call(
        "RevokeEnrollmentToken", pb.RevokeTokenRequest(token_id=args.token_id)
    )
    print(f"revoked {response.revoked} token(s)")
    return 0


def _cmd_devices_explain(args: argparse.Namespace) -> int:
    response = _admin(args).call(
        "ExplainVariant",
        pb.ExplainVariantRequest(
            device_id=args.device, model_name=args.model, version=args.model_version or ""
        ),
    )
    if args.json:
        print(json.dumps(_as_dict(response), indent=2))
        return 0
    outcome = response.variant or "the cloud (no variant fits)"
    print(
        f"{response.device_id} ({response.hardware_class}) gets {response.model_name} "
        f"{response.version}: {outcome}"
    )
    print(f"  because {response.reason}")
    for v in response.verdicts:
        mark = "*" if v.chosen else " "
        print(f"{mark} {v.variant:16} {v.quantization:13} {v.reason}")
    return 0


def _cmd_devices_command(args: argparse.Namespace) -> int:
    response = _admin(args).call(
        "SendCommand", pb.SendCommandRequest(device_id=args.device, kind=args.kind)
    )
    print(
        f"sent {args.kind} to {args.device} (command {response.command_id}); its answer shows "
        f"in 'edgefleet devices show {args.device}'"
    )
    return 0


def _cmd_devices_revoke(args: argparse.Namespace) -> int:
    device = _admin(args).call("RevokeDevice", pb.DeviceRequest(device_id=args.device))
    print(
        f"{device.device_id} revoked: its check-ins and downloads are refused from now on "
        "(it keeps serving what it has)"
    )
    return 0


# rollouts --------------------------------------------------------------------------------------


def _fraction(text: str) -> float:
    """ "90%" or "0.9" -> 0.9."""
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a fraction like 90% or 0.9") from exc
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} is outside 0%..100%")
    return value


def _pairs(items: Sequence[str] | None, what: str) -> dict[str, str]:
    result: dict[str, str] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise BadRequestError(f"{what} {item!r} is not KEY=VALUE")
        result[key] = value
    return result


def _print_rollout(r: pb.RolloutInfo) -> None:
    selector = ",".join(f"{k}={v}" for k, v in sorted(r.selector.items())) or "every device"
    previous = f" (from {r.previous_version})" if r.previous_version else ""
    print(f"rollout {r.rollout_id}: {r.model_name} {r.version}{previous} to {selector}")
    print(
        f"  state {r.state}, wave {r.current_wave + 1} of {len(r.wave_status)}"
        + (f": {r.reason}" if r.reason else "")
    )
    print(
        f"  success threshold {r.success_threshold:.0%}, failure threshold "
        f"{r.failure_threshold:.0%}, max concurrent {r.max_concurrent or 'unlimited'}"
    )
    gate = r.health_gate
    if gate.disabled:
        print("  health gate: off (failed updates and device health rollbacks still count)")
    else:
        print(
            f"  health gate: error rate <= {gate.max_error_rate:.1%}, p95 <= "
            f"{gate.max_latency_ratio:g}x the device's own before, judged after "
            f"{gate.min_requests} requests within {gate.window_s} s of installing"
            + (f"; bake {gate.bake_s} s per wave" if gate.bake_s else "")
        )
    print(
        f"  {'WAVE':>4} {'TARGET':>7} {'DEVICES':>7} {'WAITING':>7} {'UPDATING':>8} "
        f"{'INSTALLED':>9} {'FAILED':>6} {'UNHEALTHY':>9} {'STALLED':>7}"
    )
    for w in r.wave_status:
        marker = "*" if w.index == r.current_wave and r.state in ("running", "paused") else " "
        print(
            f"{marker} {w.index + 1:4d} {w.target:7d} {w.devices:7d} {w.waiting:7d} "
            f"{w.assigned:8d} {w.installed:9d} {w.failed:6d} {w.unhealthy:9d} {w.stalled:7d}"
        )
    if r.failures:
        print("  failed devices (newest first):")
        for f in r.failures:
            print(f"    {f.device_id} (wave {f.wave + 1}): {f.detail or 'failed'}")


def _cmd_rollouts_create(args: argparse.Namespace) -> int:
    if args.max_error_rate == 0:
        raise BadRequestError(
            "--max-error-rate must be above 0; --no-health-gate turns the gate off"
        )
    request = pb.CreateRolloutRequest(
        model_name=args.name,
        version=args.version,
        selector=_pairs(args.selector, "selector"),
        waves=[w for w in (args.waves or "").split(",") if w.strip()],
        success_threshold=args.success,
        failure_threshold=args.failure,
        pause_on_any_failure=args.failure == 0,
        max_concurrent=args.max_concurrent,
        device_timeout_s=args.device_timeout,
        allow_empty=args.allow_empty,
        health_gate=pb.HealthGate(
            max_error_rate=args.max_error_rate,
            max_latency_ratio=args.max_latency_ratio,
            window_s=args.health_window,
            min_requests=args.min_requests,
            bake_s=args.bake,
            disabled=args.no_health_gate,
        ),
    )
    rollout = _admin(args).call("CreateRollout", request)
    if args.json:
        print(json.dumps(_as_dict(rollout), indent=2))
    else:
        _print_rollout(rollout)
    return 0


def _cmd_rollouts_list(args: argparse.Namespace) -> int:
    response = _admin(args).call("ListRollouts", pb.ListRolloutsRequest(model_name=args.model))
    if args.json:
        print(json.dumps([_as_dict(r) for r in response.rollouts], indent=2))
        return 0
    if not response.rollouts:
        print("no rollouts; start one with: edgefleet rollouts create MODEL VERSION")
        return 0
    print(f"{'ID':>4} {'MODEL':20} {'VERSION':10} {'STATE':12} {'WAVE':>5} {'DONE':>11}  SELECTOR")
    for r in response.rollouts:
        devices = sum(w.devices for w in r.wave_status)
        installed = sum(w.installed for w in r.wave_status)
        selector = ",".join(f"{k}={v}" for k, v in sorted(r.selector.items())) or "*"
        print(
            f"{r.rollout_id:4d} {r.model_name:20} {r.version:10} {r.state:12} "
            f"{r.current_wave + 1:2d}/{len(r.wave_status):<2d} {installed:5d}/{devices:<5d}  "
            f"{selector}"
        )
    return 0


def _cmd_rollouts_status(args: argparse.Namespace) -> int:
    rollout = _admin(args).call("GetRollout", pb.RolloutRequest(rollout_id=args.id))
    if args.json:
        print(json.dumps(_as_dict(rollout), indent=2))
    else:
        _print_rollout(rollout)
    return 0


def _rollout_action(method: str, verb: str) -> Any:
    def run(args: argparse.Namespace) -> int:
        rollout = _admin(args).call(method, pb.RolloutRequest(rollout_id=args.id))
        print(f"rollout {rollout.rollout_id} {verb}: {rollout.state}")
        return 0

    return run


def _cmd_rollouts_rollback(args: argparse.Namespace) -> int:
    from fleet_server.signing.keys import sign_envelope  # noqa: PLC0415
    from protos.envelope import MANIFEST_PAYLOAD_TYPE  # noqa: PLC0415

    keys = _root_keys(args)
    admin = _admin(args)
    prepared = admin.call("PrepareRolloutRollback", pb.RolloutRequest(rollout_id=args.id))
    first, *rest = [
        sign_envelope(MANIFEST_PAYLOAD_TYPE, payload, keys)
        for payload in prepared.unsigned_manifests or [prepared.unsigned_manifest]
    ]
    rollout = admin.call(
        "CommitRolloutRollback",
        pb.RolloutRollbackRequest(rollout_id=args.id, envelope=first, envelopes=rest),
    )
    print(
        f"rollout {rollout.rollout_id} rolled back: its devices return to "
        f"{rollout.model_name} {rollout.previous_version} at their next check-in"
    )
    return 0


def _cmd_audit(args: argparse.Namespace) -> int:
    response = _admin(args).call(
        "ListAudit", pb.ListAuditRequest(limit=args.limit, before_id=args.before)
    )
    if args.json:
        _print_json(response.entries)
        return 0
    if not response.entries:
        print("the audit log is empty")
        return 0
    for e in response.entries:
        result = "ok" if e.ok else f"FAILED: {e.error}"
        print(f"{e.id:6d} {_fmt_time(e.at_unix)} {e.actor:32} {e.action:22} {e.target:28} {result}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="EdgeFleet fleet administration.",
        epilog="Exit codes: 0 success; 1 the server or the input refused it (one line on "
        "stderr says why); 2 usage error. Tables by default; --json where scripts need it.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--server",
        default=os.environ.get("EDGEFLEET_SERVER", "127.0.0.1:7443"),
        help="fleet server address (env EDGEFLEET_SERVER; default 127.0.0.1:7443)",
    )
    parser.add_argument("--token", help="admin token (env EDGEFLEET_ADMIN_TOKEN)")
    parser.add_argument(
        "--ca-file",
        type=Path,
        help="the fleet CA certificate (env EDGEFLEET_CA_FILE; default DATA_DIR/ca/ca.crt)",
    )
    parser.add_argument(
        "--data-dir", type=Path, help="read the admin token from this server data dir"
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="RPC timeout in seconds")
    sub = parser.add_subparsers(dest="group", required=True)
    routing_cli.add_parser(sub)
    routing_cli.add_costs_parser(sub)
    optimize_cli.add_parser(sub)

    models = sub.add_parser("models", help="the model catalog")
    models_sub = models.add_subparsers(dest="action", required=True)
    push = models_sub.add_parser(
        "push",
        help="upload a model version in one or more variants; the server signs them",
        description="Upload one or more .tflite variants of one model version (float32, int8, "
        "Edge TPU...). The server inspects each, derives what it needs, and gives each device "
        "the variant that fits it best ('edgefleet devices explain' shows why). A directory "
        "made by 'edgefleet model build' pushes its accepted variants with their measured "
        "latency and accuracy, which selection then uses.",
    )
    push.add_argument(
        "files", type=Path, nargs="+", metavar="FILE", help=".tflite files, or one build directory"
    )
    optimize_cli.add_bench_parsers(models_sub)
    push.add_argument("--name", required=True, help="model name")
    push.add_argument("--version", required=True, help="semantic version, e.g. 1.0.0")
    push.add_argument(
        "--variant",
        action="append",
        help="variant name per FILE, in order (default: by kind: int8, edgetpu, float32...)",
    )
    push.add_argument("--deploy", action="store_true", help="also deploy it to the whole fleet")
    push.add_argument(
        "--sample",
        type=Path,
        help="smoke-test input: an image, a .npy array, or raw .bin bytes (default: random "
        "input); devices must reproduce the server's answer before activating the model",
    )
    push.add_argument(
        "--smoke-tolerance", type=float, default=0.0, help="allowed score difference (0.05)"
    )
    push.add_argument(
        "--sign-offline",
        action="store_true",
        help="do not sign on the server: write the manifest for 'edgefleet manifest sign'",
    )
    push.add_argument("--manifest-out", type=Path, help="where --sign-offline writes it")
    push.add_argument(
        "--no-compress",
        action="store_true",
        help="do not offer devices a zstd-compressed copy (offered when at least 15%% smaller)",
    )
    push.add_argument(
        "--fallback",
        type=Path,
        help="for an Edge TPU model (the first FILE): its CPU variant, served where the Edge "
        "TPU cannot be used (among several FILEs the best CPU variant is paired on its own)",
    )
    push.set_defaults(func=_cmd_push)
    mlist = models_sub.add_parser("list", help="list model versions")
    mlist.add_argument("--json", action="store_true")
    mlist.set_defaults(func=_cmd_models_list)

    rollback = models_sub.add_parser(
        "rollback",
        help="explicitly roll the fleet back to an older version (signed by the root keys)",
        description="Devices refuse older releases (anti-rollback) unless the root keys sign an "
        "explicit rollback. Root keys come from --root-key files or the --data-dir.",
    )
    rollback.add_argument("name")
    rollback.add_argument("version")
    rollback.add_argument("--root-key", type=Path, action="append", help="root key file")
    rollback.add_argument("--passphrase-file", type=Path, help="passphrase of the root keys")
    rollback.set_defaults(func=_cmd_rollback)

    deploy = sub.add_parser("deploy", help="make a model version the fleet's desired version")
    deploy.add_argument("name")
    deploy.add_argument("version")
    deploy.set_defaults(func=_cmd_deploy)

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
    rotate.set_defaults(func=_cmd_keys_rotate)
    create = keys_sub.add_parser("create", help="create an Ed25519 key file (0600)")
    create.add_argument("--out", type=Path, required=True)
    create.add_argument("--passphrase-file", type=Path, help="encrypt it with this passphrase")
    create.set_defaults(func=_cmd_keys_create)

    manifest = sub.add_parser("manifest", help="sign manifests offline and attach them")
    manifest_sub = manifest.add_subparsers(dest="action", required=True)
    msign = manifest_sub.add_parser(
        "sign", help="sign a manifest written by 'models push --sign-offline' (offline)"
    )
    msign.add_argument("file", type=Path)
    msign.add_argument(
        "--key", type=Path, action="append", required=True, help="release key file (repeatable)"
    )
    msign.add_argument("--passphrase-file", type=Path)
    msign.add_argument("--out", type=Path, help="default: FILE with the suffix .signed")
    msign.set_defaults(func=_cmd_manifest_sign)
    mattach = manifest_sub.add_parser("attach", help="upload the signed manifest to the server")
    mattach.add_argument("file", type=Path)
    mattach.set_defaults(func=_cmd_manifest_attach)

    devices = sub.add_parser("devices", help="the device registry")
    devices_sub = devices.add_subparsers(dest="action", required=True)
    dlist = devices_sub.add_parser("list", help="devices, their models and last telemetry")
    dlist.add_argument("--json", action="store_true")
    dlist.set_defaults(func=_cmd_devices_list)
    dshow = devices_sub.add_parser("show", help="one device: hardware, labels, models, telemetry")
    dshow.add_argument("device")
    dshow.add_argument("--json", action="store_true")
    dshow.set_defaults(func=_cmd_devices_show)
    dlabel = devices_sub.add_parser("label", help="set or remove a device's labels")
    dlabel.add_argument("device")
    dlabel.add_argument("labels", nargs="*", metavar="KEY=VALUE")
    dlabel.add_argument("--remove", action="append", metavar="KEY", help="remove this label")
    dlabel.set_defaults(func=_cmd_devices_label)
    dexplain = devices_sub.add_parser(
        "explain",
        help="which variant of a model a device gets, and why each other variant lost",
    )
    dexplain.add_argument("device")
    dexplain.add_argument("model")
    dexplain.add_argument(
        "--model-version", help="this version (default: what the device is told to run)"
    )
    dexplain.add_argument("--json", action="store_true")
    dexplain.set_defaults(func=_cmd_devices_explain)
    dcommand = devices_sub.add_parser(
        "command",
        help="send a device a command over MQTT: checkin (now), birth (state again), routing "
        "(check in for a routing change) or reload (re-read agent.toml)",
    )
    dcommand.add_argument("device")
    dcommand.add_argument("kind", choices=["checkin", "birth", "routing", "reload"])
    # ("bench" needs a model name: 'edgefleet models bench MODEL'.)
    dcommand.set_defaults(func=_cmd_devices_command)
    drevoke = devices_sub.add_parser(
        "revoke", help="refuse a device's credentials from now on (a lost or stolen device)"
    )
    drevoke.add_argument("device")
    drevoke.set_defaults(func=_cmd_devices_revoke)

    rollouts = sub.add_parser(
        "rollouts",
        help="staged rollouts: waves, health gates, pause, resume, abort, roll back",
        description="A rollout sends a model version to the devices matching a label selector "
        "in waves. A wave starts when the previous one has installed it on enough devices "
        "(--success); the rollout pauses by itself when the failed share of the devices it "
        "started reaches --failure. Devices that match later join it.",
    )
    rollouts_sub = rollouts.add_subparsers(dest="action", required=True)
    rcreate = rollouts_sub.add_parser("create", help="start a rollout")
    rcreate.add_argument("name", help="model name")
    rcreate.add_argument("version")
    rcreate.add_argument(
        "--selector",
        action="append",
        metavar="KEY=VALUE",
        help="only devices with this label (repeat: all must match; default every device)",
    )
    rcreate.add_argument(
        "--waves",
        help="cumulative wave targets, device counts or percents (default 1,10%%,50%%,100%%)",
    )
    rcreate.add_argument(
        "--success",
        type=_fraction,
        default=0.9,
        help="installed share of a wave before the next starts (default 90%%)",
    )
    rcreate.add_argument(
        "--failure",
        type=_fraction,
        default=0.1,
        help="failed share of started devices that pauses the rollout (default 10%%; 0 = any)",
    )
    rcreate.add_argument(
        "--max-concurrent", type=int, default=0, help="devices updating at once (default no cap)"
    )
    rcreate.add_argument(
        "--device-timeout",
        type=int,
        default=3600,
        help="seconds before a silent updating device frees its slot (default 3600)",
    )
    rcreate.add_argument(
        "--allow-empty",
        action="store_true",
        help="create it even if no device matches yet; devices that match later join it",
    )
    gate = rcreate.add_argument_group(
        "health gate",
        "after installing, a device's telemetry about the new version must stay within these "
        "limits, or it counts as a failed device of its wave",
    )
    gate.add_argument(
        "--max-error-rate",
        type=_fraction,
        default=0.05,
        help="errors per request (default 5%%)",
    )
    gate.add_argument(
        "--max-latency-ratio",
        type=float,
        default=1.5,
        help="p95 latency against the device's own before the rollout (default 1.5)",
    )
    gate.add_argument(
        "--health-window",
        type=_duration,
        default=600,
        help="how long after installing a device is watched (default 10m)",
    )
    gate.add_argument(
        "--min-requests",
        type=int,
        default=50,
        help="requests a device must have served before it is judged (default 50)",
    )
    gate.add_argument(
        "--bake",
        type=_duration,
        default=0,
        help="how long a wave's devices must keep the version before the next wave "
        "starts (e.g. 10m; default 0)",
    )
    gate.add_argument(
        "--no-health-gate",
        action="store_true",
        help="judge devices only by their update reports, not by their telemetry",
    )
    rcreate.add_argument("--json", action="store_true")
    rcreate.set_defaults(func=_cmd_rollouts_create)
    rlist = rollouts_sub.add_parser("list", help="rollouts, newest first")
    rlist.add_argument("--model", default="", help="only this model's")
    rlist.add_argument("--json", action="store_true")
    rlist.set_defaults(func=_cmd_rollouts_list)
    rstatus = rollouts_sub.add_parser("status", help="one rollout with per-wave counts")
    rstatus.add_argument("id", type=int)
    rstatus.add_argument("--json", action="store_true")
    rstatus.set_defaults(func=_cmd_rollouts_status)
    for action, method, verb, text in (
        ("pause", "PauseRollout", "paused", "stop starting waves and assigning devices"),
        ("resume", "ResumeRollout", "resumed", "go on with a paused rollout"),
        (
            "abort",
            "AbortRollout",
            "aborted",
            "stop it; devices that had not installed the version keep the previous one",
        ),
    ):
        raction = rollouts_sub.add_parser(action, help=text)
        raction.add_argument("id", type=int)
        raction.set_defaults(func=_rollout_action(method, verb))
    rrollback = rollouts_sub.add_parser(
        "rollback",
        help="send the rollout's devices back to the previous version (root-signed)",
    )
    rrollback.add_argument("id", type=int)
    rrollback.add_argument("--root-key", type=Path, action="append", help="root key file")
    rrollback.add_argument("--passphrase-file", type=Path, help="passphrase of the root keys")
    rrollback.set_defaults(func=_cmd_rollouts_rollback)

    tokens = sub.add_parser(
        "tokens",
        help="enrollment tokens: single use (or N uses), expiring, optionally labelling devices",
    )
    tokens_sub = tokens.add_subparsers(dest="action", required=True)
    tcreate = tokens_sub.add_parser("create", help="create a token (printed once, on stdout)")
    tcreate.add_argument("--ttl", type=_duration, default=86400, help="lifetime (default 24h)")
    tcreate.add_argument("--uses", type=int, default=1, help="devices it may enroll (default 1)")
    tcreate.add_argument(
        "--label", action="append", metavar="KEY=VALUE", help="label the enrolled devices"
    )
    tcreate.add_argument("--note", help="a note for 'tokens list'")
    tcreate.add_argument("--json", action="store_true")
    tcreate.set_defaults(func=_cmd_tokens_create)
    tlist = tokens_sub.add_parser("list", help="tokens (their ids, never the secrets)")
    tlist.add_argument("--json", action="store_true")
    tlist.set_defaults(func=_cmd_tokens_list)
    trevoke = tokens_sub.add_parser("revoke", help="use a token up now")
    trevoke.add_argument("token_id", help="the id 'tokens list' shows (8+ characters)")
    trevoke.set_defaults(func=_cmd_tokens_revoke)

    audit = sub.add_parser("audit", help="the audit log of admin actions, newest first")
    audit.add_argument("--limit", type=int, default=50)
    audit.add_argument("--before", type=int, default=0, help="entries older than this id")
    audit.add_argument("--json", action="store_true")
    audit.set_defaults(func=_cmd_audit)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except FleetError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
