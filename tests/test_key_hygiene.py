"""Issue 21 ("Keys over years"), key hygiene: root keys leave the data dir at init, replaced
release keys leave the signer's folder, the data dir is the server user's alone (0600 files,
0700 folders, an older one tightened at start), and `edgefleet keys status` warns before
anything the fleet trusts expires."""

from __future__ import annotations

import json
import re
import stat
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from fleet_server.datadir import DataDir
from fleet_server.signing.keys import KeyStore
from tests.harness import DATA, Server, run_cli, wait_for

slow = pytest.mark.slow


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def loose_paths(root: Path) -> list[str]:
    """Everything under ``root`` (itself included) that its group or others may use."""
    paths = [root, *root.rglob("*")]
    return [f"{p} {mode(p):o}" for p in paths if not p.is_symlink() and mode(p) & 0o077]


def test_tighten_takes_group_and_world_access_from_everything_and_says_what(
    tmp_path: Path,
) -> None:
    root = tmp_path / "d"
    (root / "keys").mkdir(parents=True)
    root.chmod(0o755)
    (root / "keys").chmod(0o750)
    db = root / "fleet.db"
    db.write_bytes(b"x")
    db.chmod(0o644)
    tool = root / "hook"
    tool.write_bytes(b"#!/bin/sh\n")
    tool.chmod(0o755)
    token = root / "admin.token"
    token.write_bytes(b"t")
    token.chmod(0o600)
    outside = tmp_path / "shared.txt"
    outside.write_bytes(b"s")
    outside.chmod(0o644)
    (root / "link").symlink_to(outside)

    changed = DataDir(root=root, fleet_id="f").tighten()

    assert sorted(changed) == sorted([root, root / "keys", db, tool])
    assert (mode(root), mode(root / "keys"), mode(db), mode(tool)) == (0o700, 0o700, 0o600, 0o700)
    assert mode(token) == 0o600
    assert mode(outside) == 0o644  # a link is not followed out of the data dir
    assert DataDir(root=root, fleet_id="f").tighten() == []


@slow
def test_init_writes_the_root_keys_outside_the_data_dir_and_says_to_move_them(
    tmp_path: Path,
) -> None:
    data = tmp_path / "d"
    out = run_cli("edgefleet-server", "init", "--data-dir", str(data)).stdout
    roots = tmp_path / "d.root-keys"
    assert f"MOVE {roots} OFF THIS MACHINE" in out and "--root-key-dir DIR" in out
    assert list(data.rglob("root-*.key")) == []
    keys = list(roots.glob("root-*.key"))
    assert len(keys) == 1
    assert mode(roots) == 0o700 and mode(keys[0]) == 0o600
    assert loose_paths(data) == []
    assert mode(data / "keys" / "keylist.bin") == 0o600

    # A folder of one's choosing, as long as it is outside the data dir.
    usb = tmp_path / "usb" / "fleet-roots"
    other = tmp_path / "e"
    run_cli("edgefleet-server", "init", "--data-dir", str(other), "--root-key-dir", str(usb))
    assert len(list(usb.glob("root-*.key"))) == 1 and mode(usb) == 0o700
    inside = run_cli(
        "edgefleet-server",
        "init",
        "--data-dir",
        str(tmp_path / "f"),
        "--root-key-dir",
        str(tmp_path / "f" / "roots"),
        check=False,
    )
    assert inside.returncode == 1 and "is inside the data dir" in inside.stderr


@slow
def test_keep_root_online_keeps_the_root_keys_in_the_data_dir(tmp_path: Path) -> None:
    data = tmp_path / "d"
    out = run_cli("edgefleet-server", "init", "--data-dir", str(data), "--keep-root-online").stdout
    assert "--keep-root-online" in out and "OFF THIS MACHINE" not in out
    (key,) = (data / "keys").glob("root-*.key")
    assert mode(key) == 0o600 and not (tmp_path / "d.root-keys").exists()
    # Online root keys are found without being named.
    rotated = run_cli("edgefleet", "--data-dir", str(data), "keys", "rotate").stdout
    assert "published key list version 2" in rotated


@slow
def test_rotate_moves_the_replaced_release_key_to_retired_and_says_so(tmp_path: Path) -> None:
    data = tmp_path / "d"
    run_cli("edgefleet-server", "init", "--data-dir", str(data))
    (old,) = (data / "keys").glob("release-*.key")
    without = run_cli("edgefleet", "--data-dir", str(data), "keys", "rotate", check=False)
    assert without.returncode == 1
    assert f"no root-*.key in {data / 'keys'}" in without.stderr
    assert "--root-key-dir DIR" in without.stderr
    assert old.exists()  # nothing changed

    out = run_cli(
        "edgefleet",
        "--data-dir",
        str(data),
        "keys",
        "rotate",
        "--root-key-dir",
        str(tmp_path / "d.root-keys"),
    ).stdout
    retired = data / "keys" / "retired"
    assert f"to {retired}" in out and old.name.removeprefix("release-").removesuffix(".key") in out
    assert not old.exists() and (retired / old.name).exists()
    assert mode(retired) == 0o700 and mode(retired / old.name) == 0o600
    (new,) = (data / "keys").glob("release-*.key")
    assert new != old
    assert loose_paths(data) == []


