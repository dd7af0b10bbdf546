"""Model updates: the trust chain, manifest verification, the model store and the updater."""

from __future__ import annotations

__all__ = ["store", "trust", "updater", "verify"]
