"""``edgefleet windows``: maintenance windows, when the devices a label selector picks may be
told to update by a rollout (docs/rollouts.md, "Maintenance windows")."""

from __future__ import annotations

import argparse
import json
from typing import Any

from fleet_server.admin_cli import common
from protos import admin_pb2 as pb

__all__ = ["add_parsers"]


def _selector(w: pb.MaintenanceWindow) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(w.selector.items())) or "every device"


def _line(w: pb.MaintenanceWindow) -> str:
    crosses = " (to the next day)" if w.closes <= w.opens else ""
    return f"{w.days} {w.opens}-{w.closes}{crosses} device-local time, for {_selector(w)}"


def _cmd_add(args: argparse.Namespace) -> int:
    request = pb.AddMaintenanceWindowRequest(
        selector=common.pairs(args.selector, "selector"),
        every_device=args.every_device,
        days=args.days,
        opens=args.opens,
        closes=args.closes,
    )
    window = common.admin(args).call("AddMaintenanceWindow", request)
    if args.json:
        print(json.dumps(common.as_dict(window), indent=2))
        return 0
    print(f"window {window.window_id} added: {_line(window)}")
    if window.devices == 0:
        print("  no enrolled device matches it now; check the labels ('edgefleet devices list')")
    else:
        print(
            f"  {window.devices} device(s) match: rollouts tell them to update only inside "
            "their windows"
        )
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    windows = (
        common.admin(args)
        .call("ListMaintenanceWindows", pb.ListMaintenanceWindowsRequest())
        .windows
    )
    if args.json:
        common.print_json(windows)
        return 0
    if not windows:
        print(
            "no maintenance windows: rollouts tell devices to update at any time "
            "('edgefleet windows add --selector KEY=VALUE --days mon-fri --from 01:00 --to 05:00')"
        )
        return 0
    print(f"{'ID':>4} {'DAYS':16} {'FROM':5} {'TO':5} {'DEVICES':>7}  SELECTOR")
    for w in windows:
        print(
            f"{w.window_id:4d} {w.days:16} {w.opens:5} {w.closes:5} {w.devices:7d}  {_selector(w)}"
        )
    print("times are each device's local time ([device] timezone of its agent; UTC without)")
    return 0


def _cmd_remove(args: argparse.Namespace) -> int:
    request = pb.RemoveMaintenanceWindowRequest(window_id=args.id)
    window = common.admin(args).call("RemoveMaintenanceWindow", request)
    print(f"window {window.window_id} removed: {_line(window)}")
    return 0


def add_parsers(sub: Any) -> None:
    """Register the ``windows`` command group."""
    group = sub.add_parser(
        "windows",
        help="maintenance windows: when rollouts may tell devices to update",
        description="A device that matches a window's selector is told to update by a rollout "
        "only while one of its windows is open; outside, it waits (shown as WINDOW in "
        "'rollouts status', neither failed nor counted by the gates). A device that matches "
        "no window is told at any time. Times are each device's local time: the agent's "
        "[device] timezone (an IANA name such as Europe/Berlin; UTC when unset or from an "
        "older agent), with daylight saving time as the device's clock has it.",
    )
    windows = group.add_subparsers(dest="action", required=True)
    add = windows.add_parser(
        "add",
        help="add a window",
        description="Adds a window. A --to not after --from crosses midnight: "
        "--days fri --from 22:00 --to 02:00 opens Friday 22:00 and closes Saturday 02:00 "
        "(the days are the days it opens).",
    )
    add.add_argument(
        "--selector",
        action="append",
        metavar="KEY=VALUE",
        help="the devices with this label (repeat: all must match)",
    )
    add.add_argument(
        "--every-device",
        action="store_true",
        help="no selector: the window holds the whole fleet",
    )
    add.add_argument(
        "--days",
        default="daily",
        help="the days it opens: mon-fri, sat,sun, fri-mon, mon,wed-fri or daily (default)",
    )
    add.add_argument(
        "--from", dest="opens", required=True, metavar="HH:MM", help="opens, device-local time"
    )
    add.add_argument(
        "--to",
        dest="closes",
        required=True,
        metavar="HH:MM",
        help="closes, device-local time (24:00 = midnight; not after --from: the next day)",
    )
    add.add_argument("--json", action="store_true")
    add.set_defaults(func=_cmd_add)

    list_ = windows.add_parser("list", help="the windows and how many devices each holds")
    list_.add_argument("--json", action="store_true")
    list_.set_defaults(func=_cmd_list)

    remove = windows.add_parser(
        "remove", help="remove a window (its devices follow their other windows, or none)"
    )
    remove.add_argument("id", type=common.ID)
    remove.set_defaults(func=_cmd_remove)
