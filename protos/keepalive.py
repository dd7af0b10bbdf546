"""HTTP/2 keepalive on the device API: the agent's pings and the server's ping policy, in one place.

A connection whose far end vanished without a FIN or RST (a NAT entry dropped, a stalled proxy)
looks open to both ends: without pings, calls on it wait for their deadlines and new calls are
sent into the same dead connection. The agent pings every :data:`PING_INTERVAL_MS`, also while
no call is open; a ping not answered within :data:`PING_TIMEOUT_MS` closes the connection, its
calls fail UNAVAILABLE and the next call dials anew.

The server must accept pings that often, also on a connection without calls: by grpc's
defaults it allows one ping in 5 minutes (none in 2 hours without calls) and answers more with
GOAWAY "too_many_pings", which closes the connection. Its floor,
:data:`SERVER_MIN_PING_INTERVAL_MS`, is half the agent's interval because timers jitter. The
server pings too (:data:`SERVER_PING_INTERVAL_MS`), so that a download stuck on a vanished
device gives its worker thread back.
"""

from __future__ import annotations

__all__ = [
    "PING_INTERVAL_MS",
    "PING_TIMEOUT_MS",
    "SERVER_MIN_PING_INTERVAL_MS",
    "SERVER_PING_INTERVAL_MS",
    "SERVER_PING_TIMEOUT_MS",
    "client_options",
    "server_options",
]

PING_INTERVAL_MS = 20_000  # the agent pings this often
PING_TIMEOUT_MS = 10_000  # a ping not answered in this long: the connection is dead
SERVER_MIN_PING_INTERVAL_MS = 10_000  # the server accepts pings this often (<= the agent's)
SERVER_PING_INTERVAL_MS = 60_000
SERVER_PING_TIMEOUT_MS = 20_000


def client_options() -> list[tuple[str, int]]:
    """gRPC channel options for the agent's channels to the fleet server."""
    return [
        ("grpc.keepalive_time_ms", PING_INTERVAL_MS),
        ("grpc.keepalive_timeout_ms", PING_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", 1),
        # grpc's default stops pinging after 2 pings without data: an idle connection between
        # check-ins would go unwatched.
        ("grpc.http2.max_pings_without_data", 0),
    ]


def server_options() -> list[tuple[str, int]]:
    """gRPC server options: accept the agent's pings, and ping back."""
    return [
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", SERVER_MIN_PING_INTERVAL_MS),
        ("grpc.http2.min_ping_interval_without_data_ms", SERVER_MIN_PING_INTERVAL_MS),
        ("grpc.keepalive_time_ms", SERVER_PING_INTERVAL_MS),
        ("grpc.keepalive_timeout_ms", SERVER_PING_TIMEOUT_MS),
    ]
