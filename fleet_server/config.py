"""What ``edgefleet-server run`` is asked to do (:class:`Settings`, one field per option), and
``server.toml``: those options in a file, typed, unknown keys refused.

Every key of the ``[server]`` table is one of ``edgefleet-server run``'s long options with
underscores (``--mqtt-url`` -> ``mqtt_url``); options given on the command line win. Errors name
the file, the line and the fix. Under systemd, a ``cloud-token`` credential stands in for
``cloud_token_file`` and an ``s3-credentials`` one for ``s3_credentials``.
"""

from __future__ import annotations

import argparse
import os
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from agent.config import line_of
from fleet_server.errors import DataDirError

__all__ = ["Settings", "apply_config"]

_SKIP = {"help", "config", "worker", "func"}


def _actions(run: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in run._actions if a.option_strings and a.dest not in _SKIP}


def _convert(action: argparse.Action, value: Any, where: str) -> Any:
    if isinstance(action, argparse._StoreTrueAction):
        if not isinstance(value, bool):
            raise DataDirError(f"{where} must be true or false, got {value!r}")
        return value
    if isinstance(action, argparse._AppendAction):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise DataDirError(f"{where} must be a list of strings, got {value!r}")
        return value
    if isinstance(value, bool | list | dict):
        raise DataDirError(f"{where} must be a single value, got {value!r}")
    kind = action.type or str
    try:
        converted = kind(str(value)) if callable(kind) else value
    except (ValueError, TypeError, argparse.ArgumentTypeError) as exc:
        raise DataDirError(f"{where}: {exc}") from exc
    if action.choices is not None and converted not in action.choices:
        raise DataDirError(f"{where} must be one of {', '.join(map(str, action.choices))}")
    return converted


def apply_config(run: argparse.ArgumentParser, path: Path) -> dict[str, Any]:
    """Read ``path`` and make its values the defaults of the ``run`` parser; return them.

    Raises:
        DataDirError: unreadable, invalid TOML, an unknown key or a wrong value (with line).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise DataDirError(f"config file {path} does not exist") from exc
    except OSError as exc:
        raise DataDirError(f"cannot read config file {path}: {exc.strerror}") from exc
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise DataDirError(f"{path}: invalid TOML: {exc}") from exc
    extra = sorted(set(raw) - {"server"})
    if extra:
        line = line_of(text, extra[0], "")
        raise DataDirError(
            f"{path}:{line}: unknown table [{extra[0]}]; every setting goes under [server]"
        )
    table = raw.get("server", {})
    actions = _actions(run)
    values: dict[str, Any] = {}
    for key, value in table.items():
        line = line_of(text, "server", key)
        action = actions.get(key)
        if action is None:
            known = ", ".join(sorted(actions))
            raise DataDirError(f"{path}:{line}: unknown key {key!r} in [server] (known: {known})")
        values[key] = _convert(action, value, f"{path}:{line}: {key}")
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if creds and "cloud_token_file" not in values and (Path(creds) / "cloud-token").exists():
        values["cloud_token_file"] = Path(creds) / "cloud-token"
    if creds and "s3_credentials" not in values and (Path(creds) / "s3-credentials").exists():
        values["s3_credentials"] = Path(creds) / "s3-credentials"
    run.set_defaults(**values)
    for action in run._actions:  # a value from the file satisfies "required"
        if action.dest in values:
            action.required = False
    return values


@dataclass(frozen=True)
class Settings:
    """What ``edgefleet-server run`` was asked to do (its options, one field each)."""

    data_dir: Path
    listen: str = "127.0.0.1:7443"
    device_listen: str | None = None
    device_advertise: str | None = None
    tls_name: list[str] | None = None
    no_bootstrap_token: bool = False
    db_url: str | None = None
    mqtt_url: str | None = None
    mqtt_listen: str = "127.0.0.1:8883"
    device_mqtt_url: str | None = None
    mqtt_share_group: str | None = None
    mqtt_client_id: str | None = None
    server_name: str = "main"
    history_hours: float = 48.0
    ingest_queue_messages: int = 10_000
    ingest_spill: str = "auto"
    ingest_spill_messages: int = 1_000_000
    ingest_spill_mib: int = 512
    cloud_listen: str = ""
    dashboard_listen: str = ""
    cloud_url: str = ""
    cloud_token_file: Path | None = None
    cloud_ca_file: Path | None = None
    artifact_store: str = ""
    s3_endpoint: str = ""
    s3_region: str = "us-east-1"
    s3_credentials: Path | None = None
    s3_ca_file: Path | None = None
    s3_public_endpoint: str = ""
    s3_create_bucket: bool = False
    download_url_lifetime: int = 900
    artifact_mirror: str = ""
    rollout_interval: float = 2.0
    ghost_device_after: float = 3600.0
    manifest_lifetime_days: float = 365.0
    keylist_lifetime_days: float = 365.0
    renew_ahead_days: float = 30.0
    expiry_hook: Path | None = None
    webhook_timeout: float = 10.0
    webhook_retry_after: float = 10.0
    offline_after: float = 900.0
    metrics_listen: str | None = None
    pkcs11_module: Path | None = None
    pkcs11_token: str | None = None
    pkcs11_key_label: str | None = None
    pkcs11_pin_file: Path | None = None
    workers: int = 1
    worker: bool = False
    main_pid: int = 0  # a worker's main process: the worker stops when it is gone
    ready_file: Path | None = None
    log_level: str = "info"

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Settings:
        """The settings of a parsed ``run`` command line."""
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)})
