"""``edgefleet devices log``: ask a device for its recent log, wait for it, print it.

What a device uploads is its own text: the server stores it escaped, and ``edgefleet`` escapes
what it writes again (:mod:`fleet_server.admin_cli.terminal`). A record's first line starts with
its time and level; its other lines (a traceback) are indented, so no line a device writes can
pass for a record of its own.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from fleet_server.admin_cli import common
from protos import admin_pb2 as pb
from protos import device_pb2
from protos.logs import DEFAULT_LINES, MAX_LINES, level_name, parse_level

__all__ = ["add_parser", "render"]

_POLL_S = 1.0
_MAX_WAIT_S = 3600


def _level(text: str) -> int:
    try:
        return parse_level(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _wait(text: str) -> int:
    seconds = common.duration(text)
    if seconds > _MAX_WAIT_S:
        raise argparse.ArgumentTypeError(f"{text!r} is over 1h")
    return seconds


def _ms_time(unix_ms: int) -> str:
    if not unix_ms:
        return "-"
    try:
        when = time.localtime(unix_ms / 1000)
    except (OverflowError, OSError, ValueError):  # no such time (a device's nonsense)
        return f"@{unix_ms}ms"
    return time.strftime("%Y-%m-%d %H:%M:%S", when) + f".{unix_ms % 1000:03d}"


def _asked(log: pb.DeviceLog) -> str:
    return (
        f"asked for by {log.requested_by} at {common.fmt_time(log.requested_unix)}: the last "
        f"{log.lines} record(s) at {level_name(log.level)} or above"
    )


def render(
    log: pb.DeviceLog, *, lines: int | None = None, level: int | None = None
) -> tuple[list[str], list[str]]:
    """A device's uploaded log as (summary lines, record lines): the summary for standard error,
    the records for standard output, the run before first; ``lines`` and ``level`` keep fewer
    of what was uploaded."""
    records = [r for r in log.records if level is None or r.level >= level]
    if lines is not None:
        records = records[-lines:] if lines else []
    answered = "the latest request" if log.received_for == log.request_id else "an older request"
    summary = [
        f"log of {log.device_id}: {len(records)} record(s), uploaded "
        f"{common.fmt_time(log.received_unix)} for {answered}"
        + (f" ({_asked(log)})" if log.received_for == log.request_id else ""),
        f"agent {log.agent_version or '?'}; times on the device's clock; "
        f"{log.dropped} older record(s) of its run let go by the agent's bounds",
    ]
    if log.truncated:
        summary.append("truncated: the device sent more than the server keeps")
    if log.pending and log.received_for != log.request_id:
        summary.append(f"a newer request is waiting for its upload ({_asked(log)})")
    out: list[str] = []
    run: bool | None = None
    for r in records:
        if r.previous_run != run:
            run = r.previous_run
            started = log.previous_started_unix_ms if run else log.started_unix_ms
            which = "the run before" if run else "this run"
            out.append(f"-- {which} of the agent, started {_ms_time(started)} --")
        out.extend(_record_lines(r))
    return summary, out


def _record_lines(record: device_pb2.LogRecord) -> list[str]:
    first, *rest = record.message.split("\n")
    head = f"{_ms_time(record.unix_ms)} {level_name(record.level):8} {record.logger}: {first}"
    return [head, *(f"    {line}" for line in rest)]


def _print(log: pb.DeviceLog, args: argparse.Namespace, *, filtered: bool) -> None:
    if args.json:
        print(json.dumps(common.as_dict(log), indent=2, sort_keys=True))
        return
    summary, records = render(
        log, lines=args.lines if filtered else None, level=args.level if filtered else None
    )
    for line in summary:
        print(line, file=sys.stderr)
    for line in records:
        print(line)


def _not_yet(log: pb.DeviceLog, device: str, waited: int) -> int:
    within = f" within {waited} s" if waited else " yet"
    now = "" if log.asked_now else " (the server has no MQTT connection to ask it sooner)"
    print(
        f"{common.PROG}: {device} has not uploaded its log{within}; it does at its next "
        f"check-in{now}, and 'edgefleet devices log {device} --show' prints it then "
        f"({_asked(log)})",
        file=sys.stderr,
    )
    return 1


def _cmd_devices_log(args: argparse.Namespace) -> int:
    admin = common.admin(args)
    device = args.device
    if args.show:
        log = admin.call("GetDeviceLog", pb.DeviceRequest(device_id=device))
        if not log.received_for:
            if args.json:
                _print(log, args, filtered=True)
            asked = f" ({_asked(log)}; it uploads at its next check-in)" if log.pending else ""
            print(f"{common.PROG}: {device} has not uploaded a log{asked}", file=sys.stderr)
            return 1
        _print(log, args, filtered=True)
        return 0
    asked = admin.call(
        "RequestDeviceLog",
        pb.RequestDeviceLogRequest(
            device_id=device, lines=args.lines or DEFAULT_LINES, level=args.level or 0
        ),
    )
    deadline = time.monotonic() + args.log_wait
    log = asked
    while log.received_for != asked.request_id:
        if time.monotonic() >= deadline:
            log.asked_now = asked.asked_now
            return _not_yet(log, device, args.log_wait)
        time.sleep(min(_POLL_S, max(0.0, deadline - time.monotonic())))
        log = admin.call("GetDeviceLog", pb.DeviceRequest(device_id=device))
        if log.request_id != asked.request_id:
            print(f"{common.PROG}: another request for {device}'s log replaced this one "
                  f"({_asked(log)}); its upload answers that one", file=sys.stderr)  # fmt: skip
            return 1
    _print(log, args, filtered=False)
    return 0


def add_parser(devices_sub: Any) -> None:
    """``devices log`` under ``edgefleet devices``."""
    dlog = devices_sub.add_parser(
        "log",
        help="a device's recent log: ask for it, wait for the upload, print it (operator)",
        description="Asks DEVICE for the last records of its agent's log (its own records, "
        "of this run and, when kept, the run before: a crash-looping agent's reason), waits "
        "for its upload and prints it: time (the device's clock), level, logger, message; "
        "a traceback's lines indented. The device learns of the request at its next check-in "
        "(asked for at once over MQTT when the server has a broker) and uploads over its mTLS "
        "device port; the server keeps the latest upload of each device. Without an upload "
        "within --wait, says so and exits 1: 'devices log DEVICE --show' prints the upload "
        "once it has arrived. Every request is in the audit log with who asked. Device text "
        "is printed with control characters escaped. Needs the operator role.",
    )
    dlog.add_argument("device")
    dlog.add_argument(
        "--lines",
        type=common.whole(1, MAX_LINES),
        metavar="N",
        help=f"the last N records (default {DEFAULT_LINES}; at most {MAX_LINES}); with --show: "
        "of the upload",
    )
    dlog.add_argument(
        "--level",
        type=_level,
        metavar="LEVEL",
        help="records at LEVEL or above: debug, info (default), warning, error, critical; "
        "with --show: of the upload",
    )
    dlog.add_argument(
        "--wait",
        dest="log_wait",
        type=_wait,
        default=30,
        metavar="DURATION",
        help="wait this long for the upload (default 30s; 0: ask and return; at most 1h). "
        "Not the --wait before 'devices', which waits for a server starting up",
    )
    dlog.add_argument(
        "--show",
        action="store_true",
        help="print the latest upload now; ask the device nothing",
    )
    dlog.add_argument("--json", action="store_true", help="the log as JSON (DeviceLog)")
    dlog.set_defaults(func=_cmd_devices_log)
