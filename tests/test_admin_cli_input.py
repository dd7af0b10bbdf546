"""The admin CLI's promise for bad numbers: one line on stderr and exit 1 (refused) or 2 (usage),
never a traceback. A careless operator's values: negative, past int32/uint32, infinite."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet_server.admin_cli import main

BAD_NUMBERS = [
    ("tokens", "create", "--ttl", "infs"),
    ("tokens", "create", "--ttl", "1e30s"),
    ("tokens", "create", "--ttl", "0"),  # was a 24 h token, silently
    ("tokens", "create", "--ttl", "31d"),  # refused by the server only after the call
    ("tokens", "create", "--uses", "-5"),
    ("tokens", "create", "--uses", "99999999999"),
    ("rollouts", "status", "-1"),
    ("rollouts", "status", "99999999999999999999"),
    ("rollouts", "abort", "-1"),
    ("audit", "--limit", "-1"),
    ("audit", "--before", "-1"),
    ("rollouts", "create", "m", "1.0.0", "--max-concurrent", "-1"),
    ("rollouts", "create", "m", "1.0.0", "--device-timeout", "99999999999"),
    ("rollouts", "create", "m", "1.0.0", "--min-requests", "-3"),
    ("rollouts", "create", "m", "1.0.0", "--health-window", "infs"),
    ("webhooks", "test", "ops", "--wait", "-1"),
    ("webhooks", "test", "ops", "--wait", "nan"),
    ("webhooks", "deliveries", "--limit", "0"),
    ("webhooks", "deliveries", "--limit", "99999999999"),
]


@pytest.mark.parametrize("words", BAD_NUMBERS, ids=" ".join)
def test_a_bad_number_is_one_line_not_a_traceback(
    words: tuple[str, ...], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The values went into protobuf fields unchecked: ValueError ("Value out of range") or
    # OverflowError (int(inf)) came out as a traceback.
    ca = tmp_path / "ca.crt"
    ca.write_bytes(b"not needed: the request is refused before it is sent\n")
    common = ["--server", "127.0.0.1:1", "--token", "t", "--ca-file", str(ca), "--timeout", "2"]
    try:
        code = main([*common, *words])
    except SystemExit as exc:  # argparse: a usage error
        code = int(exc.code or 0)
    assert code in (1, 2)
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("edgefleet"), err


@pytest.mark.parametrize(
    "words",
    [
        ("--workers", "0"),
        ("--workers", "-3"),
        ("--rollout-interval", "0"),
        ("--rollout-interval", "-1"),
        ("--rollout-interval", "nan"),
        ("--history-hours", "inf"),
    ],
    ids=" ".join,
)
def test_the_server_refuses_run_options_out_of_range(
    words: tuple[str, ...], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # --rollout-interval 0 made the controller spin against the database; --workers 0 or
    # less started no device port worker and said nothing.
    from fleet_server.cli import main as server_main

    with pytest.raises(SystemExit) as info:
        server_main(["run", "--data-dir", str(tmp_path), *words])
    assert info.value.code == 2
    assert "is outside" in capsys.readouterr().err


@pytest.mark.parametrize("ttl", ["0", "0s", "31d"])
def test_a_token_lifetime_out_of_range_is_a_usage_error_not_a_default(
    ttl: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--server", "127.0.0.1:1", "--token", "t", "tokens", "create", "--ttl", ttl])
    assert exited.value.code == 2
    assert "is outside 1s..30d" in capsys.readouterr().err
