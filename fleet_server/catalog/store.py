"""The model catalog in the database: releases, their variants and the fleet-wide deployments."""

from __future__ import annotations

import json
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from google.protobuf.message import DecodeError

from fleet_server.errors import AlreadyExistsError, NotFoundError
from fleet_server.storage.db import Database, bump_generation, hold_writes
from fleet_server.storage.schema import deployments, device_models, models, releases, settings
from protos import manifest_pb2

__all__ = ["CatalogStore", "ModelRow"]


@dataclass(frozen=True)
class ModelRow:
    model_name: str
    version: str
    variant: str
    release_counter: int
    sha256: str
    size: int
    edgetpu: bool
    envelope: bytes
    created_at: int
    fallback_sha256: str | None = None
    sample_sha256: str | None = None
    compressed_sha256: str | None = None
    quantization: str = ""
    requirements: str = "{}"  # JSON: what the server derived from the file


class CatalogStore:
    """Queries over releases, model variants and deployments."""

    def __init__(self, db: Database) -> None:
        self._engine = db.engine

    def devices_on_newer(self, model_name: str, version: str, limit: int = 5) -> list[str]:
        """Devices that serve a release of the model numbered above ``version``'s (they refuse
        it as "older than installed"), by id: at most ``limit`` + 1 of them, so that the caller
        can say there are more than ``limit``."""
        served = releases.alias("served")
        with self._engine.connect() as conn:
            target = conn.execute(
                sa.select(releases.c.release_counter).where(
                    (releases.c.model_name == model_name) & (releases.c.version == version)
                )
            ).scalar()
            if target is None:
                return []
            rows = conn.execute(
                sa.select(device_models.c.device_id)
                .join(
                    served,
                    (served.c.model_name == device_models.c.model_name)
                    & (served.c.version == device_models.c.active_version),
                )
                .where(
                    (device_models.c.model_name == model_name) & (served.c.release_counter > target)
                )
                .order_by(device_models.c.device_id)
                .limit(limit + 1)
            ).all()
        return [str(r[0]) for r in rows]

    def next_release_counter(self, model_name: str) -> int:
        """One more than the highest release counter of ``model_name`` (1 for a new model), or
        than the highest floor an explicit rollback deployed (its ``rollback_from``: devices
        keep it as their floor, and refuse every release at or below it)."""
        with self._engine.connect() as conn:
            value = conn.execute(
                sa.select(sa.func.max(releases.c.release_counter)).where(
                    releases.c.model_name == model_name
                )
            ).scalar()
            floors = _floors(conn)
        return max(int(value or 0), floors.get(model_name, 0)) + 1

    def add_release(self, rows: Sequence[ModelRow]) -> None:
        """Record a pushed release with all its variants, in one transaction.

        Raises:
            AlreadyExistsError: that name and version exist already (versions are immutable),
                or another push took the same release counter (retry the push).
        """
        first = rows[0]
        try:
            with self._engine.begin() as conn:
                if self._release_exists(conn, first.model_name, first.version):
                    raise AlreadyExistsError(
                        f"model {first.model_name} version {first.version} exists already; "
                        "versions are immutable, push a new version"
                    )
                conn.execute(
                    releases.insert().values(
                        model_name=first.model_name,
                        version=first.version,
                        release_counter=first.release_counter,
                        created_at=first.created_at,
                    )
                )
                conn.execute(models.insert(), [row.__dict__ for row in rows])
        except sa.exc.IntegrityError as exc:
            raise AlreadyExistsError(
                f"release {first.release_counter} of {first.model_name} was taken by a "
                "concurrent push; push again"
            ) from exc

    def add_model(self, row: ModelRow) -> None:
        """Record a release with one variant (see :meth:`add_release`)."""
        self.add_release([row])

    @staticmethod
    def _release_exists(conn: sa.Connection, model_name: str, version: str) -> bool:
        return (
            conn.execute(
                sa.select(releases.c.version).where(
                    (releases.c.model_name == model_name) & (releases.c.version == version)
                )
            ).first()
            is not None
        )

    def model_exists(self, model_name: str, version: str) -> bool:
        """True when that name and version were pushed already."""
        with self._engine.connect() as conn:
            return self._release_exists(conn, model_name, version)

    def set_envelope(self, model_name: str, version: str, variant: str, envelope: bytes) -> None:
        """Replace a variant's signed manifest (offline signatures attached)."""
        with self._engine.begin() as conn:
            conn.execute(
                models.update()
                .where(
                    (models.c.model_name == model_name)
                    & (models.c.version == version)
                    & (models.c.variant == variant)
                )
                .values(envelope=envelope)
            )
            bump_generation(conn)

    def replace_envelope(
        self, model_name: str, version: str, variant: str, old: bytes, new: bytes
    ) -> bool:
        """Replace a variant's signed manifest if it is still ``old`` (the server re-signed or
        renewed it); False when something else changed it meanwhile."""
        with self._engine.begin() as conn:
            updated = conn.execute(
                models.update()
                .where(
                    (models.c.model_name == model_name)
                    & (models.c.version == version)
                    & (models.c.variant == variant)
                    & (models.c.envelope == old)
                )
                .values(envelope=new)
            )
            if updated.rowcount == 0:
                return False
            bump_generation(conn)
        return True

    def get_variants(self, model_name: str, version: str) -> list[ModelRow]:
        """Every variant of a release, by variant name.

        Raises:
            NotFoundError: no such version.
        """
        rows = self.variants_of([(model_name, version)]).get((model_name, version))
        if not rows:
            raise NotFoundError(f"model {model_name} version {version} does not exist")
        return rows

    def get_model(self, model_name: str, version: str, variant: str | None = None) -> ModelRow:
        """One variant of a release (the first by name when ``variant`` is None).

        Raises:
            NotFoundError: no such version or variant.
        """
        rows = self.get_variants(model_name, version)
        if variant is None:
            return rows[0]
        for row in rows:
            if row.variant == variant:
                return row
        raise NotFoundError(f"model {model_name} version {version} has no variant {variant!r}")

    def variants_of(
        self, pairs: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], list[ModelRow]]:
        """The variants of several releases, by (model, version)."""
        if not pairs:
            return {}
        with self._engine.connect() as conn:
            rows = (
                conn.execute(
                    sa.select(models)
                    .where(sa.tuple_(models.c.model_name, models.c.version).in_(list(pairs)))
                    .order_by(models.c.model_name, models.c.version, models.c.variant)
                )
                .mappings()
                .all()
            )
        result: dict[tuple[str, str], list[ModelRow]] = {}
        for r in rows:
            result.setdefault((r["model_name"], r["version"]), []).append(ModelRow(**r))
        return result

    def list_models(self) -> list[ModelRow]:
        """Every variant of every release, by name, release, then variant."""
        with self._engine.connect() as conn:
            rows = (
                conn.execute(
                    sa.select(models).order_by(
                        models.c.model_name, models.c.release_counter, models.c.variant
                    )
                )
                .mappings()
                .all()
            )
        return [ModelRow(**r) for r in rows]

    def known_models(self, names: Collection[str]) -> list[str]:
        """Which of these model names the catalog has (sorted)."""
        if not names:
            return []
        with self._engine.connect() as conn:
            rows = conn.execute(
                sa.select(releases.c.model_name)
                .where(releases.c.model_name.in_(sorted(names)))
                .distinct()
                .order_by(releases.c.model_name)
            ).all()
        return [str(r[0]) for r in rows]

    def newest_version(self, model_name: str) -> str | None:
        """The version with the highest release counter, or None."""
        with self._engine.connect() as conn:
            row = conn.execute(
                sa.select(releases.c.version)
                .where(
                    (releases.c.model_name == model_name)
                    & sa.exists().where(  # not a deleted release (catalog/retention.py)
                        (models.c.model_name == releases.c.model_name)
                        & (models.c.version == releases.c.version)
                    )
                )
                .order_by(releases.c.release_counter.desc())
                .limit(1)
            ).first()
        return None if row is None else str(row[0])

    def model_by_sha(self, sha256: str) -> ModelRow | None:
        """A model variant whose artifact, CPU fallback, smoke sample or compressed copy has this
        hash, if any."""
        with self._engine.connect() as conn:
            row = (
                conn.execute(
                    sa.select(models)
                    .where(
                        (models.c.sha256 == sha256)
                        | (models.c.fallback_sha256 == sha256)
                        | (models.c.sample_sha256 == sha256)
                        | (models.c.compressed_sha256 == sha256)
                    )
                    .limit(1)
                )
                .mappings()
                .first()
            )
        return None if row is None else ModelRow(**row)

    def deploy(self, model_name: str, version: str, envelope: bytes | None = None) -> ModelRow:
        """Make a version the fleet-wide desired version of its model; ``envelope`` (a
        serialized EnvelopeSet) replaces its manifests for this deployment (an explicit
        rollback).

        Raises:
            NotFoundError: no such version.
        """
        row = self.get_model(model_name, version)
        now = int(time.time())
        values = {"version": version, "updated_at": now, "envelope": envelope}
        with self._engine.begin() as conn:
            hold_writes(conn)
            # Still there in this transaction, and kept until it ends: a deletion of the version
            # at the same moment either waits for this deploy (and then refuses) or went first
            # (and this one is refused), never a deployment of deleted files.
            present = conn.execute(
                sa.select(models.c.variant)
                .where((models.c.model_name == model_name) & (models.c.version == version))
                .with_for_update(read=True)
            ).all()
            if not present:
                raise NotFoundError(f"model {model_name} version {version} does not exist")
            updated = conn.execute(
                deployments.update().where(deployments.c.model_name == model_name).values(**values)
            )
            if updated.rowcount == 0:
                conn.execute(deployments.insert().values(model_name=model_name, **values))
            if envelope:
                _raise_floor(conn, model_name, envelope)
            bump_generation(conn)
        return row

    def deployed(self) -> dict[str, str]:
        """Model name -> deployed version."""
        return {name: version for name, (version, _) in self.deployments().items()}

    def deployments(self) -> dict[str, tuple[str, bytes | None]]:
        """Model name -> (fleet-wide version, its explicit-rollback EnvelopeSet or None)."""
        with self._engine.connect() as conn:
            rows = conn.execute(
                sa.select(
                    deployments.c.model_name, deployments.c.version, deployments.c.envelope
                ).order_by(deployments.c.model_name)
            ).all()
        return {str(r[0]): (str(r[1]), bytes(r[2]) if r[2] else None) for r in rows}


