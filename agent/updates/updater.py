"""Apply the desired state: verify -> download -> check hash -> load -> smoke -> activate.

Nothing here replaces a working model until its successor is verified, fully downloaded,
hash-checked, loaded and has run once; a failure at any step keeps the current model serving
and is reported to the server.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from google.protobuf.message import DecodeError

from agent._fs import open_own
from agent.client import DeviceClient, sha256_of_prefix
from agent.errors import AgentError, DownloadError, ManifestError, TransientError
from agent.identity import Identity
from agent.inference.engine import Engine, LoadedModel
from agent.inference.modelfile import MAX_MODEL_BYTES
from agent.updates import compression, plan, smoke
from agent.updates.holds import HOLD_FIRST_S, HOLD_MAX_S, Hold, peek, reason_key
from agent.updates.http_fetch import HttpSource
from agent.updates.lifecycle import Lifecycle
from agent.updates.sink import DurableSink
from agent.updates.sources import DownloadSources
from agent.updates.store import ActiveEntry, damage_of, discard
from agent.updates.verify import InstalledModel, VerifiedRelease, verify_release
from protos import device_pb2, manifest_pb2

__all__ = ["Updater"]

log = logging.getLogger(__name__)


def _load(
    engine: Engine, name: str, entry: ActiveEntry, path: Path, fallback: Path | None
) -> LoadedModel:
    """Load a release the journal records, with its variants' names."""
    return engine.load(
        name,
        entry.version,
        path,
        cpu_fallback=fallback,
        variant=entry.variant,
        fallback_variant=entry.fallback_variant,
    )


