"""The dashboard's pages: each returns (title, main HTML). Everything from outside is escaped
here, by ``html.escape`` at each value (pages are composed in Python, not in templates: one
rule, applied where the value meets the markup, and no template engine on the server)."""

from __future__ import annotations

import time
from html import escape
from urllib.parse import quote

from fleet_server.api.admin import wire
from fleet_server.context import ServerContext
from fleet_server.dashboard.queries import (
    HistoryPoint,
    device_history,
    device_page,
    fleet_history,
    fleet_summary,
    history_window,
)
from fleet_server.dashboard.sessions import Person
from fleet_server.errors import NotFoundError
from fleet_server.registry.store import DeviceRow
from fleet_server.rollouts.desired import explain
from fleet_server.rollouts.states import LIVE, RolloutState
from fleet_server.rollouts.store import RolloutRow, WaveRow
from fleet_server.routing.budgets import BudgetRow, budget_use
from fleet_server.routing.costs import CostRow, summarize
from fleet_server.signing.expiry import KeyStatus
from fleet_server.telemetry.history import HISTORY_BUCKET_S
from protos import telemetry_pb2

__all__ = [
    "ROLLOUT_ACTIONS",
    "PageNotFoundError",
    "confirm",
    "costs",
    "device",
    "empty",
    "escape",
    "fleet",
    "keys",
    "layout",
    "login",
    "models",
    "refused",
    "rollouts",
]


class PageNotFoundError(Exception):
    """A page about something that does not exist."""


# The rollout actions of the web and the admin method each calls.
ROLLOUT_ACTIONS = {"pause": "PauseRollout", "resume": "ResumeRollout", "abort": "AbortRollout"}


NAV = (
    ("/fleet", "Fleet", ""),
    ("/rollouts", "Rollouts", ""),
    ("/models", "Models", ""),
    ("/costs", "Costs", ""),
    ("/keys", "Keys", ""),
    ("/admins", "Admins", "ListAdmins"),  # shown to those who may list them
)


def layout(
    title: str,
    main: str,
    *,
    active: str = "",
    who: Person | None = None,
    refresh: bool = True,
    notice: str = "",
) -> str:
    """The page around ``main``: the header (the person, their role, logging out with the
    session's CSRF token), a notice shown once, and the live part the script refreshes (none
    on a form or an answer to one: ``refresh=False``)."""
    links = "".join(
        f'<a href="{href}"{" class=on" if active.startswith(href) else ""}>{name}</a>'
        for href, name, method in NAV
        if not method or (who is not None and who.may(method))
    )
    account = ""
    if who is not None:
        account = (
            f"<span class=who>{escape(who.name)} ({escape(str(who.role))})</span>"
            '<form method=post action="/logout">'
            f'<input type=hidden name=csrf value="{escape(who.csrf)}"><button>Log out</button>'
            "</form>"
        )
    shown = f"<p class=notice role=status>{escape(notice)}</p>" if notice else ""
    live = " data-refresh=5" if refresh else ""
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)} · EdgeFleet</title>"
        '<link rel=stylesheet href="/static/app.css"><script src="/static/app.js" defer></script>'
        f"</head><body><header><b>EdgeFleet</b><nav>{links}</nav>{account}</header>"
        f"<main>{shown}<div{live}>{main}</div></main></body></html>"
    )


def login(error: str, target: str) -> str:
    """The login form; ``target`` (checked by the caller: a local path) is where it goes on."""
    problem = f"<p class=bad role=alert>{escape(error)}</p>" if error else ""
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width, initial-scale=1">'
        '<title>Log in · EdgeFleet</title><link rel=stylesheet href="/static/app.css"></head>'
        "<body><main class=login><h1>EdgeFleet</h1>"
        f"{problem}<form method=post action=/login>"
        f'<input type=hidden name=next value="{escape(target)}">'
        "<label>Admin token <input type=password name=token autocomplete=current-password "
        "required autofocus></label><button>Log in</button></form>"
        "<p class=hint>Your token, from <code>edgefleet admins add</code>; before any admin "
        "exists, the server's bootstrap token (<code>admin.token</code> in its data dir).</p>"
        "</main></body></html>"
    )


def refused(text: str) -> str:
    return f"<p class=refused role=alert>{escape(text)}</p>"


def empty(text: str) -> str:
    return f"<p class=empty>{escape(text)}</p>"


