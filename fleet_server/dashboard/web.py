"""The plumbing every dashboard handler shares: what a request carries (:class:`Req`, read and
bounded before a handler runs), who is logged in (:func:`person`), and the answers (a page, a
redirect, a refusal), all with the dashboard's headers (:data:`HEADERS`, added by the app's
middleware to every answer).

Handlers are plain functions ``(Deps, Req) -> Response`` that run in a worker thread (they
query the database and call the admin API, both blocking).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from html import escape
from typing import Any
from urllib.parse import quote

import grpc
from starlette.responses import HTMLResponse, RedirectResponse, Response

from fleet_server.context import ServerContext
from fleet_server.dashboard import pages
from fleet_server.dashboard.guards import BadInputError, same_origin
from fleet_server.dashboard.limits import LoginLimiter
from fleet_server.dashboard.sessions import Person, Sessions

__all__ = [
    "COOKIE",
    "CSP",
    "HEADERS",
    "Deps",
    "Handler",
    "Req",
    "View",
    "clear_cookie",
    "csrf_ok",
    "from_page",
    "login_redirect",
    "page",
    "person",
    "redirect",
    "refusal",
    "rpc_message",
    "session_cookie",
    "signed_in",
]

log = logging.getLogger(__name__)

# __Host-: the browser keeps it for this host only, Secure, Path=/ (no subdomain can set it).
COOKIE = "__Host-edgefleet_session"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = {
    "content-security-policy": CSP,
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    # The dashboard's own pages only (a device id in a URL stays here); "no-referrer" would
    # also make browsers send "Origin: null" with the forms.
    "referrer-policy": "same-origin",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
    "permissions-policy": "camera=(), microphone=(), geolocation=()",
    # Browsers honour it only over a certificate they trust: no lock-out before the fleet CA
    # is installed.
    "strict-transport-security": "max-age=31536000",
    "cache-control": "no-store",
}


@dataclass
class Deps:
    """What the handlers use: the server's stores (reads), the admin API (actions, with the
    person's token), the sessions, the wrong-token limits and the metrics text."""

    ctx: ServerContext
    call: Callable[[str, Any, str], Any]  # (method, request, the person's token)
    sessions: Sessions
    limiter: LoginLimiter
    metrics: Callable[[], str] | None


@dataclass
class Req:
    """One request, read: path parameters, the first value of each query and form field."""

    method: str
    path: str
    client: str
    host: str
    params: dict[str, str] = field(default_factory=dict)
    query: dict[str, str] = field(default_factory=dict)
    form: dict[str, str] = field(default_factory=dict)
    cookies: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names
    full_path: str = "/"  # with the query, for a login's return
    notice: str = ""  # a message for this page, shown once (set by signed_in)


Handler = Callable[[Deps, Req], Response]
View = Callable[[Deps, Req, Person], Response]


def person(deps: Deps, req: Req) -> Person | None:
    """Who the session cookie stands for, if the token behind it still counts (not revoked,
    not a disabled bootstrap token): checked at every request, as the admin API does."""
    session = req.cookies.get(COOKIE, "")
    if not session:
        return None
    found = deps.sessions.get(session)
    if found is None:
        return None
    csrf, token = found
    identity = deps.ctx.admins.authenticate(token)
    if identity is None:
        deps.sessions.drop(session)
        return None
    return Person(identity.name, identity.role, session, csrf, token)


def csrf_ok(who: Person, req: Req) -> bool:
    return hmac.compare_digest(req.form.get("csrf", "").encode(), who.csrf.encode())


def session_cookie(session: str) -> str:
    return f"{COOKIE}={session}; HttpOnly; Secure; SameSite=Strict; Path=/"


def clear_cookie() -> str:
    return f"{COOKIE}=; Max-Age=0; HttpOnly; Secure; SameSite=Strict; Path=/"


def page(
    req: Req,
    who: Person | None,
    title: str,
    main: str,
    *,
    status: int = 200,
    refresh: bool = True,
) -> Response:
    """A whole page, or with ``?partial=1`` its live part alone (the refresh script's)."""
    if req.query.get("partial") and refresh:
        return HTMLResponse(main, status)
    return HTMLResponse(
        pages.layout(title, main, active=req.path, who=who, refresh=refresh, notice=req.notice),
        status,
    )


def redirect(location: str, cookie: str = "") -> Response:
    response = RedirectResponse(location, 303)
    if cookie:
        response.headers.append("set-cookie", cookie)
    return response


def refusal(req: Req, who: Person | None, status: int, title: str, text: str) -> Response:
    """A page that says what was refused and why, in one line."""
    main = f"<h1>{escape(title)}</h1>" + pages.refused(text)
    return page(req, who, title, main, status=status, refresh=False)


_STATUS_OF = {
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
}


def rpc_message(exc: grpc.RpcError) -> tuple[int, str]:
    """The HTTP status and the admin API's own words for a refused call."""
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else ""
    status = _STATUS_OF.get(code, 503) if isinstance(code, grpc.StatusCode) else 503
    if status == 503:
        log.warning("dashboard: the admin API failed: %s %s", code, details)
        return status, f"the admin API did not answer ({details or code}); try again"
    return status, str(details or code)


def login_redirect(req: Req) -> Response:
    return redirect("/login?next=" + quote(req.full_path, safe="/"))


def from_page(req: Req) -> bool:
    """Whether a POST comes from the dashboard's own pages (see guards.same_origin)."""
    return same_origin(req.host, req.headers.get("origin"), req.headers.get("sec-fetch-site"))


def signed_in(view: View) -> Handler:
    """``view`` for a logged-in person: others go to the login page; a POST needs the
    session's CSRF token (and to come from the dashboard's pages); a bad query value is a 400
    and a page about nothing a 404, each with one line."""

    def handler(deps: Deps, req: Req) -> Response:
        who = person(deps, req)
        if who is None:
            return login_redirect(req) if req.method == "GET" else redirect("/login")
        if req.method == "POST" and not (from_page(req) and csrf_ok(who, req)):
            return refusal(req, who, 403, "Refused", "The form expired; reload the page and "
                           "try again.")  # fmt: skip
        if req.method == "GET" and not req.query.get("partial"):
            req.notice = deps.sessions.take_flash(who.session)
        try:
            return view(deps, req, who)
        except BadInputError as exc:
            return refusal(req, who, 400, "Bad request", str(exc))
        except pages.PageNotFoundError as exc:
            return refusal(req, who, 404, "Not found", str(exc))

    return handler
