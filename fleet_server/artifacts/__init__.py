"""Artifact storage: uploaded model files by content hash, in a local folder or a bucket."""

from __future__ import annotations

from fleet_server.artifacts.store import Artifacts, ArtifactStore

__all__ = ["ArtifactStore", "Artifacts"]
