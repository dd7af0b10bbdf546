"""The dashboard's action forms (each one a confirmation: nothing changes before its button is
pressed, and each carries the session's CSRF token) and the pages that answer them. Every value
is escaped here, as in :mod:`fleet_server.dashboard.pages`."""

from __future__ import annotations

import time
from collections.abc import Mapping
from html import escape
from urllib.parse import quote

from fleet_server.admins.roles import Role
from fleet_server.dashboard.sessions import Person
from protos import admin_pb2 as pb

__all__ = [
    "admin_revoke",
    "admin_role",
    "admins",
    "rollout_form",
    "token_shown",
    "version_confirm",
]

_ROLES = tuple(str(r) for r in Role)


def _csrf(csrf: str) -> str:
    return f'<input type=hidden name=csrf value="{escape(csrf)}">'


def _problem(error: str) -> str:
    return f"<p class=refused role=alert>{escape(error)}</p>" if error else ""


def _field(label: str, name: str, value: str, hint: str, *, required: bool = False) -> str:
    need = " required" if required else ""
    return (
        f'<label>{escape(label)} <input name={name} value="{escape(value)}"{need} '
        f"maxlength=256></label><p class=hint>{escape(hint)}</p>"
    )


def rollout_form(
    csrf: str, versions: list[tuple[str, str]], values: Mapping[str, str], error: str = ""
) -> str:
    """A new rollout: model, version, selector, waves (the rest as the CLI's defaults)."""
    known = "".join(f'<option value="{escape(m)}">' for m in dict.fromkeys(m for m, _ in versions))
    known_versions = "".join(f'<option value="{escape(v)}">' for v in
                             dict.fromkeys(v for _, v in versions))  # fmt: skip
    return (
        "<h1>New rollout</h1>" + _problem(error) + "<form class=action method=post "
        'action="/rollouts/new">' + _csrf(csrf)
        + f'<label>Model <input name=model list=models value="{escape(values.get("model", ""))}"'
        " required maxlength=128></label>"
        + f'<label>Version <input name=version list=versions value="'
        f'{escape(values.get("version", ""))}" required maxlength=128></label>'
        + _field("Selector", "selector", values.get("selector", ""),
                 "Labels a device must carry, as site=lab, tier=beta; empty: every device.")
        + _field("Waves", "waves", values.get("waves", ""),
                 "Cumulative targets, as 1, 10%, 50%, 100%; empty: those four.")
        + f"<datalist id=models>{known}</datalist><datalist id=versions>{known_versions}"
        "</datalist><p>Devices that match are sent the version wave by wave; a wave starts "
        "once enough of the previous one installed it, and failures pause the rollout.</p>"
        "<button class=danger>Create the rollout</button> <a href=/rollouts>Cancel</a></form>"
        "<p class=hint>Recorded in the audit log, as from the command line.</p>"
    )  # fmt: skip


_VERSION_ACTIONS = {
    "deploy": (
        "Deploy",
        "Every device is told to run it, at once (no waves); a running rollout of the model "
        "is not replaced (pause or abort it first).",
    ),
    "delete": (
        "Delete",
        "Its files and manifests go; the server refuses if the version is deployed, in a "
        "rollout in effect, or served by devices. A deleted version is never reused.",
    ),
}


def version_confirm(action: str, model: str, version: str, csrf: str, error: str = "") -> str:
    """The confirmation of deploying or deleting a version."""
    verb, consequence = _VERSION_ACTIONS[action]
    target = f"/models/{quote(model, safe='')}/{quote(version, safe='')}/{action}"
    return (
        f"<h1>{verb} {escape(model)} {escape(version)}?</h1>" + _problem(error)
        + f'<form class=action method=post action="{escape(target)}">' + _csrf(csrf)
        + f"<p>{escape(consequence)}</p><button class=danger>Yes, {action} "
        f"{escape(model)} {escape(version)}</button> <a href=/models>Cancel</a></form>"
        "<p class=hint>Recorded in the audit log, as from the command line.</p>"
    )  # fmt: skip


def _when(unix: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(unix)) if unix else "never"


