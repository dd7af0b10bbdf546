"""Recovery from a stolen release key (``edgefleet keys recover``): explicit rollbacks that
name the key list revoking the key, so that devices whose floor only that key set go back to
the admins' release (docs/security.md, A release key was stolen)."""

from __future__ import annotations

import logging
from typing import Any

from agent.updates.trust import count_signers
from fleet_server.api._errors import rpc_errors
from fleet_server.api.admin import wire
from fleet_server.api.admin._base import AdminBase, audited, manifest_of
from fleet_server.api.identity import require_admin
from fleet_server.errors import BadRequestError
from fleet_server.renewal.maintainer import release_signed_in_use
from protos import admin_pb2 as pb
from protos import manifest_pb2

log = logging.getLogger(__name__)
_MAX_FLOOR = 2**63 - 2


def _targets(request: pb.CommitRecoveryRequest) -> str:
    names = []
    for envelope in request.envelopes:
        try:
            manifest = manifest_of(envelope)
        except BadRequestError:
            continue
        name = f"{manifest.model_name} {manifest.version}"
        if name not in names:
            names.append(name)
    return f"recovery {', '.join(names) or '(none)'}"


class RecoveryAdmin(AdminBase):
    @rpc_errors
    def PrepareRecovery(  # noqa: N802
        self, request: pb.PrepareRecoveryRequest, context: Any
    ) -> pb.PrepareRecoveryResponse:
        """Recovery manifests for every variant of each release, naming the key list that
        revokes ``revoke_keyids`` (the current one + 1, or the current one when it revokes them
        all already). Changes nothing."""
        require_admin(context)
        if not request.revoke_keyids or not request.models:
            raise BadRequestError("a recovery needs a release key to revoke and a model release")
        if request.floor > _MAX_FLOOR:
            # The next release must be numbered above it (a signed 64-bit integer).
            raise BadRequestError(f"floor {request.floor} is out of range (0 to {_MAX_FLOOR})")
        keylist = self._ctx.keys.keylist()
        known = {k.keyid for k in keylist.release_keys} | set(keylist.revoked_keyids)
        unknown = sorted(set(request.revoke_keyids) - known)
        if unknown:
            raise BadRequestError(
                f"release key(s) {', '.join(unknown)} not in key list version "
                f"{keylist.version} (see 'edgefleet keys list')"
            )
        revoked = set(request.revoke_keyids) <= set(keylist.revoked_keyids)
        version = keylist.version if revoked else keylist.version + 1
        response = pb.PrepareRecoveryResponse(
            keylist_version=version,
            stranded=self._stranded(request, keylist),
            fleet_id=keylist.fleet_id,
        )
        for model in request.models:
            prepared = self.prepare_rollback(
                model.model_name,
                model.version,
                recovery_keylist_version=version,
                floor=request.floor,
            )
            response.unsigned_manifests.extend(prepared.unsigned_manifests)
            response.variants.extend(prepared.variants)
        return response

    def _stranded(
        self, request: pb.PrepareRecoveryRequest, keylist: manifest_pb2.KeyList
    ) -> list[str]:
        """The releases in use, other than the named models, that no release key left after
        the revocation signed: devices refuse them from then on."""
        named = {m.model_name for m in request.models}
        revoking = set(keylist.revoked_keyids) | set(request.revoke_keyids)
        left = {k.keyid: k.public_key for k in keylist.release_keys if k.keyid not in revoking}
        stranded: list[str] = []
        for row in release_signed_in_use(self._ctx.catalog, self._ctx.rollouts):
            envelope = manifest_pb2.Envelope.FromString(row.envelope)
            name = f"{row.model_name} {row.version}"
            if row.model_name in named or not envelope.signatures or name in stranded:
                continue
            if len(count_signers(envelope, left)) < max(keylist.release_threshold, 1):
                stranded.append(name)
        return stranded

    @rpc_errors
    @audited("CommitRecovery", _targets)
    def CommitRecovery(  # noqa: N802
        self, request: pb.CommitRecoveryRequest, context: Any
    ) -> pb.CommitRecoveryResponse:
        """Deploy each release's root-signed recovery manifests, once every one names the
        current key list (which revokes keys) and carries the root threshold."""
        require_admin(context)
        groups: dict[tuple[str, str], list[manifest_pb2.Envelope]] = {}
        for envelope in request.envelopes:
            manifest = manifest_of(envelope)
            groups.setdefault((manifest.model_name, manifest.version), []).append(envelope)
        if not groups:
            raise BadRequestError("no recovery manifest given")
        if len({name for name, _ in groups}) != len(groups):
            raise BadRequestError("a recovery names two releases of one model")
        checked = [self.verified_rollback_set(g, recovery=True) for g in groups.values()]
        response = pb.CommitRecoveryResponse()
        for row, blob in checked:
            self._ctx.catalog.deploy(row.model_name, row.version, envelope=blob)
            self._ctx.rollouts.supersede(row.model_name)
            log.warning(
                "recovery of %s to %s deployed to the fleet (a stolen release key's floor)",
                row.model_name,
                row.version,
            )
        deployed = self._ctx.catalog.deployed()
        for row, _ in checked:
            response.models.append(wire.model_info(row, deployed))
        return response
