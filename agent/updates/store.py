"""On-disk model store: verified artifacts by hash, and an atomically switched active pointer.

Layout under the agent's state dir::

    models/<name>/<sha256>.tflite   verified artifacts (current and last-known-good)
    staging/<sha256>.part           downloads in progress (resumed from their length)
    active.json                     {"format": 1, "models": {name: {...}}}, atomically replaced
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from agent._fs import atomic_write, fsync_dir
from agent.errors import AgentError

__all__ = ["ActiveEntry", "ModelStore"]

log = logging.getLogger(__name__)
_FORMAT = 1
_KEEP_PER_MODEL = 2  # besides the active files: one more, the last-known-good artifact


@dataclass(frozen=True)
class ActiveEntry:
    """The model version a device serves for one model name."""

    version: str
    release_counter: int
    sha256: str
    filename: str
    fallback_filename: str = ""  # the CPU variant shipped with an Edge TPU model


class ModelStore:
    """Artifacts and the active pointer in one state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir
        self.models_dir = state_dir / "models"
        self.staging_dir = state_dir / "staging"
        self._active_file = state_dir / "active.json"
        for directory in (self.models_dir, self.staging_dir):
            directory.mkdir(parents=True, exist_ok=True)

    def staging_path(self, sha256: str) -> Path:
        """Where the download of artifact ``sha256`` accumulates."""
        return self.staging_dir / f"{sha256}.part"

    def artifact_path(self, name: str, sha256: str) -> Path:
        """Where a verified artifact lives."""
        return self.models_dir / name / f"{sha256}.tflite"

    def commit_artifact(self, name: str, sha256: str, staged: Path) -> Path:
        """Move a verified staged download into the store; return its final path."""
        final = self.artifact_path(name, sha256)
        final.parent.mkdir(parents=True, exist_ok=True)
        staged.replace(final)
        fsync_dir(final.parent)
        return final

    def active(self) -> dict[str, ActiveEntry]:
        """The active pointer; empty when nothing was ever activated.

        Raises:
            AgentError: the pointer file exists but cannot be read (a bug or disk damage).
        """
        try:
            raw = json.loads(self._active_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise AgentError(f"cannot read {self._active_file}: {exc}") from exc
        if raw.get("format") != _FORMAT:
            raise AgentError(
                f"{self._active_file} has format {raw.get('format')!r}; this agent reads {_FORMAT}"
            )
        return {name: ActiveEntry(**entry) for name, entry in raw["models"].items()}

    def set_active(self, name: str, entry: ActiveEntry) -> None:
        """Atomically make ``entry`` the active version of ``name``, then prune old artifacts."""
        models = self.active()
        models[name] = entry
        payload = {"format": _FORMAT, "models": {k: asdict(v) for k, v in models.items()}}
        atomic_write(self._active_file, json.dumps(payload, indent=2, sort_keys=True).encode())
        self._prune(name, keep={entry.filename, entry.fallback_filename} - {""})

    def _prune(self, name: str, keep: set[str]) -> None:
        directory = self.models_dir / name
        files = sorted(directory.glob("*.tflite"), key=lambda p: p.stat().st_mtime, reverse=True)
        survivors = [p for p in files if p.name in keep]
        survivors += [p for p in files if p.name not in keep][: _KEEP_PER_MODEL - 1]
        for path in files:
            if path not in survivors:
                log.info("removing old artifact %s", path)
                path.unlink(missing_ok=True)
