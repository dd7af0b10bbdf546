"""What ``edgefleet`` writes reaches an operator's terminal, and much of it comes from devices
(names, states, error details, hardware facts). The server stores device text escaped
(:func:`fleet_server.storage.db.stored_text`); this is the second line: every control character
the CLI writes, but a newline and a tab, is shown escaped (``\\x1b``), so no text can clear
the screen, set the terminal's title or rewrite a line. A carriage return is kept only where
the CLI itself draws a progress bar (at the start of what is written, on standard error)."""

from __future__ import annotations

import re
from typing import Any, TextIO

__all__ = ["EscapingStream"]

# As agent.terminal.printable, but for a newline and a tab.
_CONTROL = re.compile(
    r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff\ufff9-\ufffb]"
)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


class EscapingStream:
    """A text stream's writer that escapes control characters; the rest is the stream's."""

    def __init__(self, stream: TextIO, *, progress: bool = False) -> None:
        self._stream = stream
        self._progress = progress

    def write(self, text: str) -> int:
        lead = "\r" if self._progress and text.startswith("\r") else ""
        self._stream.write(lead + _CONTROL.sub(_escape, text[len(lead) :]))
        return len(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)
