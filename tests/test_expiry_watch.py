"""Issue 21 item 3's warnings: what expires within 30 days (and root keys left on the server)
reaches the server's log, an ``--expiry-hook`` program (once a day per item, retried when it
fails) and the dashboard's Keys page; ``keys status`` counts a rollout's manifests too."""

from __future__ import annotations

import json
import stat
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from fleet_server.renewal.status import EVENT_SCHEMA, ExpiryWatch, events
from fleet_server.signing.expiry import KeyStatus, assess
from protos import manifest_pb2
from tests.harness import DATA, Server, free_port, run_cli, wait_for
from tests.test_dashboard import Browser

DAY = 86400


def hook_program(folder: Path, *, fail: bool = False) -> tuple[Path, Path]:
    """A hook that appends each event it is given to a file (and exits 3 when ``fail``)."""
    folder.mkdir(parents=True, exist_ok=True)
    received = folder / "received.jsonl"
    program = folder / "hook.sh"
    program.write_text(
        "#!/bin/sh\n"
        f'cat >> "{received}"\necho >> "{received}"\n'
        + ('echo "pager is down" >&2\nexit 3\n' if fail else "")
    )
    program.chmod(0o700)
    return program, received


def delivered(received: Path) -> list[dict[str, object]]:
    if not received.exists():
        return []
    return [json.loads(line) for line in received.read_text().splitlines() if line.strip()]


def status_at(now: float, *, keylist_days: float, roots: tuple[str, ...] = ()) -> KeyStatus:
    keylist = manifest_pb2.KeyList(version=4, expires_unix=int(now + keylist_days * DAY))
    manifest = manifest_pb2.Manifest(
        model_name="digits", version="1.0.0", expires_unix=int(now + 400 * DAY)
    )
    return assess(keylist, [manifest], [], root_key_folders=roots, now=now)


def test_events_name_what_is_due_and_root_keys_on_the_server() -> None:
    now = time.time()
    found = events(status_at(now, keylist_days=12, roots=("/srv/x.root-keys",)), "fleet-a")
    assert [(e["kind"], e["event"]) for e in found] == [
        ("key list", "expiring"),
        ("root keys", "root keys online"),
    ]
    assert found[0]["schema"] == EVENT_SCHEMA and found[0]["fleet_id"] == "fleet-a"
    assert found[0]["days_left"] == 12 and "keys rotate" in str(found[0]["advice"])
    assert events(status_at(now, keylist_days=45), "fleet-a") == []  # nothing due
    (gone,) = events(status_at(now, keylist_days=-2), "fleet-a")
    assert gone["event"] == "expired" and gone["days_left"] == -2


@pytest.mark.slow
def test_the_hook_gets_each_item_once_a_day_and_again_when_it_changes(tmp_path: Path) -> None:
    program, received = hook_program(tmp_path)
    now = time.time()
    days = {"left": 12.0}
    watch = ExpiryWatch(lambda t: status_at(t, keylist_days=days["left"]), "fleet-a", program)
    assert len(watch.check(now)) == 1
    assert watch.check(now + 600) == []  # the same day: not again
    (event,) = delivered(received)
    assert event["kind"] == "key list" and event["event"] == "expiring"
    days["left"] = -0.0001  # it expires: a new event at once
    watch.check(now + 1200)
    assert watch.check(now + 1800) == []
    assert [e["event"] for e in delivered(received)] == ["expiring", "expired"]
    days["left"] = 200  # renewed: nothing more, and no memory of it kept
    assert watch.check(now + 2400) == []


