"""On-disk model store and update journal: verified artifacts by hash, and one atomically
replaced state file, the lifecycle journal (``agent.updates.plan``): what is active, what was
active before, which health windows are open, which releases are refused, how the last run of
the agent ended.

Layout under the agent's state dir::

    models/<name>/<sha256>.tflite   verified artifacts (active, last-known-good, fallbacks)
    staging/<sha256>.part           downloads in progress (resumed from their length)
    active.json                     the journal (format 4), atomically replaced

A kill -9 at any instant leaves either the old or the new journal: the active model always
names a verified artifact that is on disk.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent._fs import atomic_write, fsync_dir
from agent.errors import AgentError
from agent.updates import plan
from agent.updates.plan import Entry as ActiveEntry

__all__ = ["ActiveEntry", "Damage", "ModelStore", "damage_of", "discard"]

log = logging.getLogger(__name__)


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

    def journal(self) -> plan.Journal:
        """The journal; an empty one when nothing was ever activated.

        Raises:
            AgentError: the journal exists but cannot be read (a bug or disk damage).
        """
        try:
            raw = json.loads(self._journal_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return plan.Journal()
        except (OSError, ValueError) as exc:
            raise AgentError(f"cannot read {self._journal_file}: {exc}") from exc
        owners = self._owners(raw) if isinstance(raw, dict) and raw.get("format") == 2 else None
        try:
            return plan.from_dict(raw, model_of=owners)
        except plan.JournalError as exc:
            raise AgentError(f"cannot read {self._journal_file}: {exc}") from exc

    def quarantine(self, why: AgentError) -> plan.Journal:
        """Move a journal that cannot be read aside (``active.json.damaged``) and start from
        an empty one: the device serves nothing until its first check-in, which installs the
        server's releases again from the verified files still in ``models/`` (no download).
        The release floors it held are lost with it (the server's signatures still hold)."""
        damaged = self._journal_file.with_name(self._journal_file.name + ".damaged")
        try:
            self._journal_file.replace(damaged)
        except OSError as exc:
            log.error("%s; cannot move it aside either (%s)", why, exc)
        else:
            log.error("%s; moved it to %s and starting from an empty journal: the models are "
                      "installed again at the next check-in", why, damaged.name)  # fmt: skip
        return plan.Journal()

    def save(self, journal: plan.Journal) -> None:
        """Replace the journal atomically.

        Raises:
            AgentError: the journal on disk was written by a newer agent (this one only
                serves its models and changes nothing).
        """
        if journal.newer:
            raise AgentError(
                f"{self._journal_file} was written by a newer agent (format {journal.newer}; "
                f"this one writes {plan.FORMAT}): serving its models, refusing updates until "
                "that agent is installed again"
            )
        data = json.dumps(plan.to_dict(journal), indent=2, sort_keys=True).encode()
        atomic_write(self._journal_file, data)

    def _owners(self, raw: dict[str, Any]) -> dict[str, str]:
        """Which model each refused hash of a format 2 journal belonged to: the one model
        whose directory holds it and does not serve it (a model does not keep its own refused
        release active or as its last-known-good); "" (every model) when that is not one."""
        found: dict[str, set[str]] = {}
        for path in self.models_dir.glob("*/*.tflite"):
            found.setdefault(path.stem, set()).add(path.parent.name)
        kept = {
            (name, entry.get("sha256"))
            for table in ("models", "previous")
            if isinstance(raw.get(table), dict)
            for name, entry in raw[table].items()
            if isinstance(entry, dict)
        }
        owners = {}
        for sha, names in found.items():
            candidates = {name for name in names if (name, sha) not in kept}
            owners[sha] = next(iter(candidates)) if len(candidates) == 1 else ""
        return owners

    def active(self) -> dict[str, ActiveEntry]:
        """What is active; empty when nothing was ever activated."""
        return dict(self.journal().models)

    def previous(self) -> dict[str, ActiveEntry]:
        """The last-known-good version of each model that has one."""
        return dict(self.journal().previous)

    def health(self) -> dict[str, plan.Window]:
        """The activations in their health windows."""
        return dict(self.journal().health)

    def set_active(self, name: str, entry: ActiveEntry) -> None:
        """Make ``entry`` active as an update does (a health window opens when it replaces
        another release); for tools and tests that fill a store."""
        self.save(plan.activated(self.journal(), name, entry))
        self.prune(name)

    def refused(self) -> set[tuple[str, str]]:
        """The (model name, sha256) of the releases never installed again here."""
        return {(r.model_name, r.sha256) for r in self.journal().refused}

    def prune(self, name: str) -> None:
        """Delete the artifacts of ``name`` beyond what the journal names and
        ``keep_versions``."""
        self._prune(name, self.journal())

    def _prune(self, name: str, journal: plan.Journal) -> None:
        keep = set()
        for table in (journal.models, journal.previous):
            entry = table.get(name)
            if entry is not None:
                keep |= {entry.filename, entry.fallback_filename}
        directory = self.models_dir / name
        files = sorted(directory.glob("*.tflite"), key=lambda p: p.stat().st_mtime, reverse=True)
        survivors = [p for p in files if p.name in keep]
        # The last-known-good is already kept; keep_versions counts it.
        spare = max(0, self._keep - (1 if journal.previous.get(name) else 0))
        survivors += [p for p in files if p.name not in keep][:spare]
        for path in files:
            if path not in survivors:
                log.info("removing old artifact %s", path)
                path.unlink(missing_ok=True)


# artifacts found damaged on disk ------------------------------------------------------------


@dataclass(frozen=True)
class Damage:
    """Why an artifact on this disk is not the verified one."""

    why: str
    unreadable: bool = False  # an I/O or permission error, not a wrong hash


def damage_of(path: Path, sha256: str) -> Damage | None:
    """Why the artifact at ``path`` is not the verified one (None when it is)."""
    try:
        with path.open("rb") as handle:
            digest = hashlib.file_digest(handle, "sha256").hexdigest()
    except FileNotFoundError:
        return Damage("the file is missing")
    except OSError as exc:
        return Damage(f"cannot read it: {exc}", unreadable=True)
    if digest == sha256:
        return None
    return Damage(f"sha256 {digest[:12]}..., verified {sha256[:12]}...")


def discard(path: Path) -> None:
    """Delete a damaged artifact; a failure is logged, never raised."""
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:  # a read-only file system must not stop the agent from starting
        log.error("cannot delete %s: %s", path, exc)
