"""Keeping the fleet's trust from running out: the manifests in use re-signed after a release
key rotation and re-issued before they expire, the key list renewed, retired keys deleted."""

from __future__ import annotations
