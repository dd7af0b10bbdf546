"""The model catalog: what the server computes about a pushed model."""

from __future__ import annotations

from fleet_server.catalog.smoke import SmokeExpectation, expect

__all__ = ["SmokeExpectation", "expect"]
