"""The dashboard's HTTPS server: pages rendered here (no CDN, no build step), a little script
that refreshes them every few seconds, a login with the admin token, and rollout actions that
call the server's own admin API (so they are audited like the CLI's).
"""

from __future__ import annotations

import hmac
import logging
import secrets
import ssl
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import grpc

from fleet_server.context import ServerContext
from fleet_server.dashboard import pages
from protos import admin_pb2 as pb
from protos import admin_pb2_grpc as pb_grpc

__all__ = ["Dashboard", "load_pem"]

log = logging.getLogger(__name__)

SESSION_S = 12 * 3600
_COOKIE = "edgefleet_session"
_ACTIONS = {"pause": "PauseRollout", "resume": "ResumeRollout", "abort": "AbortRollout"}
_MAX_BODY = 16 * 1024


class _Sessions:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        # id -> (csrf token, expiry, the admin's token: the dashboard calls the admin API with
        # it, so the role and the audit log are the person's)
        self._by_id: dict[str, tuple[str, float, str]] = {}

    def create(self, token: str) -> tuple[str, str]:
        session, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(16)
        with self._lock:
            now = time.time()
            self._by_id = {k: v for k, v in self._by_id.items() if v[1] > now}
            self._by_id[session] = (csrf, now + SESSION_S, token)
        return session, csrf

    def csrf(self, session: str) -> str | None:
        with self._lock:
            entry = self._by_id.get(session)
        return entry[0] if entry and entry[1] > time.time() else None

    def token(self, session: str) -> str:
        with self._lock:
            entry = self._by_id.get(session)
        return entry[2] if entry else ""

    def drop(self, session: str) -> None:
        with self._lock:
            self._by_id.pop(session, None)


class Dashboard:
    """``start(address)`` serves it; ``admin_address`` is the server's own TLS admin port."""

    def __init__(
        self,
        ctx: ServerContext,
        *,
        admin_address: str,
        tls_key_pem: bytes,
        tls_cert_pem: bytes,
    ) -> None:
        self.ctx = ctx
        self.sessions = _Sessions()
        credentials = grpc.ssl_channel_credentials(root_certificates=ctx.ca.cert_pem)
        # The admin port's certificate names 127.0.0.1 and localhost (default_sans).
        self._channel = grpc.secure_channel(admin_address, credentials)
        self.admin = pb_grpc.AdminServiceStub(self._channel)
        self._tls = (tls_key_pem, tls_cert_pem)
        self._httpd: ThreadingHTTPServer | None = None

    def call(self, method: str, request: Any, token: str) -> Any:
        """An admin API call with the logged-in admin's token, marked as coming from the
        dashboard.

        Raises:
            grpc.RpcError: what the admin API said.
        """
        metadata = (
            ("authorization", f"Bearer {token}"),
            ("x-edgefleet-client", "dashboard"),
        )
        return getattr(self.admin, method)(request, metadata=metadata, timeout=30)

    def start(self, address: str) -> int:
        """Listen on ``address`` (host:port, 0 = any free port) with TLS; return the port.

        Raises:
            OSError: it cannot be bound.
        """
        host, _, port = address.rpartition(":")
        handler = _handler(self)
        httpd = ThreadingHTTPServer((host.strip("[]") or "0.0.0.0", int(port)), handler)  # noqa: S104
        httpd.daemon_threads = True
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        load_pem(context, *self._tls)
        httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
        self._httpd = httpd
        threading.Thread(target=httpd.serve_forever, name="dashboard", daemon=True).start()
        return int(httpd.server_address[1])

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        self._channel.close()