class Updater:
    """Brings the engine to the desired state the server sends: executes what the lifecycle
    (``agent.updates.plan``) decides and feeds the outcomes back to it."""

    def __init__(
        self,
        *,
        lifecycle: Lifecycle,
        engine: Engine,
        client: DeviceClient,
        identity: Identity,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        download_deadline_s: float = 600.0,
        max_download_bytes_per_s: int = 0,
        http: HttpSource | None = None,
    ) -> None:
        self._lifecycle = lifecycle
        self._store = lifecycle.store
        self._engine = engine
        self._client = client
        self._identity = identity
        self._clock = clock  # manifest and key list expiry only
        self._monotonic = monotonic
        self._deadline = download_deadline_s
        # Releases not tried at every check-in: rolled back here (until cleared), or refused
        # (tried again with backoff: a clock that ran ahead, an artifact repaired on the server).
        self._held: dict[bytes, Hold] = {}
        # Models whose update this agent reported FAILED, and the version: when the server then
        # sends a manifest it accepts for what already serves (a recovery re-signing it after a
        # key list revoked the key the refused one bore), the server hears it serves after all.
        self._reported_failed: dict[str, str] = {}
        # model -> (version, reason) of its last DOWNLOADING report: reported once per change
        self._downloading: dict[str, tuple[str, str]] = {}
        self._health = lifecycle.policy
        self._rate = max_download_bytes_per_s
        self.sources = DownloadSources(client, http or HttpSource())
        self._baselines: dict[str, float] = {}  # p50 of the version each new one replaced
        self._judge_after: dict[str, float] = {}  # a verdict that could not be recorded

    @staticmethod
    def recover(lifecycle: Lifecycle) -> list[device_pb2.StatusReport]:
        """At start, before anything is loaded: settle how the last run ended and roll back
        the activations that have become crash loops. Returns the reports to send once the
        server can be reached."""
        store = lifecycle.store
        reports = []
        for action in lifecycle.start():
            name = action.model_name
            if isinstance(action, plan.Refused):
                log.error("refusing %s %s: %s", name, action.version, action.reason)
                reports.append(
                    device_pb2.StatusReport(
                        model_name=name,
                        version=action.version,
                        state=device_pb2.FAILED,
                        detail=f"{action.reason}; refused on this device",
                    )
                )
                continue
            bad = store.active().get(name)
            previous = store.previous().get(name)
            damage = (
                damage_of(store.artifact_path(name, previous.sha256), previous.sha256)
                if previous is not None
                else None
            )
            if damage is not None:
                # A crash-looping version still starts; a damaged one may not run at all.
                log.error("not rolling %s back: its last-known-good %s is unusable (%s)", name,
                          previous.version if previous else "?", damage.why)  # fmt: skip
                continue
            good = lifecycle.rolled_back(name)
            log.error(
                "rolling %s back from %s to %s: %s",
                name,
                bad.version if bad else "?",
                good.version if good else "nothing",
                action.reason,
            )
            if bad is not None:
                reports.append(
                    device_pb2.StatusReport(
                        model_name=name,
                        version=bad.version,
                        state=device_pb2.ROLLED_BACK,
                        detail=f"{action.reason}; back to {good.version if good else 'none'}",
                    )
                )
        return reports

    @staticmethod
    def load_active_into(lifecycle: Lifecycle, engine: Engine) -> None:
        """Serve what the journal says is active (at start, before talking to the server).

        Each active artifact is hashed first: a power cut or a failing SD card can leave a
        file that no longer is what was verified. A damaged one is deleted and the model's
        last-known-good version serves instead (or nothing, without one); the release is not
        refused, so the next check-in downloads it again. A watched release is marked loading,
        then serving: a death meanwhile counts against it.
        """
        store = lifecycle.store
        for name, active in store.active().items():
            entry, path = active, store.artifact_path(name, active.sha256)
            while (damage := damage_of(path, entry.sha256)) is not None:
                if damage.unreadable:  # not proof of damage (permissions?): keep it, skip it
                    log.error("cannot read active %s %s: %s", name, entry.version, damage.why)
                    break
                discard(path)
                good = lifecycle.rolled_back(name, refuse=False)
                log.error("active %s %s is damaged on disk (%s); %s", name, entry.version,
                          damage.why, f"serving {good.version} until it is downloaded again"
                          if good else "downloading it again at the next check-in")  # fmt: skip
                if good is None:
                    break
                entry, path = good, store.artifact_path(name, good.sha256)
            if damage is not None:
                continue
            fallback = path.parent / entry.fallback_filename if entry.fallback_filename else None
            fallback_damage = damage_of(fallback, fallback.stem) if fallback is not None else None
            if fallback is not None and fallback_damage is not None:
                # Its CPU fallback is checked against its name (its sha256) the same way: the
                # model serves without it until the next check-in fetches it again.
                log.error("the CPU fallback of %s %s is unusable (%s); serving without it "
                          "until it is fetched again", name, entry.version,
                          fallback_damage.why)  # fmt: skip
                if not fallback_damage.unreadable:
                    discard(fallback)
                fallback = None
            watched = lifecycle.watched(name)
            if watched:
                lifecycle.loading(name, entry.sha256, entry.version)
            try:
                model = _load(engine, name, entry, path, fallback)
            except AgentError as exc:
                log.error("cannot load active model %s %s: %s", name, entry.version, exc)
                if watched:
                    lifecycle.trial_ended(name)
                continue
            engine.put(model)
            if watched:
                lifecycle.serving(name)
            log.info("serving %s %s from %s", name, entry.version, path)

    def set_identity(self, identity: Identity) -> None:
        """Trust the keys of ``identity`` from now on (after a key rotation).

        Manifests refused under the old keys get another chance under the new ones.
        """
        self._identity = identity
        self._held.clear()

    def forget_refusals(self) -> None:
        """An operator cleared refusals: releases held back here are tried again."""
        self._held.clear()

    def installed(self) -> dict[str, InstalledModel]:
        """Release counter and hash of each active model (the hash of the release the counter
        belongs to, after a fall back from a damaged file)."""
        return {
            name: InstalledModel(e.release_counter, e.floor_sha256 or e.sha256, e.floor_keyids)
            for name, e in self._store.active().items()
        }

    def apply(self, desired: Sequence[manifest_pb2.Envelope]) -> None:
        """Install every desired manifest that is not active yet. Never raises for one model."""
        raws = [envelope.SerializeToString() for envelope in desired]
        self._held = {raw: hold for raw, hold in self._held.items() if raw in raws}
        for envelope, raw in zip(desired, raws, strict=True):
            hold = self._held.get(raw)
            if hold is not None and (hold.until is None or self._monotonic() < hold.until):
                continue
            try:
                kept = self._apply_one(raw)
            except TransientError as exc:
                log.warning("update postponed: %s", exc)
                if isinstance(exc, _NoSpaceError):  # the operator sees why it waits
                    self._report_downloading(*peek(envelope), f"waiting: {exc}", waiting=True)
            except _RolledBackError as exc:
                # Reported as ROLLED_BACK when it happened; a FAILED now would hide that.
                self._held[raw] = Hold(None, 1, str(exc))
                log.warning("%s", exc)
            except OSError as exc:
                # Disk full, read-only file system, permissions: keep the working model and
                # retry on the next check-in; the operator sees the reason in the log.
                log.error("update postponed by a file system error: %s", exc)
            except AgentError as exc:
                # Tried again with backoff (1 min doubling to 1 h), reported once per reason:
                # an expiry judged on a clock that ran ahead, or an artifact damaged on the
                # server and repaired since, heals without a restart.
                attempts = hold.attempts + 1 if hold is not None else 1
                wait = min(HOLD_MAX_S, HOLD_FIRST_S * 2 ** min(attempts - 1, 16))
                self._held[raw] = Hold(self._monotonic() + wait, attempts, reason_key(exc))
                name, version = peek(envelope)
                if hold is not None and hold.why == reason_key(exc):
                    log.warning("update of %s %s still refused: %s (next try in %.0f s)",
                                name, version, exc, wait)  # fmt: skip
                    continue
                log.error("update of %s %s refused: %s", name, version, exc)
                self._reported_failed[name] = version
                self._client.report(
                    device_pb2.StatusReport(
                        model_name=name, version=version, state=device_pb2.FAILED, detail=str(exc)
                    )
                )
            else:
                self._held.pop(raw, None)
                self._take_back_refusal(*peek(envelope), kept=kept)

    def _take_back_refusal(self, name: str, version: str, *, kept: bool) -> None:
        """A release of ``name`` was accepted: an earlier FAILED report of it no longer holds.
        An install reports INSTALLED itself; keeping what serves says so here."""
        if self._reported_failed.pop(name, None) is None or not kept:
            return
        log.info("%s %s serves under a manifest this device accepts now", name, version)
        self._client.report(
            device_pb2.StatusReport(
                model_name=name,
                version=version,
                state=device_pb2.INSTALLED,
                detail="serving it; an earlier refusal of its manifest no longer holds",
            )
        )

    def _report_downloading(
        self, name: str, version: str, detail: str, *, waiting: bool = False
    ) -> None:
        """Report DOWNLOADING once per version, and why it waits once per reason: a wait for
        disk space is not a new event at every check-in."""
        key = (version, reason_key(Exception(detail)) if waiting else "")
        last = self._downloading.get(name)
        if last is not None and (last == key or (not waiting and last[0] == version)):
            return
        self._downloading[name] = key
        self._client.report(
            device_pb2.StatusReport(
                model_name=name, version=version, state=device_pb2.DOWNLOADING, detail=detail
            )
        )

    def check_health(self) -> None:
        """Judge every activation under watch; roll back the ones that fail. Never raises."""
        try:
            journal = self._lifecycle.journal()
        except AgentError as exc:
            log.error("cannot read the update journal: %s", exc)
            return
        for name in journal.health:
            model = self._engine.peek(name)
            if model is None or self._monotonic() < self._judge_after.get(name, 0.0):
                continue
            stats = model.stats
            verdict = plan.judge_window(
                journal,
                name,
                self._health,
                served_s=self._lifecycle.served_s(name, journal),
                requests=stats.requests,
                errors=stats.errors - stats.rejected,  # a full queue is load, not a fault
                p50_ms=stats.recent_p50(),
                baseline_p50_ms=self._baselines.get(name, 0.0),
            )
            try:
                if verdict.action == "pass":
                    self._lifecycle.passed(name)
                    log.info("%s %s passed its health window", name, model.version)
                    self._client.report(
                        device_pb2.StatusReport(
                            model_name=name,
                            version=model.version,
                            state=device_pb2.INSTALLED,
                            detail=f"active on {model.backend}; passed its health window",
                        )
                    )
                elif verdict.action == "rollback" and not self._roll_back(
                    name, model.version, verdict.reason
                ):
                    self._judge_after[name] = self._monotonic() + HOLD_FIRST_S
            except (AgentError, OSError) as exc:
                # A full disk: judged again in a minute, not reloaded and logged every second.
                self._judge_after[name] = self._monotonic() + HOLD_FIRST_S
                log.error("cannot record the health verdict on %s: %s", name, exc)
        try:
            self._lifecycle.checkpoint()
        except (AgentError, OSError) as exc:
            log.warning("cannot checkpoint the serving time of the watched models: %s", exc)

    def _roll_back(self, name: str, bad_version: str, reason: str) -> bool:
        """Go back to the last-known-good; False when it cannot (it is retried later)."""
        good = self._store.previous().get(name)
        restored = "nothing to go back to; keeping it"
        model: LoadedModel | None = None
        if good is not None:
            path = self._store.artifact_path(name, good.sha256)
            fallback = path.parent / good.fallback_filename if good.fallback_filename else None
            damage = damage_of(path, good.sha256)
            if damage is not None:
                # The journal keeps the bad version active (and watched): it is what serves.
                log.error("cannot roll %s back to %s: %s", name, good.version, damage.why)
                return False
            try:
                model = _load(self._engine, name, good, path, fallback)
            except AgentError as exc:
                # The journal keeps the bad version active (and watched): it is what serves.
                log.error("cannot reload %s %s to roll back to: %s", name, good.version, exc)
                return False
        # Load first, then switch the journal, so the journal always names what serves.
        self._lifecycle.rolled_back(name)
        if model is not None:
            self._engine.put(model)
            restored = f"back to {model.version}"
        log.error("rolled %s %s back: %s; %s", name, bad_version, reason, restored)
        self._client.report(
            device_pb2.StatusReport(
                model_name=name,
                version=bad_version,
                state=device_pb2.ROLLED_BACK,
                detail=f"{reason}; {restored}",
            )
        )
        return True

    def _reload(self, name: str, entry: ActiveEntry) -> None:
        """Serve the active version again after it failed to load at start (e.g. an Edge TPU
        that was not ready yet). Raises the load error: it is reported like an update's."""
        path = self._store.artifact_path(name, entry.sha256)
        fallback = path.parent / entry.fallback_filename if entry.fallback_filename else None
        watched = self._lifecycle.watched(name)
        if watched:
            self._lifecycle.loading(name, entry.sha256, entry.version)
        try:
            model = _load(self._engine, name, entry, path, fallback)
            self._engine.put(model)
        except BaseException:
            if watched:
                self._lifecycle.trial_ended(name)
            raise
        if watched:
            self._lifecycle.serving(name)
        log.info("serving %s %s again", name, entry.version)

    def _apply_one(self, raw: bytes) -> bool:
        """Apply one desired manifest; True when it names what already serves (kept)."""
        # A release refused here is skipped before anything else, and quietly: it was
        # reported when it happened, and skipping needs no trust in the envelope.
        unverified = manifest_pb2.Manifest()
        try:
            unverified.ParseFromString(manifest_pb2.Envelope.FromString(raw).payload)
        except DecodeError:
            unverified.Clear()
        journal = self._lifecycle.journal()
        if unverified.sha256 and journal.is_refused(unverified.model_name, unverified.sha256):
            raise _RolledBackError(_refusal(unverified))
        verified = verify_release(
            raw,
            trust=self._identity.trust,
            fleet_id=self._identity.fleet_id,
            now=self._clock(),
            installed=self.installed(),
            max_artifact_bytes=MAX_MODEL_BYTES,
        )
        manifest = verified.manifest
        offer = plan.Offer(manifest.model_name, manifest.version, manifest.sha256)
        decision = plan.decide(journal, offer)
        if decision is plan.Decision.REFUSE:
            raise _RolledBackError(_refusal(manifest))
        active = journal.models.get(manifest.model_name)
        if decision is plan.Decision.CURRENT:
            assert active is not None  # noqa: S101 - CURRENT means it is active
            self._keep_current(verified, active)
            return True
        self._install(verified, active)
        return False

    def _keep_current(self, verified: VerifiedRelease, active: ActiveEntry) -> None:
        """The server wants what is active: settle its floor, fetch a file found damaged at
        start (and deleted), load it again when it is not serving."""
        manifest = verified.manifest
        floor = max(manifest.release_counter, manifest.rollback_from)
        unknown = floor == active.release_counter and bool(
            set(verified.signers) - set(active.floor_keyids)
        )
        if verified.recovery:  # it serves already (rolled back to), under the stolen floor
            log.warning("recovering the release floor of %s from %d to %d", manifest.model_name,
                        active.release_counter, floor)  # fmt: skip
            self._lifecycle.recovered(
                manifest.model_name,
                replace(active, release_counter=floor, floor_sha256="",
                        floor_keyids=plan.floor_of(None, floor, verified.signers)[1]),
            )  # fmt: skip
        elif active.floor_sha256 or floor > active.release_counter or unknown:
            # The server wants what this device serves (say, an explicit rollback to it
            # after a damaged newer release): the floor becomes this release's own. A floor
            # signed by keys it did not know (a journal of an older agent) learns them.
            self._lifecycle.settle_floor(manifest.model_name, floor, verified.signers)
        self._fetch(
            manifest.model_name,
            manifest.artifact_id,
            manifest.sha256,
            manifest.size,
            compressed=manifest.compressed if manifest.HasField("compressed") else None,
        )
        if manifest.HasField("cpu_fallback"):
            ref = manifest.cpu_fallback
            self._fetch(manifest.model_name, ref.artifact_id, ref.sha256, ref.size)
        if self._engine.peek(manifest.model_name) is None:
            self._reload(manifest.model_name, active)

    def _install(self, verified: VerifiedRelease, active: ActiveEntry | None) -> None:
        """Download, verify, load and smoke-test a new release; activate it."""
        manifest = verified.manifest
        log.info(
            "updating %s to %s (release %d, %d bytes)",
            manifest.model_name,
            manifest.version,
            manifest.release_counter,
            manifest.size,
        )
        if not self._store.artifact_path(manifest.model_name, manifest.sha256).exists():
            self._report_downloading(
                manifest.model_name, manifest.version, f"{manifest.size} bytes"
            )
        path = self._fetch(
            manifest.model_name,
            manifest.artifact_id,
            manifest.sha256,
            manifest.size,
            compressed=manifest.compressed if manifest.HasField("compressed") else None,
        )
        fallback: Path | None = None
        if manifest.HasField("cpu_fallback"):
            ref = manifest.cpu_fallback
            fallback = self._fetch(manifest.model_name, ref.artifact_id, ref.sha256, ref.size)
        self._client.report(
            device_pb2.StatusReport(
                model_name=manifest.model_name, version=manifest.version, state=device_pb2.VERIFIED
            )
        )
        sample = b""
        if manifest.HasField("smoke") and manifest.smoke.HasField("sample"):
            ref = manifest.smoke.sample
            staged = self._download(ref.artifact_id, ref.sha256, ref.size, durable=False)
            sample = staged.read_bytes()
            staged.unlink()
        # From here until it is active, a death of the agent is blamed on this release.
        self._lifecycle.loading(manifest.model_name, manifest.sha256, manifest.version)
        try:
            # One interpreter first: the new version serves as soon as it is smoke-tested, and
            # the rest of its pool is added after (loading each repacks the weights: 40 ms per
            # 100 MB).
            model = self._engine.load(
                manifest.model_name,
                manifest.version,
                path,
                cpu_fallback=fallback,
                deferred=True,
                warm=False,  # the smoke test is its first run
                variant=manifest.variant,
                fallback_variant=manifest.cpu_fallback.variant if fallback else "",
            )
            smoke.run_on(model, manifest.smoke if manifest.HasField("smoke") else None, sample)
        except BaseException:
            self._lifecycle.trial_ended(manifest.model_name)
            raise
        previous_model = self._engine.peek(manifest.model_name)
        if previous_model is not None:
            self._baselines[manifest.model_name] = previous_model.stats.recent_p50()
        # After an explicit rollback the floor stays at the highest release seen, so the
        # release rolled back from cannot be replayed; but for a recovery, which undoes a
        # floor only revoked keys set (the stolen key's release is no last-known-good).
        floor, floor_keyids = plan.floor_of(
            active,
            max(manifest.release_counter, manifest.rollback_from),
            verified.signers,
            recovery=verified.recovery,
        )
        if verified.recovery:
            log.warning("recovering %s from release %d (keys %s, revoked) to %s at release %d",
                        manifest.model_name, active.release_counter if active else 0,
                        ", ".join(active.floor_keyids) if active else "", manifest.version,
                        floor)  # fmt: skip
        # A first install has nothing to roll back to: it is trusted at once.
        (self._lifecycle.recovered if verified.recovery else self._lifecycle.activated)(
            manifest.model_name,
            ActiveEntry(
                version=manifest.version,
                release_counter=floor,
                floor_keyids=floor_keyids,
                sha256=manifest.sha256,
                filename=path.name,
                fallback_filename=fallback.name if fallback else "",
                variant=manifest.variant,
                fallback_variant=manifest.cpu_fallback.variant if fallback else "",
            ),
        )
        previous = self._engine.put(model)
        log.info(
            "activated %s %s on %s%s (was %s): %s",
            manifest.model_name,
            manifest.version,
            model.backend,
            f" {model.device}" if model.device else "",
            previous.version if previous else "none",
            model.backend_reason,
        )
        try:
            self._client.report(
                device_pb2.StatusReport(
                    model_name=manifest.model_name,
                    version=manifest.version,
                    state=device_pb2.INSTALLED,
                    detail=f"loaded, smoke-tested and active on {model.backend}",
                )
            )
        finally:  # it serves whether or not the server heard of it
            try:
                if model.grow():
                    log.info("%s %s serves with %d interpreters", model.name, model.version,
                             model.workers)  # fmt: skip
            except Exception:  # it serves with fewer; the report's outcome matters more
                log.exception("%s %s could not grow its interpreter pool", model.name,
                              model.version)  # fmt: skip

    def _fetch(
        self,
        model_name: str,
        artifact_id: str,
        sha256: str,
        size: int,
        *,
        compressed: manifest_pb2.ArtifactRef | None = None,
    ) -> Path:
        """The verified artifact in the store, downloading it first when it is not there.

        With a ``compressed`` copy (and zstd here) the smaller download is fetched and checked
        against its own hash, then decompressed with a bound and checked against ``sha256``.
        """
        path = self._store.artifact_path(model_name, sha256)
        if path.exists():
            return path
        if compressed is not None and compression.available():
            packed = self._download(  # deleted once decompressed: no fsync
                compressed.artifact_id, compressed.sha256, compressed.size, durable=False
            )
            staged = self._store.staging_path(sha256)
            try:
                compression.decompress_bounded(packed, staged, size=size, sha256=sha256)
            finally:
                packed.unlink(missing_ok=True)
            log.info(
                "fetched %s as %d zstd bytes (%.0f%% of %d)",
                artifact_id[:12],
                compressed.size,
                100.0 * compressed.size / size,
                size,
            )
        else:
            staged = self._download(artifact_id, sha256, size)
        return self._store.commit_artifact(model_name, sha256, staged)

    def _download(self, artifact_id: str, sha256: str, size: int, *, durable: bool = True) -> Path:
        staged = self._store.staging_path(sha256)
        self._store.clear_staging(keep=staged)  # staging holds only the download in progress
        handle = open_own(staged, append=True)  # never a link or FIFO another program put there
        with handle:
            have = os.fstat(handle.fileno()).st_size
            if have > size:
                handle.truncate(0)
                have = 0
            free = shutil.disk_usage(staged.parent).free
            # The artifact plus the same again for the loaded copy and the store's rename margin.
            if free < 2 * (size - have):
                raise _NoSpaceError(
                    f"not enough disk for artifact {artifact_id[:12]}: {free} bytes free, "
                    f"{2 * (size - have)} needed"
                )
            hasher = sha256_of_prefix(staged, have) if have else hashlib.sha256()
            if have:
                log.info("resuming download of %s at byte %d", artifact_id, have)
            sink = DurableSink(handle, hasher)
            try:
                from_http = self.sources.transfer(
                    artifact_id,
                    offset=have,
                    size=size,
                    sink=sink,
                    deadline_s=self._deadline,
                    max_bytes_per_s=self._rate,
                )
            except BaseException:
                with contextlib.suppress(Exception):  # the error being raised says more
                    sink.close(sync=False)  # what arrived stays, to resume from
                raise
            sink.close(sync=durable)  # on the disk before anything can point at it
        total = staged.stat().st_size
        if total != size:
            raise DownloadError(f"download of {artifact_id} ended at {total} of {size} bytes")
        digest = hasher.hexdigest()
        if digest != sha256 and from_http:
            # A mirror or the store gave wrong bytes: the server's stream next, not a refusal.
            staged.unlink()
            self.sources.distrust(artifact_id)
            raise DownloadError(
                f"artifact {artifact_id[:12]} from a mirror or the object store did not verify; "
                "fetching it from the fleet server next"
            )
        if digest != sha256 and have:
            # The kept prefix may be what is wrong (a torn write before a power cut): start over.
            staged.unlink()
            raise DownloadError(f"resumed download of {artifact_id} did not verify; starting over")
        if digest != sha256:
            staged.unlink()
            raise ManifestError(
                f"artifact sha256 {digest} does not match the signed manifest's {sha256}; discarded"
            )
        return staged


class _RolledBackError(ManifestError):
    """The desired release is one this device refused (rolled back, or crashed it)."""


def _refusal(manifest: manifest_pb2.Manifest) -> str:
    return (
        f"{manifest.model_name} {manifest.version} (sha256 {manifest.sha256[:12]}...) was rolled "
        "back on this device or crashed it; refusing to install it again (push a new release, "
        "or clear the refusal: edgefleet devices clear-refusal)"
    )


class _NoSpaceError(TransientError):
    """Not enough disk for a download (yet): tried again at the next check-in."""
