"""The server's data directory: database, artifacts, keys and secrets.

Layout::

    fleet.json              {"format": 1, "fleet_id": ...}
    fleet.db                SQLite database (the embedded default)
    artifacts/              uploaded model files, by sha256
    keys/                   release keys and the signed key list (signing/keys.py); root keys
                            only with 'init --keep-root-online'
    ca/                     the fleet CA: ca.key and ca.crt (give a copy of ca.crt to devices)
    admin.token             bearer token for the admin API
    enrollment.token        reusable bootstrap token devices may enroll with;
                            'edgefleet tokens create' makes single-use expiring ones

Everything in it is for the server's user alone: files 0600, folders 0700 (the server runs with
umask 077 and tightens an older data dir at start, :meth:`DataDir.tighten`). The root keys
``init`` makes go beside it, to ``<data dir>.root-keys/`` (:func:`default_root_key_dir`), to be
moved off the machine; ``fleet.json`` records where they were written.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fleet_server.errors import DataDirError

if TYPE_CHECKING:
    from fleet_server.registry.ca import FleetCA

__all__ = ["DataDir", "default_root_key_dir", "new_token"]

log = logging.getLogger(__name__)

_FORMAT = 1


def default_root_key_dir(root: Path) -> Path:
    """Where ``init`` writes the root keys unless told otherwise: ``<data dir>.root-keys``."""
    return root.with_name(root.name + ".root-keys")


def new_token(nbytes: int) -> str:
    """A random URL-safe token that can follow an option on a command line: one starting with
    "-" (1 in 64 of token_urlsafe's) is read by argparse as an option (`--token -x...`)."""
    while (token := secrets.token_urlsafe(nbytes)).startswith("-"):
        pass
    return token


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
    # Where init wrote the root private keys (None: in keys/, or a data dir from before).
    root_key_dir: Path | None = None

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
                _write_secret(self.cloud_token_file, new_token(24).encode())
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
        root_key_dir: Path | None = None,
    ) -> DataDir:
        """Create a new data directory with fresh keys and tokens; the root private keys go to
        ``root_key_dir`` (outside the data dir), or into ``keys/`` when it is None.

        Raises:
            DataDirError: it exists already (never overwrite keys), a bad threshold, or a
                ``root_key_dir`` inside the data dir or holding root keys already.
        """
        from fleet_server.signing.keys import KeyStore  # noqa: PLC0415

        if (root / "fleet.json").exists():
            raise DataDirError(f"{root} is already an EdgeFleet data dir; refusing to overwrite it")
        if (root / "keys").exists() and any((root / "keys").iterdir()):
            raise DataDirError(f"{root / 'keys'} holds keys already; refusing to overwrite them")
        if root_key_dir is not None:
            root_key_dir = root_key_dir.absolute()
            if root_key_dir.is_relative_to(root.absolute()):
                raise DataDirError(
                    f"--root-key-dir {root_key_dir} is inside the data dir {root}; pick a folder "
                    "outside it (or --keep-root-online)"
                )
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        (root / "artifacts").mkdir(exist_ok=True)
        data_dir = cls(root=root, fleet_id=fleet_id, root_key_dir=root_key_dir)
        KeyStore.create(
            data_dir.keys_dir,
            fleet_id,
            root_keys=root_keys,
            root_threshold=root_threshold,
            passphrase=passphrase,
            root_key_dir=root_key_dir,
        )
        data_dir.ca()
        _write_secret(data_dir.admin_token_file, new_token(32).encode())
        _write_secret(data_dir.enrollment_token_file, new_token(24).encode())
        meta: dict[str, object] = {"format": _FORMAT, "fleet_id": fleet_id}
        if root_key_dir is not None:
            meta["root_key_dir"] = str(root_key_dir)
        (root / "fleet.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        data_dir.tighten()
        return data_dir

    def root_keys_here(self) -> list[Path]:
        """Root private key files on this machine: in ``keys/``, in the folder init wrote them
        to, and in the default ``<data dir>.root-keys``."""
        from fleet_server.signing.keys import find_root_keys  # noqa: PLC0415

        folders = [self.keys_dir, self.root_key_dir, default_root_key_dir(self.root)]
        found: list[Path] = []
        for folder in dict.fromkeys(f.resolve() for f in folders if f is not None):
            found += find_root_keys(folder)
        return found

    def secure_at_start(self) -> None:
        """What the server does with its data dir at start: tighten it (logged once, with what
        changed) and warn while root keys sit on this machine.

        Raises:
            DataDirError: a mode cannot be changed.
        """
        tightened = self.tighten()
        if tightened:
            names = [str(p.relative_to(self.root)) for p in tightened[:10]]
            more = f" and {len(tightened) - 10} more" if len(tightened) > 10 else ""
            log.warning(
                "took group/world access from %d path(s) in %s (now 0600 files, 0700 "
                "folders): %s%s",
                len(tightened),
                self.root,
                ", ".join(names),
                more,
            )
        roots = self.root_keys_here()
        if roots:
            folders = ", ".join(sorted({str(p.parent) for p in roots}))
            log.warning("root keys are on this server: move %s off the machine", folders)

    def tighten(self) -> list[Path]:
        """Take group and world access away from everything in the data dir (files become
        0600 or 0700, folders 0700; symbolic links are not followed); return what changed.

        Raises:
            DataDirError: a mode cannot be changed.
        """
        changed = []
        paths = [self.root]
        for folder, dirs, files in os.walk(self.root):
            paths += [Path(folder) / name for name in (*dirs, *files)]
        for path in paths:
            try:
                mode = path.lstat().st_mode
                if stat.S_ISLNK(mode) or not mode & 0o077:
                    continue
                wanted = 0o700 if stat.S_ISDIR(mode) else stat.S_IMODE(mode) & 0o700
                path.chmod(wanted)
            except FileNotFoundError:
                continue  # gone meanwhile (a temporary file)
            except OSError as exc:
                raise DataDirError(f"cannot take group/world access from {path}: {exc}") from exc
            changed.append(path)
        return changed

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
        keys_at = meta.get("root_key_dir")
        return cls(
            root=root,
            fleet_id=str(meta["fleet_id"]),
            root_key_dir=Path(keys_at) if isinstance(keys_at, str) and keys_at else None,
        )
