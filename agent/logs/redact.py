"""Secrets out of log records, before a record is kept or leaves the process (pure).

A record reaches the ring, the tail file in the state dir and, when an operator asks, the fleet
server: none of them may hold a token or a key. The agent's own log lines name no secret (its
endpoints print without credentials); this is the second line, for what a library or an error
message puts in: the secrets the agent holds now (enrollment and cloud tokens), private keys in
PEM, bearer tokens, ``user:password@`` in URLs, and ``token=...``-like pairs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["MIN_SECRET_CHARS", "REDACTED", "redact"]

REDACTED = "[redacted]"
MIN_SECRET_CHARS = 8  # shorter "secrets" would blank out ordinary words

_PRIVATE_KEY = re.compile(
    r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)", re.S
)
_BEARER = re.compile(r"(?i)\b(bearer\s+)[\w.~+/=-]{4,}")
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^\s/:@]*):[^\s/@]+@")
_PAIR = re.compile(
    r"(?i)\b((?:[a-z_]*_)?(?:token|password|passwd|secret|api[_-]?key))(\s*[=:]\s*)(['\"]?)"
    r"[^\s'\",;&]{4,}"
)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every secret in ``secrets`` (of :data:`MIN_SECRET_CHARS` or more) and every
    secret-shaped part replaced by :data:`REDACTED`."""
    for secret in sorted({s for s in secrets if len(s) >= MIN_SECRET_CHARS}, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    text = _PRIVATE_KEY.sub(f"[private key {REDACTED}]", text)
    text = _BEARER.sub(rf"\g<1>{REDACTED}", text)
    text = _USERINFO.sub(rf"\g<1>:{REDACTED}@", text)
    return _PAIR.sub(rf"\g<1>\g<2>\g<3>{REDACTED}", text)
