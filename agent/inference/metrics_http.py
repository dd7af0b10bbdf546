"""Prometheus text on ``GET /metrics`` (optional; off unless ``api.metrics_listen`` is set)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from agent.inference.engine import Engine
from agent.inference.metrics import prometheus_text

__all__ = ["MetricsServer"]

log = logging.getLogger(__name__)


def render(engine: Engine) -> str:
    """The engine's metrics as Prometheus text."""
    index = engine.index()
    return prometheus_text(
        [(m.name, m.version, m.backend, m.stats) for m in engine.models()],
        {
            "registered_models": float(len(index)),
            "loaded_models": float(sum(1 for s in index if s.state == "READY")),
            "model_loads_total": float(engine.loads),
            "model_evictions_total": float(engine.evictions),
            "memory_estimate_bytes": float(engine.memory_bytes()),
        },
    )


class MetricsServer:
    """A tiny HTTP server in a daemon thread, serving what ``text`` returns (the agent's engine
    metrics, or the fleet server's)."""

    def __init__(self, text: Callable[[], str], host: str, port: int) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?", 1)[0] != "/metrics":
                    self.send_error(404, "only /metrics is served here")
                    return
                body = text().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                return  # scrapes every few seconds would drown the journal

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics", daemon=True
        )

    def start(self) -> None:
        self._thread.start()
        log.info("Prometheus metrics on port %d /metrics", self.port)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
