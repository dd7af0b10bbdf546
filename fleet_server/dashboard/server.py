"""The dashboard's HTTPS server: the Starlette app (:mod:`fleet_server.dashboard.app`) on
uvicorn, in a thread of the server with its own event loop, as the agent serves its REST API.

TLS is handled on the event loop, never on the accept path: a client that opens a connection
and sends nothing holds only that connection, for at most :data:`HANDSHAKE_S`, and neither
other clients nor a stop wait for it. After the handshake the limits of
:mod:`agent.http_bounds` apply: :data:`MAX_CONNECTIONS` connections, a request head within
:data:`HEAD_S` (and a body within :data:`HEAD_S` more: :mod:`fleet_server.dashboard.app`), an
idle keep-alive connection closed after :data:`KEEP_ALIVE_S`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import uvicorn
from starlette.types import ASGIApp

from agent.http_bounds import Dropped, bounded_protocol, too_many
from fleet_server.context import ServerContext
from fleet_server.dashboard.app import Deps, build_app, build_metrics_app
from fleet_server.dashboard.limits import LoginLimiter
from fleet_server.dashboard.sessions import Sessions
from protos import admin_pb2_grpc as pb_grpc

__all__ = [
    "HANDSHAKE_S",
    "HEAD_S",
    "KEEP_ALIVE_S",
    "MAX_CONNECTIONS",
    "Dashboard",
    "HttpsServer",
    "MetricsEndpoint",
    "load_pem",
]

log = logging.getLogger(__name__)

HANDSHAKE_S = 10.0
HEAD_S = 10.0
KEEP_ALIVE_S = 5
MAX_CONNECTIONS = 200
GRACE_S = 2.0
_MAX_HEAD_BYTES = 16 * 1024
_TOO_MANY = too_many(b"too many connections to the dashboard; retry later\n", "text/plain")


class _Loop(asyncio.SelectorEventLoop):
    """An event loop whose TLS servers give up a handshake after HANDSHAKE_S (asyncio's
    default is 60 s; uvicorn does not pass one)."""

    async def create_server(self, *args: Any, **kwargs: Any) -> Any:  # adds defaults only
        if kwargs.get("ssl") is not None:
            kwargs.setdefault("ssl_handshake_timeout", HANDSHAKE_S)
            kwargs.setdefault("ssl_shutdown_timeout", GRACE_S)
        return await super().create_server(*args, **kwargs)


class HttpsServer:
    """One ASGI app over HTTPS on one address, served by uvicorn in a thread."""

    def __init__(self, app: ASGIApp, name: str, tls_key_pem: bytes, tls_cert_pem: bytes) -> None:
        self.name = name
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        load_pem(context, tls_key_pem, tls_cert_pem)
        self._dropped = Dropped()
        config = uvicorn.Config(
            app,
            http=bounded_protocol(MAX_CONNECTIONS, HEAD_S, self._dropped, _TOO_MANY),
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
            date_header=False,
            h11_max_incomplete_event_size=_MAX_HEAD_BYTES,
            timeout_keep_alive=KEEP_ALIVE_S,
            timeout_graceful_shutdown=int(GRACE_S),
            # The client address counts wrong tokens: X-Forwarded-For is taken from a proxy on
            # this host only, whatever FORWARDED_ALLOW_IPS says.
            proxy_headers=True,
            forwarded_allow_ips="127.0.0.1,::1",
        )
        config.load()
        config.ssl = context  # our context (a key that never touches the disk for long)
        self._server = uvicorn.Server(config)
        self._socket: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._failed: BaseException | None = None

    def start(self, address: str, timeout: float = 10.0) -> int:
        """Listen on ``address`` (host:port; port 0 = any free port); return the port once it
        accepts.

        Raises:
            OSError: it cannot be bound, or did not start.
            ValueError: ``address`` is not host:port.
        """
        host, sep, port = address.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"{address!r} is not HOST:PORT")
        host = host.strip("[]") or "0.0.0.0"  # noqa: S104 - what an empty host means here
        family, kind, proto, _, where = socket.getaddrinfo(
            host, int(port), type=socket.SOCK_STREAM
        )[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(where)
            sock.listen(128)
        except BaseException:
            sock.close()
            raise
        self._socket = sock
        self._thread = threading.Thread(target=self._run, args=(sock,), name=self.name, daemon=True)
        self._thread.start()
        ready = threading.Event()
        for _ in range(int(timeout / 0.02)):
            if self._server.started or self._failed is not None:
                break
            ready.wait(0.02)
        if not self._server.started:
            self.stop()
            raise OSError(f"{self.name} did not start: {self._failed or 'timed out'}")
        return int(sock.getsockname()[1])

    def _run(self, sock: socket.socket) -> None:
        try:
            with asyncio.Runner(loop_factory=_Loop) as runner:
                runner.run(self._server.serve(sockets=[sock]))
        except BaseException as exc:  # noqa: BLE001 - uvicorn exits with SystemExit; report it
            self._failed = exc
            log.error("%s stopped: %r", self.name, exc)

    def stop(self) -> None:
        """Stop accepting; requests under way get GRACE_S to finish."""
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=GRACE_S + 5)
        if self._socket is not None:
            with contextlib.suppress(OSError):
                self._socket.close()
        if self._dropped.count:
            log.warning("%s stopped: dropped %d unanswered request(s)", self.name,
                        self._dropped.count)  # fmt: skip


class Dashboard:
    """The web dashboard: ``start(address)`` serves it; ``admin_address`` is the server's own
    TLS admin port, which its actions call with the logged-in person's token."""

    def __init__(
        self,
        ctx: ServerContext,
        *,
        admin_address: str,
        tls_key_pem: bytes,
        tls_cert_pem: bytes,
        metrics: Callable[[], str] | None = None,
    ) -> None:
        self.ctx = ctx
        self.sessions = Sessions()
        credentials = grpc.ssl_channel_credentials(root_certificates=ctx.ca.cert_pem)
        # The admin port's certificate names 127.0.0.1 and localhost (default_sans).
        self._channel = grpc.secure_channel(admin_address, credentials)
        self.admin = pb_grpc.AdminServiceStub(self._channel)
        deps = Deps(ctx, self.call, self.sessions, LoginLimiter(), metrics)
        self._https = HttpsServer(build_app(deps), "dashboard", tls_key_pem, tls_cert_pem)

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
            ValueError: ``address`` is not host:port.
        """
        return self._https.start(address)

    def stop(self) -> None:
        self._https.stop()
        self._channel.close()


class MetricsEndpoint:
    """``metrics_listen``: the server's Prometheus metrics alone, over HTTPS, for an admin
    token in ``Authorization: Bearer`` (any role), as the dashboard's ``/metrics``."""

    def __init__(
        self, ctx: ServerContext, metrics: Callable[[], str], tls_key_pem: bytes,
        tls_cert_pem: bytes,
    ) -> None:  # fmt: skip
        deps = Deps(ctx, _no_admin_api, Sessions(), LoginLimiter(), metrics)
        self._https = HttpsServer(build_metrics_app(deps), "metrics", tls_key_pem, tls_cert_pem)

    def start(self, address: str) -> int:
        """As :meth:`Dashboard.start`."""
        return self._https.start(address)

    def stop(self) -> None:
        self._https.stop()


def _no_admin_api(method: str, request: Any, token: str) -> Any:
    del request, token
    raise RuntimeError(f"the metrics endpoint does not call the admin API ({method})")


def load_pem(context: ssl.SSLContext, key: bytes, cert: bytes) -> None:
    """ssl reads the certificate and key only from files: write them to a private temporary
    directory (0700, files 0600) for the load, and delete them right after it."""
    with tempfile.TemporaryDirectory(prefix="edgefleet-dashboard-") as name:
        cert_path, key_path = Path(name) / "cert.pem", Path(name) / "key.pem"
        for path, data in ((cert_path, cert), (key_path, key)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
        context.load_cert_chain(cert_path, key_path)
