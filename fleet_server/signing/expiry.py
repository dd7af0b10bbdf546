"""When what the fleet's trust runs on runs out: the key list, the release keys, the deployed
manifests and the server's certificates, and whether root keys sit on the server.

:func:`assess` decides from values (no I/O); :func:`key_status` decodes what a running server
holds (envelopes, certificate files) for it. ``edgefleet keys status`` (through the admin API)
and the dashboard show the same :class:`KeyStatus`.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from cryptography import x509
from google.protobuf.message import DecodeError

from protos import manifest_pb2
from protos.envelope import MANIFEST_PAYLOAD_TYPE

__all__ = ["WARN_DAYS", "Expiry", "KeyStatus", "Kind", "assess", "certificate_expiry", "key_status"]

WARN_DAYS = 30
_DAY = 86400


class Kind(StrEnum):
    KEY_LIST = "key list"
    RELEASE_KEY = "release key"
    MANIFEST = "manifest"
    SERVER_CERTIFICATE = "server certificate"
    BROKER_CERTIFICATE = "broker certificate"


_ADVICE = {
    Kind.KEY_LIST: "publish a new one: edgefleet keys rotate --root-key-dir DIR",
    Kind.RELEASE_KEY: "rotate it: edgefleet keys rotate --root-key-dir DIR",
    Kind.MANIFEST: "the server re-issues it within --renew-ahead-days when a release key is "
    "online; devices refuse it once expired",
    Kind.SERVER_CERTIFICATE: "restart the server: it issues itself a new one at each start",
    Kind.BROKER_CERTIFICATE: "restart the server: the embedded broker gets a new one at start",
}


@dataclass(frozen=True)
class Expiry:
    """One thing that expires, and whether it is due (within the warning period or past)."""

    kind: Kind
    name: str
    expires_unix: int
    due: bool
    advice: str

    def days_left(self, now: float) -> int:
        """Whole days until it expires (negative once it has)."""
        return int((self.expires_unix - now) // _DAY)


@dataclass(frozen=True)
class KeyStatus:
    """The fleet's keys and certificates at ``checked_unix``."""

    root_key_folders: tuple[str, ...]  # folders on the server that hold root private keys
    items: tuple[Expiry, ...]
    checked_unix: int
    warn_days: int = WARN_DAYS
    deployed_manifests: int = 0

    @property
    def due(self) -> tuple[Expiry, ...]:
        """The items within the warning period or expired."""
        return tuple(i for i in self.items if i.due)


def assess(
    keylist: manifest_pb2.KeyList,
    manifests: Iterable[manifest_pb2.Manifest],
    certificates: Iterable[tuple[Kind, str, int]],
    *,
    root_key_folders: Sequence[str],
    now: float,
    warn_days: int = WARN_DAYS,
) -> KeyStatus:
    """The status of a key list, the deployed manifests (only the nearest expiry is kept) and
    certificates given as (kind, name, not-after unix); items within ``warn_days`` are due."""
    horizon = now + warn_days * _DAY

    def item(kind: Kind, name: str, expires: int) -> Expiry:
        return Expiry(kind, name, expires, expires <= horizon, _ADVICE[kind])

    items = [item(Kind.KEY_LIST, f"version {keylist.version}", keylist.expires_unix)]
    for key in keylist.release_keys:
        # 0: valid as long as the key list that names it.
        until = min(key.expires_unix or keylist.expires_unix, keylist.expires_unix)
        items.append(item(Kind.RELEASE_KEY, key.keyid, until))
    expiring = [m for m in manifests if m.expires_unix]
    if expiring:
        first = min(expiring, key=lambda m: m.expires_unix)
        name = " ".join(p for p in (first.model_name, first.version, first.variant) if p)
        items.append(item(Kind.MANIFEST, name, first.expires_unix))
    items += [item(kind, name, expires) for kind, name, expires in certificates]
    return KeyStatus(
        root_key_folders=tuple(root_key_folders),
        items=tuple(items),
        checked_unix=int(now),
        warn_days=warn_days,
        deployed_manifests=len(expiring),
    )


def certificate_expiry(pem: bytes) -> int:
    """A PEM certificate's not-after, unix seconds.

    Raises:
        ValueError: not a PEM certificate.
    """
    cert = x509.load_pem_x509_certificate(pem)
    return int(cert.not_valid_after_utc.replace(tzinfo=datetime.UTC).timestamp())


def _manifests(
    envelopes: Iterable[bytes], rollback_sets: Iterable[bytes]
) -> list[manifest_pb2.Manifest]:
    """The manifests in serialized envelopes and in explicit rollbacks' envelope sets; what is
    not a signed manifest (an offline-signing placeholder) is skipped."""
    every = list(envelopes)
    for raw in rollback_sets:
        try:
            every += [
                e.SerializeToString() for e in manifest_pb2.EnvelopeSet.FromString(raw).envelopes
            ]
        except DecodeError:
            continue
    manifests = []
    for raw in every:
        try:
            envelope = manifest_pb2.Envelope.FromString(raw)
            if envelope.payload_type == MANIFEST_PAYLOAD_TYPE:
                manifests.append(manifest_pb2.Manifest.FromString(envelope.payload))
        except DecodeError:
            continue
    return manifests


def key_status(
    keylist: manifest_pb2.KeyList,
    *,
    deployed_envelopes: Iterable[bytes],
    rollback_sets: Iterable[bytes],
    root_keys: Sequence[Path],
    server_cert_pem: bytes,
    broker_cert_file: Path | None,
    now: float,
) -> KeyStatus:
    """:func:`assess` over a server's key list, the envelopes of its fleet-wide deployments
    (an explicit rollback's envelope set in ``rollback_sets``), its TLS certificate, its
    embedded broker's certificate file (if there is one) and the root key files found on it."""
    certificates = []
    if server_cert_pem:
        certificates.append(
            (Kind.SERVER_CERTIFICATE, "edgefleet-server", certificate_expiry(server_cert_pem))
        )
    if broker_cert_file is not None and broker_cert_file.exists():
        try:
            expires = certificate_expiry(broker_cert_file.read_bytes())
        except (OSError, ValueError):
            expires = 0  # unreadable: shown as expired rather than hidden
        certificates.append((Kind.BROKER_CERTIFICATE, str(broker_cert_file), expires))
    folders = sorted({str(p.parent) for p in root_keys})
    return assess(
        keylist,
        _manifests(deployed_envelopes, rollback_sets),
        certificates,
        root_key_folders=folders,
        now=now,
    )
