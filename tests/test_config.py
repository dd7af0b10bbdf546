"""Agent configuration: typed, unknown keys rejected, paths relative to the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import load_config
from agent.errors import ConfigError
from tests.harness import run_cli


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_and_relative_paths(tmp_path: Path) -> None:
    config = load_config(
        write(tmp_path, '[agent]\nstate_dir = "state"\n[api]\nsocket = "s.sock"\n')
    )
    assert config.agent.state_dir == tmp_path.resolve() / "state"
    assert config.api.socket == tmp_path.resolve() / "s.sock"
    assert config.server.checkin_interval_s == 30.0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[agent]\nstat_dir = 'x'\n", "unknown key(s) in [agent]: stat_dir"),
        ("[agnet]\n", "unknown key(s) in []: agnet"),
        ("[server]\ncheckin_interval_s = 'often'\n", "server.checkin_interval_s must be a number"),
        ("[server]\ncheckin_interval_s = 0\n", "checkin_interval_s must be within"),
        ("[inference]\nnum_threads = true\n", "inference.num_threads must be int"),
        ("[server]\naddress = 'nohostport'\n", "must be host:port"),
        ("[telemetry]\nmqtt_url = 'http://x'\n", "must start with mqtt://"),
        ("[agent\n", "invalid TOML"),
    ],
)
def test_bad_config_is_refused_with_the_reason(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert message in str(info.value)
    assert str(tmp_path) in str(info.value)


def test_check_config_cli(tmp_path: Path) -> None:
    good = write(tmp_path, '[agent]\nname = "a"\n')
    assert "OK" in run_cli("edgefleet-agent", "check-config", "--config", str(good)).stdout
    bad = write(tmp_path, "[agent]\nnmae = 'a'\n")
    result = run_cli("edgefleet-agent", "check-config", "--config", str(bad), check=False)
    assert result.returncode == 1
    assert result.stderr.strip().startswith("edgefleet-agent: error:")
    assert "nmae" in result.stderr and "Traceback" not in result.stderr


def test_missing_config_file(tmp_path: Path) -> None:
    result = run_cli("edgefleet-agent", "run", "--config", str(tmp_path / "none.toml"), check=False)
    assert result.returncode == 1
    assert "does not exist" in result.stderr


def test_enrollment_token_from_systemd_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "enrollment-token").write_text("secret-token\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert load_config(write(tmp_path, "")).enrollment_token() == "secret-token"


def test_the_shipped_example_config_is_valid() -> None:
    from tests.harness import REPO

    config = load_config(REPO / "packaging" / "config" / "agent.toml")
    assert config.agent.labels == {"site": "lab"}
    assert config.inference.num_threads == 1 and config.inference.workers == 2
    assert config.hardware.edgetpu_library == "libedgetpu.so.1"