def _ago(ts: int | None) -> str:
    if not ts:
        return "never"
    seconds = int(time.time()) - int(ts)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{max(seconds, 0)} s ago"


def _labels(labels: dict[str, str], none: str = "-") -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(labels.items())) or none


def _bar(parts: list[tuple[str, float, str]]) -> str:
    """A horizontal stacked bar (inline SVG: the page's CSP allows no inline styles)."""
    total = sum(max(v, 0) for _, v, _ in parts) or 1
    x = 0.0
    rects = []
    for label, value, cls in parts:
        if value <= 0:
            continue
        width = value / total * 100
        rects.append(
            f'<rect class="{cls}" x="{x:.2f}" width="{width:.2f}" height="10">'
            f"<title>{escape(label)}: {value:g}</title></rect>"
        )
        x += width
    return (
        '<svg class=bar viewBox="0 0 100 10" preserveAspectRatio="none" role=img>'
        + "".join(rects)
        + "</svg>"
    )


CHART_HOURS = 24


def _chart(
    model: str,
    points: list[HistoryPoint],
    now: float,
    lines: tuple[str, str] = ("p95", "p50"),
) -> str:
    """Requests (local, errors, cloud) and latency (two lines, named by ``lines``: by default
    p95 and p50) per 5-minute bucket over the last CHART_HOURS, as inline SVG: bars above,
    lines below, scales written out. ``points`` are those of :func:`history_window`."""
    first, current = history_window(CHART_HOURS, now)
    slots = (current - first) // HISTORY_BUCKET_S + 1
    width, bar = 600.0, 600.0 / slots
    # Errors include requests refused before running (queue full): stack them on top.
    top = max((max(p.requests, p.errors) + p.cloud_requests for p in points), default=0) or 1
    slowest = max((p.p95_ms for p in points), default=0.0) or 1.0
    bars: list[str] = []
    p50: list[str] = []
    p95: list[str] = []
    for p in points:
        x = (p.bucket - first) // HISTORY_BUCKET_S * bar
        y = 74.0
        for value, cls in ((p.requests - p.errors, "cpu"), (p.errors, "bad"),
                           (p.cloud_requests, "cloud")):  # fmt: skip
            if value > 0:
                height = value / top * 58
                y -= height
                bars.append(f'<rect class={cls} x="{x:.1f}" y="{y:.1f}" width="{bar:.2f}" '
                            f'height="{height:.1f}"/>')  # fmt: skip
        for line, ms in ((p50, p.p50_ms), (p95, p.p95_ms)):
            line.append(f"{x + bar / 2:.1f},{158 - ms / slowest * 58:.1f}")
    errors = sum(p.errors for p in points)
    served = sum(p.requests + p.cloud_requests for p in points)
    summary = (
        f"{model}: {served} requests ({sum(p.cloud_requests for p in points)} cloud, "
        f"{errors} errors) in the last {CHART_HOURS} h; {lines[0]} up to {slowest:.2f} ms"
    )
    return (
        f'<figure class=chart data-points="{len(points)}" data-errors="{errors}">'
        f'<svg viewBox="0 0 {width:.0f} 176" role=img><title>{escape(summary)}</title>'
        f'<text x="0" y="10">{top} requests / 5 min</text>'
        '<line class=axis x1="0" y1="16" x2="600" y2="16"/>'
        + "".join(bars)
        + '<line class=axis x1="0" y1="74" x2="600" y2="74"/>'
        f'<text x="0" y="94">{slowest:.2f} ms</text>'
        '<line class=axis x1="0" y1="100" x2="600" y2="100"/>'
        f'<polyline class=p95 points="{" ".join(p95)}"/>'
        f'<polyline class=p50 points="{" ".join(p50)}"/>'
        '<line class=axis x1="0" y1="158" x2="600" y2="158"/>'
        f'<text x="0" y="172">{CHART_HOURS} h ago</text>'
        '<text x="600" y="172" text-anchor="end">now</text></svg>'
        f"<figcaption>{escape(summary)}. Bars: <span class=k-cpu>local</span>, "
        "<span class=k-bad>errors</span>, <span class=k-cloud>cloud</span>; lines: "
        f"<span class=k-p95>{escape(lines[0])}</span>, <span class=k-p50>{escape(lines[1])}"
        "</span>.</figcaption></figure>"
    )


