"""Addresses, ports and small files of the server's start: host:port parsing, a free port,
the embedded broker's remembered port, private files."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from agent.errors import AgentError
from agent.ports import PortInUseError, held_by_another
from agent.telemetry.mqtt import MqttEndpoint, parse_mqtt_url
from fleet_server.errors import DataDirError

__all__ = [
    "bracket",
    "claim_ports",
    "free_port",
    "mqtt_endpoint",
    "remembered_port",
    "split_host_port",
    "wildcard",
    "write_private",
]


def split_host_port(value: str, what: str) -> tuple[str, int]:
    """``host:port`` (IPv6 hosts in brackets or bare) as (host, port).

    Raises:
        DataDirError: not host:port.
    """
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise DataDirError(f"{what} {value!r} must be host:port")
    return host, int(port)


def claim_ports(listeners: dict[str, str]) -> None:
    """Refuse to start when another process listens on one of the server's addresses (option
    -> host:port; empty ones skipped): grpcio would share it silently (agent.ports).

    Raises:
        PortInUseError: one is held; the server exits with agent.ports.EXIT_PORT_IN_USE.
    """
    for what, address in listeners.items():
        if address and held_by_another(address):
            raise PortInUseError(what, address)


def bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path``, 0600 (a file that was there before becomes 0600 too)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def remembered_port(path: Path) -> int | None:
    """The embedded broker's port of the last start, if recorded and sane."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() and 0 < int(text) < 65536 else None


def wildcard(host: str) -> bool:
    return host in ("", "0.0.0.0", "::")  # noqa: S104 - a comparison, not a bind


def mqtt_endpoint(url: str) -> MqttEndpoint:
    try:
        return parse_mqtt_url(url)
    except AgentError as exc:  # the agent's MQTT client speaks the agent's errors
        raise DataDirError(f"--mqtt-url: {exc}") from exc
