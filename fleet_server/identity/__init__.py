"""Device identity: the fleet CA and enrollment tokens."""

from __future__ import annotations