# fleet -----------------------------------------------------------------------------------------


def fleet(ctx: ServerContext, search: str, offset: int, size: int) -> tuple[str, str]:
    """The fleet page: ``search`` in device ids and names, ``size`` devices from ``offset``
    (checked by the caller)."""
    s = fleet_summary(ctx.db)
    banner = _expiry_banner(ctx.key_status(time.time()))
    if not s.devices:
        return "Fleet", banner + empty(
            "No device has enrolled yet. Create a token with 'edgefleet tokens create' and "
            "start an agent with it."
        )
    states = " ".join(
        f'<span class="pill {escape(k)}">{escape(k)} {v}</span>'
        for k, v in sorted(s.states.items())
    )
    versions = (
        "".join(
            f"<tr><td>{escape(m)}</td><td>{escape(v)}</td><td class=n>{n}</td></tr>"
            for m, v, n in s.versions
        )
        or "<tr><td colspan=3>no model installed yet</td></tr>"
    )
    classes = "".join(
        f"<tr><td>{escape(k)}</td><td class=n>{n}</td></tr>" for k, n in sorted(s.classes.items())
    )
    page = device_page(ctx.db, offset=offset, search=search, limit=size)
    rows = (
        "".join(
            f'<tr><td><a href="/devices/{quote(r["device_id"])}">{escape(r["device_id"])}</a></td>'
            f'<td><span class="pill {escape(r["presence"])}">'
            f"{escape(r['presence'])}</span></td>"
            f"<td>{escape(r['hardware_class'])}</td>"
            f"<td>{escape(', '.join(r['models']) or '-')}</td>"
            f"<td>{escape(_labels(r['labels']))}</td>"
            f"<td>{_ago(r['last_seen'])}</td></tr>"
            for r in page.rows
        )
        or "<tr><td colspan=6>no device matches</td></tr>"
    )
    pager = []
    more = f"/fleet?q={quote(search)}&amp;size={size}&amp;offset="
    if page.offset > 0:
        pager.append(f'<a href="{more}{max(0, page.offset - size)}">previous</a>')
    if page.offset + size < page.total:
        pager.append(f'<a href="{more}{page.offset + size}">next</a>')
    shown = f"{page.offset + 1 if page.rows else 0}-{page.offset + len(page.rows)} of {page.total}"
    main = (
        "<h1>Fleet</h1>" + banner + "<section class=cards>"
        f"<div class=card><h2>Devices</h2><p class=big>{s.devices}</p>{states}"
        f"<p>{s.seen_recently} checked in within 10 min; {s.revoked} revoked</p></div>"
        f"<div class=card><h2>Accelerators</h2><p class=big>{s.edgetpu}</p>"
        f"<p>with an Edge TPU; {s.devices - s.edgetpu} CPU only</p>"
        f"{_bar([('Edge TPU', s.edgetpu, 'tpu'), ('CPU', s.devices - s.edgetpu, 'cpu')])}</div>"
        "<div class=card><h2>Hardware classes</h2><table>" + classes + "</table></div>"
        "<div class=card><h2>Model versions in use</h2><table><tr><th>model<th>version"
        "<th>devices</tr>" + versions + "</table></div></section>"
        "<h2>Devices</h2><form class=search method=get action=/fleet>"
        f'<input name=q value="{escape(search)}" placeholder="device id or name">'
        f"<button>Search</button></form><p>{shown} {' '.join(pager)}</p>"
        "<div class=scroll><table><tr><th>device<th>state<th>hardware<th>models<th>labels"
        f"<th>last seen</tr>{rows}</table></div>"
    )
    return "Fleet", main


def _model_row(m: telemetry_pb2.ModelTelemetry) -> str:
    split = _bar([("local", m.requests, "cpu"), ("cloud", m.cloud_requests, "cloud")])
    return (
        f"<tr><td>{escape(m.model_name)}</td>"
        f"<td>{escape(m.version or '-')}</td>"
        f"<td>{escape(m.backend)}</td>"
        f"<td>{escape(m.routing_policy or 'local')}</td>"
        f"<td class=n>{m.requests}</td><td class=n>{m.errors}</td>"
        f"<td class=n>{m.latency.p50_ms:.2f}</td>"
        f"<td class=n>{m.latency.p95_ms:.2f}</td>"
        f"<td>{split}{m.cloud_requests} cloud</td></tr>"
    )