_FLOORS_KEY = "release_floors"  # settings: {model name: the highest rollback_from deployed}


def _floors(conn: sa.Connection) -> dict[str, int]:
    if not sa.inspect(conn).has_table(settings.name):
        return {}  # a database at a schema version before the table (a migration's step)
    raw = conn.execute(sa.select(settings.c.value).where(settings.c.key == _FLOORS_KEY)).scalar()
    return {str(k): int(v) for k, v in json.loads(raw).items()} if raw else {}


def _raise_floor(conn: sa.Connection, model_name: str, envelope_set: bytes) -> None:
    """Remember the floor an explicit rollback (a recovery's ``--floor`` among them) sets on
    devices, so that the next release of the model is above it."""
    floor = 0
    try:
        for envelope in manifest_pb2.EnvelopeSet.FromString(envelope_set).envelopes:
            manifest = manifest_pb2.Manifest.FromString(envelope.payload)
            floor = max(floor, manifest.release_counter, manifest.rollback_from)
    except DecodeError:
        return  # not a rollback's manifests: they set no floor on a device either
    floors = _floors(conn)
    if floor <= floors.get(model_name, 0):
        return
    floors[model_name] = floor
    value = json.dumps(floors, sort_keys=True)
    if not conn.execute(
        settings.update().where(settings.c.key == _FLOORS_KEY).values(value=value)
    ).rowcount:
        conn.execute(settings.insert().values(key=_FLOORS_KEY, value=value))
