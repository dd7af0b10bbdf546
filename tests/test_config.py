"""Agent configuration: typed, unknown keys rejected, paths relative to the file."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from agent.config import load_config
from agent.errors import ConfigError
from agent.hardware.probe import HardwareInfo, to_capabilities
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
    # The REST API's socket sits beside the gRPC one unless named (relative to the file too).
    assert config.api.rest_socket_path == tmp_path.resolve() / "rest.sock"
    assert config.api.rest_listen == ""
    named = load_config(write(tmp_path, '[api]\nsocket = "s.sock"\nrest_socket = "r/h.sock"\n'))
    assert named.api.rest_socket_path == tmp_path.resolve() / "r" / "h.sock"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[agent]\nstat_dir = 'x'\n", "unknown key(s) in [agent]: stat_dir"),
        ("[agnet]\n", "unknown key(s) in []: agnet"),
        ("[server]\ncheckin_interval_s = 'often'\n", "server.checkin_interval_s must be a number"),
        ("[server]\ncheckin_interval_s = 0\n", "checkin_interval_s must be within"),
        ("[server]\nstall_timeout_s = 0.1\n", "server.stall_timeout_s must be within 1..600"),
        ("[inference]\nnum_threads = true\n", "inference.num_threads must be int"),
        ("[server]\naddress = 'nohostport'\n", "must be host:port"),
        ("[telemetry]\nmqtt_url = 'http://x'\n", "must start with mqtt://"),
        ("[agent\n", "invalid TOML"),
        ("[api]\nrest_listen = '8000'\n", "api.rest_listen '8000' must be host:port"),
        ("[api]\nrest_listen = 'localhost:http'\n", "must be host:port"),
        ("[api]\nrest_socket = '/run/x.sock'\nsocket = '/run/x.sock'\n", "a socket of its own"),
        (f"[api]\nrest_socket = '/{'x' * 120}'\n", "longer than a unix socket allows"),
    ],
)
def test_bad_config_is_refused_with_the_reason(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert message in str(info.value)
    assert str(tmp_path) in str(info.value)


@pytest.mark.slow
def test_check_config_cli(tmp_path: Path) -> None:
    (tmp_path / "ca.crt").write_text("a CA")
    good = write(
        tmp_path, '[agent]\nname = "a"\n[server]\nenrollment_token = "t"\nca_file = "ca.crt"\n'
    )
    assert "OK" in run_cli("edgefleet-agent", "check-config", "--config", str(good)).stdout
    # The agent serves its models without them (and says so in its log); check-config calls a
    # missing file, or no way to enroll, an error.
    (tmp_path / "ca.crt").unlink()
    missing = run_cli("edgefleet-agent", "check-config", "--config", str(good), check=False)
    assert missing.returncode == 1, missing.stdout
    assert f"server.ca_file {tmp_path / 'ca.crt'} does not exist" in missing.stderr
    unset = write(tmp_path, '[agent]\nname = "a"\nstate_dir = "state"\n')
    result = run_cli("edgefleet-agent", "check-config", "--config", str(unset), check=False)
    assert result.returncode == 1
    assert "no enrollment token is configured" in result.stderr
    assert "no fleet CA" in result.stderr and "Traceback" not in result.stderr
    # An enrolled device needs neither.
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "identity.json").write_text("{}")
    assert "OK" in run_cli("edgefleet-agent", "check-config", "--config", str(unset)).stdout
    bad = write(tmp_path, "[agent]\nnmae = 'a'\n")
    result = run_cli("edgefleet-agent", "check-config", "--config", str(bad), check=False)
    assert result.returncode == 1
    assert result.stderr.strip().startswith("edgefleet-agent: error:")
    assert "nmae" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_missing_config_file(tmp_path: Path) -> None:
    result = run_cli("edgefleet-agent", "run", "--config", str(tmp_path / "none.toml"), check=False)
    assert result.returncode == 1
    assert "does not exist" in result.stderr


def _refusal(path: Path, read: Callable[[], object] | None = None, seconds: float = 5.0) -> str:
    """The ConfigError's message when ``read`` (default: load_config) reads ``path``; fails when
    it is accepted, or not refused in time (the reader is then released, so that its thread
    ends with the test)."""
    outcome: list[BaseException | None] = []

    def load() -> None:
        try:
            read() if read is not None else load_config(path)
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome.append(exc)

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))  # the writer a FIFO waits for
        thread.join(5)
        pytest.fail(f"reading {path.name} did not return within {seconds:g} s")
    error = outcome[0]
    assert isinstance(error, ConfigError), f"{path.name}: {error!r}"
    return str(error)


def test_only_a_bounded_regular_utf8_file_is_read_as_config(tmp_path: Path) -> None:
    """What a careless operator leaves in the config's place is refused, not read: a FIFO
    (reading waits for a writer forever), a device (/dev/zero never ends, /dev/null reads as an
    empty config), a file over 1 MiB (a log copied over it), text that is not UTF-8."""
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    assert "is not a regular file" in _refusal(fifo)
    device = tmp_path / "device.toml"
    device.symlink_to("/dev/null")
    assert "is not a regular file" in _refusal(device)
    huge = tmp_path / "huge.toml"
    with huge.open("wb") as handle:
        handle.write(b'[agent]\nname = "a"\n')
        handle.truncate(64 << 20)  # sparse
    assert "is larger than 1 MiB" in _refusal(huge)
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes('[agent]\nname = "caf\u00e9"\n'.encode("latin-1"))
    assert "is not UTF-8" in _refusal(latin1)


def test_tokens_and_cas_that_are_not_bounded_regular_files_are_refused(tmp_path: Path) -> None:
    """The files a config names are read at start and, for [cloud], at every reload (on the
    control loop): a FIFO there must be refused, not waited for."""
    fifo = tmp_path / "secret"
    os.mkfifo(fifo)
    config = load_config(
        write(
            tmp_path,
            f'[server]\nenrollment_token_file = "{fifo}"\nca_file = "{fifo}"\n'
            f'[cloud]\nurl = "grpc://127.0.0.1:9"\ntoken_file = "{fifo}"\nca_file = "{fifo}"\n',
        )
    )
    for read in (config.cloud_token, config.cloud_ca, config.enrollment_token, config.fleet_ca):
        assert "is not a regular file" in _refusal(fifo, read), read.__name__


@pytest.mark.slow
def test_check_config_on_a_non_utf8_file_says_so_without_a_traceback(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_bytes(b"\xff\xfe[agent]\n")
    result = run_cli("edgefleet-agent", "check-config", "--config", str(config), check=False)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "is not UTF-8" in result.stderr, result.stderr


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


def test_errors_name_the_file_and_line(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    for text, expected in (
        ('[agent]\nname = "x"\n\n[server]\nadress = "h:1"\n', ":5: unknown key(s) in [server]"),
        ('[server]\naddress = "h:1"\ntimeout_s = "ten"\n', ":3: server.timeout_s must be a number"),
        ("[telemetry]\n\ninterval_s = 0\n", ":3: telemetry.interval_s must be within"),
        ('[agent]\n[device]\ntimezone = "Europe/Berln"\n', ":3: device.timezone 'Europe/Berln'"),
    ):
        config.write_text(text)
        with pytest.raises(ConfigError) as refused:
            load_config(config)
        assert f"{config}{expected}" in str(refused.value)


@pytest.mark.parametrize("zone", ["../../etc/passwd", "/etc/localtime", "Mars/Olympus", "CET "])
def test_a_time_zone_the_device_does_not_know_is_refused(tmp_path: Path, zone: str) -> None:
    # Maintenance windows are read in it: a typo would move every window by hours.
    with pytest.raises(ConfigError, match="is not an IANA time zone this machine knows"):
        load_config(write(tmp_path, f'[device]\ntimezone = "{zone}"\n'))


def test_the_time_zone_is_utc_by_default_and_reported_with_the_capabilities(
    tmp_path: Path,
) -> None:
    assert load_config(write(tmp_path, "")).device.timezone == "UTC"
    config = load_config(write(tmp_path, '[device]\ntimezone = "America/New_York"\n'))
    probed = HardwareInfo("aarch64", 4, 1 << 30, 1 << 30, (), "", "", "", "", "Linux")
    info = replace(probed, timezone=config.device.timezone)  # as the agent reports it
    assert to_capabilities(info).timezone == "America/New_York"


def test_a_missing_enrollment_token_file_is_named(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('[server]\nenrollment_token_file = "nope.token"\n')
    with pytest.raises(ConfigError, match=r"nope.token does not exist: put a token"):
        load_config(config).enrollment_token()


def test_an_empty_enrollment_token_file_is_named_not_called_missing(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('[server]\nenrollment_token_file = "empty.token"\n')
    (tmp_path / "empty.token").write_text("  \n")
    with pytest.raises(ConfigError, match=r"empty.token is empty: put a token"):
        load_config(config).enrollment_token()
    (tmp_path / "empty.token").write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match=r"empty.token is not text"):
        load_config(config).enrollment_token()


@pytest.mark.slow
def test_server_toml_is_typed_and_checked_with_lines(tmp_path: Path) -> None:
    shipped = Path(__file__).resolve().parent.parent / "packaging" / "config" / "server.toml"
    ok = run_cli("edgefleet-server", "check-config", "--config", str(shipped))
    assert "OK" in ok.stdout and "data_dir" in ok.stdout
    config = tmp_path / "server.toml"
    for text, expected in (
        ('[server]\ndata_dir = "/x"\nworkerz = 2\n', ":3: unknown key 'workerz' in [server]"),
        ('[server]\ndata_dir = "/x"\nworkers = "many"\n', ":3: workers: 'many' is not a number"),
        ('[server]\nno_bootstrap_token = "yes"\n', ":2: no_bootstrap_token must be true or false"),
        ("[serverr]\n", ":1: unknown table [serverr]"),
    ):
        config.write_text(text)
        refused = run_cli("edgefleet-server", "check-config", "--config", str(config), check=False)
        assert refused.returncode == 1 and f"{config}{expected}" in refused.stderr, refused.stderr
        run = run_cli("edgefleet-server", "run", "--config", str(config), check=False)
        assert run.returncode == 1 and expected in run.stderr  # refuses to start, one line


@pytest.mark.slow
def test_the_server_runs_from_its_toml(tmp_path: Path) -> None:
    import json
    import sys

    from tests.harness import start, wait_for

    data = tmp_path / "data"
    run_cli("edgefleet-server", "init", "--data-dir", str(data))
    again = run_cli("edgefleet-server", "init", "--data-dir", str(data), check=False)
    assert again.returncode == 1  # a data dir is never overwritten...
    run_cli("edgefleet-server", "init", "--data-dir", str(data), "--if-missing")  # ...or touched
    ready = tmp_path / "ready.json"
    config = tmp_path / "server.toml"
    config.write_text(
        f'[server]\ndata_dir = "{data}"\nlisten = "127.0.0.1:0"\nmqtt_listen = "127.0.0.1:0"\n'
        f'ready_file = "{ready}"\nno_bootstrap_token = true\n'
    )
    proc = start(
        [sys.executable, "-m", "fleet_server.cli", "run", "--config", str(config)],
        tmp_path / "server.log",
    )
    try:
        info = wait_for("the server", lambda: ready.exists() and json.loads(ready.read_text()))
        assert int(info["grpc_port"]) > 0
    finally:
        assert proc.stop() == 0


def test_listeners_other_hosts_reach_are_warned_about(tmp_path: Path) -> None:
    # Issue 20: api.listen = 0.0.0.0 passed check-config without a word.
    config = load_config(write(tmp_path, '[api]\nlisten = "0.0.0.0:8001"\n'
                                         'metrics_listen = "[::]:9464"\n'
                                         'rest_listen = "192.0.2.1:8000"\n'))  # fmt: skip
    warnings = config.warnings()
    assert len(warnings) == 3
    assert "api.listen = '0.0.0.0:8001' listens beyond this device" in warnings[0]
    assert "no authentication" in warnings[0]
    assert "api.rest_listen = '192.0.2.1:8000' listens beyond this device" in warnings[1]
    assert "plain HTTP, no authentication" in warnings[1]
    assert warnings[2].startswith("api.metrics_listen = '[::]:9464'")
    local = ('[api]\nlisten = "127.0.0.1:8001"\nmetrics_listen = "[::1]:9464"\n'
             'rest_listen = "127.0.0.1:8000"\n')  # fmt: skip
    assert load_config(write(tmp_path, local)).warnings() == []
