"""Keeping the fleet's trust from running out: the main server process re-signs and renews the
manifests in use, renews the key list when the root keys are at hand, and deletes the private
files of release keys whose overlap has ended.

The manifests in use are those of the releases a device may be sent: the version of each
fleet-wide deployment and of every rollout still in effect (one variant row each in
``models.envelope``). Explicit rollbacks are signed by the root keys, which no release-key
rotation touches: they are left as they are. A pass runs at start, every ``interval_s``, and
within ``poll_s`` of a new key list (``edgefleet keys rotate`` writes ``keylist.bin``).
What each manifest needs is decided by :func:`fleet_server.signing.resign.judge`.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from fleet_server.catalog.store import CatalogStore, ModelRow
from fleet_server.errors import DataDirError
from fleet_server.rollouts.store import RolloutStore
from fleet_server.signing.keys import KEYLIST_LIFETIME_S, KeyStore, ManifestSigner
from fleet_server.signing.resign import Action, Verdict, judge, merged, reissued
from fleet_server.storage.retrying import RetryLog
from protos import manifest_pb2

__all__ = [
    "INTERVAL_S",
    "RENEW_AHEAD_S",
    "AuditSink",
    "KeyMaintainer",
    "Pass",
    "Pending",
    "in_use",
    "pending",
    "release_signed_in_use",
]

log = logging.getLogger(__name__)
INTERVAL_S = 600.0
RENEW_AHEAD_S = 30 * 86400
_WARN_EVERY_S = 86400.0
_RETRY_S = 30.0


class AuditSink(Protocol):
    """Where what the server signed by itself is recorded (the audit log)."""

    def append(
        self, actor: str, action: str, target: str, detail: str, *, ok: bool, error: str = ""
    ) -> None: ...


@dataclass(frozen=True)
class Pending:
    """A manifest in use that needs the release keys, and why."""

    row: ModelRow
    verdict: Verdict

    @property
    def name(self) -> str:
        return f"{self.row.model_name} {self.row.version} ({self.row.variant})"


@dataclass
class Pass:
    """What one pass did."""

    signed: list[str] = field(default_factory=list)  # "model version (variant)"
    reissued: list[str] = field(default_factory=list)
    waiting: list[Pending] = field(default_factory=list)  # no release key online
    deleted: list[Path] = field(default_factory=list)
    keylist_renewed: int = 0  # the new version, 0: none


def in_use(catalog: CatalogStore, rollouts: RolloutStore) -> list[ModelRow]:
    """The variants devices may be sent: every fleet-wide deployment's version and every
    in-effect rollout's (explicit rollbacks carry root-signed manifests of their own)."""
    pairs = {(name, version) for name, (version, _) in catalog.deployments().items()}
    pairs |= rollouts.versions_in_effect()
    found = catalog.variants_of(sorted(pairs))
    return [row for pair in sorted(found) for row in found[pair]]


def release_signed_in_use(catalog: CatalogStore, rollouts: RolloutStore) -> list[ModelRow]:
    """The variants in use whose release-key manifests devices are sent: :func:`in_use` but for
    a deployment that is an explicit rollback (devices get its root-signed set), unless a
    rollout in effect sends that version too."""
    rolled_back = {(name, version) for name, (version, rb) in catalog.deployments().items() if rb}
    in_rollouts = rollouts.versions_in_effect()
    return [
        row
        for row in in_use(catalog, rollouts)
        if (row.model_name, row.version) not in rolled_back
        or (row.model_name, row.version) in in_rollouts
    ]


def pending(
    rows: Sequence[ModelRow], keylist: manifest_pb2.KeyList, *, now: float, renew_ahead_s: float
) -> list[Pending]:
    """The rows whose manifest needs signatures or a re-issue."""
    result = []
    for row in rows:
        verdict = judge(
            manifest_pb2.Envelope.FromString(row.envelope),
            keylist,
            now=now,
            renew_ahead_s=renew_ahead_s,
        )
        if verdict.action != Action.KEEP:
            result.append(Pending(row, verdict))
    return result


