"""uvicorn's HTTP/1.1 protocol with bounds, for every HTTP server of ours that runs on uvicorn
(the agent's REST API, the fleet server's dashboard): at most ``max_connections`` connections
(the next is answered 503 and closed), a connection that has not sent a whole request head
within ``head_timeout_s`` of opening (or of its last answer) is closed, one that takes none of
its answers' bytes for as long is dropped, and a stop drops a request still unanswered just
before uvicorn's grace period ends (instead of uvicorn cancelling it with a traceback).

With TLS the protocol sees a connection once its handshake is done: the handshake's own
deadline is the event loop's (``ssl_handshake_timeout`` of ``create_server``).
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["DROP_BEFORE_S", "Dropped", "bounded_protocol", "too_many"]


def too_many(body: bytes, content_type: str) -> bytes:
    """The whole answer a connection over the cap gets before it is closed."""
    return (
        b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: %s\r\n"
        b"connection: close\r\ncontent-length: %d\r\n\r\n%s"
        % (content_type.encode(), len(body), body)
    )


# A stop drops the requests still unanswered this long before uvicorn's grace period ends: their
# handlers then end on their own, instead of being cancelled with a traceback each.
DROP_BEFORE_S = 0.5


class Dropped:
    """How many connections a stop dropped with their request unanswered (one thread)."""

    def __init__(self) -> None:
        self.count = 0


def bounded_protocol(
    max_connections: int, head_timeout_s: float, dropped: Dropped, refusal: bytes
) -> type[H11Protocol]:
    """A protocol class for ``uvicorn.Config(http=...)``: ``refusal`` is the whole answer
    (:func:`too_many`) a connection over ``max_connections`` gets; ``dropped`` counts what a
    stop drops."""

    class Bounded(H11Protocol):
        """uvicorn's HTTP/1.1 protocol with a connection cap, a request-head deadline, a
        deadline on answers the client does not take, and a stop that drops a request still
        unanswered just before uvicorn's grace period ends."""

        _deadline: asyncio.TimerHandle | None = None
        _idle_since = 0.0
        _unsent = 0  # bytes of answers waiting for the client at the last check
        _stalled_since = 0.0  # since when none of them has been taken

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                transport.write(refusal)
                transport.close()
                return
            self._idle_since = self._stalled_since = self.loop.time()
            self._deadline = self.loop.call_later(min(head_timeout_s, 1.0), self._check)

        def connection_lost(self, exc: Exception | None) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            super().connection_lost(exc)

        def shutdown(self) -> None:
            super().shutdown()
            if self.transport.is_closing():
                return
            # uvicorn cancels what is left when its grace ends, and logs each cancelled
            # request's CancelledError traceback. A request whose client stalls (a body that
            # never comes) is dropped first: its handler sees the client gone and ends.
            grace = float(self.config.timeout_graceful_shutdown or 0)
            self.loop.call_later(max(0.0, grace - DROP_BEFORE_S), self._drop)

        def _drop(self) -> None:
            # Every connection of the server at once (their timers fire together anyway).
            for connection in list(self.connections):
                if not connection.transport.is_closing():
                    dropped.count += 1
                    connection.transport.abort()
            # Once they know their clients are gone (connection_lost comes on a later turn),
            # requests still computing are cancelled: uvicorn would do it in a moment, with an
            # ERROR line of its own (the app takes the cancellation quietly).
            self.loop.call_later(DROP_BEFORE_S / 2, self._cancel_tasks)

        def _cancel_tasks(self) -> None:
            for task in list(self.tasks):
                task.cancel()

        def on_response_complete(self) -> None:
            self._idle_since = self.loop.time()
            super().on_response_complete()

        def _check(self) -> None:
            now = self.loop.time()
            unsent = self.transport.get_write_buffer_size()
            if unsent == 0 or unsent < self._unsent:
                self._stalled_since = now  # the client takes its answers
            self._unsent = unsent
            if unsent and now - self._stalled_since >= head_timeout_s:
                # A client that reads nothing (pipelining, say) would hold its connection for
                # ever: close() waits for the answers to be sent. Drop them.
                self.transport.abort()
                return
            busy = self.cycle is not None and not self.cycle.response_complete
            idle = not busy and not unsent and not self.transport.is_closing()
            if idle and now - self._idle_since >= head_timeout_s:
                self.transport.close()  # no whole request head in time: slow or idle
                return
            self._deadline = self.loop.call_later(min(head_timeout_s, 1.0), self._check)

    return Bounded