def _variant_cells(ctx: ServerContext, row: DeviceRow, model_name: str, version: str) -> str:
    """The variant selection picks for this device (as `devices explain` says), two cells."""
    try:
        explained = explain(ctx.catalog, ctx.rollouts, row.device_id, row.capabilities, model_name,
                            version=version)  # fmt: skip
    except NotFoundError:
        explained = None  # a version the catalog no longer has
    if explained is None:
        return "<td>-</td><td></td>"
    chosen = explained.choice.variant
    kind = next((r.quantization for r in explained.rows if r.variant == chosen), "")
    name = f"{chosen} ({kind})" if chosen and kind and kind != chosen else chosen or "cloud"
    return f"<td data-variant>{escape(name)}</td><td>{escape(explained.choice.reason[:200])}</td>"


def device(ctx: ServerContext, device_id: str) -> tuple[str, str]:
    try:
        row = ctx.devices.get_device(device_id)
    except NotFoundError as exc:
        raise PageNotFoundError(f"No device {device_id!r}.") from exc
    info = wire.device_info(row)  # the same typed view the admin API gives
    caps = info.capabilities
    model_rows = "".join(_model_row(m) for m in info.last_telemetry.models) or (
        "<tr><td colspan=9>no telemetry yet</td></tr>"
    )
    installed = (
        "".join(
            f"<tr><td>{escape(m.model_name)}</td><td>{escape(m.version)}</td>"
            f"{_variant_cells(ctx, row, m.model_name, m.version)}<td>{escape(m.state)}</td>"
            f"<td>{escape(m.detail[:200])}</td><td>{_ago(m.updated_at)}</td></tr>"
            for m in row.models
        )
        or "<tr><td colspan=7>nothing assigned</td></tr>"
    )
    events = ctx.telemetry.device_events(device_id, limit=20)
    updates = (
        "".join(
            f"<tr><td>{_ago(e['at'])}</td><td>{escape(e['model_name'])} {escape(e['version'])}</td>"
            f"<td>{escape(e['state'])}</td><td>{escape(e['detail'][:200])}</td></tr>"
            for e in events
        )
        or "<tr><td colspan=4>no update events</td></tr>"
    )
    tpus = ", ".join(f"{t.device or '?'} ({t.state or '?'})" for t in caps.edgetpus)
    hardware = (
        f"{caps.arch or '?'}, {caps.cpu_cores} cores, "
        f"{caps.memory_bytes >> 20} MiB; runtime {caps.runtime or '?'}"
    )
    state = f"{row.presence(time.time())}; last seen {_ago(row.last_seen)}"
    now = time.time()
    history = device_history(ctx.db, device_id, hours=CHART_HOURS, now=now)
    charts = "".join(_chart(model, points, now) for model, points in sorted(history.items()))
    charts = charts or empty(
        f"No telemetry in the last {CHART_HOURS} hours (5-minute buckets appear once they end)."
    )
    main = (
        f"<h1>{escape(row.device_id)}</h1><section class=cards><div class=card><h2>Device</h2>"
        f"<p>{escape(hardware)}</p><p>Edge TPUs: {escape(tpus or 'none')}</p>"
        f"<p>labels: {escape(_labels(row.labels))}</p><p>{escape(state)}</p></div></section>"
        "<h2>Models it runs (latest telemetry)</h2><div class=scroll><table><tr><th>model"
        "<th>version<th>backend<th>policy<th>requests<th>errors<th>p50 ms<th>p95 ms"
        f"<th>local / cloud</tr>{model_rows}</table></div>"
        f"<h2>Last {CHART_HOURS} hours</h2>{charts}<h2>Assigned models</h2>"
        "<div class=scroll><table><tr><th>model<th>version<th>variant<th>why this variant"
        f"<th>state<th>detail<th>updated</tr>{installed}</table></div>"
        "<h2>Update history</h2><div class=scroll><table><tr>"
        f"<th>when<th>model<th>state<th>detail</tr>{updates}</table></div>"
    )
    return row.device_id, main


# rollouts --------------------------------------------------------------------------------------


