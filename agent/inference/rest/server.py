"""uvicorn serving the REST app on a unix socket and, optionally, a TCP address, in a thread of
the agent: one event loop, one uvicorn server and one app per listener (a flood on TCP, of
connections, bodies, threads or JSON to decode, leaves the socket's apps served: each listener
has its own limits).

The sockets are bound here, before the thread starts, so that a taken port or a bad path is an
error of :func:`create_rest_server` (uvicorn would exit the process). Each listener holds at
most ``max_connections`` connections (the next is answered 503 and closed), a connection
that has not sent a whole request head within ``head_timeout_s`` of opening (or of its last
answer) is closed, and one that takes none of its answers' bytes for as long is dropped: slow,
idle or non-reading clients cannot hold the agent's connections and file descriptors.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import threading
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.types import ASGIApp, Receive, Scope, Send

from agent.http_bounds import Dropped, bounded_protocol, too_many
from agent.inference.rest.app import RestLimits, build_app
from agent.inference.serving import Serving
from agent.ports import PortInUseError, unix_socket_in_use

__all__ = ["RestServer", "create_rest_server"]

log = logging.getLogger(__name__)

_TOO_MANY = too_many(
    b'{"error":"too many connections to the agent; retry later"}', "application/json"
)
_MAX_HEAD_BYTES = 16 * 1024  # a request line and headers; an OIP request needs far less


class RestServer:
    """The REST API's listeners and the thread that serves them."""

    def __init__(
        self, apps: list[Starlette], sockets: list[socket.socket], limits: RestLimits
    ) -> None:
        self._sockets = sockets
        self._dropped = Dropped()
        self._servers = [
            uvicorn.Server(
                uvicorn.Config(
                    _quiet_when_cancelled(app),
                    http=bounded_protocol(
                        limits.max_connections, limits.head_timeout_s, self._dropped, _TOO_MANY
                    ),
                    lifespan="off",
                    log_config=None,
                    access_log=False,
                    server_header=False,
                    h11_max_incomplete_event_size=_MAX_HEAD_BYTES,
                    timeout_keep_alive=5,
                )
            )
            for app in apps
        ]
        self._thread: threading.Thread | None = None
        self._failed: BaseException | None = None

    @property
    def port(self) -> int | None:
        """The bound TCP port, if there is a TCP listener."""
        for sock in self._sockets:
            if sock.family != socket.AF_UNIX:
                return int(sock.getsockname()[1])
        return None

    def start(self, timeout: float = 10.0) -> None:
        """Serve in a thread; return once every listener accepts.

        Raises:
            OSError: the server did not start.
        """
        self._thread = threading.Thread(target=self._run, name="rest-api", daemon=True)
        self._thread.start()
        deadline = threading.Event()
        for _ in range(int(timeout / 0.02)):
            if all(s.started for s in self._servers) or self._failed is not None:
                break
            deadline.wait(0.02)
        if not all(s.started for s in self._servers):
            self.stop(0)
            raise OSError(f"the REST API did not start: {self._failed or 'timed out'}")

    def _run(self) -> None:
        async def serve_all() -> None:
            await asyncio.gather(
                *(
                    s.serve(sockets=[sock])
                    for s, sock in zip(self._servers, self._sockets, strict=True)
                )
            )

        try:
            asyncio.run(serve_all())
        except BaseException as exc:  # noqa: BLE001 - uvicorn exits with SystemExit; report it
            self._failed = exc
            log.error("the REST API stopped: %r", exc)

    def stop(self, grace: float = 5.0) -> None:
        """Stop accepting, let requests in progress finish within ``grace`` s, close."""
        for server in self._servers:
            server.config.timeout_graceful_shutdown = max(1, round(grace))
            server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=grace + 5)
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()
        if self._dropped.count:
            log.warning(
                "REST API stopped: dropped %d connection(s) whose request was still "
                "unanswered after the %.0f s grace period",
                self._dropped.count,
                grace,
            )


def _quiet_when_cancelled(app: ASGIApp) -> ASGIApp:
    """``app``, ending quietly when uvicorn cancels it at the end of a stop's grace period
    (a request still computing then): uvicorn would log a CancelledError traceback for it.
    The stop's own warning says how many requests went unanswered."""

    async def quiet(scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await app(scope, receive, send)
        except asyncio.CancelledError:
            log.debug("REST request cancelled by the stop")

    return quiet


def _unix_listener(path: Path) -> socket.socket:
    path.parent.mkdir(parents=True, exist_ok=True)
    if unix_socket_in_use(path, "api.rest_socket"):
        raise PortInUseError("api.rest_socket", str(path))
    if path.is_socket():
        path.unlink()  # left by a previous run that was killed
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            sock.bind(str(path))
        except OSError as exc:  # made in between, by another process starting at once
            if exc.errno == errno.EADDRINUSE:
                raise PortInUseError("api.rest_socket", str(path)) from exc
            raise
        # Owner and group (the apps allowed to use the device's models), nobody else: as the
        # gRPC socket (agent.inference.oip.create_server).
        path.chmod(0o660)
        sock.listen(128)
    except BaseException:
        sock.close()
        raise
    return sock


def _tcp_listener(address: str) -> socket.socket:
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    infos = socket.getaddrinfo(host or None, int(port), type=socket.SOCK_STREAM)
    family, kind, proto, _, where = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(where)
        sock.listen(128)
    except BaseException:
        sock.close()
        raise
    return sock


def create_rest_server(
    serving: Serving,
    *,
    socket_path: Path | None = None,
    tcp_address: str | None = None,
    limits: RestLimits | None = None,
) -> RestServer:
    """Bind the REST API's listeners (not start them).

    Raises:
        OSError: a listener could not be bound (a taken port, a bad path).
        ValueError: ``tcp_address`` is not host:port.
    """
    limits = limits or RestLimits()
    sockets: list[Any] = []
    try:
        if socket_path is not None:
            sockets.append(_unix_listener(socket_path))
        if tcp_address:
            sockets.append(_tcp_listener(tcp_address))
    except (OSError, ValueError):
        for sock in sockets:
            sock.close()
        raise
    # An app per listener: its budget of bodies, its threads and its JSON decoders are its own.
    return RestServer([build_app(serving, limits) for _ in sockets], sockets, limits)
