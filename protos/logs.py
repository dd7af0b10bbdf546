"""A device's recent log on the wire (``DeviceService.UploadLog``): the bounds the agent keeps to
and the server enforces, and the level names, one rule for both sides and the CLI.

The agent keeps at most :data:`RING_RECORDS` records of :data:`MAX_MESSAGE_CHARS` characters
each (a traceback's head and end within :data:`MAX_TRACEBACK_CHARS`), :data:`RING_BYTES` in
all, and :data:`TAIL_BYTES` of the run before; an upload of everything it keeps fits
:data:`MAX_UPLOAD_BYTES`, which the server does not read past.
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_LINES",
    "LEVELS",
    "MAX_LINES",
    "MAX_MESSAGE_CHARS",
    "MAX_PART_RECORDS",
    "MAX_TRACEBACK_CHARS",
    "MAX_UPLOAD_BYTES",
    "MAX_UPLOAD_RECORDS",
    "RING_BYTES",
    "RING_RECORDS",
    "TAIL_BYTES",
    "level_name",
    "parse_level",
]

RING_RECORDS = 2000  # records of this run the agent keeps in memory
RING_BYTES = 256 * 1024  # ... and their text, in UTF-8 bytes
TAIL_BYTES = 64 * 1024  # of the run before, kept in the state dir
MAX_MESSAGE_CHARS = 2048  # of one record's message
MAX_TRACEBACK_CHARS = 4096  # of one record's traceback (its first lines and its end)
MAX_LINES = RING_RECORDS  # an operator may ask for this many records at most
DEFAULT_LINES = 200
MAX_PART_RECORDS = 200  # records in one LogUpload message
# What the server reads of one upload: everything an agent keeps, with room for the encoding.
MAX_UPLOAD_BYTES = 2 * (RING_BYTES + TAIL_BYTES)
MAX_UPLOAD_RECORDS = MAX_LINES

LEVELS = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40, "CRITICAL": 50}
_NAMES = {number: name for name, number in LEVELS.items()}


def level_name(level: int) -> str:
    """``WARNING`` for 30; a number between the named ones shows as ``LEVEL 25``."""
    return _NAMES.get(level, f"LEVEL {level}")


def parse_level(text: str) -> int:
    """``warning`` (any case) or ``WARN`` -> 30.

    Raises:
        ValueError: not a level name, with the names that are.
    """
    name = text.strip().upper()
    name = {"WARN": "WARNING", "FATAL": "CRITICAL"}.get(name, name)
    if name not in LEVELS:
        raise ValueError(f"no log level {text[:32]!r}: {', '.join(n.lower() for n in LEVELS)}")
    return LEVELS[name]
