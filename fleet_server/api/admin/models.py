"""Models: push, offline signatures, explicit rollbacks, the fleet-wide deployment, and which
variant a device gets."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

from google.protobuf.json_format import MessageToJson

from agent.updates.trust import MAX_ENVELOPE_BYTES, MAX_SIGNATURES, count_signers
from fleet_server.api._errors import rpc_errors
from fleet_server.api.admin import wire
from fleet_server.api.admin._base import (
    AdminBase,
    audited,
    manifest_of,
    manifest_target,
    recorded,
)
from fleet_server.api.identity import require_admin
from fleet_server.catalog.push import Pusher
from fleet_server.context import ServerContext
from fleet_server.errors import BadRequestError, ConflictError, DataDirError, NotFoundError
from fleet_server.renewal.maintainer import in_use, pending
from fleet_server.rollouts.desired import explain
from fleet_server.rollouts.retention import Swept
from fleet_server.rollouts.states import LIVE
from fleet_server.signing.resign import Action, is_reissue, merged, reissued, signing_keys
from protos import admin_pb2 as pb
from protos import manifest_pb2

log = logging.getLogger(__name__)
_CREATED_SKEW_S = 86400  # how far ahead of the server's clock a re-issue may be created


def _verifying(envelope: manifest_pb2.Envelope, keys: dict[str, bytes]) -> manifest_pb2.Envelope:
    """``envelope`` with one signature per key of ``keys`` that verifies it, each named by that
    key's id. (An uploaded key id is a hint only: kept as written, a valid signature copied
    under other ids would push the signatures devices on the previous key list need out of the
    envelope, or pad it past the size devices accept.)"""
    kept = manifest_pb2.Envelope(payload_type=envelope.payload_type, payload=envelope.payload)
    signed: set[str] = set()
    for signature in envelope.signatures:
        alone = manifest_pb2.Envelope(
            payload_type=envelope.payload_type, payload=envelope.payload, signatures=[signature]
        )
        for key_id in count_signers(alone, keys) - signed:
            signed.add(key_id)
            kept.signatures.add(keyid=key_id, sig=signature.sig)
    return kept


class ModelsAdmin(AdminBase):
    def __init__(self, ctx: ServerContext) -> None:
        super().__init__(ctx)
        self._pusher = Pusher(
            ctx.catalog, ctx.artifacts, ctx.keys, ctx.fleet_id, ctx.manifest_lifetime_s
        )

    def PushModel(  # noqa: N802
        self, request_iterator: Iterator[pb.PushModelRequest], context: Any
    ) -> pb.PushModelResponse:
        return self._push(request_iterator, context)

    @rpc_errors
    def _push(
        self, request_iterator: Iterator[pb.PushModelRequest], context: Any
    ) -> pb.PushModelResponse:
        require_admin(context)
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("part") != "meta":
            raise BadRequestError("the first message of PushModel must carry the metadata")
        meta = first.meta
        shown = pb.PushModelMeta()
        shown.CopyFrom(meta)
        shown.ClearField("sample")
        detail = MessageToJson(shown, indent=None, preserving_proto_field_name=True)
        target = f"model {meta.model_name} {meta.version}"
        with recorded(self._ctx, context, "PushModel", target, detail):
            rows, unsigned = self._pusher.push(meta, request_iterator)
        deployed = self._ctx.catalog.deployed()
        variants = [wire.model_info(r, deployed) for r in rows]
        notes = [
            f"variant {v.variant}: the server cannot run it (an Edge TPU model without a CPU "
            "fallback), so no expected answer was recorded: devices only check that it runs on "
            "the sample; push it with --fallback CPU_MODEL to check its answer too"
            for v in variants
            if not v.smoke_top_indices
        ]
        return pb.PushModelResponse(
            model=variants[0],
            unsigned_manifest=unsigned[0] if unsigned else b"",
            variants=variants,
            unsigned_manifests=unsigned,
            notes=notes,
        )

    @rpc_errors
    @audited("AttachSignatures", lambda r: f"model {manifest_target(r.envelope)}")
    def AttachSignatures(  # noqa: N802
        self, request: pb.AttachSignaturesRequest, context: Any
    ) -> pb.PushModelResponse:
        require_admin(context)
        envelope = request.envelope
        if envelope.ByteSize() > MAX_ENVELOPE_BYTES or len(envelope.signatures) > MAX_SIGNATURES:
            raise BadRequestError(
                f"the signed manifest is {envelope.ByteSize()} bytes with "
                f"{len(envelope.signatures)} signature(s); devices accept at most "
                f"{MAX_ENVELOPE_BYTES} bytes and {MAX_SIGNATURES} signatures"
            )
        manifest = manifest_of(envelope)
        row = self._ctx.catalog.get_model(manifest.model_name, manifest.version, manifest.variant)
        stored = manifest_pb2.Envelope.FromString(row.envelope)
        now = time.time()
        trust = self.trust(now)
        keylist = self._ctx.keys.keylist()
        revoked = sorted(set(keylist.revoked_keyids) & {s.keyid for s in stored.signatures})
        if revoked:
            # A fresh signature would vouch for what a stolen key signed (the thief's release,
            # or one only it signed): a recovery names the releases devices go to instead.
            raise BadRequestError(
                f"{row.model_name} {row.version} ({row.variant}) was signed by revoked key(s) "
                f"{', '.join(revoked)}: it is not signed again; send devices to a release with "
                "'edgefleet keys recover --model', or push it again as a new version"
            )
        # Only signatures that verify with a release key of the current list are kept: what
        # the server already holds must not lend its weight to a stranger's signature.
        envelope = _verifying(envelope, trust.release_keys(now))
        if not envelope.signatures:
            raise BadRequestError(
                f"0 valid release-key signature(s) in what was attached; key list version "
                f"{trust.version} names the release keys {', '.join(signing_keys(keylist))}"
            )
        if stored.payload == envelope.payload:
            # More signatures over the same manifest (a push signed offline, the new key's
            # after a rotation, a second admin's toward the threshold): the ones it had stay.
            new = merged(stored, envelope, keylist)
        else:
            why = is_reissue(manifest_pb2.Manifest.FromString(stored.payload), manifest)
            if why or not stored.signatures:
                raise BadRequestError(
                    f"the signed manifest is not the one the server has for {row.model_name} "
                    f"{row.version} ({row.variant})"
                    + (f" nor a re-issue of it: {why}" if stored.signatures else "")
                    + "; sign the file 'models push --sign-offline' or 'manifest pending' wrote"
                )
            if manifest.expires_unix and manifest.expires_unix <= now:
                raise BadRequestError("the re-issued manifest has expired already")
            if manifest.created_unix > now + _CREATED_SKEW_S:
                raise BadRequestError(
                    "the re-issued manifest was created more than a day in the future; is the "
                    "signing machine's clock right?"
                )
            longest = now + self._ctx.manifest_lifetime_s + _CREATED_SKEW_S
            if manifest.expires_unix > longest:
                raise BadRequestError(
                    f"the re-issued manifest expires {manifest.expires_unix - now:.0f} s from "
                    f"now, beyond --manifest-lifetime-days "
                    f"{self._ctx.manifest_lifetime_s / 86400:g}; sign what 'manifest pending' wrote"
                )
            new = envelope
        # Counted with the keys that sign: one a rotation replaced verifies until its overlap
        # ends and signs nothing new (a re-issue it alone signed dies with the overlap).
        staying = signing_keys(keylist)
        signers = count_signers(
            new, {k: v for k, v in trust.release_keys(now).items() if k in staying}
        )
        if len(signers) < trust.release_threshold:
            raise BadRequestError(
                f"{len(signers)} valid signature(s) of the release keys that sign "
                f"({', '.join(sorted(staying))}); key list version {trust.version} requires "
                f"{trust.release_threshold}"
            )
        if not self._ctx.catalog.replace_envelope(
            row.model_name, row.version, row.variant, row.envelope, new.SerializeToString()
        ):
            raise ConflictError(
                f"the manifest of {row.model_name} {row.version} ({row.variant}) changed while "
                "this was attached (the server re-signed it?); run 'manifest pending' again"
            )
        log.info(
            "attached offline signatures to %s %s (%s): signed by %s",
            row.model_name,
            row.version,
            row.variant,
            ", ".join(sorted(signers)),
        )
        updated = self._ctx.catalog.get_model(row.model_name, row.version, row.variant)
        return pb.PushModelResponse(model=wire.model_info(updated, self._ctx.catalog.deployed()))

    @rpc_errors
    def ListPendingManifests(  # noqa: N802
        self, request: pb.ListPendingManifestsRequest, context: Any
    ) -> pb.ListPendingManifestsResponse:
        require_admin(context)
        now = time.time()
        keylist = self._ctx.keys.keylist()
        answer = pb.ListPendingManifestsResponse(
            keylist_version=keylist.version,
            release_threshold=keylist.release_threshold,
            release_keyids=sorted(signing_keys(keylist)),
        )
        due = pending(
            in_use(self._ctx.catalog, self._ctx.rollouts),
            keylist,
            now=now,
            renew_ahead_s=self._ctx.renew_ahead_s,
        )
        for item in due:
            if item.verdict.action == Action.UNVERIFIED:
                continue  # nothing to sign: the server's log names it
            payload = manifest_pb2.Envelope.FromString(item.row.envelope).payload
            manifest = manifest_pb2.Manifest.FromString(payload)
            if item.verdict.action == Action.REISSUE:
                manifest = reissued(manifest, now=now, lifetime_s=self._ctx.manifest_lifetime_s)
                payload = manifest.SerializeToString()
            answer.manifests.add(
                model_name=item.row.model_name,
                version=item.row.version,
                variant=item.row.variant,
                action=str(item.verdict.action),
                reason=item.verdict.reason,
                payload=payload,
                expires_unix=manifest.expires_unix,
            )
        return answer

    @rpc_errors
    def PrepareRollback(  # noqa: N802
        self, request: pb.DeployRequest, context: Any
    ) -> pb.PushModelResponse:
        require_admin(context)
        return self.prepare_rollback(request.model_name, request.version)

    @rpc_errors
    @audited("CommitRollback", lambda r: f"model {manifest_target(r.envelope)}")
    def CommitRollback(  # noqa: N802
        self, request: pb.AttachSignaturesRequest, context: Any
    ) -> pb.DeployResponse:
        require_admin(context)
        row, blob = self.verified_rollback_set([request.envelope, *request.envelopes])
        self._ctx.catalog.deploy(row.model_name, row.version, envelope=blob)
        self._ctx.rollouts.supersede(row.model_name)
        log.warning(
            "explicit rollback of %s to %s deployed to the fleet", row.model_name, row.version
        )
        return pb.DeployResponse(model=wire.model_info(row, self._ctx.catalog.deployed()))

    @rpc_errors
    @audited("DeleteModelVersion", lambda r: f"model {r.model_name} {r.version}")
    def DeleteModelVersion(  # noqa: N802
        self, request: pb.DeleteModelVersionRequest, context: Any
    ) -> pb.DeleteModelsResponse:
        require_admin(context)
        swept = self._ctx.retention.delete(request.model_name, request.version, force=request.force)
        return _swept(swept)

    @rpc_errors
    @audited("PruneModels", lambda r: f"model {r.model_name} keep {r.keep}")
    def PruneModels(  # noqa: N802
        self, request: pb.PruneModelsRequest, context: Any
    ) -> pb.DeleteModelsResponse:
        require_admin(context)
        if request.keep < 1:
            raise BadRequestError("--keep must be at least 1: prune never deletes every version")
        swept = self._ctx.retention.prune(request.model_name, request.keep, dry_run=request.dry_run)
        return _swept(swept)

    @rpc_errors
    def ListModels(self, request: pb.ListModelsRequest, context: Any) -> pb.ListModelsResponse:  # noqa: N802
        require_admin(context)
        deployed = self._ctx.catalog.deployed()
        return pb.ListModelsResponse(
            models=[wire.model_info(r, deployed) for r in self._ctx.catalog.list_models()]
        )

    @rpc_errors
    @audited("Deploy", lambda r: f"model {r.model_name} {r.version}")
    def Deploy(self, request: pb.DeployRequest, context: Any) -> pb.DeployResponse:  # noqa: N802
        require_admin(context)
        self.require_signed(request.model_name, request.version)
        found = [r for r in self._ctx.rollouts.list_rollouts(request.model_name) if r.state in LIVE]
        live = [r.rollout_id for r in found]
        if live and not request.force:
            what = ", ".join(f"{r.rollout_id} ({r.state})" for r in found)
            raise ConflictError(
                f"rollout(s) {what} of {request.model_name} are in effect: "
                f"a fleet-wide deploy would end them and send their devices "
                f"{request.version}; pause or abort them first, or deploy with --force"
            )
        row = self._ctx.catalog.deploy(request.model_name, request.version)
        # Without --force, only what the check above saw may end: a rollout started since
        # (by another admin) goes on, and the answer says so.
        replaced = self._ctx.rollouts.supersede(row.model_name, spare_live=not request.force)
        spared = [
            r.rollout_id
            for r in self._ctx.rollouts.list_rollouts(row.model_name)
            if r.state in LIVE
        ]
        self._ctx.wake_upkeep()
        log.info(
            "deployed %s %s to the fleet%s",
            row.model_name,
            row.version,
            f" (replacing rollouts {replaced})" if replaced else "",
        )
        notes = [self._expiry_note(row.model_name, row.version)]
        newer = self._ctx.catalog.devices_on_newer(row.model_name, row.version)
        if newer:
            shown = ", ".join(newer[:5]) + (" and more" if len(newer) > 5 else "")
            notes.append(
                f"devices serving a newer release of {row.model_name} refuse {row.version} as "
                f"older ({shown}): an explicit rollback ('edgefleet models rollback') is what "
                "sends them back"
            )
        if replaced:
            notes.append(f"ended rollout(s) {', '.join(map(str, replaced))}")
        if spared:
            notes.append(
                f"rollout(s) {', '.join(map(str, spared))} of {row.model_name} started meanwhile "
                "and still run: their devices get what those rollouts give them"
            )
        return pb.DeployResponse(
            model=wire.model_info(row, self._ctx.catalog.deployed()),
            note="; ".join(n for n in notes if n),
        )

    def _expiry_note(self, name: str, version: str) -> str:
        """What devices do with a release whose manifest has expired or soon will."""
        now = time.time()
        soonest = min(
            (
                manifest_of(manifest_pb2.Envelope.FromString(r.envelope)).expires_unix
                for r in self._ctx.catalog.get_variants(name, version)
            ),
            key=lambda t: t or 2**62,
        )
        if not soonest or soonest - now > self._ctx.renew_ahead_s:
            return ""
        day = time.strftime("%Y-%m-%d", time.gmtime(soonest))
        try:
            self._ctx.keys.manifest_signer()
        except DataDirError:
            fix = (
                "no release key is on the server to re-issue it: run 'edgefleet manifest "
                "pending --out DIR', sign the files and attach them"
            )
        else:
            fix = "the server re-issues it now"
        if soonest <= now:
            return f"its manifest expired on {day}: devices refuse it until it is re-issued; {fix}"
        return f"its manifest expires on {day}; {fix}"

    @rpc_errors
    def ExplainVariant(  # noqa: N802
        self, request: pb.ExplainVariantRequest, context: Any
    ) -> pb.ExplainVariantResponse:
        require_admin(context)
        device = self._ctx.devices.get_device(request.device_id)
        explained = explain(
            self._ctx.catalog,
            self._ctx.rollouts,
            device.device_id,
            device.capabilities,
            request.model_name,
            version=request.version,
        )
        if explained is None:
            raise NotFoundError(f"model {request.model_name!r} has no versions")
        version, rows, choice = explained.version, explained.rows, explained.choice
        return pb.ExplainVariantResponse(
            device_id=device.device_id,
            model_name=request.model_name,
            version=version,
            variant=choice.variant or "",
            reason=choice.reason,
            hardware_class=explained.hardware_class,
            verdicts=[
                pb.VariantVerdict(
                    variant=r.variant,
                    quantization=r.quantization,
                    chosen=r.variant == choice.variant,
                    reason=choice.verdicts.get(r.variant, ""),
                )
                for r in rows
            ],
        )


def _swept(swept: Swept) -> pb.DeleteModelsResponse:
    return pb.DeleteModelsResponse(
        deleted=swept.deleted, kept=swept.kept, files=swept.files, freed_bytes=swept.freed_bytes
    )
