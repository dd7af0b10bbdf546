"""The server's data directory: database, artifacts, keys and secrets.

Layout::

    fleet.json              {"format": 1, "fleet_id": ...}
    fleet.db                SQLite database (the embedded default)
    artifacts/              uploaded model files, by sha256
    keys/                   root and release keys and the signed key list (signing/keys.py)
    ca/                     the fleet CA: ca.key (0600) and ca.crt (give ca.crt to devices)
    admin.token             bearer token for the admin API (0600)
    enrollment.token        reusable bootstrap token devices may enroll with (0600);
                            'edgefleet tokens create' makes single-use expiring ones
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fleet_server.errors import DataDirError

if TYPE_CHECKING:
    from fleet_server.registry.ca import FleetCA

__all__ = ["DataDir"]

_FORMAT = 1


def _write_secret(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


@dataclass(frozen=True)
class DataDir:
    """Paths and identity of one server data directory."""

    root: Path
    fleet_id: str

    @property
    def db_url(self) -> str:
        """SQLAlchemy URL of the embedded SQLite database."""
        return f"sqlite:///{self.root / 'fleet.db'}"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def keys_dir(self) -> Path:
        return self.root / "keys"

    @property
    def ca_dir(self) -> Path:
        return self.root / "ca"

    def ca(self) -> FleetCA:
        """The fleet CA, created on first use for data dirs from before certificates.

        Raises:
            DataDirError: the CA files are unreadable.
        """
        from fleet_server.registry.ca import FleetCA  # noqa: PLC0415

        if not (self.ca_dir / "ca.key").exists():
            return FleetCA.create(self.ca_dir, self.fleet_id)
        return FleetCA.load(self.ca_dir)

    @property
    def admin_token_file(self) -> Path:
        return self.root / "admin.token"

    @property
    def enrollment_token_file(self) -> Path:
        return self.root / "enrollment.token"

    @property
    def cloud_token_file(self) -> Path:
        return self.root / "cloud.token"

    def cloud_token(self) -> str:
        """The reference cloud service's token, created (0600) on first use.

        Raises:
            DataDirError: it cannot be read or written.
        """
        if not self.cloud_token_file.exists():
            try:
                _write_secret(self.cloud_token_file, secrets.token_urlsafe(24).encode())
            except OSError as exc:
                raise DataDirError(f"cannot write {self.cloud_token_file}: {exc}") from exc
        return self.read_secret(self.cloud_token_file)

    def read_secret(self, path: Path) -> str:
        """A token file's content.

        Raises:
            DataDirError: unreadable.
        """
        try:
            return path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise DataDirError(f"cannot read {path}: {exc.strerror}") from exc

    @classmethod
    def create(
        cls,
        root: Path,
        fleet_id: str,
        *,
        root_keys: int = 1,
        root_threshold: int = 1,
        passphrase: bytes | None = None,
    ) -> DataDir:
        """Create a new data directory with fresh keys and tokens.

        Raises:
            DataDirError: it exists already (never overwrite keys), or a bad threshold.
        """
        from fleet_server.signing.keys import KeyStore  # noqa: PLC0415

        if (root / "fleet.json").exists():
            raise DataDirError(f"{root} is already an EdgeFleet data dir; refusing to overwrite it")
        if (root / "keys").exists() and any((root / "keys").iterdir()):
            raise DataDirError(f"{root / 'keys'} holds keys already; refusing to overwrite them")
        root.mkdir(parents=True, exist_ok=True)
        (root / "artifacts").mkdir(exist_ok=True)
        data_dir = cls(root=root, fleet_id=fleet_id)
        KeyStore.create(
            data_dir.keys_dir,
            fleet_id,
            root_keys=root_keys,
            root_threshold=root_threshold,
            passphrase=passphrase,
        )
        data_dir.ca()
        _write_secret(data_dir.admin_token_file, secrets.token_urlsafe(32).encode())
        _write_secret(data_dir.enrollment_token_file, secrets.token_urlsafe(24).encode())
        meta = {"format": _FORMAT, "fleet_id": fleet_id}
        (root / "fleet.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        return data_dir

    @classmethod
    def open(cls, root: Path) -> DataDir:
        """Open an existing data directory.

        Raises:
            DataDirError: missing or of an unknown format.
        """
        meta_path = root / "fleet.json"
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise DataDirError(
                f"{root} is not an EdgeFleet data dir; "
                f"run 'edgefleet-server init --data-dir {root}'"
            ) from exc
        except (OSError, ValueError) as exc:
            raise DataDirError(f"cannot read {meta_path}: {exc}") from exc
        if meta.get("format") != _FORMAT:
            raise DataDirError(f"{meta_path} has format {meta.get('format')!r}; expected {_FORMAT}")
        return cls(root=root, fleet_id=str(meta["fleet_id"]))
