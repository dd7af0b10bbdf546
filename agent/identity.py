"""The device's identity, obtained once at enrollment and kept in the state dir (mode 0600)."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, replace
from pathlib import Path

from agent._fs import atomic_write
from agent.errors import AgentError, ManifestError
from agent.updates.trust import TrustedKeys, pin_keylist

__all__ = ["Identity"]

_FORMAT = 2


@dataclass(frozen=True)
class Identity:
    """Who this device is for the fleet server, and which keys it trusts."""

    device_id: str
    token: str
    fleet_id: str
    trust: TrustedKeys
    mqtt_url: str

    @staticmethod
    def path(state_dir: Path) -> Path:
        """Where the identity is stored."""
        return state_dir / "identity.json"

    def with_trust(self, trust: TrustedKeys) -> Identity:
        """The same identity trusting ``trust`` (after a key rotation)."""
        return replace(self, trust=trust)

    def save(self, state_dir: Path) -> None:
        """Persist atomically, readable by the agent's user only (it holds the token)."""
        payload = {
            "format": _FORMAT,
            "device_id": self.device_id,
            "token": self.token,
            "fleet_id": self.fleet_id,
            "keylist": base64.b64encode(self.trust.envelope).decode(),
            "mqtt_url": self.mqtt_url,
        }
        atomic_write(self.path(state_dir), json.dumps(payload, indent=2).encode(), mode=0o600)

    @classmethod
    def load(cls, state_dir: Path) -> Identity | None:
        """The stored identity, or None before enrollment.

        Raises:
            AgentError: the file exists but is unreadable, of another format, or its pinned key
                list no longer verifies (disk damage or tampering).
        """
        path = cls.path(state_dir)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise AgentError(f"cannot read identity {path}: {exc}") from exc
        if raw.get("format") != _FORMAT:
            raise AgentError(
                f"{path} has format {raw.get('format')!r}; this agent reads {_FORMAT}. "
                "Move it away and enroll the device again"
            )
        try:
            # Expiry is judged per manifest; here only the signatures of the pinned list count.
            trust = pin_keylist(base64.b64decode(raw["keylist"]), fleet_id=raw["fleet_id"], now=0)
        except (ManifestError, ValueError, KeyError) as exc:
            raise AgentError(f"the key list pinned in {path} does not verify: {exc}") from exc
        return cls(
            device_id=raw["device_id"],
            token=raw["token"],
            fleet_id=raw["fleet_id"],
            trust=trust,
            mqtt_url=raw.get("mqtt_url", ""),
        )
