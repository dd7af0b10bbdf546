"""One HTTP POST of a webhook delivery, held to the bounds a server talking to someone else's
receiver needs: one deadline for the whole attempt (name lookup aside: connect, TLS, request,
answer), a refused address checked after the name is resolved (:func:`refused_address`), no
redirect followed, and at most :data:`MAX_ANSWER` bytes of the answer read (and dropped: an
answer's body is never kept or shown, so a webhook cannot be used to read what the server can
reach). Every failure comes back as an :class:`Answer` with a one-line error, never raised.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass

from fleet_server.storage.db import stored_text
from fleet_server.webhooks.policy import MAX_DELAY_S, refused_address

__all__ = ["MAX_ANSWER", "Answer", "post"]

MAX_ANSWER = 64 * 1024
_ERROR = 255  # characters of an error, as the delivery log keeps them


@dataclass(frozen=True)
class Answer:
    """How an attempt went: the HTTP status (0: none came) and, unless 2xx, why it failed."""

    status: int
    error: str
    duration_ms: int
    retry_after: float | None = None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


def _retry_after(value: str | None) -> float | None:
    """A Retry-After in seconds (its date form is ignored), capped."""
    if not value or not value.strip().isdigit():
        return None
    return min(float(value.strip()), MAX_DELAY_S)


def _connect(host: str, port: int, deadline: float) -> socket.socket:
    """A TCP connection to the first allowed address of ``host`` that answers.

    Raises:
        OSError: none could be reached; its message says why.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise OSError(f"cannot resolve {host}: {exc.strerror}") from exc
    problem = f"{host} has no address"
    for family, kind, proto, _name, address in infos:
        refused = refused_address(ipaddress.ip_address(str(address[0]).split("%")[0]))
        if refused:
            problem = refused
            continue
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("timed out connecting")
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(left)
            sock.connect(address)
        except OSError as exc:
            sock.close()
            problem = f"cannot connect to {address[0]} port {port}: {exc.strerror or exc}"
            continue
        return sock
    raise OSError(problem)


def post(
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    timeout_s: float,
    ca_pem: str | None = None,
) -> Answer:
    """POST ``body`` to ``url`` within ``timeout_s`` seconds; never raises."""
    started = time.monotonic()
    deadline = started + timeout_s
    parts = urllib.parse.urlsplit(url)
    tls = parts.scheme.lower() == "https"
    host = parts.hostname or ""
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    held: list[socket.socket] = []
    expired = threading.Event()

    def cut() -> None:
        """The deadline: end whatever the attempt waits for (a receiver sending its answer a
        byte at a time would otherwise keep it for ever)."""
        expired.set()
        for sock in held:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def answer(status: int, error: str, retry_after: float | None = None) -> Answer:
        ms = int((time.monotonic() - started) * 1000)
        # An error can quote the receiver (a malformed status line): its bytes are outside
        # text, kept in the delivery log, shown to viewers and written to the server's log.
        return Answer(status, stored_text(error, _ERROR), ms, retry_after)

    timer = threading.Timer(timeout_s, cut)
    timer.daemon = True
    timer.start()
    try:
        port = parts.port or (443 if tls else 80)
        sock = _connect(host, port, deadline)
        held.append(sock)
        connection: http.client.HTTPConnection
        if tls:
            context = ssl.create_default_context(cadata=ca_pem or None)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            sock = context.wrap_socket(sock, server_hostname=host)
            held.append(sock)
            connection = http.client.HTTPSConnection(host, port, context=context)
        else:
            connection = http.client.HTTPConnection(host, port)
        connection.sock = sock  # connected and checked here: http.client does not dial
        connection.request("POST", path, body=body, headers={**headers, "Connection": "close"})
        response = connection.getresponse()
        response.read(MAX_ANSWER)
        status = response.status
        if 200 <= status < 300:
            return answer(status, "")
        if 300 <= status < 400:
            return answer(status, f"HTTP {status}: redirects are not followed; give the final URL")
        return answer(status, f"HTTP {status}", _retry_after(response.getheader("Retry-After")))
    except ssl.SSLCertVerificationError as exc:
        return answer(0, f"TLS: the receiver's certificate does not verify: {exc.verify_message}")
    except ssl.SSLError as exc:
        return answer(0, f"TLS: {exc.reason or exc}")
    except (OSError, http.client.HTTPException) as exc:
        if expired.is_set() or isinstance(exc, TimeoutError):
            return answer(0, f"no answer within {timeout_s:g} s")
        return answer(0, str(exc) or type(exc).__name__)
    finally:
        timer.cancel()
        for sock in held:
            with contextlib.suppress(OSError):
                sock.close()
