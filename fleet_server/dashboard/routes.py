"""The dashboard's reading pages, its login and logout, its assets and ``/metrics``. The pages
read the server's stores directly (aggregated in SQL: fast with 10,000 devices); the admins page
asks the admin API, with the person's token, so that its refusal is the API's own."""

from __future__ import annotations

import logging
import time

import grpc
from starlette.responses import HTMLResponse, PlainTextResponse, Response

from fleet_server.dashboard import forms, pages
from fleet_server.dashboard.assets import CSS, JS
from fleet_server.dashboard.guards import (
    MAX_OFFSET,
    PAGE_SIZES,
    local_target,
    query_choice,
    query_int,
    query_text,
)
from fleet_server.dashboard.sessions import Person
from fleet_server.dashboard.web import (
    Deps,
    Req,
    clear_cookie,
    from_page,
    page,
    redirect,
    refusal,
    rpc_message,
    session_cookie,
    signed_in,
)
from protos import admin_pb2 as pb

__all__ = [
    "admins",
    "costs",
    "device",
    "fleet",
    "home",
    "keys",
    "login",
    "login_form",
    "logout",
    "metrics",
    "models",
    "rollouts",
    "script",
    "stylesheet",
]

log = logging.getLogger(__name__)

_MAX_TOKEN = 512  # far longer than any admin token (43 characters)
_UNAUTHORIZED = "an admin token is needed: Authorization: Bearer TOKEN (any role)\n"


def stylesheet(deps: Deps, req: Req) -> Response:
    del deps, req
    return Response(CSS, media_type="text/css; charset=utf-8",
                    headers={"cache-control": "no-cache"})  # fmt: skip


def script(deps: Deps, req: Req) -> Response:
    del deps, req
    return Response(JS, media_type="text/javascript; charset=utf-8",
                    headers={"cache-control": "no-cache"})  # fmt: skip


# logging in and out --------------------------------------------------------------------------


def login_form(deps: Deps, req: Req) -> Response:
    del deps
    return HTMLResponse(pages.login("", local_target(req.query.get("next"))))


def _wrong_token(deps: Deps, req: Req) -> None:
    line = deps.limiter.failed(req.client, time.time())
    if line is not None:
        log.warning("dashboard: %s", line)


def login(deps: Deps, req: Req) -> Response:
    """Check the token (within the wrong-token limits), open a session, go on to ``next`` if
    it is a local path (else to ``/``)."""
    target = local_target(req.form.get("next"))
    if not from_page(req):
        return HTMLResponse(pages.login("Log in from the dashboard's own page.", target), 403)
    wait = deps.limiter.retry_after(req.client, time.time())
    if wait:
        text = f"Too many wrong tokens; try again in {wait} s."
        return HTMLResponse(pages.login(text, target), 429, headers={"retry-after": str(wait)})
    given = req.form.get("token", "").strip()
    identity = deps.ctx.admins.authenticate(given) if len(given) <= _MAX_TOKEN else None
    if identity is None:
        _wrong_token(deps, req)
        text = "That is not an admin token that works here (wrong, revoked, or a disabled " \
            "bootstrap token)."  # fmt: skip
        return HTMLResponse(pages.login(text, target), 401)
    session, _ = deps.sessions.create(given)
    log.info("dashboard login of %s from %s", identity.name, req.client)
    return redirect(target, session_cookie(session))


def _logout(deps: Deps, req: Req, who: Person) -> Response:
    del req
    deps.sessions.drop(who.session)
    return redirect("/login", clear_cookie())


logout = signed_in(_logout)


# metrics -------------------------------------------------------------------------------------


def metrics(deps: Deps, req: Req) -> Response:
    """Prometheus text for a bearer admin token (any role), within the wrong-token limits."""
    if deps.metrics is None:
        return PlainTextResponse("no metrics here\n", 404)
    wait = deps.limiter.retry_after(req.client, time.time())
    if wait:
        return PlainTextResponse(f"too many wrong tokens; retry in {wait} s\n", 429,
                                 headers={"retry-after": str(wait)})  # fmt: skip
    scheme, _, token = req.headers.get("authorization", "").partition(" ")
    token = token.strip()
    identity = None
    if scheme.lower() == "bearer" and 0 < len(token) <= _MAX_TOKEN:
        identity = deps.ctx.admins.authenticate(token)
    if identity is None:
        _wrong_token(deps, req)
        challenge = {"www-authenticate": 'Bearer realm="edgefleet"'}
        return PlainTextResponse(_UNAUTHORIZED, 401, headers=challenge)
    return Response(deps.metrics(), media_type="text/plain; version=0.0.4; charset=utf-8")


# pages ---------------------------------------------------------------------------------------


def _home(deps: Deps, req: Req, who: Person) -> Response:
    del deps, req, who
    return redirect("/fleet")


def _fleet(deps: Deps, req: Req, who: Person) -> Response:
    search = query_text(req.query, "q", 64)
    offset = query_int(req.query, "offset", 0, 0, MAX_OFFSET)
    size = query_choice(req.query, "size", PAGE_SIZES, 50)
    return page(req, who, *pages.fleet(deps.ctx, search, offset, size))


def _device(deps: Deps, req: Req, who: Person) -> Response:
    return page(req, who, *pages.device(deps.ctx, req.params["device_id"]))


def _rollouts(deps: Deps, req: Req, who: Person) -> Response:
    return page(req, who, *pages.rollouts(deps.ctx, who))


def _models(deps: Deps, req: Req, who: Person) -> Response:
    return page(req, who, *pages.models(deps.ctx, who))


def _costs(deps: Deps, req: Req, who: Person) -> Response:
    return page(req, who, *pages.costs(deps.ctx, query_text(req.query, "by", 64)))


def _keys(deps: Deps, req: Req, who: Person) -> Response:
    return page(req, who, *pages.keys(deps.ctx))


def _admins(deps: Deps, req: Req, who: Person) -> Response:
    try:
        listed = deps.call("ListAdmins", pb.ListAdminsRequest(), who.token)
    except grpc.RpcError as exc:
        status, text = rpc_message(exc)
        return refusal(req, who, status, "Admins", f"Listing the admins was refused: {text}")
    return page(req, who, "Admins", forms.admins(listed, who), refresh=False)


home = signed_in(_home)
fleet = signed_in(_fleet)
device = signed_in(_device)
rollouts = signed_in(_rollouts)
models = signed_in(_models)
costs = signed_in(_costs)
keys = signed_in(_keys)
admins = signed_in(_admins)
