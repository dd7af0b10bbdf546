"""``edgefleet rollouts`` and ``audit``: staged rollouts and the record of admin actions."""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime
from typing import Any

from fleet_server.admin_cli import common
from fleet_server.errors import BadRequestError
from protos import admin_pb2 as pb

__all__ = ["add_parsers", "iso_utc", "start_time"]


def iso_utc(unix: int) -> str:
    """``2026-12-24T02:00Z``: how start times are shown (always UTC)."""
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(unix))
    return (text[:-3] if text.endswith(":00") else text) + "Z"


def start_time(text: str) -> int:
    """An argparse type: an ISO 8601 time with its UTC offset (``2026-12-24T02:00Z``,
    ``2026-12-24T03:00+01:00``) -> unix seconds. A time without an offset is refused: whose
    clock would it be?"""
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text[:40]!r} is not an ISO 8601 time like 2026-12-24T02:00Z"
        ) from None
    if when.tzinfo is None or when.utcoffset() is None:
        raise argparse.ArgumentTypeError(
            f"{text[:40]!r} has no UTC offset: write it in UTC with a Z "
            f"({when.strftime('%Y-%m-%dT%H:%M')}Z) or with its offset (+01:00)"
        )
    return int(when.timestamp())


def _in(seconds: int) -> str:
    if seconds < 0:
        return "now"
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    return f"in {days} d {hours} h" if days else f"in {hours} h {rest // 60} min"


def _print_rollout(r: pb.RolloutInfo) -> None:
    selector = ",".join(f"{k}={v}" for k, v in sorted(r.selector.items())) or "every device"
    previous = f" (from {r.previous_version})" if r.previous_version else ""
    print(f"rollout {r.rollout_id}: {r.model_name} {r.version}{previous} to {selector}")
    print(
        f"  state {r.state}, wave {r.current_wave + 1} of {len(r.wave_status)}"
        + (f": {r.reason}" if r.reason else "")
    )
    if not r.started_unix:
        print(
            f"  starts at {iso_utc(r.start_unix)} ({_in(r.start_unix - int(time.time()))}), "
            "planned over the devices matching then; none is told before"
        )
    elif r.start_unix != r.created_unix:
        print(f"  scheduled for {iso_utc(r.start_unix)}, started {iso_utc(r.started_unix)}")
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
        f"{'INSTALLED':>9} {'FAILED':>6} {'UNHEALTHY':>9} {'STALLED':>7} {'WINDOW':>6}"
    )
    for w in r.wave_status:
        marker = "*" if w.index == r.current_wave and r.state in ("running", "paused") else " "
        print(
            f"{marker} {w.index + 1:4d} {w.target:7d} {w.devices:7d} {w.waiting:7d} "
            f"{w.assigned:8d} {w.installed:9d} {w.failed:6d} {w.unhealthy:9d} {w.stalled:7d} "
            f"{w.outside_window:6d}"
        )
    outside = sum(w.outside_window for w in r.wave_status)
    if outside:
        print(
            f"  {outside} waiting device(s) wait for their maintenance window (WINDOW): not "
            "failed, not counted by the gates ('edgefleet windows list')"
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
        selector=common.pairs(args.selector, "selector"),
        waves=[w for w in (args.waves or "").split(",") if w.strip()],
        success_threshold=args.success,
        failure_threshold=args.failure,
        pause_on_any_failure=args.failure == 0,
        max_concurrent=args.max_concurrent,
        device_timeout_s=args.device_timeout,
        allow_empty=args.allow_empty,
        start_unix=args.start_at or 0,
        health_gate=pb.HealthGate(
            max_error_rate=args.max_error_rate,
            max_latency_ratio=args.max_latency_ratio,
            window_s=args.health_window,
            min_requests=args.min_requests,
            bake_s=args.bake,
            disabled=args.no_health_gate,
        ),
    )
    rollout = common.admin(args).call("CreateRollout", request)
    if args.json:
        print(json.dumps(common.as_dict(rollout), indent=2))
    else:
        _print_rollout(rollout)
    return 0


def _cmd_rollouts_list(args: argparse.Namespace) -> int:
    response = common.admin(args).call(
        "ListRollouts", pb.ListRolloutsRequest(model_name=args.model)
    )
    if args.json:
        print(json.dumps([common.as_dict(r) for r in response.rollouts], indent=2))
        return 0
    if not response.rollouts:
        print("no rollouts; start one with: edgefleet rollouts create MODEL VERSION")
        return 0
    print(f"{'ID':>4} {'MODEL':20} {'VERSION':10} {'STATE':12} {'WAVE':>5} {'DONE':>11}  SELECTOR")
    for r in response.rollouts:
        devices = sum(w.devices for w in r.wave_status)
        installed = sum(w.installed for w in r.wave_status)
        selector = ",".join(f"{k}={v}" for k, v in sorted(r.selector.items())) or "*"
        starts = "" if r.started_unix else f" (starts {iso_utc(r.start_unix)})"
        print(
            f"{r.rollout_id:4d} {r.model_name:20} {r.version:10} {r.state:12} "
            f"{r.current_wave + 1:2d}/{len(r.wave_status):<2d} {installed:5d}/{devices:<5d}  "
            f"{selector}{starts}"
        )
    return 0


def _cmd_rollouts_status(args: argparse.Namespace) -> int:
    rollout = common.admin(args).call("GetRollout", pb.RolloutRequest(rollout_id=args.id))
    if args.json:
        print(json.dumps(common.as_dict(rollout), indent=2))
    else:
        _print_rollout(rollout)
    return 0