def rollouts(ctx: ServerContext, who: Person) -> tuple[str, str]:
    """The rollouts, newest first, with the actions the person's role allows."""
    create = (
        '<p><a class=button href="/rollouts/new">New rollout</a></p>'
        if who.may("CreateRollout")
        else ""
    )
    listed = ctx.rollouts.list_rollouts()
    if not listed:
        return "Rollouts", "<h1>Rollouts</h1>" + create + empty(
            "No rollouts yet. Start one here or with 'edgefleet rollouts create MODEL VERSION'."
        )
    blocks = [_rollout(r, who) for r in listed[:50]]
    return "Rollouts", "<h1>Rollouts</h1>" + create + "".join(blocks)


def _wave(r: RolloutRow, w: WaveRow) -> str:
    current = w.index == r.current_wave and r.state in LIVE
    c = w.counts
    progress = _bar(
        [
            ("installed", c.installed, "ok"),
            ("updating", c.assigned, "busy"),
            ("failed", c.failed, "bad"),
            ("waiting", c.waiting, "idle"),
        ]
    )
    return (
        f"<tr><td>{w.index + 1}{' *' if current else ''}</td><td class=n>{w.target}</td>"
        f"<td class=n>{c.devices}</td><td>{progress}</td><td class=n>{c.installed}</td>"
        f"<td class=n>{c.failed}</td><td class=n>{w.unhealthy}</td></tr>"
    )


def _rollout(r: RolloutRow, who: Person) -> str:
    actions = {
        RolloutState.RUNNING: ["pause", "abort"],
        RolloutState.PAUSED: ["resume", "abort"],
    }.get(r.state, [])
    actions = [a for a in actions if who.may(ROLLOUT_ACTIONS[a])]
    buttons = " ".join(
        f'<a class=button href="/rollouts/{r.rollout_id}/{a}">{a.title()}</a>' for a in actions
    )
    gate = r.health_gate
    gate_text = (
        "off"
        if gate.disabled
        else f"errors <= {gate.max_error_rate:.1%}, p95 <= {gate.max_latency_ratio:g}x, "
        f"{gate.min_requests} requests, {gate.window_s} s"
        + (f", bake {gate.bake_s} s" if gate.bake_s else "")
    )
    failures = "".join(
        f"<li>{escape(f.device_id)} (wave {f.wave + 1}): {escape(f.detail or 'failed')}</li>"
        for f in r.failures[:5]
    )
    rules = (
        f"selector {_labels(r.selector, 'every device')}; success {r.success_threshold:.0%}, "
        f"failure {r.failure_threshold:.0%}; health gate {gate_text}"
    )
    waves = "".join(_wave(r, w) for w in r.wave_status)
    state = escape(r.state)
    return (
        f'<article class="rollout {state}"><h2>Rollout {r.rollout_id}: '
        f'{escape(r.model_name)} {escape(r.version)} <span class="pill {state}">{state}</span>'
        f"</h2><p>{escape(r.reason or '')}</p><p>{escape(rules)}</p><table><tr><th>wave"
        "<th>target<th>devices<th>progress<th>installed<th>failed<th>unhealthy</tr>"
        f"{waves}</table>{'<ul>' + failures + '</ul>' if failures else ''}<p>{buttons}</p>"
        "</article>"
    )


def confirm(ctx: ServerContext, rollout_id: int, action: str, csrf: str) -> tuple[str, str]:
    """The confirmation form of a rollout action (``pause``, ``resume``, ``abort``).

    Raises:
        PageNotFoundError: no such rollout or action.
    """
    if action not in ROLLOUT_ACTIONS:
        raise PageNotFoundError("No such rollout action.")
    try:
        r = ctx.rollouts.get(rollout_id)
    except NotFoundError as exc:
        raise PageNotFoundError(str(exc)) from exc
    consequence = {
        "pause": "No device will newly be told to update; those already told go on.",
        "resume": "Waves go on; failures seen so far are accepted.",
        "abort": "Devices that have not installed it go back to the previous version.",
    }[action]
    main = (
        f"<h1>{action.title()} rollout {r.rollout_id}?</h1>"
        f"<p>{escape(r.model_name)} {escape(r.version)}, now {escape(r.state)}. {consequence}</p>"
        f'<form method=post action="/rollouts/{r.rollout_id}/{action}">'
        f'<input type=hidden name=csrf value="{escape(csrf)}">'
        f"<button class=danger>Yes, {action} rollout {r.rollout_id}</button> "
        '<a href="/rollouts">Cancel</a></form><p class=hint>Recorded in the audit log, as from '
        "the command line.</p>"
    )
    return f"{action.title()} rollout {r.rollout_id}", main


