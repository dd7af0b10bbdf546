"""The dashboard's actions (issue 22 item 7), each a confirmation form with the session's CSRF
token that calls the admin API with the person's own token: in a real headless Chromium an
admin adds admins (the token shown once), an operator creates a rollout that then runs, and a
viewer, who sees no buttons, is refused by the server in its own words; over HTTPS deploying
and deleting versions, setting roles and revoking, with the audit log naming each person."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from fleet_server.simulator import SimDevice
from tests.harness import Server, run_cli, wait_for
from tests.test_dashboard_hostile import Client

# Every Content-Security-Policy violation of a page, collected from its first script on.
_CSP_WATCH = (
    "window.__csp = []; document.addEventListener('securitypolicyviolation', "
    "e => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));"
)


def _as(server: Server, token_file: Path, *args: str) -> str:
    return run_cli("edgefleet", "--server", server.address, "--ca-file", str(server.ca_file),
                   "--token-file", str(token_file), *args).stdout  # fmt: skip


def _start(
    server_factory: Callable[..., Server], color_models: Path, tmp_path: Path
) -> tuple[Server, int, Path]:
    """A server with the dashboard, color 1.0.0 deployed and 2.0.0 and 3.0.0 pushed, six devices
    at two sites, and alice, an admin (whose token file is returned)."""
    server = server_factory(None, extra=("--dashboard-listen", "127.0.0.1:0",
                                         "--rollout-interval", "0.2"))  # fmt: skip
    info = json.loads((server.data_dir.parent / "server-ready.json").read_text())
    model = str(color_models / "color_int8.tflite")
    server.admin("models", "push", model, "--name", "color", "--version", "1.0.0", "--deploy")
    for version in ("2.0.0", "3.0.0"):
        server.admin("models", "push", model, "--name", "color", "--version", version)
    fleet, token = server.sim_fleet(), server.enrollment_token()
    for i in range(6):
        SimDevice.enroll(fleet, token, f"cam-{i}", labels={"site": ["lab", "shop"][i % 2]}
                         ).check_in()  # fmt: skip
    alice = tmp_path / "alice.token"
    server.admin("admins", "add", "alice", "--role", "admin", "--out", str(alice))
    return server, int(info["dashboard_port"]), alice


@pytest.mark.slow
def test_in_chromium_an_admin_adds_admins_an_operator_rolls_out_a_viewer_is_refused(
    tmp_path: Path, server_factory: Callable[..., Server], color_models: Path
) -> None:
    from tests.browser import Chromium, chromium_path

    executable = chromium_path()
    if executable is None:
        assert not os.environ.get("CI"), ".ci/run must install Debian's chromium"
        raise AssertionError("no chromium here: apt install chromium")
    server, port, alice = _start(server_factory, color_models, tmp_path)
    base = f"https://127.0.0.1:{port}"
    shots = tmp_path / "shots"
    shots.mkdir()
    browser = Chromium(executable, tmp_path / "profile")

    def log_in(token: str) -> None:
        browser.goto(f"{base}/login")
        browser.evaluate(
            f"document.querySelector('input[name=token]').value = {json.dumps(token)};"
            "document.querySelector('form').submit(); true"
        )
        browser.wait("location.pathname === '/'  || location.pathname === '/fleet'")

    def log_out() -> None:
        browser.evaluate("document.querySelector('header form button').click(); true")
        browser.wait("location.pathname === '/login'")

    def submit(form: str, fields: dict[str, str]) -> None:
        script = "".join(
            f"document.querySelector({json.dumps(f'{form} [name={k}]')}).value = {json.dumps(v)};"
            for k, v in fields.items()
        )
        browser.evaluate(script + f"document.querySelector({json.dumps(form)}).submit(); true")

    def nav() -> list[str]:
        return list(
            browser.evaluate("[...document.querySelectorAll('nav a')].map(a => a.innerText)")
        )

    try:
        browser.send("Page.addScriptToEvaluateOnNewDocument", source=_CSP_WATCH)
        # alice (admin) adds an operator and a viewer; each token is shown once.
        log_in(alice.read_text().strip())
        assert "Admins" in nav() and "alice (admin)" in browser.text()
        tokens = {}
        for name, role in (("olga", "operator"), ("vic", "viewer")):
            browser.goto(f"{base}/admins")
            browser.wait("document.body.innerText.includes('Add an admin')")
            submit("form[action='/admins/add']", {"name": name, "role": role})
            browser.wait("document.querySelector('[data-token]') !== null")
            assert f"{name} ({role}) added" in browser.text()
            tokens[name] = browser.evaluate("document.querySelector('[data-token]').innerText")
        assert "olga" in _as(server, alice, "admins", "list")
        browser.goto(f"{base}/admins")
        browser.wait("document.body.innerText.includes('vic')")
        browser.screenshot(shots / "admins.png")
        assert tokens["olga"] not in server.proc.output()  # never logged
        log_out()

        # olga (operator) rolls color 2.0.0 out to the lab from the models page.
        log_in(tokens["olga"])
        assert "Admins" not in nav() and "olga (operator)" in browser.text()
        browser.goto(f"{base}/models")
        browser.wait("document.querySelector('a[href*=\"version=2.0.0\"]') !== null")
        browser.evaluate("document.querySelector('a[href*=\"version=2.0.0\"]').click(); true")
        browser.wait("location.pathname === '/rollouts/new'")
        assert browser.evaluate("document.querySelector('[name=model]').value") == "color"
        submit("form.action", {"selector": "site=lab", "waves": "1,100%"})
        browser.wait("location.pathname === '/rollouts' && "
                     "document.body.innerText.includes('created')")  # fmt: skip
        (rollout,) = json.loads(_as(server, alice, "rollouts", "list", "--json"))
        assert (rollout["version"], rollout["selector"]) == ("2.0.0", {"site": "lab"})
        assert rollout["waves"] == ["1", "100%"]
        browser.wait(f"document.body.innerText.includes('Rollout {rollout['rollout_id']}: "
                     "color 2.0.0')")  # fmt: skip
        browser.screenshot(shots / "rollout-created.png")
        audit = _as(server, alice, "audit")
        assert any("CreateRollout" in line and "olga" in line and "via dashboard" in line
                   for line in audit.splitlines()), audit  # fmt: skip
        assert browser.evaluate("window.__csp") == []  # the page and its script obey the CSP
        log_out()

        # vic (viewer) sees no action, and the server refuses one tried all the same.
        log_in(tokens["vic"])
        browser.goto(f"{base}/rollouts")
        browser.wait("document.querySelector('article.rollout') !== null")
        buttons = browser.evaluate(
            "[...document.querySelectorAll('main a.button')].map(a => a.innerText)"
        )
        assert buttons == []
        browser.goto(f"{base}/models")
        browser.wait("document.body.innerText.includes('3.0.0')")
        assert browser.evaluate("document.querySelectorAll('main a.button').length") == 0
        browser.goto(f"{base}/rollouts/new?model=color&version=3.0.0")
        browser.wait("document.querySelector('form.action') !== null")
        browser.screenshot(shots / "rollout-new.png")
        submit("form.action", {"waves": "100%"})
        browser.wait("document.querySelector('.refused') !== null")
        refused = browser.evaluate("document.querySelector('.refused').innerText")
        assert "vic (viewer) may not call" in refused and "operator role" in refused
        assert len(json.loads(_as(server, alice, "rollouts", "list", "--json"))) == 1
        browser.goto(f"{base}/admins")
        browser.wait("document.querySelector('.refused') !== null")
        assert "admin role" in browser.text()
        assert browser.evaluate("window.__csp") == []
    finally:
        browser.close()
    target = os.environ.get("EDGEFLEET_SCREENSHOTS")
    if target:  # scripts: refresh the screenshots in docs/
        for shot in shots.iterdir():
            shutil.copy(shot, Path(target) / shot.name)


@pytest.mark.slow
def test_deploy_delete_roles_and_revocation_over_https(
    tmp_path: Path, server_factory: Callable[..., Server], color_models: Path
) -> None:
    server, port, alice = _start(server_factory, color_models, tmp_path)
    admin = Client(port, server.ca_file)
    assert admin.login(alice.read_text().strip()).status == 303

    def csrf(client: Client, path: str) -> str:
        answer = client.request("GET", path)
        assert answer.status == 200, (path, answer.body[-400:])
        found = re.search(r'name=csrf value="([^"]+)"', answer.body)
        assert found is not None
        return found.group(1)

    token = csrf(admin, "/admins")
    added = admin.request("POST", "/admins/add", {"csrf": token, "name": "olga",
                                                  "role": "operator"})  # fmt: skip
    olga_token = re.search(r"<p class=token data-token>([^<]+)</p>", added.body)
    assert added.status == 200 and olga_token is not None
    again = admin.request("POST", "/admins/add", {"csrf": token, "name": "olga",
                                                  "role": "viewer"})  # fmt: skip
    assert again.status == 409 and "olga" in again.body  # the server's words, on the form
    olga = Client(port, server.ca_file, "127.0.0.2")
    olga.login(olga_token.group(1))

    # Deploy: a confirmation page, then its form; a forged form is refused.
    form = csrf(olga, "/models/color/2.0.0/deploy")
    assert olga.request("POST", "/models/color/2.0.0/deploy", {"csrf": "forged"}).status == 403
    done = olga.request("POST", "/models/color/2.0.0/deploy", {"csrf": form})
    assert (done.status, done.headers["location"]) == (303, "/models")
    assert "color 2.0.0 deployed to every device" in olga.request("GET", "/models").body
    listed = json.loads(_as(server, alice, "models", "list", "--json"))
    assert {m["version"] for m in listed if m.get("deployed")} == {"2.0.0"}
    # Delete: a deployed version is refused (the server says why); an unused one goes.
    refused = olga.request("POST", "/models/color/2.0.0/delete", {"csrf": form})
    assert refused.status == 409 and "Refused:" in refused.body
    done = olga.request("POST", "/models/color/3.0.0/delete", {"csrf": form})
    assert done.status == 303
    assert "color 3.0.0 deleted" in olga.request("GET", "/models").body
    assert "3.0.0" not in _as(server, alice, "models", "list")
    # A bad wave is the server's INVALID_ARGUMENT, on the form with what was typed.
    bad = olga.request("POST", "/rollouts/new", {"csrf": form, "model": "color",
                                                 "version": "1.0.0", "waves": "lots"})  # fmt: skip
    assert bad.status == 400 and 'value="lots"' in bad.body and "Refused:" in bad.body
    # Admin pages are refused to an operator by the server itself.
    assert olga.request("GET", "/admins").status == 403
    assert olga.request("POST", "/admins/add", {"csrf": form, "name": "eve",
                                                "role": "admin"}).status == 403  # fmt: skip

    # alice makes olga a viewer: her next page has no actions; then revokes her: her session ends.
    token = csrf(admin, "/admins/olga/role")
    assert admin.request("POST", "/admins/olga/role", {"csrf": token, "role": "viewer"}
                         ).status == 303  # fmt: skip
    wait_for("the new role", lambda: "olga (viewer)" in olga.request("GET", "/models").body)
    assert "/deploy" not in olga.request("GET", "/models").body
    denied = olga.request("POST", "/models/color/1.0.0/deploy", {"csrf": form})
    assert denied.status == 403 and "may not call" in denied.body
    token = csrf(admin, "/admins/olga/revoke")
    assert admin.request("POST", "/admins/olga/revoke", {"csrf": token}).status == 303
    wait_for("the session to end",
             lambda: olga.request("GET", "/fleet").headers.get("location", "").startswith(
                 "/login"))  # fmt: skip
    audit = _as(server, alice, "audit")
    for action in ("CreateAdmin", "Deploy", "DeleteModelVersion", "SetAdminRole", "RevokeAdmin"):
        assert any(action in line and "via dashboard" in line for line in audit.splitlines()), (
            action
        )
