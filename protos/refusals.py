"""Refused releases on the wire: which operator's clear covers which refusal, one rule for the
agent (which forgets what a clear covers) and the server (which stops sending a clear once the
device reports nothing it covers).

A refusal names (model name, sha256 of the artifact); a model name of "" is a refusal an older
agent recorded without its model, and it counts for any model. A clear names a model and one
sha256, or "" for every refused release of that model.
"""

from __future__ import annotations

__all__ = ["MAX_REFUSALS", "covers"]

MAX_REFUSALS = 64  # refusals a device keeps (the oldest go first) and reports


def covers(clear_model: str, clear_sha256: str, refused_model: str, refused_sha256: str) -> bool:
    """Whether a clear of ``clear_model``'s release ``clear_sha256`` ("" = every one) covers the
    refusal of ``refused_model``'s release ``refused_sha256``."""
    return refused_model in (clear_model, "") and clear_sha256 in ("", refused_sha256)