# models and costs ------------------------------------------------------------------------------


def _expiry_banner(status: KeyStatus) -> str:
    """One line on the fleet page while anything is due (or root keys are on the server)."""
    parts = []
    if status.due:
        parts.append(f"{len(status.due)} key(s) or certificate(s) expire within "
                     f"{status.warn_days} days or have expired")  # fmt: skip
    if status.root_key_folders:
        parts.append("root keys are on the server")
    if not parts:
        return ""
    return f'<p class="warn banner">{escape("; ".join(parts))}: <a href="/keys">see Keys</a></p>'


def keys(ctx: ServerContext) -> tuple[str, str]:
    """What expires when: the same status as 'edgefleet keys status'."""
    status = ctx.key_status(time.time())
    now = status.checked_unix
    rows = []
    for item in sorted(status.items, key=lambda i: i.expires_unix):
        days = item.days_left(now)
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(item.expires_unix))
        left = f"expired {-days} day(s) ago" if item.expires_unix <= now else f"{days} day(s)"
        flag = "expired" if item.expires_unix <= now else ("due" if item.due else "ok")
        rows.append(
            f"<tr class={flag}><td>{escape(str(item.kind))}</td><td>{escape(item.name)}</td>"
            f"<td>{when}</td><td class=n>{escape(left)}</td>"
            f'<td><span class="pill {flag}">{flag}</span></td>'
            f"<td>{escape(item.advice) if item.due else ''}</td></tr>"
        )
    roots = (
        '<p class="warn banner">Root keys are on the server, in '
        + escape(", ".join(status.root_key_folders))
        + ": move them off the machine (they sign key lists and rollbacks).</p>"
        if status.root_key_folders
        else "<p>No root key is on the server.</p>"
    )
    return "Keys", (
        f"<h1>Keys and certificates</h1>{roots}"
        f"<p>Warnings start {status.warn_days} days before an expiry; "
        f"{status.deployed_manifests} manifest(s) in use (the nearest expiry is shown).</p>"
        "<div class=scroll><table><tr><th>what<th>name<th>expires<th>left<th>state<th>to do"
        "</tr>" + "".join(rows) + "</table></div>"
    )


def models(ctx: ServerContext, who: Person) -> tuple[str, str]:
    """The catalog's versions and variants (with deploy and delete for those who may), and
    the fleet's telemetry per model."""
    rows = ctx.catalog.list_models()
    if not rows:
        return "Models", empty("No models yet. Push one with 'edgefleet models push'.")
    deploy, delete = who.may("Deploy"), who.may("DeleteModelVersion")
    body = []
    seen: set[tuple[str, str]] = set()
    for m in reversed(rows):
        profile = wire.model_info(m, {}).profile
        latency = dict(profile.latency_ms) | dict(profile.fleet_latency_ms)
        measured = ", ".join(f"{k}: {v:.3f} ms" for k, v in sorted(latency.items())) or "-"
        accuracy = f"{profile.accuracy:.2%}" if profile.HasField("accuracy") else "-"
        links = ""
        if (m.model_name, m.version) not in seen:  # once per version, on its first variant
            seen.add((m.model_name, m.version))
            base = f"/models/{quote(m.model_name, safe='')}/{quote(m.version, safe='')}"
            new = f"/rollouts/new?model={quote(m.model_name)}&amp;version={quote(m.version)}"
            links = " ".join(
                [f'<a class=button href="{new}">Roll out</a>'] * who.may("CreateRollout")
                + [f'<a class=button href="{base}/deploy">Deploy</a>'] * deploy
                + [f'<a class=button href="{base}/delete">Delete</a>'] * delete
            )
        body.append(
            f"<tr><td>{escape(m.model_name)}</td><td>{escape(m.version)}</td>"
            f"<td>{escape(m.variant)}</td><td>{escape(m.quantization)}</td>"
            f"<td class=n>{m.size:,}</td><td>{escape(measured)}</td>"
            f"<td class=n>{accuracy}</td><td>{links}</td></tr>"
        )
    now = time.time()
    history = fleet_history(ctx.db, hours=CHART_HOURS, now=now)
    charts = "".join(
        _chart(model, points, now, lines=("worst device's p95", "typical device's p95"))
        for model, points in sorted(history.items())
    ) or empty(f"No telemetry in the last {CHART_HOURS} hours.")
    return "Models", (
        "<h1>Models</h1><div class=scroll><table><tr><th>model<th>version<th>variant<th>kind"
        "<th>bytes<th>latency by hardware class<th>accuracy<th></tr>"
        + "".join(body)
        + "</table></div>"
        f"<h2>Over the fleet, last {CHART_HOURS} hours</h2>" + charts
    )