def load_pem(context: ssl.SSLContext, key: bytes, cert: bytes) -> None:
    """ssl reads the certificate and key only from files: write them to a private temporary
    directory (0700, files 0600) for the load, and delete them right after it."""
    import os  # noqa: PLC0415
    import tempfile  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="edgefleet-dashboard-") as name:
        cert_path, key_path = Path(name) / "cert.pem", Path(name) / "key.pem"
        for path, data in ((cert_path, cert), (key_path, key)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
        context.load_cert_chain(cert_path, key_path)


def _handler(dashboard: Dashboard) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "edgefleet-dashboard"

        def log_message(self, fmt: str, *args: Any) -> None:
            log.debug("dashboard %s %s", self.address_string(), fmt % args)

        # plumbing -----------------------------------------------------------------------------

        def _send(
            self,
            status: int,
            body: str | bytes,
            content_type: str = "text/html; charset=utf-8",
            headers: dict[str, str] | None = None,
        ) -> None:
            data = body.encode() if isinstance(body, str) else body
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("X-Frame-Options", "DENY")
            self.send_header(
                "Content-Security-Policy",
                "default-src 'self'; style-src 'self'; script-src 'self'; img-src 'self' data:",
            )
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def _redirect(self, location: str, headers: dict[str, str] | None = None) -> None:
            self._send(HTTPStatus.SEE_OTHER, "", headers={"Location": location, **(headers or {})})

        def _session(self) -> tuple[str, str] | None:
            for part in self.headers.get("Cookie", "").split(";"):
                name, _, value = part.strip().partition("=")
                if name == _COOKIE:
                    csrf = dashboard.sessions.csrf(value)
                    # The person's token still counts (not revoked, not a disabled bootstrap
                    # token): checked at every request, as the admin API does.
                    token = dashboard.sessions.token(value)
                    if csrf and dashboard.ctx.admins.authenticate(token) is not None:
                        return value, csrf
                    dashboard.sessions.drop(value)
            return None

        def _form(self) -> dict[str, str]:
            length = int(self.headers.get("Content-Length", "0") or 0)
            if length > _MAX_BODY:
                return {}
            raw = self.rfile.read(length).decode(errors="replace")
            return {k: v[0] for k, v in parse_qs(raw).items()}

        # routes -------------------------------------------------------------------------------

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            if url.path == "/static/app.css":
                self._send(200, pages.CSS, "text/css; charset=utf-8")
                return
            if url.path == "/static/app.js":
                self._send(200, pages.JS, "text/javascript; charset=utf-8")
                return
            if url.path == "/login":
                self._send(200, pages.login(query.get("error", "")))
                return
            session = self._session()
            if session is None:
                self._redirect("/login?next=" + quote(self.path))
                return
            self._page(url.path, query, session[1])

        def _page(self, path: str, query: dict[str, str], csrf: str) -> None:
            ctx = dashboard.ctx
            routes: dict[str, Callable[[], tuple[str, str]]] = {
                "/fleet": lambda: pages.fleet(ctx, query),
                "/rollouts": lambda: pages.rollouts(ctx, query, csrf),
                "/models": lambda: pages.models(ctx),
                "/costs": lambda: pages.costs(ctx, query),
                "/keys": lambda: pages.keys(ctx),
            }
            try:
                if path == "/":
                    self._redirect("/fleet")
                    return
                if path.startswith("/devices/"):
                    title, main = pages.device(ctx, path.removeprefix("/devices/"))
                elif path.startswith("/rollouts/") and path.count("/") == 3:
                    _, _, rollout_id, action = path.split("/")
                    title, main = pages.confirm(ctx, rollout_id, action, csrf)
                elif path in routes:
                    title, main = routes[path]()
                else:
                    self._send(404, pages.layout("Not found", pages.empty("No such page.")))
                    return
            except pages.PageNotFoundError as exc:
                self._send(404, pages.layout("Not found", pages.empty(str(exc))))
                return
            except Exception:  # a page that fails says so instead of dropping the connection
                log.exception("dashboard page %s failed", path)
                self._send(500, pages.layout("Error", pages.empty(
                    "This page failed on the server (the server log has the details); "
                    "try again, or another page.")))  # fmt: skip
                return
            if query.get("partial"):
                self._send(200, main)
            else:
                self._send(200, pages.layout(title, main, active=path))

        def do_POST(self) -> None:
            url = urlsplit(self.path)
            form = self._form()
            if url.path == "/login":
                given = form.get("token", "").strip()
                identity = dashboard.ctx.admins.authenticate(given)
                if identity is not None:
                    new_session, _ = dashboard.sessions.create(given)
                    target = form.get("next", "/fleet")
                    target = (
                        target
                        if target.startswith("/") and not target.startswith("//")
                        else "/fleet"
                    )
                    cookie = f"{_COOKIE}={new_session}; HttpOnly; Secure; SameSite=Strict; Path=/"
                    log.info("dashboard login of %s from %s", identity.name, self.client_address[0])
                    self._redirect(target, {"Set-Cookie": cookie})
                else:
                    log.warning("dashboard: wrong admin token from %s", self.client_address[0])
                    self._redirect("/login?error=1")
                return
            session = self._session()
            if session is None:
                self._redirect("/login")
                return
            if url.path == "/logout":
                dashboard.sessions.drop(session[0])
                self._redirect("/login", {"Set-Cookie": f"{_COOKIE}=; Max-Age=0; Path=/"})
                return
            if not hmac.compare_digest(form.get("csrf", "").encode(), session[1].encode()):
                self._send(403, pages.layout("Refused", pages.empty("The form expired; reload.")))
                return
            parts = url.path.split("/")
            if len(parts) == 4 and parts[1] == "rollouts" and parts[3] in _ACTIONS:
                self._act(parts[2], parts[3], dashboard.sessions.token(session[0]))
                return
            self._send(404, pages.layout("Not found", pages.empty("No such action.")))

        def _act(self, rollout_id: str, action: str, token: str) -> None:
            if not rollout_id.isdigit():
                self._send(404, pages.layout("Not found", pages.empty("No such rollout.")))
                return
            try:
                dashboard.call(
                    _ACTIONS[action], pb.RolloutRequest(rollout_id=int(rollout_id)), token
                )
                message = f"Rollout {rollout_id}: {action} done."
            except grpc.RpcError as exc:
                message = f"Rollout {rollout_id}: {action} refused: {exc.details()}"
            self._redirect(f"/rollouts?message={quote(message)}")

    return Handler