def admins(listed: pb.ListAdminsResponse, who: Person, error: str = "",
           values: Mapping[str, str] | None = None) -> str:  # fmt: skip
    """The admins (from ListAdmins), the form to add one, and links to change or revoke."""
    rows = []
    for a in listed.admins:
        name = quote(a.name, safe="")
        links = (
            f'<a class=button href="/admins/{name}/role">Set role</a> '
            f'<a class=button href="/admins/{name}/revoke">Revoke</a>'
            if not a.revoked_unix
            else ""
        )
        state = f"revoked {_when(a.revoked_unix)}" if a.revoked_unix else "active"
        rows.append(
            f"<tr><td>{escape(a.name)}</td><td>{escape(a.role)}</td><td>{escape(state)}</td>"
            f"<td>{escape(a.created_by)}, {_when(a.created_unix)}</td>"
            f"<td>{_when(a.last_used_unix)}</td><td>{links}</td></tr>"
        )
    bootstrap = (
        "The bootstrap token works now" + (
            f" (re-enabled until {_when(listed.bootstrap_until_unix)})"
            if listed.bootstrap_until_unix else " (no admin has the admin role yet)"
        ) if listed.bootstrap_enabled else "The bootstrap token is disabled"
    )  # fmt: skip
    values = values or {}
    chosen = values.get("role", "viewer")
    options = "".join(f"<option{' selected' if r == chosen else ''}>{r}</option>" for r in _ROLES)
    return (
        f"<h1>Admins</h1><p>{escape(bootstrap)}.</p><div class=scroll><table><tr><th>name"
        "<th>role<th>state<th>added by<th>last used<th></tr>"
        + ("".join(rows) or "<tr><td colspan=6>no named admin yet</td></tr>")
        + "</table></div><h2>Add an admin</h2>" + _problem(error)
        + '<form class=action method=post action="/admins/add">' + _csrf(who.csrf)
        + f'<label>Name <input name=name value="{escape(values.get("name", ""))}" required '
        "maxlength=64></label>"
        f"<label>Role <select name=role>{options}</select></label>"
        "<p>viewer reads; operator also pushes, deploys and runs rollouts; admin also manages "
        "admins, routing, webhooks and revocations. The new token is shown once.</p>"
        "<button class=danger>Add the admin</button></form>"
    )  # fmt: skip


def admin_role(name: str, current: str, csrf: str, error: str = "") -> str:
    options = "".join(f"<option{' selected' if r == current else ''}>{r}</option>" for r in _ROLES)
    return (
        f"<h1>Set the role of {escape(name)}</h1>" + _problem(error)
        + f'<form class=action method=post action="/admins/{quote(name, safe="")}/role">'
        + _csrf(csrf) + f"<label>Role <select name=role>{options}</select></label>"
        "<p>It applies to their next call (other replicas within 5 s); the last active admin "
        "keeps the admin role.</p><button class=danger>Set the role</button> "
        "<a href=/admins>Cancel</a></form>"
    )  # fmt: skip


def admin_revoke(name: str, csrf: str, error: str = "") -> str:
    return (
        f"<h1>Revoke {escape(name)}?</h1>" + _problem(error)
        + f'<form class=action method=post action="/admins/{quote(name, safe="")}/revoke">'
        + _csrf(csrf) + "<p>Their token stops working at once (other replicas within 5 s), "
        "their dashboard sessions end, and the name is never given to anyone else.</p>"
        f"<button class=danger>Yes, revoke {escape(name)}</button> <a href=/admins>Cancel</a>"
        "</form>"
    )  # fmt: skip


def token_shown(name: str, role: str, token: str) -> str:
    """The new admin's token, once: not in a URL, not in the log, not stored (the server keeps
    its hash)."""
    return (
        f"<h1>{escape(name)} ({escape(role)}) added</h1><p>Their token, shown this once; hand it "
        "over privately (they log in with it, or give it to the CLI with "
        "<code>--token-file</code>):</p>"
        f"<p class=token data-token>{escape(token)}</p><p><a href=/admins>Back to the admins</a>"
        "</p>"
    )
