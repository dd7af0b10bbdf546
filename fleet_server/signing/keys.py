"""The fleet's keys: root keys sign key lists, release keys sign manifests.

Files in ``<data dir>/keys`` (0700; files 0600)::

    release-<keyid>.key   Ed25519 release private keys
    keylist.bin           the current signed KeyList (a DSSE-style envelope); only the server
                          reads it (devices get it in check-in answers), so it is 0600 too
    retired/              release private keys a rotation replaced (0700)
    root-<keyid>.key      only with ``init --keep-root-online``

Root private keys (``root-<keyid>.key``, PKCS#8 PEM; passphrase-protected if asked) are only
needed to publish a new key list (`edgefleet keys rotate`) and to sign an explicit rollback.
``init`` writes them to a folder outside the data dir, to be moved off the machine and handed
back with ``--root-key``/``--root-key-dir``. The release keys stay online in the embedded
default so that `models push` can sign, or live in a PKCS#11 token
(:mod:`fleet_server.signing.pkcs11`) whose public key a rotation put in the key list.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agent.errors import ManifestError
from agent.updates.trust import MAX_KEYS, pin_keylist, update_keylist
from fleet_server.errors import DataDirError
from protos import manifest_pb2
from protos.envelope import KEYLIST_PAYLOAD_TYPE, MANIFEST_PAYLOAD_TYPE, keyid, pae

__all__ = [
    "KEYLIST_LIFETIME_S",
    "OVERLAP_S",
    "ExternalKey",
    "KeyStore",
    "ManifestSigner",
    "find_root_keys",
    "generate_key",
    "load_private_key",
    "load_public_key",
    "public_bytes",
    "sign_envelope",
]

KEYLIST_LIFETIME_S = 365 * 24 * 3600
# How long a rotation keeps the replaced release keys in the key list by default: the manifests
# they signed verify meanwhile, until the server has added the new key's signatures.
OVERLAP_S = 7 * 24 * 3600
_KEYID = re.compile(r"[0-9a-f]{1,64}")


def generate_key(passphrase: bytes | None = None) -> bytes:
    """A new Ed25519 private key as PKCS#8 PEM, encrypted when ``passphrase`` is given."""
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def load_private_key(path: Path, passphrase: bytes | None = None) -> Ed25519PrivateKey:
    """Load a PEM Ed25519 private key.

    Raises:
        DataDirError: unreadable, wrong passphrase, or not an Ed25519 key.
    """
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=passphrase)
    except TypeError as exc:
        raise DataDirError(f"{path} is passphrase-protected: give --passphrase-file") from exc
    except (OSError, ValueError) as exc:
        raise DataDirError(f"cannot load key {path} (wrong passphrase?): {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise DataDirError(f"{path} is not an Ed25519 private key")
    return key


def load_public_key(path: Path) -> bytes:
    """The raw 32 bytes of an Ed25519 public key file (PEM or DER SubjectPublicKeyInfo, as
    ``openssl pkey -pubout`` and ``pkcs11-tool --read-object --type pubkey`` write them).

    Raises:
        DataDirError: unreadable, or not an Ed25519 public key.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataDirError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        load = serialization.load_pem_public_key if b"-----BEGIN" in data else None
        key = (load or serialization.load_der_public_key)(data)
    except (ValueError, TypeError) as exc:
        raise DataDirError(f"{path} is not a PEM or DER public key: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        kind = (
            f"ECDSA {key.curve.name}"
            if isinstance(key, ec.EllipticCurvePublicKey)
            else type(key).__name__.removesuffix("PublicKey")
        )
        raise DataDirError(
            f"{path} holds a {kind} public key; release keys must be Ed25519 (devices take "
            "32-byte keys only)"
        )
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_bytes(key: Ed25519PrivateKey) -> bytes:
    """The raw 32-byte public key."""
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


class ExternalKey(Protocol):
    """An Ed25519 key held outside the data dir, in a PKCS#11 token say."""

    @property
    def public_raw(self) -> bytes:
        """The raw 32-byte public key."""
        ...

    def sign(self, message: bytes) -> bytes:
        """A raw 64-byte Ed25519 signature over ``message``."""
        ...

    def close(self) -> None:
        """Let go of the key (a token session); it may be used again later."""
        ...


def sign_envelope(
    payload_type: str, payload: bytes, keys: Sequence[Ed25519PrivateKey | ExternalKey]
) -> manifest_pb2.Envelope:
    """An envelope over ``payload`` signed by every key in ``keys``."""
    message = pae(payload_type, payload)
    return manifest_pb2.Envelope(
        payload_type=payload_type,
        payload=payload,
        signatures=[
            manifest_pb2.Signature(
                keyid=keyid(public_bytes(k) if isinstance(k, Ed25519PrivateKey) else k.public_raw),
                sig=k.sign(message),
            )
            for k in keys
        ],
    )


def _write_key(path: Path, pem: bytes) -> None:
    """Write a new key file; on failure (a full disk) leave none.

    Raises:
        DataDirError: it cannot be written.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(pem)
                handle.flush()
                os.fsync(handle.fileno())
        except OSError:
            path.unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise DataDirError(f"cannot write {path}: {exc.strerror}") from exc


def _private_dir(path: Path) -> None:
    """Create ``path`` (0700), or tighten it to 0700 when it exists."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.chmod(0o700)


def find_root_keys(directory: Path) -> list[Path]:
    """The root private key files (``root-*.key``) in ``directory``, sorted; none if absent."""
    return sorted(directory.glob("root-*.key")) if directory.is_dir() else []


class ManifestSigner:
    """Signs manifests with the release keys the current key list names."""

    def __init__(self, keys: Sequence[Ed25519PrivateKey | ExternalKey]) -> None:
        self._keys = list(keys)

    def sign(self, manifest: manifest_pb2.Manifest) -> manifest_pb2.Envelope:
        """Wrap ``manifest`` in an envelope signed over PAE(type, payload)."""
        return sign_envelope(
            MANIFEST_PAYLOAD_TYPE, manifest.SerializeToString(deterministic=True), self._keys
        )


class KeyStore:
    """The key files of one data dir, and the release key in a token when there is one."""

    def __init__(self, directory: Path, token: ExternalKey | None = None) -> None:
        self.directory = directory
        self.token = token
        self._cache: tuple[float, bytes] | None = None
        self._checked = 0.0  # when the file was last looked at (monotonic)

    @property
    def keylist_path(self) -> Path:
        return self.directory / "keylist.bin"

    @property
    def retired_dir(self) -> Path:
        """Where release private keys go once a rotation replaced them."""
        return self.directory / "retired"

    def retire_release_keys(self, keyids: Sequence[str]) -> list[Path]:
        """Move the private files of these release keys to :attr:`retired_dir` (0700), out of
        the signer's reach; return where they went.

        Raises:
            DataDirError: a file cannot be moved.
        """
        moved = []
        for key_id in keyids:
            path = self.directory / f"release-{key_id}.key"
            if not path.exists():
                continue
            try:
                _private_dir(self.retired_dir)
                moved.append(path.replace(self.retired_dir / path.name))
            except OSError as exc:
                raise DataDirError(f"cannot move {path} to {self.retired_dir}: {exc}") from exc
        return moved

    @classmethod
    def create(
        cls,
        directory: Path,
        fleet_id: str,
        *,
        root_keys: int = 1,
        root_threshold: int = 1,
        passphrase: bytes | None = None,
        lifetime_s: int = KEYLIST_LIFETIME_S,
        root_key_dir: Path | None = None,
    ) -> KeyStore:
        """Generate root keys, a release key and the first key list. The root private keys go
        to ``root_key_dir`` (0700, files 0600), by default ``directory`` itself (online).

        Raises:
            DataDirError: a threshold that cannot be met, or ``root_key_dir`` holds root keys.
        """
        if not 1 <= root_threshold <= root_keys <= 16:
            raise DataDirError(
                f"root threshold {root_threshold} of {root_keys} keys: need 1 <= k <= n <= 16"
            )
        roots_at = root_key_dir or directory
        if find_root_keys(roots_at):
            raise DataDirError(f"{roots_at} holds root keys already; refusing to add more")
        _private_dir(directory)
        _private_dir(roots_at)
        store = cls(directory)
        roots = []
        for _ in range(root_keys):
            pem = generate_key(passphrase)
            key = serialization.load_pem_private_key(pem, password=passphrase)
            assert isinstance(key, Ed25519PrivateKey)  # noqa: S101 - we just generated it
            _write_key(roots_at / f"root-{keyid(public_bytes(key))}.key", pem)
            roots.append(key)
        release = store._new_release_key()
        keylist = manifest_pb2.KeyList(
            version=1,
            expires_unix=int(time.time()) + lifetime_s,
            fleet_id=fleet_id,
            root_keys=[_public(k) for k in roots],
            root_threshold=root_threshold,
            release_keys=[_public(release)],
            release_threshold=1,
        )
        store._publish(keylist, roots)
        return store

    def _new_release_key(self) -> Ed25519PrivateKey:
        pem = generate_key()
        key = serialization.load_pem_private_key(pem, password=None)
        assert isinstance(key, Ed25519PrivateKey)  # noqa: S101 - we just generated it
        _write_key(self.directory / f"release-{keyid(public_bytes(key))}.key", pem)
        return key

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the data dir's key list lock: a rotation, a recovery and the server's renewal
        each read the current list and publish the next; two at once would publish one
        version twice (devices keep the first they see) or undo each other.

        Raises:
            DataDirError: the lock file cannot be opened.
        """
        try:
            fd = os.open(self.directory / "keylist.lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise DataDirError(f"cannot lock {self.directory}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _publish(
        self,
        keylist: manifest_pb2.KeyList,
        signers: Sequence[Ed25519PrivateKey],
        replacing: bytes | None = None,
    ) -> None:
        """Sign and write ``keylist``, once a device that holds ``replacing`` (or, for the
        first list, a device that enrolls) would adopt it: the server must never sign with a
        list its devices refuse.

        Raises:
            DataDirError: devices would refuse it, or it cannot be written (a full disk).
        """
        envelope = sign_envelope(
            KEYLIST_PAYLOAD_TYPE, keylist.SerializeToString(deterministic=True), signers
        )
        raw = envelope.SerializeToString()
        try:
            adopted = pin_keylist(raw, fleet_id=keylist.fleet_id, now=time.time())
            if replacing is not None:
                # now=0: a held list that has expired still hands over to its successor.
                held = pin_keylist(replacing, fleet_id=keylist.fleet_id, now=0)
                adopted = update_keylist(held, raw, now=time.time())
        except ManifestError as exc:
            raise DataDirError(
                f"devices would refuse key list version {keylist.version}: {exc}; not published"
            ) from exc
        if adopted.version != keylist.version:
            raise DataDirError(f"key list version {keylist.version} is not newer; not published")
        # Only the server reads the file (devices get the list in check-in answers): 0600.
        tmp = self.keylist_path.with_suffix(".tmp")
        try:
            tmp.unlink(missing_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(raw)
                handle.flush()
                os.fsync(handle.fileno())
            tmp.replace(self.keylist_path)
            dir_fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise DataDirError(
                f"cannot write the key list {self.keylist_path}: {exc.strerror}; key list "
                f"version {keylist.version} not published"
            ) from exc

    def keylist_bytes(self, max_age_s: float = 0.0) -> bytes:
        """The current signed key list (re-read when the file changes, e.g. after a rotation);
        with ``max_age_s`` the file is looked at no more often than that (the check-in path).

        Raises:
            DataDirError: missing or unreadable.
        """
        now = time.monotonic()
        if self._cache is not None and now - self._checked < max_age_s:
            return self._cache[1]
        try:
            mtime = self.keylist_path.stat().st_mtime
            if self._cache is None or self._cache[0] != mtime:
                self._cache = (mtime, self.keylist_path.read_bytes())
        except OSError as exc:
            raise DataDirError(f"cannot read the key list {self.keylist_path}: {exc}") from exc
        self._checked = now
        return self._cache[1]

    def keylist(self) -> manifest_pb2.KeyList:
        """The current key list, decoded (signatures are checked by its readers)."""
        envelope = manifest_pb2.Envelope.FromString(self.keylist_bytes())
        return manifest_pb2.KeyList.FromString(envelope.payload)

    def manifest_signer(self) -> ManifestSigner:
        """A signer with the current release keys (not those a rotation keeps for an overlap,
        which carry an expiry) whose private halves are here; with a token, its key first (and
        it must be one of them).

        Raises:
            DataDirError: fewer such keys than the key list's release threshold, or the
                token's key is not a current release key.
        """
        keylist = self.keylist()
        keys: list[Ed25519PrivateKey | ExternalKey] = []
        token, listed = self.token, False
        for key in keylist.release_keys:
            path = self.directory / f"release-{key.keyid}.key"
            if key.expires_unix:
                # A rotation replaced it: it still verifies until then, it signs no more.
                continue
            if token is not None and key.public_key == token.public_raw:
                keys.insert(0, token)
                listed = True
            elif path.exists():
                keys.append(load_private_key(path))
        if token is not None and not listed:
            raise DataDirError(
                f"the token's key {keyid(token.public_raw)} is not a current release key of key "
                f"list version "
                f"{keylist.version}; publish it with 'edgefleet keys rotate --release-pub FILE' "
                "(docs/security.md, Release keys in a hardware token)"
            )
        if len(keys) < keylist.release_threshold:
            raise DataDirError(
                f"{len(keys)} usable release key(s) in {self.directory}, key list version "
                f"{keylist.version} requires {keylist.release_threshold}"
            )
        return ManifestSigner(keys[: max(keylist.release_threshold, 1)])

    def rotate_release(
        self,
        *,
        root_key_files: Sequence[Path] = (),
        passphrase: bytes | None = None,
        lifetime_s: int = KEYLIST_LIFETIME_S,
        overlap_s: float = OVERLAP_S,
    ) -> manifest_pb2.KeyList:
        """Make a new release key the first one: key list version + 1, signed by root keys.

        The replaced release keys stay in the list for ``overlap_s`` seconds (0: dropped at
        once), so that the manifests they signed verify until the server has re-signed them
        (:mod:`fleet_server.renewal.maintainer`); their private files move to
        :attr:`retired_dir` at once, so nothing signs with them any more. Root private keys
        come from ``root_key_files`` or, by default, this directory (a data dir made with
        ``init --keep-root-online``).

        Raises:
            DataDirError: fewer root keys at hand than the root threshold.
        """
        with self.locked():
            current = self.keylist()
            roots = self._root_signers(current, root_key_files, passphrase)
            release = self._new_release_key()
            try:
                return self._replace_release(
                    current, _public(release), roots, lifetime_s, overlap_s
                )
            except DataDirError:
                self._drop_unpublished(release)
                raise

    def publish_release_key(
        self,
        public_raw: bytes,
        *,
        root_key_files: Sequence[Path] = (),
        passphrase: bytes | None = None,
        lifetime_s: int = KEYLIST_LIFETIME_S,
        overlap_s: float = OVERLAP_S,
    ) -> manifest_pb2.KeyList:
        """Make a key held elsewhere (a PKCS#11 token's) the release key: key list version + 1,
        signed by root keys as :meth:`rotate_release` does (with the same overlap), with no
        private key written here.

        Raises:
            DataDirError: not 32 bytes, or fewer root keys at hand than the root threshold.
        """
        if len(public_raw) != 32:
            raise DataDirError(f"an Ed25519 public key has 32 bytes, not {len(public_raw)}")
        with self.locked():
            current = self.keylist()
            roots = self._root_signers(current, root_key_files, passphrase)
            new = manifest_pb2.PublicKey(keyid=keyid(public_raw), public_key=public_raw)
            return self._replace_release(current, new, roots, lifetime_s, overlap_s)

    def _drop_unpublished(self, key: Ed25519PrivateKey) -> None:
        """Delete the file of a new release key whose key list was not published."""
        with contextlib.suppress(OSError):
            (self.directory / f"release-{keyid(public_bytes(key))}.key").unlink()

    def _replace_release(
        self,
        current: manifest_pb2.KeyList,
        new: manifest_pb2.PublicKey,
        roots: Sequence[Ed25519PrivateKey],
        lifetime_s: int,
        overlap_s: float,
    ) -> manifest_pb2.KeyList:
        now = time.time()
        until = int(now + overlap_s)
        keylist = manifest_pb2.KeyList()
        keylist.CopyFrom(current)
        keylist.version = current.version + 1
        keylist.expires_unix = int(now) + lifetime_s
        del keylist.release_keys[:]
        keylist.release_keys.append(new)
        kept = []
        if overlap_s > 0:
            for key in current.release_keys:
                if key.keyid == new.keyid or (key.expires_unix and key.expires_unix <= now):
                    continue
                old = manifest_pb2.PublicKey()
                old.CopyFrom(key)
                old.expires_unix = min(key.expires_unix or until, until)
                kept.append(old)
        keylist.release_keys.extend(kept)
        keylist.release_threshold = 1
        if len(keylist.release_keys) > MAX_KEYS:
            raise DataDirError(
                f"key list version {keylist.version} would name {len(keylist.release_keys)} "
                f"release keys, {len(kept)} of them kept for overlaps; devices take at most "
                f"{MAX_KEYS}: rotate with --overlap-days 0 (the overlaps end now: a device may "
                "refuse a deployed manifest until the server has re-signed it)"
            )
        self._publish(keylist, roots[: current.root_threshold], self.keylist_bytes())
        # The keys it replaces must not sign any more (the overlap only lets devices accept
        # what they signed before): out of the signer's reach at once.
        self.retire_release_keys([k.keyid for k in current.release_keys if k.keyid != new.keyid])
        if kept:
            self._remember_overlap(self._overlapping() | {k.keyid for k in kept})
        return keylist

    def revoke_release(
        self,
        keyids: Sequence[str],
        *,
        root_key_files: Sequence[Path] = (),
        passphrase: bytes | None = None,
        lifetime_s: int = KEYLIST_LIFETIME_S,
    ) -> manifest_pb2.KeyList:
        """Revoke stolen release keys: key list version + 1, signed by root keys, with
        ``keyids`` added to ``revoked_keyids`` (every later list carries them: it is copied),
        out of ``release_keys``, and a new release key in their place (a rotation without
        overlap; the revoked private files move to :attr:`retired_dir`). When every id is
        revoked already, the current list stays (a recovery run again).

        Raises:
            DataDirError: an id the key list neither names nor revokes, or fewer root keys at
                hand than the root threshold.
        """
        with self.locked():
            current = self.keylist()
            known = {k.keyid for k in current.release_keys} | set(current.revoked_keyids)
            unknown = sorted(set(keyids) - known)
            if unknown or not keyids:
                raise DataDirError(
                    f"release key(s) {', '.join(unknown) or '(none given)'} not in key list "
                    f"version {current.version} (see 'edgefleet keys list')"
                )
            roots = self._root_signers(current, root_key_files, passphrase)
            fresh = sorted(set(keyids) - set(current.revoked_keyids))
            if not fresh:
                return current
            release = self._new_release_key()
            revoking = manifest_pb2.KeyList()
            revoking.CopyFrom(current)
            revoking.revoked_keyids.extend(fresh)
            kept = [k for k in current.release_keys if k.keyid not in fresh]
            del revoking.release_keys[:]
            revoking.release_keys.extend(kept)
            try:
                keylist = self._replace_release(revoking, _public(release), roots, lifetime_s, 0)
            except DataDirError:
                self._drop_unpublished(release)
                raise
            self.retire_release_keys(fresh)
            return keylist

    def renew_keylist(
        self,
        *,
        root_key_files: Sequence[Path] = (),
        passphrase: bytes | None = None,
        lifetime_s: int = KEYLIST_LIFETIME_S,
    ) -> manifest_pb2.KeyList:
        """The same keys in a new key list: version + 1, a new expiry, release keys whose
        overlap has passed left out; signed by root keys.

        Raises:
            DataDirError: fewer root keys at hand than the root threshold, or no release key
                would be left.
        """
        with self.locked():
            current = self.keylist()
            roots = self._root_signers(current, root_key_files, passphrase)
            now = time.time()
            keylist = manifest_pb2.KeyList()
            keylist.CopyFrom(current)
            keylist.version = current.version + 1
            keylist.expires_unix = int(now) + lifetime_s
            live = [k for k in current.release_keys if not k.expires_unix or k.expires_unix > now]
            if len(live) < current.release_threshold:
                raise DataDirError(
                    f"key list version {current.version} has {len(live)} unexpired release key(s), "
                    f"fewer than its threshold {current.release_threshold}: rotate instead "
                    "('edgefleet keys rotate --root-key-dir DIR')"
                )
            del keylist.release_keys[:]
            keylist.release_keys.extend(live)
            self._publish(keylist, roots[: current.root_threshold], self.keylist_bytes())
            return keylist

    @property
    def _overlap_record(self) -> Path:
        """The ids of retired release keys a rotation kept in the key list for an overlap,
        one a line: their files are deleted once it has passed."""
        return self.retired_dir / "overlap"

    def _overlapping(self) -> set[str]:
        try:
            text = self._overlap_record.read_text(encoding="ascii")
        except FileNotFoundError:
            return set()
        except (OSError, UnicodeDecodeError) as exc:
            raise DataDirError(f"cannot read {self._overlap_record}: {exc}") from exc
        return {w for w in text.split() if _KEYID.fullmatch(w)}

    def _remember_overlap(self, keyids: set[str]) -> None:
        _private_dir(self.retired_dir)
        tmp = self._overlap_record.with_suffix(".tmp")
        tmp.write_text("".join(f"{k}\n" for k in sorted(keyids)), encoding="ascii")
        tmp.replace(self._overlap_record)

    def purge_retired(self, now: float) -> list[Path]:
        """Delete the retired private files of release keys whose overlap has passed (the key
        list names them with an expiry before ``now``, or no longer names them); return the
        files deleted. Keys retired without an overlap stay in :attr:`retired_dir`.

        Raises:
            DataDirError: a file cannot be deleted.
        """
        listed = {k.keyid: k.expires_unix for k in self.keylist().release_keys}
        overlapping = self._overlapping()
        ended = {k for k, exp in listed.items() if exp and exp <= now}
        ended |= {k for k in overlapping if k not in listed}
        deleted = []
        for key_id in sorted(k for k in ended if _KEYID.fullmatch(k)):
            path = self.retired_dir / f"release-{key_id}.key"
            try:
                if path.exists():
                    path.unlink()
                    deleted.append(path)
            except OSError as exc:
                raise DataDirError(f"cannot delete {path}: {exc.strerror}") from exc
        if overlapping & ended:
            self._remember_overlap(overlapping - ended)
        return deleted

    def _root_signers(
        self, current: manifest_pb2.KeyList, files: Sequence[Path], passphrase: bytes | None
    ) -> list[Ed25519PrivateKey]:
        """The root private keys of ``current`` among ``files`` (default: this directory's).

        Raises:
            DataDirError: fewer than the root threshold.
        """
        wanted = {k.keyid for k in current.root_keys}
        files = list(files) or find_root_keys(self.directory)
        found: dict[str, Ed25519PrivateKey] = {}
        for path in files:
            key = load_private_key(path, passphrase)
            if keyid(public_bytes(key)) in wanted:
                # A key counts once (a copy of a key file is no second key): devices count
                # distinct keys toward the threshold.
                found.setdefault(keyid(public_bytes(key)), key)
        roots = list(found.values())
        if len(roots) < current.root_threshold:
            where = (
                f"tried {', '.join(str(f) for f in files)}"
                if files
                else f"no root-*.key in {self.directory}"
            )
            raise DataDirError(
                f"{len(roots)} of the fleet's root keys at hand; {current.root_threshold} must "
                f"sign a new key list ({where}): give them with --root-key FILE or "
                "--root-key-dir DIR (init wrote them to DATA_DIR.root-keys/ unless told "
                "--root-key-dir or --keep-root-online)"
            )
        return roots

    def close(self) -> None:
        """Close the token's session, if a token signs."""
        if self.token is not None:
            self.token.close()


def _public(key: Ed25519PrivateKey) -> manifest_pb2.PublicKey:
    raw = public_bytes(key)
    return manifest_pb2.PublicKey(keyid=keyid(raw), public_key=raw)
