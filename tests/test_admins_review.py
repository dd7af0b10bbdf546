"""Attacks on named admins (issue 22 item 1) found by the review: what one admin, two admins
at once, or a crafted name could do that the feature promises it cannot."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest

from fleet_server.admins.roles import Role
from fleet_server.admins.store import BOOTSTRAP, AdminStore
from fleet_server.errors import BadRequestError
from fleet_server.storage.db import Database
from fleet_server.storage.schema import admins
from tests.harness import Server, run_cli, together

ROUNDS = 12


def test_two_admins_removing_each_other_at_once_leave_one(db_url: str) -> None:
    """The last two admins revoked (or demoted) at the same instant, on two replicas of one
    database: one of them stays, every round (on PostgreSQL both went, leaving nobody able to
    manage admins, revoke devices or recover keys)."""
    db = Database(db_url)
    db.create_schema()
    one, two = AdminStore(db), AdminStore(db)  # two replicas: caches of their own
    try:
        for i in range(ROUNDS):
            a, b = f"a{i}", f"b{i}"
            one.create(a, Role.ADMIN, "test")
            one.create(b, Role.ADMIN, "test")
            second = partial(two.revoke, b) if i % 2 else partial(two.set_role, b, Role.VIEWER)
            outcome = together([partial(one.revoke, a), second])
            left = [r.name for r in one.list() if r.revoked_at is None and r.role == Role.ADMIN]
            assert len(left) == 1 and sorted(outcome) == ["ConflictError", "ok"], (i, outcome, left)
            with db.engine.begin() as conn:  # the next round starts from no admin again
                conn.execute(admins.update().values(revoked_at=1))
    finally:
        db.engine.dispose()


def test_no_admin_takes_the_bootstrap_tokens_name(tmp_path: Path) -> None:
    """The audit log names the bootstrap token "bootstrap-token": an admin of that name would
    act under it there (and WhoAmI), so what it did would read as first setup's."""
    db = Database(f"sqlite:///{tmp_path / 'fleet.db'}")
    db.create_schema()
    store = AdminStore(db)
    with pytest.raises(BadRequestError, match="bootstrap token's"):
        store.create(BOOTSTRAP, Role.VIEWER, "alice")
    assert store.list() == []


@pytest.mark.slow
def test_a_certificate_whose_files_cannot_be_written_is_not_issued(
    server_factory: Callable[..., Server], tmp_path: Path
) -> None:
    """`admins cert --out-dir` where no folder can be made: a traceback, after the server had
    issued the certificate (which ends the one before) and the key was never kept, so the
    admin was left with no certificate that works. Now one line, and nothing issued."""
    server = server_factory(None)
    token = tmp_path / "alice.token"
    server.admin("admins", "add", "alice", "--role", "admin", "--out", str(token))
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder\n")
    result = run_cli("edgefleet", "--server", server.address, "--ca-file", str(server.ca_file),
                     "--token-file", str(token), "admins", "cert", "--out-dir",
                     str(blocked / "certs"), check=False)  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("edgefleet: error: cannot make"), result.stderr
    listed = run_cli("edgefleet", "--server", server.address, "--ca-file", str(server.ca_file),
                     "--token-file", str(token), "admins", "list", "--json").stdout  # fmt: skip
    (alice,) = json.loads(listed)["admins"]
    assert not alice.get("cert_serial"), alice


@pytest.mark.slow
def test_a_token_that_cannot_be_written_is_not_made(
    server_factory: Callable[..., Server], tmp_path: Path
) -> None:
    """`admins rotate --out FILE` onto a file that exists: the server rotated first, then the
    CLI refused to overwrite and the new token was lost, with the old one ended: bob locked
    out. `admins add --out` into no folder: an admin made whose token nobody has. Now the file
    is made first; nothing changes on the server when it cannot be."""
    server = server_factory(None)
    files = {name: tmp_path / f"{name}.token" for name in ("alice", "bob")}
    server.admin("admins", "add", "alice", "--role", "admin", "--out", str(files["alice"]))

    def cli(who: str, *args: str) -> subprocess.CompletedProcess[str]:
        return run_cli("edgefleet", "--server", server.address, "--ca-file",
                       str(server.ca_file), "--token-file", str(files[who]), *args,
                       check=False)  # fmt: skip

    cli("alice", "admins", "add", "bob", "--role", "viewer", "--out", str(files["bob"]))
    taken = tmp_path / "taken"
    taken.write_text("something of bob's\n")
    rotated = cli("bob", "admins", "rotate", "--out", str(taken))
    assert rotated.returncode == 1 and "nothing was changed" in rotated.stderr, rotated.stderr
    assert taken.read_text() == "something of bob's\n"
    assert cli("bob", "whoami").stdout.strip() == "bob (viewer)"  # the old token still works
    added = cli("alice", "admins", "add", "carol", "--role", "viewer", "--out",
                str(tmp_path / "no-such-folder" / "carol.token"))  # fmt: skip
    assert added.returncode == 1 and "nothing was changed" in added.stderr, added.stderr
    names = [
        a["name"] for a in json.loads(cli("alice", "admins", "list", "--json").stdout)["admins"]
    ]
    assert names == ["alice", "bob"], names
