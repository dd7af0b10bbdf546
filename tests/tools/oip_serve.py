"""Serve models through the agent's OIP v2 API on a unix socket, in a process of its own (the
tests start it as an unprivileged user and attack it as a local app would).

    python -m tests.tools.oip_serve SOCKET [--listen HOST:PORT] [--workers N] NAME=MODEL.tflite
        [...]

It serves Prometheus metrics on a free loopback port, prints "ready PORT" once the socket (and
the TCP address, if given) and the metrics listen, and serves until SIGTERM.
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

from agent.inference.engine import Engine, EngineOptions
from agent.inference.metrics_http import MetricsServer, render
from agent.inference.oip import create_server


def main(argv: list[str]) -> int:
    socket, *models = argv
    listen, workers = None, 1
    while models[:1] in (["--listen"], ["--workers"]):
        if models[0] == "--listen":
            listen = models[1]
        else:
            workers = int(models[1])
        models = models[2:]
    engine = Engine(EngineOptions(workers=workers, queue_depth=8))
    for spec in models:
        name, _, path = spec.partition("=")
        engine.put(engine.load(name, "1.0.0", Path(path)))
    server, _ = create_server(engine, socket_path=Path(socket), tcp_address=listen)
    server.start()
    metrics = MetricsServer(lambda: render(engine), "127.0.0.1", 0)
    metrics.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(f"ready {metrics.port}", flush=True)
    stop.wait()
    server.stop(1).wait()
    metrics.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
