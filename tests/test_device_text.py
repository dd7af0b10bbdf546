"""Issue 22 item 6 (device text is data) and item 3's one-line errors (a broken pipe, an
agent's state dir that cannot be made): what a device says is stored
escaped and bounded, and nothing ``edgefleet`` prints can drive the operator's terminal (clear
it, set its title, rewrite a line); ``edgefleet ... | head`` ends quietly."""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from fleet_server.admin_cli.terminal import EscapingStream
from fleet_server.simulator import SimDevice
from fleet_server.storage.db import stored_text
from protos import device_pb2
from tests.harness import Server, run_cli, seed_devices

HOSTILE = "ok\x1b[2J\x1b]0;owned\x07\rmobilenet 1.0.0 INSTALLED\n\x9b31m\x00end"


def test_device_text_is_stored_escaped_and_bounded() -> None:
    kept = stored_text(HOSTILE, 1024)
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in kept)
    assert kept.startswith("ok\\x1b[2J\\x1b]0;owned\\x07\\x0dmobilenet") and kept.endswith("mend")
    assert len(stored_text("x" * 5000, 1024)) == 1024
    assert stored_text("plain text, tabs\tare escaped too", 100).endswith("\\x09are escaped too")


def test_device_text_is_never_cut_inside_an_escape_and_hides_no_reordering() -> None:
    # A cut at the limit used to leave "\\x1" (half an escape) at the end of a stored string;
    # "Trojan Source" bidi overrides, line separators and zero-width marks passed as they were;
    # a device's own "\\x1b" text looked like an escape made by the server.
    for limit in range(1, 16):
        kept = stored_text("abc" + "\x1b" * 10, limit)
        assert len(kept) <= limit and not kept.endswith(("\\", "\\x", "\\x1")), (limit, kept)
    assert stored_text("ok\u202egnp.exe\u2028fake line\u200b", 100) == (
        "ok\\u202egnp.exe\\u2028fake line\\u200b"
    )
    assert stored_text("C:\\x1b", 100) == "C:\\\\x1b"  # the device's backslash, doubled
    assert (
        stored_text("\u00e9t\u00e9 \U0001f600", 100) == "\u00e9t\u00e9 \U0001f600"
    )  # letters stay
    out = io.StringIO()
    EscapingStream(out).write("a\u202eb\u2029c\n")
    assert out.getvalue() == "a\\u202eb\\u2029c\n"


def test_the_cli_streams_escape_control_characters_but_keep_lines_and_its_progress_bar() -> None:
    out = io.StringIO()
    stream = EscapingStream(out)
    stream.write("a\tb\n")
    stream.write("\x1b[2Jc\rd\x07\n")
    assert out.getvalue() == "a\tb\n\\x1b[2Jc\\x0dd\\x07\n"
    err = io.StringIO()
    EscapingStream(err, progress=True).write("\ruploading [====] 40%\x1b")
    assert err.getvalue() == "\ruploading [====] 40%\\x1b"


@pytest.mark.slow
def test_a_device_cannot_drive_the_admins_terminal(
    server_factory: Callable[..., Server], color_models: Path
) -> None:
    server = server_factory(None)
    # (A model the server has: reports of names it never had make no row.)
    server.admin("models", "push", str(color_models / "color_int8.tflite"), "--name", "colors",
                 "--version", "1.0.0")  # fmt: skip
    caps = device_pb2.Capabilities(arch="x86_64", os=HOSTILE, agent_version=HOSTILE)
    device = SimDevice.enroll(server.sim_fleet(), server.enrollment_token(), "cam-1",
                              capabilities=caps)  # fmt: skip
    device.check_in()
    device.report("colors", "1.0.0", device_pb2.UpdateState.Value("FAILED"), detail=HOSTILE)
    for command in (("devices", "show", device.device_id), ("devices", "list")):
        shown = server.admin(*command).stdout
        assert "\x1b" not in shown and "\x07" not in shown and "\r" not in shown, shown
        assert "\x9b" not in shown
    shown = server.admin("devices", "show", device.device_id).stdout
    assert "\\x1b[2J" in shown  # shown for what it is


@pytest.mark.slow
def test_a_reader_that_stops_early_ends_the_cli_quietly(
    server_factory: Callable[..., Server],
) -> None:
    server = server_factory(None)
    # Far more than a pipe holds (64 KiB): the CLI is still writing when the reader leaves.
    seed_devices(f"sqlite:///{server.data_dir / 'fleet.db'}", 3000)
    cli = [sys.executable, "-m", "fleet_server.admin_cli", "--server", server.address,
           "--data-dir", str(server.data_dir), "devices", "list"]  # fmt: skip
    with subprocess.Popen(cli, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.readline()
        proc.stdout.close()  # as `| head -1` does
        error = proc.stderr.read().decode()
        code = proc.wait(timeout=60)
    assert "Traceback" not in error and "BrokenPipe" not in error, error
    assert code == 141  # as a process that SIGPIPE ended


@pytest.mark.slow
def test_an_agent_whose_state_dir_cannot_be_made_says_so_in_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[agent]\nname = "x"\nstate_dir = "{blocker / "state"}"\n'
        '[server]\naddress = "127.0.0.1:1"\nenrollment_token = "t"\nca_file = "absent.crt"\n'
        f'[api]\nsocket = "{tmp_path / "oip.sock"}"\n'
    )
    ran = run_cli("edgefleet-agent", "run", "--config", str(config), check=False)
    assert ran.returncode == 1 and "Traceback" not in ran.stderr, ran.stderr
    assert f"cannot use the state dir {blocker / 'state'}: Not a directory" in ran.stderr
