"""Downloading an artifact over HTTP(S) from the fleet's object store (a presigned URL) or a
mirror, with the standard library only (the agent stays lean).

A download resumes with a Range request from what the device has. Nothing from such a source is
trusted: the caller hashes every byte against the signed manifest, and here a source gets no
more than the bytes the manifest names (endless data), no longer than the stall limit without a
byte (a stalled mirror), no longer than the deadline in all, headers and TLS handshake included
(a source trickling bytes just within the stall limit), no Range it did not honour (a 200 to a
resume is refused, not skipped through), and no redirect to plain HTTP or off HTTP(S). A
malformed URL or redirect is a DownloadError like any other failure (the next source is tried).
HTTPS is checked against the system's roots or ``ca_file``; plain-HTTP URLs are refused unless
``allow_http`` (the hash protects the integrity of the model, not its privacy).
"""

from __future__ import annotations

import contextlib
import http.client
import re
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

from agent.client import pace
from agent.errors import DownloadError

__all__ = ["HttpSource", "fetch"]

_BLOCK = 64 * 1024
_MAX_REDIRECTS = 3
_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


@dataclass(frozen=True)
class HttpSource:
    """How this device reaches HTTP(S) sources."""

    ca_file: Path | None = None  # None: the system's roots
    allow_http: bool = False
    stall_s: float = 30.0  # no byte for this long: the source is given up on for now

    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)


def _connect(url: str, source: HttpSource, timeout: float) -> http.client.HTTPConnection:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError as exc:  # out of range, not a number
        raise DownloadError(f"refused download URL {url[:80]!r}: {exc}") from exc
    if parts.scheme == "https":
        return http.client.HTTPSConnection(
            parts.hostname or "", port, timeout=timeout, context=source.context()
        )
    if parts.scheme == "http" and source.allow_http:
        return http.client.HTTPConnection(parts.hostname or "", port, timeout=timeout)
    raise DownloadError(
        f"refused download URL scheme {parts.scheme or '(none)'!r}: https only"
        + ("" if parts.scheme != "http" else " (updates.allow_http_downloads allows http)")
    )


def _target(url: str) -> str:
    parts = urlsplit(url)
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def fetch(
    url: str,
    *,
    offset: int,
    expected_size: int,
    sink: Any,
    source: HttpSource,
    deadline_s: float,
    max_bytes_per_s: int = 0,
) -> int:
    """Write the artifact's bytes from ``offset`` to ``sink`` (its ``write``); return how many.

    Raises:
        DownloadError: the source failed, misbehaved or is not allowed (what was written stays:
            the caller resumes from it, from this source or another).
    """
    started = time.monotonic()
    position = offset
    current = url
    for _ in range(_MAX_REDIRECTS + 1):
        connection = _connect(current, source, timeout=source.stall_s)
        # The stall limit bounds each read; this bounds them all (a byte of header every few
        # seconds never stalls): at the deadline the connection is cut.
        watchdog = threading.Timer(max(0.0, started + deadline_s - time.monotonic()), _cut,
                                   (connection,))  # fmt: skip
        watchdog.daemon = True
        watchdog.start()
        try:
            headers = {"Range": f"bytes={offset}-"} if offset else {}
            headers["Accept-Encoding"] = "identity"
            try:
                connection.connect()
                if time.monotonic() > started + deadline_s:
                    raise DownloadError("the download's deadline passed before the source answered")
                connection.request("GET", _target(current), headers=headers)
                response = connection.getresponse()
            # ValueError: a host name IDNA cannot encode (UnicodeError), a malformed URL.
            except (OSError, http.client.HTTPException, ValueError) as exc:
                late = " (the download's deadline passed)" if not watchdog.is_alive() else ""
                raise DownloadError(f"{urlsplit(current).hostname}: {exc}{late}") from exc
            if response.status in (301, 302, 303, 307, 308):
                location = response.getheader("Location") or ""
                following = urljoin(current, location)
                if urlsplit(current).scheme == "https" and not following.startswith("https://"):
                    raise DownloadError(f"refused a redirect from HTTPS to {following[:80]!r}")
                current = following
                continue
            _check_status(response, offset, expected_size)
            position = _copy(
                response, sink, position=position, expected_size=expected_size,
                deadline=started + deadline_s, started=started, offset=offset,
                max_bytes_per_s=max_bytes_per_s,
            )  # fmt: skip
            return position - offset
        finally:
            watchdog.cancel()
            connection.close()
    raise DownloadError(f"more than {_MAX_REDIRECTS} redirects from {urlsplit(url).hostname}")


def _cut(connection: http.client.HTTPConnection) -> None:
    """End what the connection is waiting for (a read, the TLS handshake): its deadline."""
    if connection.sock is not None:
        with contextlib.suppress(OSError):
            connection.sock.shutdown(socket.SHUT_RDWR)


def _check_status(response: http.client.HTTPResponse, offset: int, expected_size: int) -> None:
    status = response.status
    if offset and status == 200:
        raise DownloadError("the source ignored the Range of a resumed download")
    if status not in (200, 206):
        raise DownloadError(f"the source answered HTTP {status} {response.reason}")
    if status == 206:
        found = _RANGE.fullmatch((response.getheader("Content-Range") or "").strip())
        if found is None or int(found.group(1)) != offset:
            raise DownloadError(
                f"the source sent range {response.getheader('Content-Range')!r} for bytes "
                f"{offset}- "
            )
        if found.group(3) != "*" and int(found.group(3)) != expected_size:
            raise DownloadError(
                f"the source's artifact has {found.group(3)} bytes; the signed manifest names "
                f"{expected_size}"
            )
    length = response.getheader("Content-Length")
    if length is not None and length.isdigit() and int(length) > expected_size - offset:
        raise DownloadError(
            f"the source announces {length} bytes from {offset}; the signed manifest names "
            f"{expected_size} in all"
        )


def _copy(
    response: http.client.HTTPResponse,
    sink: Any,
    *,
    position: int,
    expected_size: int,
    deadline: float,
    started: float,
    offset: int,
    max_bytes_per_s: int,
) -> int:
    while position < expected_size:
        if time.monotonic() > deadline:
            raise DownloadError(f"the download's deadline passed at byte {position}")
        try:
            block = response.read1(min(_BLOCK, expected_size - position))
        except (OSError, http.client.HTTPException) as exc:  # a stall is a socket timeout
            raise DownloadError(f"the source stopped at byte {position}: {exc}") from exc
        if not block:
            raise DownloadError(f"the source ended at byte {position} of {expected_size}")
        sink.write(block)
        position += len(block)
        pace(position - offset, started, max_bytes_per_s)
    # Whatever else the source would send is not read: the manifest names the size.
    return position
