"""On-disk model store and update journal: verified artifacts by hash, and one atomically
replaced state file saying what is active, what was active before, which health windows are
open, and which releases were rolled back.

Layout under the agent's state dir::

    models/<name>/<sha256>.tflite   verified artifacts (active, last-known-good, fallbacks)
    staging/<sha256>.part           downloads in progress (resumed from their length)
    active.json                     the journal (format 2), atomically replaced

A kill -9 at any instant leaves either the old or the new journal: the active model always
names a verified artifact that is on disk.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from agent._fs import atomic_write, fsync_dir
from agent.errors import AgentError

__all__ = ["ActiveEntry", "HealthWindow", "ModelStore"]

log = logging.getLogger(__name__)
_FORMAT = 2
_MAX_REFUSED = 64


@dataclass(frozen=True)
class ActiveEntry:
    """The model version a device serves for one model name."""

    version: str
    release_counter: int
    sha256: str
    filename: str
    fallback_filename: str = ""  # the CPU variant shipped with an Edge TPU model
    # After falling back from a damaged file: the artifact of the release the floor (the
    # release counter) belongs to, which may be installed again under that same release.
    floor_sha256: str = ""


@dataclass(frozen=True)
class HealthWindow:
    """An activation still under watch: since when, and how often the agent started since."""

    since: float
    starts: int


class ModelStore:
    """Artifacts and the journal in one state directory."""

    def __init__(self, state_dir: Path, *, keep_versions: int = 2) -> None:
        """``keep_versions``: artifacts kept per model besides the active one (the
        last-known-good counts; older ones go, newest kept first)."""
        self.root = state_dir
        self._keep = max(1, keep_versions)
        self.models_dir = state_dir / "models"
        self.staging_dir = state_dir / "staging"
        self._journal_file = state_dir / "active.json"
        for directory in (self.models_dir, self.staging_dir):
            directory.mkdir(parents=True, exist_ok=True)

    def staging_path(self, sha256: str) -> Path:
        """Where the download of artifact ``sha256`` accumulates."""
        return self.staging_dir / f"{sha256}.part"

    def clear_staging(self, keep: Path) -> None:
        """Delete every download in staging but ``keep`` (the one in progress): a superseded
        download's partial file would otherwise stay for good (issue 18)."""
        for partial in self.staging_dir.iterdir():
            if partial != keep:
                try:
                    partial.unlink()
                except OSError as exc:  # a directory someone made there: leave it, say so
                    log.warning("cannot remove %s from staging: %s", partial.name, exc)
                else:
                    log.info("removed the abandoned download %s", partial.name)

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

    # the journal ---------------------------------------------------------------------------

    def _read(self) -> dict[str, Any]:
        try:
            raw = json.loads(self._journal_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"format": _FORMAT, "models": {}, "previous": {}, "health": {}, "refused": []}
        except (OSError, ValueError) as exc:
            raise AgentError(f"cannot read {self._journal_file}: {exc}") from exc
        if raw.get("format") == 1:  # the foundation's pointer file: no history yet
            raw = {
                "format": _FORMAT,
                "models": raw["models"],
                "previous": {},
                "health": {},
                "refused": [],
            }
        if raw.get("format") != _FORMAT:
            raise AgentError(
                f"{self._journal_file} has format {raw.get('format')!r}; this agent reads {_FORMAT}"
            )
        return raw

    def _write(self, journal: dict[str, Any]) -> None:
        atomic_write(self._journal_file, json.dumps(journal, indent=2, sort_keys=True).encode())

    @staticmethod
    def _entries(table: dict[str, Any]) -> dict[str, ActiveEntry]:
        return {name: ActiveEntry(**entry) for name, entry in table.items()}

    def active(self) -> dict[str, ActiveEntry]:
        """What is active; empty when nothing was ever activated.

        Raises:
            AgentError: the journal exists but cannot be read (a bug or disk damage).
        """
        return self._entries(self._read()["models"])

    def previous(self) -> dict[str, ActiveEntry]:
        """The last-known-good version of each model that has one."""
        return self._entries(self._read()["previous"])

    def health(self) -> dict[str, HealthWindow]:
        """Activations still under watch."""
        return {n: HealthWindow(**h) for n, h in self._read()["health"].items()}

    def refused(self) -> set[str]:
        """Hashes of releases that were rolled back here: never installed again."""
        return set(self._read()["refused"])

    def set_active(self, name: str, entry: ActiveEntry, *, watch: bool = False) -> None:
        """Atomically make ``entry`` active; the old entry becomes the last-known-good one.

        ``watch`` opens a health window for the new entry.
        """
        journal = self._read()
        old = journal["models"].get(name)
        if old is not None and old["sha256"] != entry.sha256:
            journal["previous"][name] = old
        journal["models"][name] = asdict(entry)
        if watch:
            journal["health"][name] = asdict(HealthWindow(since=time.time(), starts=0))
        else:
            journal["health"].pop(name, None)
        self._write(journal)
        self._prune(name, journal)

    def settle_floor(self, name: str, release_counter: int) -> None:
        """The active release of ``name`` is what the server wants: raise its release floor to
        ``release_counter`` (when higher) and let it belong to this release alone."""
        journal = self._read()
        entry = journal["models"].get(name)
        if entry is None:
            return
        entry["release_counter"] = max(entry["release_counter"], release_counter)
        entry.pop("floor_sha256", None)
        self._write(journal)

    def close_health(self, name: str) -> None:
        """The activation of ``name`` passed its health window."""
        journal = self._read()
        if journal["health"].pop(name, None) is not None:
            self._write(journal)

    def note_start(self) -> dict[str, HealthWindow]:
        """Count an agent start in every open health window; return the windows."""
        journal = self._read()
        for window in journal["health"].values():
            window["starts"] += 1
        if journal["health"]:
            self._write(journal)
        return {n: HealthWindow(**h) for n, h in journal["health"].items()}

    def roll_back(self, name: str, *, refuse: bool = True) -> ActiveEntry | None:
        """Make the last-known-good version active again and (with ``refuse``) never reinstall
        the bad one; without it (the release is fine, its file on this disk is not) the
        release can be downloaded and installed again.

        Returns the restored entry, or None when there is nothing to go back to (the bad
        release is still recorded as refused, and still active without ``refuse``).
        """
        journal = self._read()
        bad = journal["models"].get(name)
        good = journal["previous"].pop(name, None)
        journal["health"].pop(name, None)
        if bad is not None and refuse:
            journal["refused"] = ([*journal["refused"], bad["sha256"]])[-_MAX_REFUSED:]
        if good is not None:
            if bad is not None:
                # The anti-rollback floor stays at the highest release seen: going back must
                # not let a replayed release between the two in.
                good.pop("floor_sha256", None)
                if not refuse and bad["release_counter"] >= good["release_counter"]:
                    good["floor_sha256"] = bad.get("floor_sha256") or bad["sha256"]
                good["release_counter"] = max(good["release_counter"], bad["release_counter"])
            journal["models"][name] = good
        self._write(journal)
        return ActiveEntry(**good) if good is not None else None

    def _prune(self, name: str, journal: dict[str, Any]) -> None:
        keep = set()
        for table in ("models", "previous"):
            entry = journal[table].get(name)
            if entry is not None:
                keep |= {entry["filename"], entry.get("fallback_filename", "")}
        directory = self.models_dir / name
        files = sorted(directory.glob("*.tflite"), key=lambda p: p.stat().st_mtime, reverse=True)
        survivors = [p for p in files if p.name in keep]
        # The last-known-good is already kept; keep_versions counts it.
        spare = max(0, self._keep - (1 if journal["previous"].get(name) else 0))
        survivors += [p for p in files if p.name not in keep][:spare]
        for path in files:
            if path not in survivors:
                log.info("removing old artifact %s", path)
                path.unlink(missing_ok=True)
