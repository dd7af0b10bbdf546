"""Release keys and manifest signing."""

from __future__ import annotations

from fleet_server.signing.keys import ReleaseSigner, generate_release_key

__all__ = ["ReleaseSigner", "generate_release_key"]
