"""What every area of the admin API shares: who is calling (for the audit log), the audit
record of state-changing calls, and the server's own trust in its keys."""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from google.protobuf.json_format import MessageToJson
from google.protobuf.message import DecodeError

from agent.errors import ManifestError
from agent.updates.trust import TrustedKeys, count_signers, pin_keylist
from fleet_server.api.admin import wire
from fleet_server.api.identity import current
from fleet_server.catalog.store import ModelRow
from fleet_server.context import ServerContext
from fleet_server.errors import BadRequestError, FleetError
from protos import admin_pb2 as pb
from protos import manifest_pb2
from protos.envelope import MANIFEST_PAYLOAD_TYPE

__all__ = ["AdminBase", "actor", "audited", "manifest_of", "manifest_target", "recorded"]

_F = TypeVar("_F", bound=Callable[..., Any])


def actor(context: Any) -> str:
    """Who made a call, for the audit log: the admin's name (or the bootstrap token), and
    from where. Calls the dashboard makes for a logged-in admin say so."""
    metadata = dict(context.invocation_metadata() or ())
    via = " via dashboard" if metadata.get("x-edgefleet-client") == "dashboard" else ""
    identity = current()
    who = identity.name if identity is not None else "unknown"
    return f"{who}@{context.peer() or 'unknown'}{via}"


def manifest_target(envelope: manifest_pb2.Envelope) -> str:
    try:
        manifest = manifest_pb2.Manifest.FromString(envelope.payload)
    except DecodeError:
        return "(not a manifest)"
    return f"{manifest.model_name} {manifest.version}"


def manifest_of(envelope: manifest_pb2.Envelope) -> manifest_pb2.Manifest:
    """The manifest in an envelope an admin uploads.

    Raises:
        BadRequestError: another payload type, or not a manifest.
    """
    if envelope.payload_type != MANIFEST_PAYLOAD_TYPE:
        raise BadRequestError(f"payload type {envelope.payload_type!r} is not a manifest")
    try:
        return manifest_pb2.Manifest.FromString(envelope.payload)
    except DecodeError as exc:
        raise BadRequestError("the signed payload is not a manifest") from exc


@contextlib.contextmanager
def recorded(
    ctx: ServerContext, context: Any, action: str, target: str, detail: str
) -> Iterator[None]:
    """Record the call in the audit log when the block ends: ok, or failed with the error."""
    try:
        yield
    except FleetError as exc:
        ctx.audit.append(actor(context), action, target, detail, ok=False, error=str(exc))
        raise
    ctx.audit.append(actor(context), action, target, detail, ok=True)


def audited(action: str, target: Callable[[Any], str]) -> Callable[[_F], _F]:
    """Record every call of a state-changing admin RPC in the audit log, failed ones too."""

    def decorate(method: _F) -> _F:
        @functools.wraps(method)
        def wrapper(self: AdminBase, request: Any, context: Any) -> Any:
            detail = MessageToJson(request, indent=None, preserving_proto_field_name=True)
            with recorded(self._ctx, context, action, target(request), detail):
                return method(self, request, context)

        return wrapper  # type: ignore[return-value]

    return decorate


