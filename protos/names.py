"""Names and digests on the wire: one rule each, for the agent and the server alike.

A name (model, label key, device id) is safe as an MQTT topic level, a file name and in a log
line. Each check matches the whole string (a trailing newline is not a name).
"""

from __future__ import annotations

import re

__all__ = ["MAX_NAME", "is_name", "is_sha256", "is_version"]

MAX_NAME = 64
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
# A version as devices report it (the server's push takes semantic versions only).
_VERSION = re.compile(r"[0-9A-Za-z.+-]{1,32}")


def is_name(value: str) -> bool:
    """1-64 of A-Z a-z 0-9 _ . -, not starting with one of _ . -"""
    return _NAME.fullmatch(value) is not None


def is_sha256(value: str) -> bool:
    """64 lower-case hex digits."""
    return _SHA256.fullmatch(value) is not None


def is_version(value: str) -> bool:
    """1-32 of A-Z a-z 0-9 . + -"""
    return _VERSION.fullmatch(value) is not None
