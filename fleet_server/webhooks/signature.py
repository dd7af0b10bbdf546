"""The signature of a delivery (pure): HMAC-SHA256 with the webhook's secret over
``"<timestamp>." + body``, sent as ``X-EdgeFleet-Signature: sha256=<hex>`` beside
``X-EdgeFleet-Timestamp: <unix seconds>``.

The timestamp is inside what is signed, so a receiver that refuses a timestamp more than
:data:`TOLERANCE_S` away from its clock refuses a replayed delivery; the event id in the body
(and in ``X-EdgeFleet-Event-Id``) lets it drop a repeat within that window.
docs/notifications.md shows a receiver.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from fleet_server.errors import BadRequestError

__all__ = [
    "EVENT_HEADER",
    "ID_HEADER",
    "MAX_SECRET",
    "MIN_SECRET",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "TOLERANCE_S",
    "check_secret",
    "new_secret",
    "sign",
    "verify",
]

SIGNATURE_HEADER = "X-EdgeFleet-Signature"
TIMESTAMP_HEADER = "X-EdgeFleet-Timestamp"
ID_HEADER = "X-EdgeFleet-Event-Id"
EVENT_HEADER = "X-EdgeFleet-Event"
TOLERANCE_S = 300
MIN_SECRET, MAX_SECRET = 16, 256


def new_secret() -> str:
    """A fresh secret (256 random bits)."""
    return "whsec_" + secrets.token_urlsafe(32)


def check_secret(secret: str) -> str:
    """A secret an admin chose, as kept.

    Raises:
        BadRequestError: too short or long, or not printable ASCII without spaces.
    """
    if not MIN_SECRET <= len(secret) <= MAX_SECRET:
        raise BadRequestError(
            f"a webhook secret has {MIN_SECRET} to {MAX_SECRET} characters, this one "
            f"{len(secret)}; or leave it out and the server makes one"
        )
    if not all("!" <= c <= "~" for c in secret):
        raise BadRequestError("a webhook secret is printable ASCII without spaces")
    return secret


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The signature header's value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: str, timestamp: str, signature: str, body: bytes, now: float) -> bool:
    """Whether a delivery is genuine and fresh (what a receiver checks)."""
    try:
        sent = int(timestamp)
    except ValueError:
        return False
    if abs(now - sent) > TOLERANCE_S:
        return False
    return hmac.compare_digest(sign(secret, sent, body), signature)