def _cost_row(r: CostRow) -> str:
    local_only = "-" if r.local_only_per_million is None else f"{r.local_only_per_million:.4f}"
    bar = _bar(
        [
            ("as served", r.per_million, "ok"),
            ("cloud only", r.cloud_only_per_million - r.per_million, "idle"),
        ]
    )
    return (
        f"<tr><td>{escape(r.model_name)}</td><td>{escape(r.group or '*')}</td>"
        f"<td>{escape(r.policy)}</td><td class=n>{r.served}</td>"
        f"<td class=n>{r.cloud_share:.1%}</td>"
        f"<td class=n data-usd-per-million>{r.per_million:.4f}</td>"
        f"<td class=n>{local_only}</td><td class=n>{r.cloud_only_per_million:.2f}</td>"
        f"<td class=n>{r.saving_vs_cloud:.1%}</td><td>{bar}</td></tr>"
    )


def _budget_row(r: BudgetRow) -> str:
    use = r.use
    if r.per_device_usd is None or use is None:
        budget, shown, bar = "none", "-", ""
    else:
        budget = f"{r.per_device_usd:g}"
        shown = f"{use:.1%}"
        bar = _bar([("spent", min(use, 1.0), "busy" if use < 1 else "bad"),
                    ("left", max(0.0, 1 - use), "idle")])  # fmt: skip
    return (
        f"<tr><td>{escape(r.model_name)}</td><td>{escape(r.policy)}</td>"
        f"<td>{escape(_labels(r.selector, 'all devices'))}</td><td class=n>{budget}</td>"
        f"<td class=n>{r.devices}</td><td class=n>{r.cloud_requests}</td>"
        f"<td class=n data-spent-usd>{r.spent_usd:.4f}</td><td class=n data-budget-use>{shown}"
        f"</td><td class=n>{r.exhausted}</td><td>{bar}</td></tr>"
    )


def _budgets(ctx: ServerContext) -> str:
    rows = budget_use(ctx.db, ctx.routing)
    if not rows:
        return "<h2>Cloud budget today</h2>" + empty("No device has called the cloud today (UTC).")
    return (
        "<h2>Cloud budget today</h2><p>Cloud spend since 00:00 UTC against the routing "
        "policy's daily budget per device (<code>routing set --max-spend-per-day</code>); a "
        "device that reaches its budget answers locally until the next day.</p>"
        "<div class=scroll><table><tr><th>model<th>policy<th>devices it applies to"
        "<th>USD/device/day<th>devices<th>cloud requests<th>spent USD<th>budget used"
        "<th>at budget<th></tr>" + "".join(_budget_row(r) for r in rows) + "</table></div>"
    )


def costs(ctx: ServerContext, by: str) -> tuple[str, str]:
    """Costs per model (and per the value of the label ``by``, if given)."""
    prices = ctx.routing.prices()
    rows = summarize(ctx.routing.usage(by, ""), prices)
    form = (
        '<form class=search method=get action=/costs><input name=by placeholder="group by label" '
        f'value="{escape(by)}"><button>Group</button></form>'
    )
    if not rows:
        return "Costs", "<h1>Costs</h1>" + form + empty(
            "No inference reported yet: devices report requests in their telemetry."
        )
    table = "".join(_cost_row(r) for r in rows)
    return "Costs", (
        "<h1>Costs</h1>" + form + "<p>USD per million requests, from device telemetry; prices: "
        f"cloud {prices.cloud_per_request:g} USD/request, local {prices.device_power_w:g} W at "
        f"{prices.energy_per_kwh:g} USD/kWh.</p><div class=scroll><table><tr><th>model<th>group"
        "<th>policy<th>requests<th>cloud<th>as served<th>local only<th>cloud only<th>saved"
        "<th>vs cloud only</tr>" + table + "</table></div>" + _budgets(ctx)
    )
