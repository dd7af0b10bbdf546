"""EdgeFleet fleet server: enrollment, model catalog, signed manifests, telemetry ingest."""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
