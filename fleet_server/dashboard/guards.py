"""What the dashboard accepts from a browser, decided without I/O: where a login may send the
browser on (a local path only), which query values a page takes (a bad one is a 400 with one
line, never a 500), whether a POST comes from the dashboard's own pages, and the forms'
fields."""

from __future__ import annotations

import re
from collections.abc import Mapping

__all__ = [
    "MAX_OFFSET",
    "PAGE_SIZES",
    "BadInputError",
    "local_target",
    "query_choice",
    "query_int",
    "query_text",
    "row_id",
    "same_origin",
    "selector",
    "waves",
]

MAX_OFFSET = 1_000_000_000  # far beyond any fleet, far within SQL's integers
PAGE_SIZES = (25, 50, 100, 200)
_MAX_TARGET = 2000
# A path and query of printable ASCII with no backslash: what a Location header can carry
# unchanged, and what no browser reads as another host.
_LOCAL = re.compile(r"/(?![/\\])[\x21-\x5b\x5d-\x7e]*")
_ID = re.compile(r"[0-9]{1,18}")


class BadInputError(Exception):
    """A query value or form field the dashboard does not take (the message says which and
    what it takes)."""


def local_target(raw: str | None, default: str = "/") -> str:
    """``raw`` if it is a path on this server (one leading ``/``, no ``//``, no backslash, no
    scheme, no control character, no space, ASCII), else ``default``: a login's ``next`` can
    neither send the browser to another site nor add a header."""
    if raw and len(raw) <= _MAX_TARGET and _LOCAL.fullmatch(raw):
        return raw
    return default


def query_int(query: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    """An integer query value within [low, high] (``default`` when absent or empty).

    Raises:
        BadInputError: not a whole number, or out of range.
    """
    raw = query.get(name, "")
    if raw == "":
        return default
    if not re.fullmatch(r"-?[0-9]{1,12}", raw):
        raise BadInputError(f"{name} must be a whole number from {low} to {high}")
    value = int(raw)
    if not low <= value <= high:
        raise BadInputError(f"{name} must be a whole number from {low} to {high}")
    return value


def query_choice(
    query: Mapping[str, str], name: str, choices: tuple[int, ...], default: int
) -> int:
    """One of ``choices`` (a page size).

    Raises:
        BadInputError: another value.
    """
    raw = query.get(name, "")
    if raw == "":
        return default
    if raw not in {str(c) for c in choices}:
        raise BadInputError(f"{name} must be one of {', '.join(str(c) for c in choices)}")
    return int(raw)


def query_text(query: Mapping[str, str], name: str, longest: int) -> str:
    """A text query value of at most ``longest`` characters, without control characters.

    Raises:
        BadInputError: longer, or with a control character.
    """
    raw = query.get(name, "")
    if len(raw) > longest:
        raise BadInputError(f"{name} must be at most {longest} characters")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in raw):
        raise BadInputError(f"{name} must not contain control characters")
    return raw


def row_id(raw: str) -> int | None:
    """A rollout id from a path (digits, fits SQL's integers), or None."""
    return int(raw) if _ID.fullmatch(raw) else None


def same_origin(host: str, origin: str | None, fetch_site: str | None) -> bool:
    """Whether a POST comes from the dashboard's own pages: browsers send ``Origin`` and
    ``Sec-Fetch-Site`` with every form POST; a client without them (curl, a script) is not a
    browser another site could steer. Guards the login form, which has no session yet (the
    other forms carry the session's CSRF token too)."""
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        return False
    # "null": a browser that hides the origin (a referrer policy); Sec-Fetch-Site decided.
    return origin in (None, "null") or origin == f"https://{host}"


def selector(raw: str) -> dict[str, str]:
    """``site=lab, tier=beta`` (empty: every device).

    Raises:
        BadInputError: an item is not KEY=VALUE.
    """
    result: dict[str, str] = {}
    for item in (i.strip() for i in raw.split(",")):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise BadInputError(f"selector item {item[:80]!r} is not KEY=VALUE")
        result[key.strip()] = value.strip()
    return result


def waves(raw: str) -> list[str]:
    """``1, 10%, 50%, 100%`` (empty: the server's default waves); the server checks them."""
    items = [w.strip() for w in raw.split(",") if w.strip()]
    if len(items) > 20:
        raise BadInputError("at most 20 waves")
    return items
