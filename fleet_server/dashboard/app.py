"""The dashboard as a Starlette app: its routes, a request read with bounds before any handler
runs (a form body of at most 16 KiB, within 10 s), handlers run in worker threads, a page that
fails on the server answered 500 with one line (the log has the traceback), and the dashboard's
headers on every answer (:data:`fleet_server.dashboard.web.HEADERS`)."""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fleet_server.dashboard import actions, pages, routes
from fleet_server.dashboard.web import HEADERS, Deps, Handler, Req

__all__ = ["MAX_BODY", "Deps", "build_app", "build_metrics_app"]

log = logging.getLogger(__name__)

MAX_BODY = 16 * 1024
BODY_S = 10.0


class _TooLargeError(Exception):
    pass


async def _body(request: Request) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY:
        raise _TooLargeError
    data = b""
    async for chunk in request.stream():
        data += chunk
        if len(data) > MAX_BODY:
            raise _TooLargeError
    return data


def _page_of(status: int, title: str, text: str) -> HTMLResponse:
    return HTMLResponse(pages.layout(title, pages.refused(text), refresh=False), status)


def _endpoint(handler: Handler, deps: Deps) -> object:
    async def endpoint(request: Request) -> Response:
        form: dict[str, str] = {}
        if request.method == "POST":
            try:
                raw = await asyncio.wait_for(_body(request), BODY_S)
            except _TooLargeError:
                return _page_of(413, "Too large", f"A form is at most {MAX_BODY} bytes.")
            except TimeoutError:
                return _page_of(408, "Too slow", "The form did not arrive in time.")
            form = dict(reversed(parse_qsl(raw.decode(errors="replace"), max_num_fields=50)))
        query = dict(reversed(request.query_params.multi_items()))
        full = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        req = Req(
            method=request.method,
            path=request.url.path,
            client=request.client.host if request.client else "?",
            host=request.headers.get("host", ""),
            params={k: str(v) for k, v in request.path_params.items()},
            query=query,
            form=form,
            cookies=dict(request.cookies),
            headers={k.lower(): v for k, v in request.headers.items()},
            full_path=full,
        )
        try:
            return await run_in_threadpool(handler, deps, req)
        except Exception:  # a page that fails says so instead of dropping the connection
            log.exception("dashboard %s %s failed", request.method, request.url.path)
            return _page_of(500, "Error", "This page failed on the server (the server log has "
                            "the details); try again, or another page.")  # fmt: skip

    return endpoint


def _route(path: str, handler: Handler, deps: Deps, method: str = "GET") -> Route:
    # HEAD with GET, as browsers and monitors expect.
    methods = ["GET", "HEAD"] if method == "GET" else [method]
    return Route(path, _endpoint(handler, deps), methods=methods)  # type: ignore[arg-type]  # an ASGI endpoint


async def _http_error(request: Request, exc: Exception) -> Response:
    del request
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    text = {404: "No such page.", 405: "Not with this method (actions are forms: POST)."}
    return _page_of(status, "Not found" if status == 404 else "Refused",
                    text.get(status, "Refused."))  # fmt: skip


def _with_headers(app: ASGIApp) -> ASGIApp:
    """Every answer gets the dashboard's headers (a handler's own win)."""

    async def secured(scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in HEADERS.items():
                    if name not in headers:
                        headers[name] = value
            await send(message)

        await app(scope, receive, send_with)

    return secured


def build_app(deps: Deps) -> ASGIApp:
    """The whole dashboard (with ``/metrics`` if ``deps.metrics``)."""
    get: list[tuple[str, Handler]] = [
        ("/static/app.css", routes.stylesheet),
        ("/static/app.js", routes.script),
        ("/login", routes.login_form),
        ("/metrics", routes.metrics),
        ("/", routes.home),
        ("/fleet", routes.fleet),
        ("/devices/{device_id:path}", routes.device),
        ("/rollouts", routes.rollouts),
        ("/rollouts/new", actions.rollout_form),
        ("/rollouts/{rollout_id}/{action}", actions.rollout_action_form),
        ("/models", routes.models),
        ("/models/{model}/{version}/{action}", actions.version_action_form),
        ("/costs", routes.costs),
        ("/keys", routes.keys),
        ("/admins", routes.admins),
        ("/admins/{name}/{action}", actions.admin_change_form),
    ]
    post: list[tuple[str, Handler]] = [
        ("/login", routes.login),
        ("/logout", routes.logout),
        ("/rollouts/new", actions.rollout_create),
        ("/rollouts/{rollout_id}/{action}", actions.rollout_action),
        ("/models/{model}/{version}/{action}", actions.version_action),
        ("/admins/add", actions.admin_add),
        ("/admins/{name}/{action}", actions.admin_change),
    ]
    table = [_route(p, h, deps) for p, h in get] + [_route(p, h, deps, "POST") for p, h in post]
    app = Starlette(routes=table, exception_handlers={HTTPException: _http_error})
    return _with_headers(app)


def build_metrics_app(deps: Deps) -> ASGIApp:
    """``/metrics`` alone (``metrics_listen``)."""

    async def elsewhere(request: Request, exc: Exception) -> Response:
        del request, exc
        return PlainTextResponse("only /metrics is served here\n", 404)

    app = Starlette(
        routes=[_route("/metrics", routes.metrics, deps)],
        exception_handlers={HTTPException: elsewhere},
    )
    return _with_headers(app)
