"""The decisions of webhook delivery, pure: which URLs and addresses a webhook may use, when a
failed delivery is tried again, when it is given up, and the bounds of everything kept.

Retries back off exponentially from the first delay (``--webhook-retry-after``, 10 s by
default) up to :data:`MAX_DELAY_S`, each delay with jitter (half to all of it) so that the
deliveries of a receiver that was down do not all come back at once; a receiver's
``Retry-After`` is honoured up to the same cap. A delivery still failing once its event is
:data:`GIVE_UP_AFTER_S` old is given up (after one attempt at least: a server that was down
for longer still tries once).
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from dataclasses import dataclass
from enum import StrEnum

from fleet_server.errors import BadRequestError

__all__ = [
    "GIVE_UP_AFTER_S",
    "KEEP_S",
    "MAX_DELAY_S",
    "MAX_PENDING",
    "MAX_URL",
    "MAX_WEBHOOKS",
    "DeliveryState",
    "Next",
    "after_attempt",
    "backoff",
    "check_url",
    "refused_address",
    "shown_url",
]

MAX_URL = 2048
MAX_WEBHOOKS = 50
MAX_DELAY_S = 3600.0
GIVE_UP_AFTER_S = 86400
KEEP_S = 7 * 86400  # the delivery log: attempts and finished deliveries
MAX_PENDING = 10_000  # per webhook: beyond it the oldest pending deliveries are dropped


class DeliveryState(StrEnum):
    PENDING = "pending"  # not delivered yet: waiting for its next attempt
    DELIVERED = "delivered"  # a 2xx answer
    FAILED = "failed"  # given up: still failing once its event was a day old
    DROPPED = "dropped"  # not tried: the webhook had MAX_PENDING newer ones waiting


def check_url(url: str, *, allow_http: bool) -> str:
    """A webhook URL as kept: https (http only when allowed), a host, no credentials, no
    fragment, no address a webhook may not reach (see :func:`refused_address`).

    Raises:
        BadRequestError: what is wrong with it, and what to do.
    """
    url = url.strip()
    if not url or len(url) > MAX_URL:
        raise BadRequestError(f"a webhook URL has 1 to {MAX_URL} characters, this one {len(url)}")
    if not all("!" <= c <= "~" for c in url):
        raise BadRequestError(
            "a webhook URL is printable ASCII without spaces (an international host name in "
            "its xn-- form, other characters %-encoded)"
        )
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "http" and not allow_http:
        raise BadRequestError(
            "a webhook URL is https://: over http:// anyone on the way reads every event (the "
            "signature proves who sent it but hides nothing); allow it with --allow-http for a "
            "receiver on a trusted network"
        )
    if scheme not in ("http", "https"):
        raise BadRequestError(f"a webhook URL is https://HOST/PATH, not {scheme or 'no'} scheme")
    if parts.username is not None or parts.password is not None:
        raise BadRequestError(
            "a webhook URL must not carry credentials (USER:PASSWORD@): the server signs every "
            "delivery with the webhook's secret for the receiver to check instead"
        )
    if parts.fragment or url.endswith("#"):
        raise BadRequestError("a webhook URL has no #fragment (it is never sent)")
    try:
        host, _port = parts.hostname, parts.port
    except ValueError as exc:
        raise BadRequestError(f"the webhook URL's port is not valid: {exc}") from exc
    if not host:
        raise BadRequestError("a webhook URL names a host: https://HOST/PATH")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return url
    problem = refused_address(address)
    if problem:
        raise BadRequestError(f"webhook URL: {problem}")
    return url


# Instance metadata (credentials) outside the link-local ranges: AWS's IPv6 endpoint and
# Alibaba Cloud's.
_METADATA = frozenset(
    {ipaddress.ip_address("fd00:ec2::254"), ipaddress.ip_address("100.100.100.200")}
)
# IPv6 forms that carry an IPv4 address a host or its network may reach: NAT64's well-known
# prefix (RFC 6052) and the deprecated IPv4-compatible ::a.b.c.d (::ffff:a.b.c.d and 6to4's
# 2002::/16 have their own properties).
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_COMPATIBLE = ipaddress.ip_network("::/96")


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64 or (address in _COMPATIBLE and int(address) > 1):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def refused_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """Why a webhook may not connect to ``address`` ("" when it may): link-local addresses
    (where clouds answer with instance credentials, 169.254.169.254), the clouds' other
    metadata addresses (fd00:ec2::254, 100.100.100.200), unspecified, multicast and broadcast
    ones, and an IPv6 address that carries one of those IPv4 ones (::ffff:169.254.169.254,
    64:ff9b::a9fe:a9fe, ...). Checked at every connection, after the name is resolved, so a
    name that later resolves there is refused too."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id:
            address = ipaddress.IPv6Address(str(address).split("%", 1)[0])
        address = _embedded_ipv4(address) or address
    if address in _METADATA:
        return f"{address} is a cloud's instance metadata address; refused"
    if address.is_link_local:
        return f"{address} is link-local (cloud instance metadata lives there); refused"
    if address.is_unspecified or address.is_multicast or str(address) == "255.255.255.255":
        return f"{address} is not a host's address; refused"
    return ""


def shown_url(url: str) -> str:
    """A webhook URL for lists and logs: its query (where services put tokens) hidden."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(query="…" if parts.query else "", fragment=""))


def backoff(attempt: int, first_s: float, rand: float) -> float:
    """Seconds before the attempt after failed attempt number ``attempt`` (1, 2, ...):
    ``first_s`` doubled each time up to :data:`MAX_DELAY_S`, then scaled by half to all of it
    (``rand`` is uniform in [0, 1))."""
    ceiling = min(MAX_DELAY_S, first_s * 2.0 ** min(max(attempt - 1, 0), 32))
    return ceiling * (0.5 + 0.5 * min(max(rand, 0.0), 1.0))


@dataclass(frozen=True)
class Next:
    """A delivery after an attempt: its state and, while pending, its next attempt's time."""

    state: DeliveryState
    next_at: float = 0.0
    reason: str = ""


def after_attempt(
    *,
    ok: bool,
    attempts: int,
    created_at: float,
    now: float,
    first_s: float,
    rand: float,
    retry_after: float | None = None,
) -> Next:
    """What happens to a delivery after its ``attempts``-th attempt succeeded (``ok``) or not."""
    if ok:
        return Next(DeliveryState.DELIVERED)
    if now - created_at >= GIVE_UP_AFTER_S:
        return Next(
            DeliveryState.FAILED,
            reason=f"given up after {attempts} attempt(s): the event is over "
            f"{GIVE_UP_AFTER_S // 3600} h old",
        )
    delay = backoff(attempts, first_s, rand)
    if retry_after is not None and retry_after > delay:
        delay = min(retry_after, MAX_DELAY_S)
    return Next(DeliveryState.PENDING, now + delay)
