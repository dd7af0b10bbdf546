"""EdgeFleet edge agent: runs signed models locally and reports to the fleet server."""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