class AdminBase:
    """The context every area works on, and the signing checks several areas need."""

    def __init__(self, ctx: ServerContext) -> None:
        self._ctx = ctx

    def trust(self, now: float) -> TrustedKeys:
        """The server's current key list, verified as a device would."""
        try:
            return pin_keylist(self._ctx.keys.keylist_bytes(), fleet_id=self._ctx.fleet_id, now=now)
        except ManifestError as exc:
            raise BadRequestError(f"the server's own key list does not verify: {exc}") from exc

    def require_signed(self, model_name: str, version: str) -> ModelRow:
        """The version, when release keys have signed it.

        Raises:
            NotFoundError: no such version.
            BadRequestError: pushed for offline signing and not signed yet.
        """
        rows = self._ctx.catalog.get_variants(model_name, version)
        unsigned = [
            r.variant for r in rows if not manifest_pb2.Envelope.FromString(r.envelope).signatures
        ]
        if unsigned:
            raise BadRequestError(
                f"{model_name} {version} is not signed yet (variants {', '.join(unsigned)}): "
                "sign its manifests offline ('edgefleet manifest sign') and attach them "
                "('edgefleet manifest attach')"
            )
        return rows[0]

    def prepare_rollback(
        self, model_name: str, version: str, *, recovery_keylist_version: int = 0, floor: int = 0
    ) -> pb.PushModelResponse:
        """Explicit rollback manifests for an older version (one per variant), for the root
        keys to sign; from the highest release counter known (or ``floor`` when higher), and
        naming the key list that revokes a stolen key when ``recovery_keylist_version``."""
        rows = self._ctx.catalog.get_variants(model_name, version)
        now = int(time.time())
        floor = max(self._ctx.catalog.next_release_counter(model_name) - 1, floor)
        unsigned = []
        for row in rows:
            manifest = manifest_pb2.Manifest.FromString(
                manifest_pb2.Envelope.FromString(row.envelope).payload
            )
            manifest.explicit_rollback = True
            manifest.rollback_from = floor
            manifest.recovery_keylist_version = recovery_keylist_version
            manifest.created_unix = now
            manifest.expires_unix = now + self._ctx.manifest_lifetime_s
            unsigned.append(manifest.SerializeToString(deterministic=True))
        deployed = self._ctx.catalog.deployed()
        return pb.PushModelResponse(
            model=wire.model_info(rows[0], deployed),
            unsigned_manifest=unsigned[0],
            variants=[wire.model_info(r, deployed) for r in rows],
            unsigned_manifests=unsigned,
        )

    def verified_rollback(
        self, envelope: manifest_pb2.Envelope, *, recovery: bool = False
    ) -> ModelRow:
        """The variant a root-signed rollback manifest names, once it checks out; with
        ``recovery``, one that names the current key list, which must revoke keys (what
        PrepareRecovery prepares), else one that names none (PrepareRollback's).

        Raises:
            BadRequestError: not what was prepared, or too few root signatures.
        """
        manifest = manifest_of(envelope)
        if recovery:
            keylist = self._ctx.keys.keylist()
            if not keylist.revoked_keyids:
                raise BadRequestError(
                    f"key list version {keylist.version} revokes no key; nothing to recover from"
                )
            if manifest.recovery_keylist_version != keylist.version:
                raise BadRequestError(
                    f"the recovery manifest for {manifest.model_name} {manifest.version} names "
                    f"key list version {manifest.recovery_keylist_version}, the server's is "
                    f"{keylist.version}; run 'edgefleet keys recover' again"
                )
        elif manifest.recovery_keylist_version:
            raise BadRequestError(
                "a recovery manifest is committed with 'edgefleet keys recover', not as a rollback"
            )
        row = self._ctx.catalog.get_model(manifest.model_name, manifest.version, manifest.variant)
        original = manifest_pb2.Manifest.FromString(
            manifest_pb2.Envelope.FromString(row.envelope).payload
        )
        prepared = (
            "explicit_rollback",
            "rollback_from",
            "created_unix",
            "expires_unix",
            "recovery_keylist_version",
        )
        for field in prepared:
            original.ClearField(field)
        candidate = manifest_pb2.Manifest()
        candidate.CopyFrom(manifest)
        for field in prepared:
            candidate.ClearField(field)
        if not manifest.explicit_rollback or candidate != original:
            raise BadRequestError(
                "not the rollback manifest the server prepared for "
                f"{row.model_name} {row.version}; sign what 'models rollback' fetched"
            )
        now = time.time()
        trust = self.trust(now)
        roots = count_signers(envelope, trust.root)
        if len(roots) < trust.root_threshold:
            raise BadRequestError(
                f"{len(roots)} valid root-key signature(s); an explicit rollback needs "
                f"{trust.root_threshold}"
            )
        return row

    def verified_rollback_set(
        self, envelopes: list[manifest_pb2.Envelope], *, recovery: bool = False
    ) -> tuple[ModelRow, bytes]:
        """Check a rollback's manifests, one per variant of the version; return the version's
        first variant and the serialized EnvelopeSet.

        Raises:
            BadRequestError: a manifest does not check out, or variants are missing or repeated.
        """
        if not envelopes:
            raise BadRequestError("no rollback manifest given")
        rows = [self.verified_rollback(e, recovery=recovery) for e in envelopes]
        first = rows[0]
        if any((r.model_name, r.version) != (first.model_name, first.version) for r in rows):
            raise BadRequestError("the rollback manifests name different versions")
        variants = self._ctx.catalog.get_variants(first.model_name, first.version)
        wanted = {r.variant for r in variants}
        given = [r.variant for r in rows]
        if sorted(given) != sorted(wanted):
            raise BadRequestError(
                f"a rollback of {first.model_name} {first.version} needs one signed manifest "
                f"per variant ({', '.join(sorted(wanted))}); got {', '.join(given)}"
            )
        blob = manifest_pb2.EnvelopeSet(envelopes=envelopes).SerializeToString()
        return first, blob
