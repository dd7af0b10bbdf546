"""Device labels: what a client may set, and which devices a label selector picks."""

from __future__ import annotations

from collections.abc import Mapping

from fleet_server.errors import BadRequestError
from protos.names import is_name

__all__ = ["MAX_LABELS", "check_labels", "matches"]

MAX_LABELS = 32


def check_labels(raw: Mapping[str, str], what: str = "label") -> dict[str, str]:
    """The labels as a dict, once every key is a name and every value at most 255 characters.

    Raises:
        BadRequestError: too many labels, or one is invalid.
    """
    if len(raw) > MAX_LABELS:
        raise BadRequestError(f"{len(raw)} {what}s; at most {MAX_LABELS}")
    for key, value in raw.items():
        if not is_name(key) or len(value) > 255:
            raise BadRequestError(
                f"{what} {key!r} is invalid (key: 1-64 of A-Z a-z 0-9 _ . -, value: at most 255 "
                "characters)"
            )
    return dict(raw)


def matches(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """True when a device's labels carry every key=value of the selector (empty: every device)."""
    return all(labels.get(key) == value for key, value in selector.items())