@slow
def test_a_running_servers_data_dir_is_its_users_alone(
    server_factory: Callable[..., Server], tmp_path: Path
) -> None:
    server = server_factory(None)
    server.admin("tokens", "create")  # a write: the database has its -wal and -shm now
    for name in ("fleet.db", "fleet.db-wal", "fleet.db-shm", "admin.token", "ca/ca.key"):
        assert (server.data_dir / name).exists(), name
    assert loose_paths(server.data_dir) == []


@slow
def test_an_older_data_dir_is_tightened_at_start_and_the_log_says_what(
    server_factory: Callable[..., Server], tmp_path: Path
) -> None:
    data = tmp_path / "server"
    run_cli("edgefleet-server", "init", "--data-dir", str(data))
    # What an older version (umask 022) left: a world-readable database and key list.
    data.chmod(0o755)
    (data / "fleet.db").chmod(0o644)
    (data / "keys").chmod(0o755)
    (data / "keys" / "keylist.bin").chmod(0o644)
    server = server_factory(None, data_dir=data)
    assert loose_paths(data) == []
    log = server.proc.output()
    assert "took group/world access from 4 path(s)" in log
    assert "fleet.db" in log and "keys/keylist.bin" in log
    # Once: a second start finds nothing to tighten.
    server.proc.stop()
    again = server_factory(None, folder=tmp_path / "again", data_dir=data)
    wait_for("the log", lambda: "fleet" in again.proc.output())
    assert "took group/world access" not in again.proc.output()


@slow
def test_keys_status_warns_while_root_keys_are_on_the_server_and_shows_what_expires_when(
    server_factory: Callable[..., Server], tmp_path: Path
) -> None:
    server = server_factory(None)
    model = DATA / "mobilenet_v1_0.25_128_quant.tflite"
    server.admin("models", "push", str(model), "--name", "mn", "--version", "1.0.0", "--deploy")
    status = server.admin("keys", "status")
    out = status.stdout
    assert status.returncode == 0, out + status.stderr
    warning = f"WARNING root keys are on this server: move {server.root_key_dir} off the machine"
    assert warning in out
    assert "key list version 1: expires" in out and "(in 364 days)" in out
    (release,) = (server.data_dir / "keys").glob("release-*.key")
    assert f"release key {release.stem.removeprefix('release-')}: expires" in out
    assert "manifest mn 1.0.0" in out and "(the nearest of 1 deployed)" in out
    assert "server certificate edgefleet-server: expires" in out
    assert "broker certificate" in out
    assert "expires in" not in out  # no item is due

    report = json.loads(server.admin("keys", "status", "--json").stdout)
    assert report["root_key_folders"] == [str(server.root_key_dir)]
    kinds = {i["kind"] for i in report["items"]}
    assert kinds == {
        "key list",
        "release key",
        "manifest",
        "server certificate",
        "broker certificate",
    }
    assert not any(i["due"] for i in report["items"])

    # Moved off the machine: no warning.
    server.root_key_dir.rename(tmp_path / "usb-stick")
    out = server.admin("keys", "status").stdout
    assert "root keys: not on this server" in out and "WARNING" not in out


@slow
def test_keys_status_warns_and_exits_1_within_30_days_of_an_expiry(
    server_factory: Callable[..., Server], tmp_path: Path
) -> None:
    data = tmp_path / "server"
    run_cli("edgefleet-server", "init", "--data-dir", str(data))
    roots = sorted((tmp_path / "server.root-keys").glob("root-*.key"))
    # A key list published for 10 days (the root keys sign it, as a rotation would; no
    # overlap: one release key).
    KeyStore(data / "keys").rotate_release(root_key_files=roots, lifetime_s=10 * 86400, overlap_s=0)
    # The root keys leave the machine, as they should: the server cannot renew the list.
    (tmp_path / "server.root-keys").rename(tmp_path / "usb-stick")
    server = server_factory(None, data_dir=data)
    status = server.admin("keys", "status", check=False)
    assert status.returncode == 1, status.stdout + status.stderr
    lines = status.stdout.splitlines()
    due = [line for line in lines if line.startswith("WARNING key list version 2")]
    # 10 days from the rotation, in whole seconds: 9 whole days left, or 10 when the status
    # reads the clock within the same whole second as the rotation did (seen once in CI).
    assert len(due) == 1 and re.search(r"\(in (9|10) days\), within 30 days", due[0]), due
    assert "edgefleet keys rotate" in due[0]
    # The release key lives as long as the key list that names it: due too.
    assert sum(line.startswith("WARNING release key") for line in lines) == 1
    assert not any(line.startswith("WARNING server certificate") for line in lines)
    report = server.admin("keys", "status", "--json", check=False)
    assert report.returncode == 1
    expires = {i["kind"]: int(i["expires_unix"]) for i in json.loads(report.stdout)["items"]}
    assert expires["key list"] - time.time() < 10 * 86400
    # The server says so in its log too (once a day), with what to do.
    wait_for(
        "the server's warning about the key list",
        lambda: (
            "no root key is on this server to renew it: run 'edgefleet keys rotate"
            in server.proc.output()
        ),
    )
