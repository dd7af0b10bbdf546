"""A TCP proxy on loopback whose link the soak can cut: the agents' device link (check-ins and
downloads) and the server's PostgreSQL connection go through one.

``cut()`` resets every connection through it and refuses new ones (accepted, then closed at
once, as a dead route's firewall would) until ``restore()``. Threads: one accepts, two pump
each connection; ``close()`` ends them all.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import threading

__all__ = ["CutProxy"]

log = logging.getLogger(__name__)
_BLOCK = 65536


class CutProxy:
    """Forwards 127.0.0.1:``port`` to ``target`` (host, port) until cut."""

    def __init__(self, target: tuple[str, int], port: int = 0) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", port))
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._cut = False
        self._closing = threading.Event()
        self.cuts = 0
        self._thread = threading.Thread(target=self._accept, name="soak-proxy", daemon=True)
        self._thread.start()

    def cut(self) -> None:
        """Reset every connection and refuse new ones until ``restore``."""
        with self._lock:
            self._cut = True
            self.cuts += 1
            for sock in list(self._open):
                _reset(sock)
            self._open.clear()

    def restore(self) -> None:
        """Forward new connections again."""
        with self._lock:
            self._cut = False

    def close(self) -> None:
        """Stop accepting and close every connection."""
        self._closing.set()
        self.cut()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._thread.join(5)

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                cut = self._cut
            if cut:
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                _reset(client)
                continue
            upstream.settimeout(None)
            with self._lock:
                self._open.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(_BLOCK):
                target.sendall(data)
        except OSError:
            pass
        with self._lock:
            self._open.discard(source)
            self._open.discard(target)
        for sock in (source, target):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


def _reset(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0): the peer sees the link die, not a polite close.

    A pump thread blocked in ``recv`` keeps the kernel's socket alive past ``close`` (no RST
    goes out, and the peer sees a silent link for good); ``shutdown(SHUT_RD)`` wakes it first.
    """
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RD)
    with contextlib.suppress(OSError):
        sock.close()