def _rollout_action(method: str, verb: str) -> Any:
    def run(args: argparse.Namespace) -> int:
        rollout = common.admin(args).call(method, pb.RolloutRequest(rollout_id=args.id))
        print(f"rollout {rollout.rollout_id} {verb}: {rollout.state}")
        return 0

    return run


def _cmd_rollouts_rollback(args: argparse.Namespace) -> int:
    from fleet_server.signing.keys import sign_envelope  # noqa: PLC0415
    from protos.envelope import MANIFEST_PAYLOAD_TYPE  # noqa: PLC0415

    admin = common.admin(args)
    # The server judges the request first (a rollout that does not exist, or has nothing to go
    # back to, is that error, not a missing root key); preparing changes nothing.
    prepared = admin.call("PrepareRolloutRollback", pb.RolloutRequest(rollout_id=args.id))
    keys = common.root_keys(args)
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
    response = common.admin(args).call(
        "ListAudit", pb.ListAuditRequest(limit=args.limit, before_id=args.before)
    )
    if args.json:
        common.print_json(response.entries)
        return 0
    if not response.entries:
        print("the audit log is empty")
        return 0
    for e in response.entries:
        result = "ok" if e.ok else f"FAILED: {e.error}"
        when = common.fmt_time(e.at_unix)
        print(f"{e.id:6d} {when} {e.actor:32} {e.action:22} {e.target:28} {result}")
    return 0


def add_parsers(sub: Any) -> None:
    """Add this area's commands to the top-level subparsers."""
    rollouts = sub.add_parser(
        "rollouts",
        help="staged rollouts: waves, health gates, pause, resume, abort, roll back",
        description="A rollout sends a model version to the devices matching a label selector "
        "in waves. A wave starts when the previous one has installed it on enough devices "
        "(--success); the rollout pauses by itself when the failed share of the devices it "
        "started reaches --failure. Devices that match later join it. With --start-at it is "
        "scheduled and starts by itself then; devices held by a maintenance window ('edgefleet "
        "windows') are told only inside it.",
    )
    rollouts_sub = rollouts.add_subparsers(dest="action", required=True)
    rcreate = rollouts_sub.add_parser("create", help="start a rollout, now or at --start-at")
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
        type=common.fraction,
        default=0.9,
        help="installed share of a wave before the next starts (default 90%%)",
    )
    rcreate.add_argument(
        "--failure",
        type=common.fraction,
        default=0.1,
        help="failed share of started devices that pauses the rollout (default 10%%; 0 = any)",
    )
    rcreate.add_argument(
        "--max-concurrent",
        type=common.whole(0, 1_000_000),
        default=0,
        help="devices updating at once (default no cap)",
    )
    rcreate.add_argument(
        "--device-timeout",
        type=common.whole(1, 30 * 86400),
        default=3600,
        help="seconds before a silent updating device frees its slot (default 3600)",
    )
    rcreate.add_argument(
        "--start-at",
        type=start_time,
        metavar="TIME",
        help="start it then, not now: ISO 8601 with Z or an offset (e.g. 2026-12-24T02:00Z; up "
        "to a year ahead). Until then it is 'scheduled', tells no device anything, and can be "
        "paused or aborted",
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
        type=common.fraction,
        default=0.05,
        help="errors per request (default 5%%)",
    )
    gate.add_argument(
        "--max-latency-ratio",
        type=common.number(1, 1000),
        default=1.5,
        help="p95 latency against the device's own before the rollout (default 1.5)",
    )
    gate.add_argument(
        "--health-window",
        type=common.duration,
        default=600,
        help="how long after installing a device is watched (default 10m)",
    )
    gate.add_argument(
        "--min-requests",
        type=common.whole(1, 10**9),
        default=50,
        help="requests a device must have served before it is judged (default 50)",
    )
    gate.add_argument(
        "--bake",
        type=common.duration,
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
    rstatus = rollouts_sub.add_parser(
        "status", aliases=["show"], help="one rollout with per-wave counts"
    )
    rstatus.add_argument("id", type=common.ID)
    rstatus.add_argument("--json", action="store_true")
    rstatus.set_defaults(func=_cmd_rollouts_status)
    for action, method, verb, text in (
        (
            "pause",
            "PauseRollout",
            "paused",
            "stop starting waves and assigning devices (a scheduled one: do not start it)",
        ),
        (
            "resume",
            "ResumeRollout",
            "resumed",
            "go on with a paused rollout (one paused before its start waits for it again)",
        ),
        (
            "abort",
            "AbortRollout",
            "aborted",
            "stop it; devices that had not installed the version keep the previous one",
        ),
    ):
        raction = rollouts_sub.add_parser(action, help=text)
        raction.add_argument("id", type=common.ID)
        raction.set_defaults(func=_rollout_action(method, verb))
    rrollback = rollouts_sub.add_parser(
        "rollback",
        help="send the rollout's devices back to the previous version (root-signed)",
    )
    rrollback.add_argument("id", type=common.ID)
    common.add_root_key_options(rrollback)
    rrollback.set_defaults(func=_cmd_rollouts_rollback)

    audit = sub.add_parser("audit", help="the audit log of admin actions, newest first")
    audit.add_argument("--limit", type=common.whole(1, 1000), default=50)
    audit.add_argument(
        "--before", type=common.whole(0, 2**63 - 1), default=0, help="entries older than this id"
    )
    audit.add_argument("--json", action="store_true")
    audit.set_defaults(func=_cmd_audit)
