"""A real webhook receiver for the tests: an HTTP(S) server on a thread of the test process
that checks each delivery's signature the way docs/notifications.md tells receivers to (its
own HMAC code, not the server's), records it, and answers as scripted: a status code, or
"hang" (say nothing until the receiver closes)."""

from __future__ import annotations

import hashlib
import hmac
import json
import ssl
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.harness import wait_for


@dataclass(frozen=True)
class Received:
    """One request the receiver got."""

    path: str
    headers: dict[str, str]
    body: bytes
    signature_ok: bool
    answered: int | str  # the status it answered with, or "hang"

    @property
    def payload(self) -> dict[str, Any]:
        return dict(json.loads(self.body))


def signature_ok(secret: str, headers: dict[str, str], body: bytes, now: float) -> bool:
    """docs/notifications.md's check: HMAC-SHA256 over "<timestamp>." + body, fresh."""
    timestamp = headers.get("X-EdgeFleet-Timestamp", "")
    given = headers.get("X-EdgeFleet-Signature", "")
    if not timestamp.isdigit() or abs(now - int(timestamp)) > 300:
        return False
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return hmac.compare_digest("sha256=" + mac.hexdigest(), given)


class Receiver:
    """Answers the scripted statuses in order, then ``then`` (200) to everything."""

    def __init__(
        self,
        secret: str = "",
        script: Sequence[int | str] = (),
        *,
        then: int = 200,
        tls_files: tuple[Path, Path] | None = None,
        port: int = 0,
    ) -> None:
        self.secret = secret
        self.received: list[Received] = []
        self._script = list(script)
        self._then = then
        self._lock = threading.Lock()
        self._closing = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(min(length, 1 << 20))
                headers = dict(self.headers.items())
                with receiver._lock:
                    answer = receiver._script.pop(0) if receiver._script else receiver._then
                    receiver.received.append(
                        Received(
                            self.path,
                            headers,
                            body,
                            signature_ok(receiver.secret, headers, body, time.time()),
                            answer,
                        )
                    )
                if answer == "hang":
                    receiver._closing.wait(120)
                    self.close_connection = True
                    return
                self.send_response(int(answer))
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *_args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self.scheme = "http"
        if tls_files is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(str(tls_files[0]), str(tls_files[1]))
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
            self.scheme = "https"
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def url(self, path: str = "/hook") -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}{path}"

    def wait_for(self, count: int, timeout: float = 60.0) -> list[Received]:
        """The first ``count`` requests, once that many came."""
        wait_for(
            f"{count} webhook request(s) (got {len(self.received)})",
            lambda: len(self.received) >= count,
            timeout=timeout,
        )
        return self.received[:count]

    def close(self) -> None:
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Receiver:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
