"""``server.toml``: the ``run`` command's options in a file, typed, unknown keys refused.

Every key of the ``[server]`` table is one of ``edgefleet-server run``'s long options with
underscores (``--mqtt-url`` -> ``mqtt_url``); options given on the command line win. Errors name
the file, the line and the fix. Under systemd, a ``cloud-token`` credential stands in for
``cloud_token_file``.
"""

from __future__ import annotations

import argparse
import os
import tomllib
from pathlib import Path
from typing import Any

from agent.config import line_of
from fleet_server.errors import DataDirError

__all__ = ["apply_config"]

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
    run.set_defaults(**values)
    for action in run._actions:  # a value from the file satisfies "required"
        if action.dest in values:
            action.required = False
    return values
