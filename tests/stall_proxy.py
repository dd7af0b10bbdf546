"""A TCP proxy for the tests that can turn every connection through it half-open.

Switched to stalling, it keeps accepting connections and holding them (and those it forwarded
before) open, but forwards no byte in either direction: to both ends the connection looks open
and says nothing, as when a NAT entry is dropped or a proxy hangs. A connection that stalled
stays dead after forwarding resumes (its NAT entry is gone); new connections are forwarded.
"""

from __future__ import annotations

import selectors
import socket
import threading
import time
from dataclasses import dataclass, field

__all__ = ["StallProxy"]

_BLOCK = 65536


@dataclass
class _Pair:
    client: socket.socket
    upstream: socket.socket | None
    downstream_bytes: int = 0
    dead: bool = False
    sockets: list[socket.socket] = field(default_factory=list)


class StallProxy:
    """Forwards 127.0.0.1:``port`` to 127.0.0.1:``target_port`` on one thread; ``stall()``,
    ``forward()``, ``close()``. ``stall_after_bytes`` stalls everything once one connection has
    carried that many bytes towards its client (to stall a download mid-stream)."""

    def __init__(self, target_port: int = 0) -> None:
        self.target_port = target_port
        self.stall_after_bytes: int | None = None
        self.stalled_at: float | None = None  # time.monotonic() of the last stall
        self.accepted = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.setblocking(False)
        self.port = int(self._listener.getsockname()[1])
        self._stalling = False
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self._pairs: list[_Pair] = []
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ, None)
        self._thread = threading.Thread(target=self._run, name="stall-proxy", daemon=True)
        self._thread.start()

    def stall(self) -> None:
        """Forward nothing more, on any connection, old or new."""
        with self._lock:
            self._stalling = True
            self.stalled_at = time.monotonic()

    def forward(self) -> None:
        """Forward new connections again (stalled ones stay dead)."""
        with self._lock:
            self._stalling = False

    @property
    def stalling(self) -> bool:
        return self._stalling

    def close(self) -> None:
        """Stop the thread and close every socket (the ends then see the connection close)."""
        self._closing.set()
        self._thread.join(10)
        self._selector.close()
        self._listener.close()
        for pair in self._pairs:
            for sock in pair.sockets:
                sock.close()

    def _run(self) -> None:
        while not self._closing.is_set():
            for key, _events in self._selector.select(timeout=0.05):
                if key.data is None:
                    self._accept()
                else:
                    pair, source, target, downstream = key.data
                    if not pair.dead:  # killed by its other end's event in this round
                        self._pump(pair, source, target, downstream=downstream)

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except BlockingIOError:
            return
        self.accepted += 1
        with self._lock:
            stalling = self._stalling
        pair = _Pair(client, None, sockets=[client])
        self._pairs.append(pair)
        if stalling or not self.target_port:
            pair.dead = True  # accepted and held; nothing reaches the server
            return
        upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
        pair.upstream = upstream
        pair.sockets.append(upstream)
        for sock in (client, upstream):
            sock.setblocking(True)
            sock.settimeout(5)
        self._selector.register(client, selectors.EVENT_READ, (pair, client, upstream, False))
        self._selector.register(upstream, selectors.EVENT_READ, (pair, upstream, client, True))

    def _kill(self, pair: _Pair) -> None:
        """Stop reading and writing the pair's sockets, but keep them open. Once: one select
        can return both ends of a pair, and the second must not unregister again (a KeyError
        that ended this thread, and with it every later connection)."""
        if pair.dead:
            return
        pair.dead = True
        for sock in pair.sockets:
            self._selector.unregister(sock)

    def _pump(
        self, pair: _Pair, source: socket.socket, target: socket.socket, *, downstream: bool
    ) -> None:
        with self._lock:
            stalling = self._stalling
        if stalling:
            self._kill(pair)
            return
        try:
            data = source.recv(_BLOCK)
        except OSError:
            data = b""
        if not data:  # one end closed: close both, as a proxy does
            self._kill(pair)
            for sock in pair.sockets:
                sock.close()
            pair.sockets = []
            return
        if downstream:
            pair.downstream_bytes += len(data)
            limit = self.stall_after_bytes
            if limit is not None and pair.downstream_bytes >= limit:
                self.stall_after_bytes = None
                self.stall()
                self._kill(pair)  # these bytes are lost with the connection
                return
        try:
            target.sendall(data)
        except OSError:
            self._kill(pair)
