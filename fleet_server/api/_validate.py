"""Checks on names and labels that clients send, shared by every service."""

from __future__ import annotations

import re
from collections.abc import Mapping

from fleet_server.errors import BadRequestError

__all__ = ["MAX_LABELS", "NAME", "check_labels"]

# Model names, label keys, device ids: safe as MQTT topic levels and in logs.
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MAX_LABELS = 32


def check_labels(raw: Mapping[str, str], what: str = "label") -> dict[str, str]:
    """The labels as a dict, once every key is a name and every value at most 255 characters.

    Raises:
        BadRequestError: too many labels, or one is invalid.
    """
    if len(raw) > MAX_LABELS:
        raise BadRequestError(f"{len(raw)} {what}s; at most {MAX_LABELS}")
    for key, value in raw.items():
        if not NAME.match(key) or len(value) > 255:
            raise BadRequestError(
                f"{what} {key!r} is invalid (key: 1-64 of A-Z a-z 0-9 _ . -, value: at most 255 "
                "characters)"
            )
    return dict(raw)
