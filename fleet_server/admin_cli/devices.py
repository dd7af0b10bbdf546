"""``edgefleet devices`` and ``tokens``: the registry, labels, commands, enrollment tokens."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from typing import Any

from google.protobuf.json_format import MessageToDict

from fleet_server.admin_cli import common, devlogs
from fleet_server.errors import BadRequestError
from protos import admin_pb2 as pb
from protos.names import is_sha256
from protos.refusals import covers

__all__ = ["add_parsers"]


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


def _all_devices(args: argparse.Namespace) -> Iterator[pb.DeviceInfo]:
    """Every device, page by page (a page's size is bounded, a fleet's is not)."""
    admin, after = common.admin(args), ""
    while True:
        page = admin.call("ListDevices", pb.ListDevicesRequest(after=after))
        yield from page.devices
        if not page.next_after:
            return
        after = page.next_after


def _cmd_devices_list(args: argparse.Namespace) -> int:
    listed = list(_all_devices(args))
    if args.json:
        devices = [_device_dict(d) for d in listed]
        print(json.dumps(devices, indent=2, sort_keys=True))
        return 0
    if not listed:
        print("no devices enrolled yet")
        return 0
    print(f"{'DEVICE':20} {'STATE':8} {'LAST SEEN':19}  {'MODELS':32} LAST TELEMETRY")
    for d in listed:
        if d.revoked_unix:
            print(f"{d.device_id:20} REVOKED {common.fmt_time(d.revoked_unix)}")
            continue
        models = ", ".join(_model_state(m) for m in d.models) or "-"
        print(
            f"{d.device_id:20} {d.presence or '-':8} {common.fmt_time(d.last_seen_unix):19}  "
            f"{models:32} {_telemetry_summary(d)}"
        )
    return 0


def _device_dict(d: pb.DeviceInfo) -> dict[str, Any]:
    item = common.as_dict(d)
    item.setdefault("last_telemetry", None)  # never reported: null rather than absent
    return item


def _cmd_devices_show(args: argparse.Namespace) -> int:
    device = common.admin(args).call("GetDevice", pb.DeviceRequest(device_id=args.device))
    if args.json:
        print(json.dumps(_device_dict(device), indent=2, sort_keys=True))
        return 0
    caps = device.capabilities
    print(f"device    {device.device_id} ({device.name})")
    revoked = f"REVOKED {common.fmt_time(device.revoked_unix)}" if device.revoked_unix else "active"
    print(f"status    {revoked}")
    print(f"labels    {', '.join(f'{k}={v}' for k, v in sorted(device.labels.items())) or '-'}")
    print(f"time zone {caps.timezone or 'UTC (not reported)'}  (maintenance windows)")
    seen = common.fmt_time(device.last_seen_unix)
    print(f"enrolled  {common.fmt_time(device.enrolled_unix)}   last seen {seen}")
    tpus = ", ".join(t.device or "?" for t in caps.edgetpus) or "none"
    print(
        f"hardware  {caps.arch or '?'}, {caps.cpu_cores or '?'} cores, "
        f"Edge TPUs: {tpus}, runtime {caps.runtime or '?'} {caps.runtime_version}"
    )
    for m in device.models:
        print(f"model     {_model_state(m)}: {m.detail}")
    for line in _refusal_lines(device):
        print(f"refused   {line}")
    for d in device.downloads[:5]:
        print(f"download  {_download_line(d)}")
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
        print(f"event     {common.fmt_time(event.at_unix)} {what}{event.state} {event.detail}")
    print(
        f"presence  {device.presence or '-'} (mqtt: {device.online_state or 'never connected'}"
        + (f" since {common.fmt_time(device.online_unix)}" if device.online_unix else "")
        + f"); {device.telemetry_count} message(s) received, {device.telemetry_gaps} lost, "
        f"{device.telemetry_awaited} awaited, {device.telemetry_dropped} dropped by the device"
    )
    if device.spool_replaced:
        print(f"spool     replaced: {device.spool_replaced} (what it held is lost)")
    return 0


def _download_line(d: pb.DownloadProgress) -> str:
    what = f"{d.model_name} {d.version} {d.variant}" if d.model_name else f"sha256 {d.sha256[:12]}"
    if d.compressed:
        what += " (compressed)"
    share = f"{100 * d.reached // d.total}%" if d.total else "-"
    done = "complete" if d.total and d.reached >= d.total else share
    return (
        f"{what}: {done}, {d.reached >> 10} of {d.total >> 10} KiB sent, "
        f"{common.fmt_time(d.updated_unix)}"
    )


def _refusal_lines(device: pb.DeviceInfo) -> list[str]:
    """The releases a device refuses, each with the clear waiting for it, if any."""
    if not device.refusals_reported:
        return ["not reported (the agent is older than refusal clears)"]
    lines = []
    for r in device.refused:
        text = f"{r.model_name or '(any model)'} {r.version or '?'} sha256 {r.sha256[:12]}"
        clear = next(
            (c for c in device.pending_clears if covers(c.model_name, c.sha256, *_key(r))), None
        )
        if clear is not None:
            when = common.fmt_time(clear.requested_unix)
            text += f" (cleared {when} by {clear.requested_by}; waiting for its check-in)"
        lines.append(text)
    return lines or ["none"]


def _key(refused: pb.RefusedRelease) -> tuple[str, str]:
    return refused.model_name, refused.sha256


def _sha256_arg(args: argparse.Namespace) -> str:
    """The --sha256 given: 64 hex digits, or for one device a unique prefix of 8 or more of a
    release it refuses (as 'devices show' prints it)."""
    sha = (args.sha256 or "").lower()
    if not sha or is_sha256(sha):
        return sha
    if not 8 <= len(sha) < 64 or not all(c in "0123456789abcdef" for c in sha):
        raise BadRequestError(
            f"--sha256 {args.sha256[:80]!r} is not a sha256 (64 hex digits, or for one device "
            "a prefix of 8 or more)"
        )
    if not args.device:
        raise BadRequestError("with --selector, give the whole sha256 (64 hex digits)")
    device = common.admin(args).call("GetDevice", pb.DeviceRequest(device_id=args.device))
    found = {
        r.sha256
        for r in device.refused
        if r.sha256.startswith(sha) and r.model_name in (args.model, "")
    }
    if len(found) != 1:
        how = "no" if not found else "more than one"
        raise BadRequestError(
            f"{how} release of {args.model} that {args.device} refuses has a sha256 starting "
            f"{sha}; see 'edgefleet devices show {args.device} --json'"
        )
    return found.pop()


def _cmd_devices_clear_refusal(args: argparse.Namespace) -> int:
    sha = _sha256_arg(args)
    response = common.admin(args).call(
        "ClearRefusal",
        pb.ClearRefusalRequest(
            device_id=args.device or "",
            selector=common.pairs(args.selector, "selector"),
            model_name=args.model,
            sha256=sha,
        ),
    )
    what = f"{args.model} sha256 {sha[:12]}" if sha else f"{args.model} (every release)"
    for device_id in response.device_ids:
        print(f"{device_id}: forgets the refusal of {what} at its next check-in")
    return 0


def _cmd_devices_label(args: argparse.Namespace) -> int:
    labels = {}
    for item in args.labels:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise BadRequestError(f"label {item!r} must be KEY=VALUE")
        labels[key] = value
    device = common.admin(args).call(
        "LabelDevice",
        pb.LabelDeviceRequest(device_id=args.device, set=labels, remove=args.remove or []),
    )
    shown = ", ".join(f"{k}={v}" for k, v in sorted(device.labels.items())) or "none"
    print(f"{device.device_id}: labels {shown}")
    return 0


def _token_ttl(text: str) -> int:
    """--ttl: a duration from 1 s to 30 days (0 used to mean the default, silently)."""
    seconds = common.duration(text)
    if not 1 <= seconds <= 30 * 86400:
        raise argparse.ArgumentTypeError(f"{text!r} is outside 1s..30d")
    return seconds


def _cmd_tokens_create(args: argparse.Namespace) -> int:
    response = common.admin(args).call(
        "CreateEnrollmentToken",
        pb.CreateTokenRequest(
            ttl_s=args.ttl,
            uses=args.uses,
            labels=common.pairs(args.label, "label"),
            note=args.note or "",
        ),
    )
    if args.json:
        print(json.dumps(MessageToDict(response, preserving_proto_field_name=True), indent=2))
        return 0
    print(response.token)
    print(
        f"token {response.token_id}: {args.uses} use(s), expires "
        f"{common.fmt_time(response.expires_unix)}"
        "; shown once: put it in the device's agent.toml (server.enrollment_token)",
        file=sys.stderr,
    )
    return 0


def _cmd_tokens_list(args: argparse.Namespace) -> int:
    response = common.admin(args).call("ListEnrollmentTokens", pb.ListTokensRequest())
    if args.json:
        common.print_json(response.tokens)
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
            f"{t.token_id:12}  {t.uses_left:9d}  {common.fmt_time(t.expires_unix):19}  {state:8}  "
            f"{labels} {t.note}".rstrip()
        )
    return 0


def _cmd_tokens_revoke(args: argparse.Namespace) -> int:
    response = common.admin(args).call(
        "RevokeEnrollmentToken", pb.RevokeTokenRequest(token_id=args.token_id)
    )
    print(f"revoked {response.revoked} token(s)")
    return 0


def _cmd_devices_explain(args: argparse.Namespace) -> int:
    response = common.admin(args).call(
        "ExplainVariant",
        pb.ExplainVariantRequest(
            device_id=args.device, model_name=args.model, version=args.model_version or ""
        ),
    )
    if args.json:
        print(json.dumps(common.as_dict(response), indent=2))
        return 0
    outcome = response.variant or "the cloud (no variant fits)"
    print(
        f"{response.device_id} ({response.hardware_class}) gets {response.model_name} "
        f"{response.version}: {outcome}"
    )
    print(f"  because {response.reason}")
    width = max([16, *(len(v.variant) for v in response.verdicts)])
    for v in response.verdicts:
        mark = "*" if v.chosen else " "
        print(f"{mark} {v.variant:{width}} {v.quantization:13} {v.reason}")
    return 0


def _cmd_devices_command(args: argparse.Namespace) -> int:
    response = common.admin(args).call(
        "SendCommand", pb.SendCommandRequest(device_id=args.device, kind=args.kind)
    )
    print(
        f"sent {args.kind} to {args.device} (command {response.command_id}); its answer shows "
        f"in 'edgefleet devices show {args.device}'"
    )
    return 0


def _cmd_devices_revoke(args: argparse.Namespace) -> int:
    device = common.admin(args).call("RevokeDevice", pb.DeviceRequest(device_id=args.device))
    print(
        f"{device.device_id} revoked: its check-ins and downloads are refused from now on "
        "(it keeps serving what it has)"
    )
    return 0


def add_parsers(sub: Any) -> None:
    """Add this area's commands to the top-level subparsers."""
    devices = sub.add_parser("devices", help="the device registry")
    devices_sub = devices.add_subparsers(dest="action", required=True)
    dlist = devices_sub.add_parser("list", help="devices, their models and last telemetry")
    dlist.add_argument("--json", action="store_true")
    dlist.set_defaults(func=_cmd_devices_list)
    dshow = devices_sub.add_parser(
        "show", help="one device: hardware, labels, models, refused releases, telemetry"
    )
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
    dclear = devices_sub.add_parser(
        "clear-refusal",
        help="let devices install again a release they refused (rolled back or crashed on)",
        description="A device that rolled a release back (a crash loop, a failed health "
        "window) or was crashed by it while loading refuses that release (model and sha256) "
        "from then on; 'devices show' lists what it refuses. This clears the refusal on one "
        "device or on the devices matching a label selector: each forgets it at its next "
        "check-in (asked for now over MQTT) and installs the release again if it is still "
        "what it should run. Devices that refuse nothing the clear names are left out; none "
        "at all is an error. Every clear is in the audit log ('edgefleet audit') with who "
        "asked, the devices, the model and the sha256.",
    )
    target = dclear.add_mutually_exclusive_group(required=True)
    target.add_argument("device", nargs="?", help="the device")
    target.add_argument(
        "--selector",
        action="append",
        metavar="KEY=VALUE",
        help="instead of a device: the devices with this label (repeat: all of them)",
    )
    dclear.add_argument("--model", required=True, help="the model whose refusal goes")
    dclear.add_argument(
        "--sha256",
        metavar="HEX",
        help="only the release with this artifact sha256 (default: every refused release of "
        "the model); for one device, a prefix of 8+ digits as 'devices show' prints it",
    )
    dclear.set_defaults(func=_cmd_devices_clear_refusal)
    devlogs.add_parser(devices_sub)
    drevoke = devices_sub.add_parser(
        "revoke", help="refuse a device's credentials from now on (a lost or stolen device)"
    )
    drevoke.add_argument("device")
    drevoke.set_defaults(func=_cmd_devices_revoke)

    tokens = sub.add_parser(
        "tokens",
        help="enrollment tokens: single use (or N uses), expiring, optionally labelling devices",
    )
    tokens_sub = tokens.add_subparsers(dest="action", required=True)
    tcreate = tokens_sub.add_parser("create", help="create a token (printed once, on stdout)")
    tcreate.add_argument(
        "--ttl", type=_token_ttl, default=86400, help="lifetime, 1s to 30d (default 24h)"
    )
    tcreate.add_argument(
        "--uses",
        type=common.whole(1, 1_000_000),
        default=1,
        help="devices it may enroll (default 1)",
    )
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
