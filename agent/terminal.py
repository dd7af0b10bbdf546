"""Text from outside (a model file, a labels file, the agent's answers) made safe to print on an
operator's terminal."""

from __future__ import annotations

import re
from typing import Any

__all__ = ["printable"]

# C0 and C1 control characters: a string from a file or a peer must not move the cursor,
# rewrite the terminal's title, clear the screen or start a fake line. And the invisible
# Unicode controls that reorder or break what a reader sees: bidirectional overrides and
# isolates (a "Trojan Source" line), the line and paragraph separators, zero-width marks.
_CONTROL = re.compile(
    r"[\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff\ufff9-\ufffb]"
)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(value: Any) -> Any:
    """``value`` with every control character of its strings shown escaped (``\\x1b``,
    ``\\u202e``), newlines included; dicts and lists are copied with their strings escaped,
    other values are returned as they are."""
    if isinstance(value, str):
        return _CONTROL.sub(_escape, value)
    if isinstance(value, dict):
        return {k: printable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [printable(v) for v in value]
    return value