class KeyMaintainer:
    """Runs the passes on a thread of its own (the main server process only)."""

    def __init__(
        self,
        keys: KeyStore,
        catalog: CatalogStore,
        rollouts: RolloutStore,
        audit: AuditSink,
        *,
        root_keys: Callable[[], list[Path]],
        manifest_lifetime_s: float,
        keylist_lifetime_s: float = KEYLIST_LIFETIME_S,
        renew_ahead_s: float = RENEW_AHEAD_S,
        interval_s: float = INTERVAL_S,
        poll_s: float = 1.0,
        after_pass: Callable[[], object] | None = None,
    ) -> None:
        """``root_keys``: the root private key files on this server (renewing the key list
        needs them); ``after_pass``: called on the same thread after each pass (the expiry
        watch). Raises DataDirError when ``renew_ahead_s`` is not shorter than both
        lifetimes (everything would be renewed at every pass)."""
        for what, lifetime in (
            ("--manifest-lifetime-days", manifest_lifetime_s),
            ("--keylist-lifetime-days", keylist_lifetime_s),
        ):
            if renew_ahead_s >= lifetime:
                raise DataDirError(
                    f"--renew-ahead-days {renew_ahead_s / 86400:g} must be shorter than "
                    f"{what} {lifetime / 86400:g}"
                )
        self._keys = keys
        self._catalog = catalog
        self._rollouts = rollouts
        self._audit = audit
        self._root_keys = root_keys
        self._manifest_lifetime_s = manifest_lifetime_s
        self._keylist_lifetime_s = keylist_lifetime_s
        self._renew_ahead_s = renew_ahead_s
        self._interval_s = interval_s
        self._poll_s = poll_s
        self._after_pass = after_pass
        self._warned: dict[str, float] = {}  # what -> when it was last logged (monotonic)
        self._stop = threading.Event()
        self._woken = threading.Event()
        self._thread = threading.Thread(target=self._run, name="key-maintainer", daemon=True)

    def start(self) -> None:
        """Start the passes (the first one at once)."""
        self._thread.start()

    def wake(self) -> None:
        """Make a pass soon (within ``poll_s``): what is in use changed (a deploy)."""
        self._woken.set()

    def stop(self) -> None:
        """Stop, waiting for a pass in progress."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def run_once(self, now: float | None = None) -> Pass:
        """One pass: delete release key files whose overlap ended, renew the key list when due
        and the root keys are here, then sign or re-issue the manifests in use that need it.

        Raises:
            DataDirError: the key files cannot be read or written.
            sqlalchemy.exc.SQLAlchemyError: the database is away.
        """
        now = time.time() if now is None else now
        done = Pass()
        # Tidying only (the signer skips keys the list does not let sign): re-signing and
        # renewal must not wait on a keys folder that cannot be written.
        try:
            self._retire_leftovers()
        except DataDirError as exc:
            self._warn_daily("retire", "%s; the key file stays where it is", exc)
        try:
            done.deleted = self._keys.purge_retired(now)
        except DataDirError as exc:
            self._warn_daily("purge", "%s; the key file stays where it is", exc)
        for path in done.deleted:
            log.warning("deleted the retired release key %s: its overlap in the key list ended",
                        path)  # fmt: skip
        done.keylist_renewed = self._renew_keylist(now)
        keylist = self._keys.keylist()
        due = pending(
            in_use(self._catalog, self._rollouts),
            keylist,
            now=now,
            renew_ahead_s=self._renew_ahead_s,
        )
        for item in [i for i in due if i.verdict.action == Action.UNVERIFIED]:
            self._warn_daily(f"unverified {item.name}", "the manifest of %s in use is left "
                             "as it is: %s", item.name, item.verdict.reason)  # fmt: skip
        due = [i for i in due if i.verdict.action != Action.UNVERIFIED]
        if not due:
            return done
        try:
            signer = self._keys.manifest_signer()
        except DataDirError as exc:
            done.waiting = due
            self._warn_daily(
                "manifests",
                "%d manifest(s) in use need the release key (%s): %s; sign them offline: "
                "'edgefleet manifest pending --out DIR', 'edgefleet manifest sign', "
                "'edgefleet manifest attach'",
                len(due),
                exc,
                ", ".join(p.name for p in due[:10]),
            )
            return done
        for item in due:
            self._apply(item, signer, keylist, now, done)
        return done

    def _apply(
        self,
        item: Pending,
        signer: ManifestSigner,
        keylist: manifest_pb2.KeyList,
        now: float,
        done: Pass,
    ) -> None:
        row = item.row
        envelope = manifest_pb2.Envelope.FromString(row.envelope)
        manifest = manifest_pb2.Manifest.FromString(envelope.payload)
        if item.verdict.action == Action.REISSUE:
            manifest = reissued(manifest, now=now, lifetime_s=self._manifest_lifetime_s)
            new = signer.sign(manifest)
            action, into = "RenewManifest", done.reissued
        else:
            new = merged(envelope, signer.sign(manifest), keylist)
            action, into = "ResignManifest", done.signed
        if not self._catalog.replace_envelope(
            row.model_name, row.version, row.variant, row.envelope, new.SerializeToString()
        ):
            return  # changed meanwhile (offline signatures attached): the next pass judges it
        into.append(item.name)
        keyids = [s.keyid for s in new.signatures]
        self._audit.append(
            "server",
            action,
            f"model {row.model_name} {row.version}",
            json.dumps(
                {
                    "variant": row.variant,
                    "reason": item.verdict.reason,
                    "expires_unix": manifest.expires_unix,
                    "keyids": keyids,
                },
                sort_keys=True,
            ),
            ok=True,
        )
        log.info("%s the manifest of %s: %s; now signed by %s",
                 "re-issued" if action == "RenewManifest" else "re-signed",
                 item.name, item.verdict.reason, ", ".join(keyids))  # fmt: skip

    def _retire_leftovers(self) -> None:
        """Move private files of release keys that no longer sign to ``keys/retired``: a
        rotation or revocation killed between publishing its list and moving them leaves them
        beside the signing keys (a stolen key's too)."""
        # Under the key list lock: a rotation writes its new key's file before its list.
        with self._keys.locked():
            keylist = self._keys.keylist()
            signing = {k.keyid for k in keylist.release_keys if not k.expires_unix}
            stale = [
                path.stem.removeprefix("release-")
                for path in self._keys.directory.glob("release-*.key")
                if path.stem.removeprefix("release-") not in signing
            ]
            moved = self._keys.retire_release_keys(stale)
        for path in moved:
            log.warning("moved %s to %s: the key list does not let that key sign",
                        path.name, path.parent)  # fmt: skip

    def _renew_keylist(self, now: float) -> int:
        """Publish the same keys in a new key list when this one expires within the renewal
        period and the root keys are here; warn once a day when they are not."""
        keylist = self._keys.keylist()
        if keylist.expires_unix - now > self._renew_ahead_s:
            return 0
        days = (keylist.expires_unix - now) / 86400
        roots = self._root_keys()
        if not roots:
            self._warn_daily(
                "keylist",
                "key list version %d expires in %.1f days and no root key is on this server to "
                "renew it: run 'edgefleet keys rotate --root-key-dir DIR' before then",
                keylist.version,
                days,
            )
            return 0
        try:
            renewed = self._keys.renew_keylist(
                root_key_files=roots, lifetime_s=int(self._keylist_lifetime_s)
            )
        except DataDirError as exc:
            self._warn_daily(
                "keylist",
                "key list version %d expires in %.1f days and cannot be renewed here: %s",
                keylist.version,
                days,
                exc,
            )
            return 0
        self._audit.append(
            "server",
            "RenewKeyList",
            f"key list {renewed.version}",
            json.dumps({"expires_unix": renewed.expires_unix, "was": keylist.version}),
            ok=True,
        )
        log.warning(
            "renewed the key list: version %d, expires %s (version %d expired in %.1f days)",
            renewed.version,
            time.strftime("%Y-%m-%d", time.gmtime(renewed.expires_unix)),
            keylist.version,
            days,
        )
        return renewed.version

    def _warn_daily(self, what: str, message: str, *args: object) -> None:
        last = self._warned.get(what)
        if last is not None and time.monotonic() - last < _WARN_EVERY_S:
            return
        self._warned[what] = time.monotonic()
        log.warning(message, *args)

    def _version(self) -> int:
        try:
            return self._keys.keylist().version
        except DataDirError:
            return -1

    def _run(self) -> None:
        retry = RetryLog(log, "re-sign the manifests in use")
        seen, due_at = -2, 0.0
        while not self._stop.is_set():
            version = self._version()
            if version != seen or time.monotonic() >= due_at or self._woken.is_set():
                self._woken.clear()
                renewed = 0
                try:
                    renewed = self.run_once().keylist_renewed
                    if self._after_pass is not None:
                        self._after_pass()
                except Exception as exc:  # noqa: BLE001 - a database or token that is away now is there at the next pass
                    retry.failed(exc)
                    due_at = time.monotonic() + min(self._interval_s, _RETRY_S)
                else:
                    retry.succeeded()
                    due_at = time.monotonic() + self._interval_s
                # The pass's own renewal need not trigger another pass; a rotation published
                # while it ran (it signed with the key list it read first) must.
                seen = renewed or version
            self._stop.wait(self._poll_s)
