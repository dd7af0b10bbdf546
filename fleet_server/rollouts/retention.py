"""Deleting model versions, and keeping only the newest ones (``edgefleet models delete`` and
``models prune``).

A version is refused deletion while anything needs it: the fleet-wide deployment, a rollout in
effect (its devices download it, or roll back to it), and, without ``force``, devices that serve
it (one that reinstalls or rolls back could not download it again). Deleting removes its
variants and their benchmarks from the catalog; its release row stays, so neither its version
nor its release counter is ever given to other bytes (devices compare counters).

Files go through the artifact store (:meth:`Artifacts.delete`): a file no variant refers to
any more is removed once it is older than :data:`GRACE_S`, so a push that has stored its file
and not yet recorded its release (the two are not one transaction) never loses it; a younger
orphan goes at a later deletion or prune.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import sqlalchemy as sa

from fleet_server.artifacts.store import Artifacts
from fleet_server.errors import ConflictError, NotFoundError, TransientError
from fleet_server.rollouts.states import IN_EFFECT
from fleet_server.storage.db import Database, bump_generation, hold_writes
from fleet_server.storage.schema import (
    benchmarks,
    deliveries,
    deployments,
    device_models,
    downloads,
    models,
    releases,
    rollouts,
)

__all__ = ["GRACE_S", "Retention", "Swept"]

log = logging.getLogger(__name__)

GRACE_S = 3600


@dataclass
class Swept:
    """What a deletion or prune did."""

    deleted: list[str] = field(default_factory=list)  # versions
    kept: dict[str, str] = field(default_factory=dict)  # version -> why it stays (prune)
    files: int = 0
    freed_bytes: int = 0


class Retention:
    def __init__(self, db: Database, artifacts: Artifacts) -> None:
        self._engine = db.engine
        self._artifacts = artifacts

    def blockers(self, model_name: str, version: str, *, force: bool = False) -> list[str]:
        """Why the version cannot be deleted now ([] when it can)."""
        with self._engine.connect() as conn:
            return _blockers(conn, model_name, version, force=force)

    def delete(self, model_name: str, version: str, *, force: bool = False) -> Swept:
        """Delete one version.

        Raises:
            NotFoundError: no such version (or deleted already).
            ConflictError: something needs it (:meth:`blockers`).
        """
        swept = Swept()
        with self._engine.begin() as conn:
            hold_writes(conn)
            # What needs the version is judged in the deleting transaction, after its rows are
            # locked: a deploy or a rollout of it made at the same moment (another admin, another
            # replica) was missed by a look taken before, and the fleet was sent a version whose
            # files were gone. A rollout's creation locks the model's releases; a deploy shares
            # the variants' rows, which the DELETE waits for.
            conn.execute(
                sa.select(releases.c.version)
                .where(releases.c.model_name == model_name)
                .with_for_update()
            ).all()
            shas = _files_of(conn, model_name, version)
            if not shas:
                raise NotFoundError(f"model {model_name} version {version} does not exist")
            conn.execute(
                models.delete().where(
                    (models.c.model_name == model_name) & (models.c.version == version)
                )
            )
            why = _blockers(conn, model_name, version, force=force)
            if why:
                raise ConflictError(f"{model_name} {version} is kept: {'; '.join(why)}")
            conn.execute(benchmarks.delete().where(benchmarks.c.sha256.in_(sorted(shas))))
            bump_generation(conn)
        swept.deleted.append(version)
        self.collect(swept)
        log.info("deleted %s %s (%d file(s), %d bytes freed)", model_name, version,
                 swept.files, swept.freed_bytes)  # fmt: skip
        return swept

    def prune(self, model_name: str, keep: int, *, dry_run: bool = False) -> Swept:
        """Delete the versions of a model beyond its ``keep`` newest, except those something
        needs (each named with why in ``kept``)."""
        with self._engine.connect() as conn:
            versions = [
                str(r[0])
                for r in conn.execute(
                    sa.select(releases.c.version)
                    .where(
                        (releases.c.model_name == model_name)
                        & sa.exists().where(
                            (models.c.model_name == releases.c.model_name)
                            & (models.c.version == releases.c.version)
                        )
                    )
                    .order_by(releases.c.release_counter.desc())
                ).all()
            ]
        if not versions:
            raise NotFoundError(f"no model named {model_name!r} in the catalog")
        swept = Swept()
        for version in versions[:keep]:
            swept.kept[version] = f"one of the {keep} newest"
        for version in versions[keep:]:
            why = self.blockers(model_name, version)
            if why:
                swept.kept[version] = "; ".join(why)
            elif dry_run:
                swept.deleted.append(version)
            else:
                swept.deleted.extend(self.delete(model_name, version).deleted)
        if not dry_run:
            self.collect(swept)
        return swept

    def collect(self, swept: Swept, now: float | None = None) -> None:
        """Remove the files no variant refers to, once older than :data:`GRACE_S`."""
        now = time.time() if now is None else now
        with self._engine.connect() as conn:
            used = _referenced(conn)
        gone = []
        try:
            for artifact_id, size, mtime in self._artifacts.entries():
                if artifact_id in used or now - mtime < GRACE_S:
                    continue
                if self._artifacts.delete(artifact_id):
                    swept.files += 1
                    swept.freed_bytes += size
                    gone.append(artifact_id)
        except TransientError as exc:
            # An object store away: the versions are deleted (their transactions committed);
            # the files nothing refers to now go at a later deletion or prune.
            log.warning("artifact files not swept now (%s); a later deletion or prune does", exc)
        if gone:
            with self._engine.begin() as conn:
                conn.execute(deliveries.delete().where(deliveries.c.sha256.in_(gone)))
                conn.execute(downloads.delete().where(downloads.c.artifact.in_(gone)))


def _blockers(conn: sa.Connection, model_name: str, version: str, *, force: bool) -> list[str]:
    why = []
    deployed = conn.execute(
        sa.select(deployments.c.version).where(deployments.c.model_name == model_name)
    ).scalar()
    if deployed == version:
        why.append("it is deployed to the fleet (deploy another version first)")
    live = conn.execute(
        sa.select(rollouts.c.rollout_id)
        .where(
            (rollouts.c.model_name == model_name)
            & (rollouts.c.version == version)
            & rollouts.c.state.in_(sorted(IN_EFFECT))
        )
        .order_by(rollouts.c.rollout_id)
    ).all()
    if live:
        ids = ", ".join(str(r[0]) for r in live)
        why.append(f"rollout(s) {ids} in effect send it to devices")
    if force:
        return why
    serving = conn.execute(
        sa.select(device_models.c.device_id)
        .where(
            (device_models.c.model_name == model_name)
            & (
                (device_models.c.active_version == version)
                | ((device_models.c.version == version) & (device_models.c.state == "INSTALLED"))
            )
        )
        .order_by(device_models.c.device_id)
        .limit(6)
    ).all()
    if serving:
        names = ", ".join(str(r[0]) for r in serving[:5]) + (" ..." if len(serving) > 5 else "")
        why.append(
            f"devices serve it ({names}): one that reinstalls or rolls back could not "
            "download it again (--force deletes it anyway)"
        )
    return why


def _files_of(conn: sa.Connection, model_name: str, version: str) -> set[str]:
    rows = conn.execute(
        sa.select(
            models.c.sha256, models.c.fallback_sha256, models.c.sample_sha256,
            models.c.compressed_sha256,
        ).where((models.c.model_name == model_name) & (models.c.version == version))
    ).all()  # fmt: skip
    return {sha for row in rows for sha in row if sha}


def _referenced(conn: sa.Connection) -> set[str]:
    rows = conn.execute(
        sa.select(
            models.c.sha256, models.c.fallback_sha256, models.c.sample_sha256,
            models.c.compressed_sha256,
        )
    ).all()  # fmt: skip
    return {sha for row in rows for sha in row if sha}
