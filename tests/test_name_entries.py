"""Names, versions and variants at the edge of the rule, through the entries a careless
operator uses (a real server; the admin CLI)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.harness import Server

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--version", "1.0.0\n"),  # a version read from a file with its newline
        ("--name", "color\n"),
        ("--variant", "int8\n"),
    ],
)
def test_push_refuses_a_trailing_newline(
    server_factory: Callable[..., Server],
    color_models: Path,
    broker_url: str,
    option: str,
    value: str,
) -> None:
    # The push checked versions and variants with re.match and "$", which a trailing
    # newline passes: "1.0.0\n" was stored, signed and deployed, and every device's report
    # of it was then refused by the device API (protos.names, fullmatch), so a rollout of it
    # could never complete.
    server = server_factory(broker_url)
    args = {"--name": "color", "--version": "1.0.0", "--variant": "int8"} | {option: value}
    pushed = server.admin(
        "models",
        "push",
        str(color_models / "color_int8.tflite"),
        *(word for pair in args.items() for word in pair),
        check=False,
    )
    assert pushed.returncode == 1, pushed.stdout
    assert "invalid argument" in pushed.stderr
    assert json.loads(server.admin("models", "list", "--json").stdout) == []