@pytest.mark.slow
def test_a_failing_hook_is_logged_and_tried_again_at_the_next_check(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    program, received = hook_program(tmp_path, fail=True)
    now = time.time()
    watch = ExpiryWatch(lambda t: status_at(t, keylist_days=3), "fleet-a", program)
    watch.check(now)
    watch.check(now + 600)
    assert len(delivered(received)) == 2  # tried at each check while it fails
    assert "exited with 3 (pager is down)" in caplog.text
    missing = ExpiryWatch(lambda t: status_at(t, keylist_days=3), "f", tmp_path / "gone")
    missing.check(now)  # a hook that vanished after start: logged, nothing raised
    assert "cannot run the expiry hook" in caplog.text


@pytest.mark.slow
def test_a_hook_others_can_write_or_that_cannot_run_is_refused_at_start(tmp_path: Path) -> None:
    program, _ = hook_program(tmp_path)
    program.chmod(0o777)
    run = run_cli("edgefleet-server", "run", "--data-dir", str(tmp_path / "d"),
                  "--expiry-hook", str(program), check=False)  # fmt: skip
    assert run.returncode == 2 and "writable by its group or others" in run.stderr
    program.chmod(stat.S_IRUSR | stat.S_IWUSR)
    run = run_cli("edgefleet-server", "run", "--data-dir", str(tmp_path / "d"),
                  "--expiry-hook", str(program), check=False)  # fmt: skip
    assert run.returncode == 2 and "is not an executable file" in run.stderr


@pytest.mark.slow
def test_a_running_server_warns_hooks_and_shows_what_expires(
    server_factory: Callable[..., Server], tmp_path: Path
) -> None:
    program, received = hook_program(tmp_path / "hook")
    server = server_factory(
        None,
        extra=(
            "--dashboard-listen", "127.0.0.1:0", "--manifest-lifetime-days", "20",
            "--renew-ahead-days", "10", "--expiry-hook", str(program),
        ),
    )  # fmt: skip
    # The root keys sit beside the data dir (init's default until the admin moves them).
    wait_for(
        "the hook to hear of the root keys",
        lambda: any(e["kind"] == "root keys" for e in delivered(received)),
    )
    digits = str(DATA / "digits_local_float.tflite")
    server.admin("models", "push", digits, "--name", "digits", "--version", "1.0.0", "--deploy")
    server.admin("models", "push", digits, "--name", "digits", "--version", "1.1.0")
    server.admin("rollouts", "create", "digits", "1.1.0", "--waves", "1,100%", "--bake", "600",
                 "--allow-empty")  # fmt: skip
    status = json.loads(server.admin("keys", "status", "--json", check=False).stdout)
    assert status["deployed_manifests"] == 2  # the deployment's and the rollout's
    # A rotation makes the server look again at once: the 20-day manifests are due.
    server.admin("keys", "rotate", "--root-key-dir", str(server.root_key_dir))
    wait_for(
        "the hook to hear of a manifest",
        lambda: any(e["kind"] == "manifest" for e in delivered(received)),
    )
    (event,) = [e for e in delivered(received) if e["kind"] == "manifest"]
    # 20 when the check falls in the second the manifest was made (times are whole seconds).
    assert event["event"] == "expiring" and 18 <= int(str(event["days_left"])) <= 20
    assert "manifest digits 1." in server.proc.output()  # the log warns too

    info = json.loads((server.data_dir.parent / "server-ready.json").read_text())
    browser = Browser(f"https://127.0.0.1:{info['dashboard_port']}", server.ca_file)
    token = (server.data_dir / "admin.token").read_text().strip()
    _, where, body = browser.post("/login", {"token": token, "next": "/fleet"})
    assert where == "/fleet" and "root keys are on the server" in body and "see Keys" in body
    _, _, body = browser.get("/keys")
    assert "Root keys are on the server" in body
    assert "<tr class=due><td>manifest</td><td>digits 1." in body, body
    assert "<td>key list</td><td>version 2</td>" in body


@pytest.mark.slow
def test_deploying_a_release_whose_manifest_runs_out_says_so_and_renews_it_at_once(
    server_factory: Callable[..., Server], tmp_path: Path
) -> None:
    ports = ("--listen", f"127.0.0.1:{free_port()}", "--device-listen", f"127.0.0.1:{free_port()}")
    server = server_factory(
        None, extra=(*ports, "--manifest-lifetime-days", "20", "--renew-ahead-days", "10")
    )
    digits = str(DATA / "digits_local_float.tflite")
    for version in ("1.0.0", "1.1.0"):
        server.admin("models", "push", digits, "--name", "digits", "--version", version)
    server.proc.stop()
    # Restarted with 30 days of renewal: both 20-day manifests are within it, but neither is in
    # use, so neither is renewed until it is deployed.
    server = server_factory(
        None, folder=tmp_path / "again", data_dir=server.data_dir, extra=(*ports,)
    )
    deployed = server.admin("deploy", "digits", "1.0.0").stdout
    assert "note: its manifest expires on" in deployed and "re-issues it now" in deployed
    wait_for(  # at once, not at the next 10-minute pass
        "the server to re-issue digits 1.0.0",
        lambda: "re-issued the manifest of digits 1.0.0" in server.proc.output(),
        timeout=60,
    )
    for path in (server.data_dir / "keys").glob("release-*.key"):
        path.unlink()
    deployed = server.admin("deploy", "digits", "1.1.0").stdout
    assert "no release key is on the server" in deployed and "manifest pending" in deployed
    listed = server.admin("manifest", "pending").stdout
    assert "digits 1.1.0" in listed and "re-issue" in listed, listed
