"""The device's identity, obtained once at enrollment and kept in the state dir (mode 0600)."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path

from agent._fs import atomic_write
from agent.errors import AgentError

__all__ = ["Identity"]

_FORMAT = 1


@dataclass(frozen=True)
class Identity:
    """Who this device is for the fleet server, and which release keys it trusts."""

    device_id: str
    token: str
    fleet_id: str
    release_keys: tuple[bytes, ...]
    mqtt_url: str

    @staticmethod
    def path(state_dir: Path) -> Path:
        """Where the identity is stored."""
        return state_dir / "identity.json"

    def save(self, state_dir: Path) -> None:
        """Persist atomically, readable by the agent's user only (it holds the token)."""
        payload = {
            "format": _FORMAT,
            "device_id": self.device_id,
            "token": self.token,
            "fleet_id": self.fleet_id,
            "release_keys": [base64.b64encode(k).decode() for k in self.release_keys],
            "mqtt_url": self.mqtt_url,
        }
        atomic_write(self.path(state_dir), json.dumps(payload, indent=2).encode(), mode=0o600)

    @classmethod
    def load(cls, state_dir: Path) -> Identity | None:
        """The stored identity, or None before enrollment.

        Raises:
            AgentError: the file exists but is unreadable or of an unknown format.
        """
        path = cls.path(state_dir)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise AgentError(f"cannot read identity {path}: {exc}") from exc
        if raw.get("format") != _FORMAT:
            raise AgentError(f"{path} has format {raw.get('format')!r}; expected {_FORMAT}")
        return cls(
            device_id=raw["device_id"],
            token=raw["token"],
            fleet_id=raw["fleet_id"],
            release_keys=tuple(base64.b64decode(k) for k in raw["release_keys"]),
            mqtt_url=raw.get("mqtt_url", ""),
        )
