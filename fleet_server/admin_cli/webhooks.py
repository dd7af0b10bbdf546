"""``edgefleet webhooks``: where the server sends its notifications, and their delivery log
(docs/notifications.md)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from fleet_server.admin_cli import common
from fleet_server.errors import BadRequestError, FleetError
from protos import admin_pb2 as pb

__all__ = ["add_parsers"]

# The event types, as the server names them (fleet_server/webhooks/events.py; the admin CLI is a
# client and does not import it; the server refuses an unknown one with the list).
_TYPES = (
    "rollout.paused, rollout.failed, rollout.completed, device.offline, budget.reached, "
    "expiry.due, update.refused, webhook.test"
)
_MAX_FILE = 64 * 1024


def _read(path: Path, what: str) -> str:
    """A small text file's content, without surrounding white space.

    Raises:
        BadRequestError: it cannot be read, is too large, or is not UTF-8.
    """
    try:
        with path.open("rb") as handle:
            data = handle.read(_MAX_FILE + 1)
    except OSError as exc:
        raise BadRequestError(f"cannot read the {what} {path}: {exc.strerror}") from exc
    if len(data) > _MAX_FILE:
        raise BadRequestError(f"the {what} {path} is over {_MAX_FILE // 1024} KiB")
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise BadRequestError(f"the {what} {path} is not UTF-8 text") from exc
    if not text:
        raise BadRequestError(f"the {what} {path} is empty")
    return text


def _types(args: argparse.Namespace) -> list[str]:
    return [t.strip() for item in args.event or () for t in item.split(",") if t.strip()]


def _cmd_add(args: argparse.Namespace) -> int:
    request = pb.AddWebhookRequest(
        name=args.name,
        url=args.url,
        events=_types(args),
        allow_http=args.allow_http,
        secret=_read(args.secret_file, "secret file") if args.secret_file else "",
        ca_pem=_read(args.receiver_ca, "receiver CA file") if args.receiver_ca else "",
    )
    response = common.admin(args).call("AddWebhook", request)
    if args.json:
        print(json.dumps(common.as_dict(response), indent=2))
        return 0
    hook = response.webhook
    print(f"webhook {hook.name} added: {hook.url} ({', '.join(hook.events) or 'every event'})")
    if response.secret:
        print("its secret, shown this once (the receiver checks X-EdgeFleet-Signature with it):")
        print(response.secret)
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    hooks = common.admin(args).call("ListWebhooks", pb.ListWebhooksRequest()).webhooks
    if args.json:
        common.print_json(hooks)
        return 0
    if not hooks:
        print("no webhooks ('edgefleet webhooks add NAME URL')")
        return 0
    for h in hooks:
        last = f"HTTP {h.last_status}" if h.last_status else "-"
        if h.last_error:
            last = h.last_error
        print(f"{h.name}: {h.url}{' (http allowed)' if h.allow_http else ''}")
        print(
            f"  events {', '.join(h.events) or 'every type'}; {h.pending} pending, "
            f"{h.delivered} delivered, {h.failed} failed (7 days), {h.dropped} dropped; "
            f"last delivered {common.fmt_time(h.last_delivered_unix)}; last attempt: {last}"
        )
    return 0


def _cmd_remove(args: argparse.Namespace) -> int:
    request = pb.RemoveWebhookRequest(name=args.name)
    response = common.admin(args).call("RemoveWebhook", request)
    dropped = f" ({response.pending_dropped} pending deliveries dropped)" * bool(
        response.pending_dropped
    )
    print(f"webhook {args.name} removed{dropped}")
    return 0


def _attempts(d: pb.WebhookDelivery) -> str:
    return "; ".join(
        f"#{a.attempt} {common.fmt_time(a.at_unix)} "
        + (f"HTTP {a.status}" if a.status and not a.error else a.error or "no answer")
        + f" ({a.duration_ms} ms)"
        for a in d.log
    )


def _cmd_test(args: argparse.Namespace) -> int:
    admin = common.admin(args)
    event_id = admin.call("TestWebhook", pb.TestWebhookRequest(name=args.name)).event_id
    print(f"webhook.test {event_id} queued for {args.name}")
    deadline = time.monotonic() + args.wait
    request = pb.ListWebhookDeliveriesRequest(name=args.name, event_id=event_id, limit=1)
    while True:
        found = admin.call("ListWebhookDeliveries", request).deliveries
        delivery = found[0] if found else None
        if delivery is not None and delivery.state != "pending":
            break
        if time.monotonic() >= deadline:
            if args.wait == 0:
                return 0
            tried = f": {_attempts(delivery)}" if delivery is not None and delivery.log else ""
            raise FleetError(
                f"not delivered within {args.wait:g} s{tried}; the server keeps trying "
                f"('edgefleet webhooks deliveries {args.name} --event {event_id}')"
            )
        time.sleep(0.5)
    if delivery.state != "delivered":
        raise FleetError(f"{delivery.state}: {_attempts(delivery)}")
    print(f"delivered: {_attempts(delivery)}")
    return 0


def _cmd_deliveries(args: argparse.Namespace) -> int:
    request = pb.ListWebhookDeliveriesRequest(
        name=args.name or "", event_id=args.event or "", limit=args.limit
    )
    rows = common.admin(args).call("ListWebhookDeliveries", request).deliveries
    if args.json:
        common.print_json(rows)
        return 0
    if not rows:
        print("no deliveries in the last 7 days")
        return 0
    for d in rows:
        when = f", next attempt {common.fmt_time(d.next_unix)}" if d.state == "pending" else ""
        print(
            f"{common.fmt_time(d.created_unix)} {d.webhook} {d.event_type} {d.event_id}: "
            f"{d.state} after {d.attempts} attempt(s){when}"
        )
        if d.log:
            print(f"  {_attempts(d)}")
    return 0


def add_parsers(sub: Any) -> None:
    """Register the ``webhooks`` command group."""
    group = sub.add_parser(
        "webhooks",
        help="notifications: webhooks the server POSTs signed events to",
        description="The server POSTs each event (JSON, payload version 1) to every webhook "
        "that wants its type, signed with the webhook's secret (HMAC-SHA256), and retries with "
        "backoff for a day; docs/notifications.md shows how a receiver checks it. Event types: "
        + _TYPES
        + ".",
    )
    webhooks = group.add_subparsers(dest="action", required=True)
    add = webhooks.add_parser(
        "add",
        help="add a webhook; prints the secret the server made (once)",
        description="Adds a webhook. Without --secret-file the server makes the secret and "
        "this prints it once: give it to the receiver now, it is never shown again.",
    )
    add.add_argument("name", help="its name (1-64 of A-Z a-z 0-9 _ . -)")
    add.add_argument("url", help="https://HOST[:PORT]/PATH (no USER:PASSWORD@)")
    add.add_argument(
        "--event",
        action="append",
        metavar="TYPE[,TYPE]",
        help="only these event types (repeat, or comma-separated; default: every type)",
    )
    add.add_argument(
        "--secret-file", type=Path, help="the secret to sign with (16-256 characters) instead"
    )
    add.add_argument(
        "--allow-http",
        action="store_true",
        help="accept an http:// URL: anyone on the way reads every event (a trusted network only)",
    )
    add.add_argument(
        "--receiver-ca", type=Path, metavar="FILE", help="trust this CA (PEM) for the receiver"
    )
    add.add_argument("--json", action="store_true")
    add.set_defaults(func=_cmd_add)

    list_ = webhooks.add_parser("list", help="webhooks and how their deliveries go")
    list_.add_argument("--json", action="store_true")
    list_.set_defaults(func=_cmd_list)

    remove = webhooks.add_parser("remove", help="remove a webhook and its pending deliveries")
    remove.add_argument("name")
    remove.set_defaults(func=_cmd_remove)

    test = webhooks.add_parser(
        "test",
        help="send a webhook.test event and wait for its delivery",
        description="Queues a webhook.test event for the webhook and waits until it is "
        "delivered (exit 0) or given up or the wait ends (exit 1, with each attempt's result).",
    )
    test.add_argument("name")
    test.add_argument(
        "--wait",
        type=common.number(0, 3600),
        default=30.0,
        metavar="SECONDS",
        help="how long to wait for the delivery (default 30; 0: do not wait)",
    )
    test.set_defaults(func=_cmd_test)

    deliveries = webhooks.add_parser(
        "deliveries", help="the delivery log (7 days): each event, its attempts and their results"
    )
    deliveries.add_argument("name", nargs="?", help="of this webhook only")
    deliveries.add_argument("--event", metavar="ID", help="of this event only")
    deliveries.add_argument(
        "--limit", type=common.whole(1, 1000), default=50, help="newest first (default 50)"
    )
    deliveries.add_argument("--json", action="store_true")
    deliveries.set_defaults(func=_cmd_deliveries)
