"""Apply the desired state: verify -> download -> check hash -> load -> smoke -> activate.

Nothing here replaces a working model until its successor is verified, fully downloaded,
hash-checked, loaded and has run once; a failure at any step keeps the current model serving
and is reported to the server.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from google.protobuf.message import DecodeError

from agent.client import DeviceClient, sha256_of_prefix
from agent.errors import AgentError, DownloadError, ManifestError, TransientError
from agent.identity import Identity
from agent.inference.engine import Engine, LoadedModel
from agent.inference.modelfile import MAX_MODEL_BYTES
from agent.updates import compression, smoke
from agent.updates.health import HealthPolicy, judge
from agent.updates.sink import DurableSink
from agent.updates.store import ActiveEntry, HealthWindow, ModelStore
from agent.updates.verify import InstalledModel, verify_manifest
from protos import device_pb2, manifest_pb2

__all__ = ["Updater", "smoke_test"]

log = logging.getLogger(__name__)


def smoke_test(model: LoadedModel, test: manifest_pb2.SmokeTest | None, sample: bytes) -> None:
    """Run the manifest's smoke test (or, without one, the model once on zeros).

    Raises:
        ManifestError: the output differs from the expectation beyond its tolerance.
        InferenceError: the model fails to run.
        InputError: the sample does not fit the model.
    """
    if test is None or not sample:
        inputs = [np.zeros(t.shape, dtype=np.dtype(t.dtype)) for t in model.info.inputs]
    else:
        inputs = smoke.split_sample(model.info, sample)
    outputs = model.infer(inputs, record=False)
    if len(outputs) != len(model.info.outputs):
        raise ManifestError(f"model {model.name} produced {len(outputs)} outputs")
    if test is not None:
        smoke.check(
            outputs[0],
            model.info.outputs[0],
            indices=test.top_indices,
            scores=test.top_scores,
            tolerance=test.tolerance or smoke.DEFAULT_TOLERANCE,
        )


class Updater:
    """Brings the engine to the desired state the server sends."""

    def __init__(
        self,
        *,
        store: ModelStore,
        engine: Engine,
        client: DeviceClient,
        identity: Identity,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        download_deadline_s: float = 600.0,
        health: HealthPolicy | None = None,
        max_download_bytes_per_s: int = 0,
    ) -> None:
        self._store = store
        self._engine = engine
        self._client = client
        self._identity = identity
        self._clock = clock
        self._monotonic = monotonic
        # Per open health window (model, wall-clock start): when this process first saw it on
        # the monotonic clock, and how long it had been open by the wall clock then.
        self._watching: dict[tuple[str, float], tuple[float, float]] = {}
        self._deadline = download_deadline_s
        self._refused: set[bytes] = set()  # envelopes refused for good; not retried each check-in
        self._health = health or HealthPolicy()
        self._rate = max_download_bytes_per_s
        self._baselines: dict[str, float] = {}  # p50 of the version each new one replaced

    @staticmethod
    def recover(store: ModelStore, health: HealthPolicy) -> list[device_pb2.StatusReport]:
        """At start, before anything is loaded: count this start in every open health window
        and roll back the activations that have become crash loops. Returns the reports to send
        once the server can be reached."""
        reports = []
        for name, window in store.note_start().items():
            elapsed = time.time() - window.since
            if elapsed >= health.window_s:
                store.close_health(name)  # passed while the agent was down or offline
                continue
            verdict = judge(
                health,
                elapsed_s=elapsed,
                starts=window.starts,
                requests=0,
                errors=0,
                p50_ms=0.0,
                baseline_p50_ms=0.0,
            )
            if verdict.action != "rollback":
                continue
            bad = store.active().get(name)
            previous = store.previous().get(name)
            damage = (
                _damage(store.artifact_path(name, previous.sha256), previous.sha256)
                if previous is not None
                else None
            )
            if damage is not None:
                # A crash-looping version still starts; a damaged one may not run at all.
                log.error("not rolling %s back: its last-known-good %s is unusable (%s)", name,
                          previous.version if previous else "?", damage.why)  # fmt: skip
                continue
            good = store.roll_back(name)
            log.error(
                "rolling %s back from %s to %s: %s",
                name,
                bad.version if bad else "?",
                good.version if good else "nothing",
                verdict.reason,
            )
            if bad is not None:
                reports.append(
                    device_pb2.StatusReport(
                        model_name=name,
                        version=bad.version,
                        state=device_pb2.ROLLED_BACK,
                        detail=f"{verdict.reason}; back to {good.version if good else 'none'}",
                    )
                )
        return reports

    @staticmethod
    def load_active_into(store: ModelStore, engine: Engine) -> None:
        """Serve what the store says is active (at start, before talking to the server).

        Each active artifact is hashed first: a power cut or a failing SD card can leave a
        file that no longer is what was verified. A damaged one is deleted and the model's
        last-known-good version serves instead (or nothing, without one); the release is not
        refused, so the next check-in downloads it again.
        """
        for name, active in store.active().items():
            entry, path = active, store.artifact_path(name, active.sha256)
            while (damage := _damage(path, entry.sha256)) is not None:
                if damage.unreadable:  # not proof of damage (permissions?): keep it, skip it
                    log.error("cannot read active %s %s: %s", name, entry.version, damage.why)
                    break
                _discard(path)
                good = store.roll_back(name, refuse=False)
                log.error("active %s %s is damaged on disk (%s); %s", name, entry.version,
                          damage.why, f"serving {good.version} until it is downloaded again"
                          if good else "downloading it again at the next check-in")  # fmt: skip
                if good is None:
                    break
                entry, path = good, store.artifact_path(name, good.sha256)
            if damage is not None:
                continue
            fallback = path.parent / entry.fallback_filename if entry.fallback_filename else None
            fallback_damage = _damage(fallback, fallback.stem) if fallback is not None else None
            if fallback is not None and fallback_damage is not None:
                # Its CPU fallback is checked against its name (its sha256) the same way: the
                # model serves without it until the next check-in fetches it again.
                log.error("the CPU fallback of %s %s is unusable (%s); serving without it "
                          "until it is fetched again", name, entry.version,
                          fallback_damage.why)  # fmt: skip
                if not fallback_damage.unreadable:
                    _discard(fallback)
                fallback = None
            try:
                model = engine.load(name, entry.version, path, cpu_fallback=fallback)
            except AgentError as exc:
                log.error("cannot load active model %s %s: %s", name, entry.version, exc)
                continue
            engine.put(model)
            log.info("serving %s %s from %s", name, entry.version, path)

    def set_identity(self, identity: Identity) -> None:
        """Trust the keys of ``identity`` from now on (after a key rotation).

        Manifests refused under the old keys get another chance under the new ones.
        """
        self._identity = identity
        self._refused.clear()

    def installed(self) -> dict[str, InstalledModel]:
        """Release counter and hash of each active model (the hash of the release the counter
        belongs to, after a fall back from a damaged file)."""
        return {
            name: InstalledModel(e.release_counter, e.floor_sha256 or e.sha256)
            for name, e in self._store.active().items()
        }

    def apply(self, desired: Sequence[manifest_pb2.Envelope]) -> None:
        """Install every desired manifest that is not active yet. Never raises for one model."""
        for envelope in desired:
            raw = envelope.SerializeToString()
            if raw in self._refused:
                continue
            try:
                self._apply_one(raw)
            except TransientError as exc:
                log.warning("update postponed: %s", exc)
            except _RolledBackError as exc:
                # Reported as ROLLED_BACK when it happened; a FAILED now would hide that.
                self._refused.add(raw)
                log.warning("%s", exc)
            except OSError as exc:
                # Disk full, read-only file system, permissions: keep the working model and
                # retry on the next check-in; the operator sees the reason in the log.
                log.error("update postponed by a file system error: %s", exc)
            except AgentError as exc:
                self._refused.add(raw)
                name, version = _peek(envelope)
                log.error("update of %s %s refused: %s", name, version, exc)
                self._client.report(
                    device_pb2.StatusReport(
                        model_name=name, version=version, state=device_pb2.FAILED, detail=str(exc)
                    )
                )

    def _elapsed(self, name: str, window: HealthWindow) -> float:
        """How long a health window has been open. While this process runs, on the monotonic
        clock: a wall-clock step (NTP setting a Pi without an RTC hours ahead) neither passes
        a window early nor holds it open. The wall clock only says, once, how much of it
        passed before this process saw it (a restart), counted within 0..the window."""
        key = (name, window.since)
        seen = self._watching.get(key)
        if seen is None:
            before = min(max(self._clock() - window.since, 0.0), self._health.window_s)
            seen = (self._monotonic(), before)
            for old in [k for k in self._watching if k[0] == name]:
                del self._watching[old]  # an earlier window of the same model
            self._watching[key] = seen
        return seen[1] + (self._monotonic() - seen[0])

    def check_health(self) -> None:
        """Judge every activation under watch; roll back the ones that fail. Never raises."""
        try:
            windows = self._store.health()
        except AgentError as exc:
            log.error("cannot read the update journal: %s", exc)
            return
        for name, window in windows.items():
            model = self._engine.peek(name)
            if model is None:
                continue
            stats = model.stats
            verdict = judge(
                self._health,
                elapsed_s=self._elapsed(name, window),
                starts=window.starts,
                requests=stats.requests,
                errors=stats.errors - stats.rejected,  # a full queue is load, not a fault
                p50_ms=stats.recent_p50(),
                baseline_p50_ms=self._baselines.get(name, 0.0),
            )
            if verdict.action == "pass":
                self._store.close_health(name)
                log.info("%s %s passed its health window", name, model.version)
                self._client.report(
                    device_pb2.StatusReport(
                        model_name=name,
                        version=model.version,
                        state=device_pb2.INSTALLED,
                        detail=f"active on {model.backend}; passed its health window",
                    )
                )
            elif verdict.action == "rollback":
                self._roll_back(name, model.version, verdict.reason)

    def _roll_back(self, name: str, bad_version: str, reason: str) -> None:
        good = self._store.previous().get(name)
        restored = "nothing to go back to; keeping it"
        model: LoadedModel | None = None
        if good is not None:
            path = self._store.artifact_path(name, good.sha256)
            fallback = path.parent / good.fallback_filename if good.fallback_filename else None
            damage = _damage(path, good.sha256)
            if damage is not None:
                # The journal keeps the bad version active (and watched): it is what serves.
                log.error("cannot roll %s back to %s: %s", name, good.version, damage.why)
                return
            try:
                model = self._engine.load(name, good.version, path, cpu_fallback=fallback)
            except AgentError as exc:
                # The journal keeps the bad version active (and watched): it is what serves.
                log.error("cannot reload %s %s to roll back to: %s", name, good.version, exc)
                return
        # Load first, then switch the journal, so the journal always names what serves.
        self._store.roll_back(name)
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

    def _reload(self, name: str, entry: ActiveEntry) -> None:
        """Serve the active version again after it failed to load at start (e.g. an Edge TPU
        that was not ready yet). Raises the load error: it is reported like an update's."""
        path = self._store.artifact_path(name, entry.sha256)
        fallback = path.parent / entry.fallback_filename if entry.fallback_filename else None
        self._engine.put(self._engine.load(name, entry.version, path, cpu_fallback=fallback))
        log.info("serving %s %s again", name, entry.version)

    def _apply_one(self, raw: bytes) -> None:
        # A release this device rolled back is skipped before anything else, and quietly: it
        # was reported as ROLLED_BACK, and skipping needs no trust in the envelope.
        unverified = manifest_pb2.Manifest()
        try:
            unverified.ParseFromString(manifest_pb2.Envelope.FromString(raw).payload)
        except DecodeError:
            unverified.Clear()
        if unverified.sha256 and unverified.sha256 in self._store.refused():
            raise _RolledBackError(
                f"{unverified.model_name} {unverified.version} was rolled back on this device; "
                "refusing to install it again (push a new release)"
            )
        manifest = verify_manifest(
            raw,
            trust=self._identity.trust,
            fleet_id=self._identity.fleet_id,
            now=self._clock(),
            installed=self.installed(),
            max_artifact_bytes=MAX_MODEL_BYTES,
        )
        active = self._store.active().get(manifest.model_name)
        # The same bytes under a new version (a re-release) still become that version, so
        # the device reports what the server asked for; only the download is skipped.
        if (
            active is not None
            and active.sha256 == manifest.sha256
            and active.version == manifest.version
        ):
            if active.floor_sha256 or manifest.rollback_from > active.release_counter:
                # The server wants what this device serves (say, an explicit rollback to it
                # after a damaged newer release): the floor becomes this release's own.
                self._store.settle_floor(
                    manifest.model_name, max(manifest.release_counter, manifest.rollback_from)
                )
            # A file found damaged at start (and deleted) is fetched again; the model is loaded
            # again when it is not serving.
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
            return
        if manifest.sha256 in self._store.refused():
            raise _RolledBackError(
                f"{manifest.model_name} {manifest.version} was rolled back on this device; "
                "refusing to install it again (push a new release)"
            )
        log.info(
            "updating %s to %s (release %d, %d bytes)",
            manifest.model_name,
            manifest.version,
            manifest.release_counter,
            manifest.size,
        )
        if not self._store.artifact_path(manifest.model_name, manifest.sha256).exists():
            self._client.report(
                device_pb2.StatusReport(
                    model_name=manifest.model_name,
                    version=manifest.version,
                    state=device_pb2.DOWNLOADING,
                    detail=f"{manifest.size} bytes",
                )
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
        # One interpreter first: the new version serves as soon as it is smoke-tested, and the
        # rest of its pool is added after (loading each repacks the weights: 40 ms per 100 MB).
        model = self._engine.load(
            manifest.model_name,
            manifest.version,
            path,
            cpu_fallback=fallback,
            deferred=True,
            warm=False,  # the smoke test is its first run
        )
        smoke_test(model, manifest.smoke if manifest.HasField("smoke") else None, sample)
        previous_model = self._engine.peek(manifest.model_name)
        if previous_model is not None:
            self._baselines[manifest.model_name] = previous_model.stats.recent_p50()
        self._store.set_active(
            manifest.model_name,
            ActiveEntry(
                version=manifest.version,
                # After an explicit rollback the floor stays at the highest release seen, so
                # the release rolled back from cannot be replayed.
                release_counter=max(
                    manifest.release_counter,
                    manifest.rollback_from,
                    active.release_counter if active else 0,
                ),
                sha256=manifest.sha256,
                filename=path.name,
                fallback_filename=fallback.name if fallback else "",
            ),
            watch=active is not None,  # a first install has nothing to roll back to
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
        have = staged.stat().st_size if staged.exists() else 0
        if have > size:
            staged.unlink()
            have = 0
        free = shutil.disk_usage(staged.parent).free
        # The artifact plus the same again for the loaded copy and the store's rename margin.
        if free < 2 * (size - have):
            raise TransientError(
                f"not enough disk for artifact {artifact_id[:12]}: {free} bytes free, "
                f"{2 * (size - have)} needed"
            )
        hasher = sha256_of_prefix(staged, have) if have else hashlib.sha256()
        if have:
            log.info("resuming download of %s at byte %d", artifact_id, have)
        with staged.open("ab") as handle:
            sink = DurableSink(handle, hasher)
            try:
                self._client.download(
                    artifact_id,
                    offset=have,
                    expected_size=size,
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


@dataclass(frozen=True)
class _Damage:
    why: str
    unreadable: bool = False  # an I/O or permission error, not a wrong hash


def _damage(path: Path, sha256: str) -> _Damage | None:
    """Why the artifact at ``path`` is not the verified one (None when it is)."""
    try:
        with path.open("rb") as handle:
            digest = hashlib.file_digest(handle, "sha256").hexdigest()
    except FileNotFoundError:
        return _Damage("the file is missing")
    except OSError as exc:
        return _Damage(f"cannot read it: {exc}", unreadable=True)
    if digest == sha256:
        return None
    return _Damage(f"sha256 {digest[:12]}..., verified {sha256[:12]}...")


def _discard(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:  # a read-only file system must not stop the agent from starting
        log.error("cannot delete %s: %s", path, exc)


class _RolledBackError(ManifestError):
    """The desired release is one this device rolled back."""


def _peek(envelope: manifest_pb2.Envelope) -> tuple[str, str]:
    """Model name and version from an envelope, unverified: for reports and logs only."""
    manifest = manifest_pb2.Manifest()
    try:
        manifest.ParseFromString(envelope.payload)
    except Exception:  # noqa: BLE001 - a report about garbage still deserves a report
        return "", ""
    return manifest.model_name[:64], manifest.version[:32]
