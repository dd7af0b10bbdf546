"""Artifact storage: uploaded model files by content hash."""

from __future__ import annotations

from fleet_server.artifacts.store import ArtifactStore

__all__ = ["ArtifactStore"]
