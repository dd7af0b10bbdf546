"""The dashboard over real HTTPS against a real server: login, every page with seeded devices
and a running rollout, pausing it through the confirmation form (audited as the CLI's calls
are), the cost page agreeing with `edgefleet costs`, 10,000 devices aggregated and paginated,
and the same in a real headless Chromium (Debian's package, driven over DevTools), which also
takes the screenshots in docs/screenshots (EDGEFLEET_SCREENSHOTS=docs/screenshots)."""

from __future__ import annotations

import http.cookiejar
import json
import re
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from fleet_server.registry.store import DeviceStore
from fleet_server.simulator import SimDevice
from fleet_server.telemetry.store import TelemetryStore
from tests.harness import Server, seed_devices, seed_history
from tests.mqtt_clients import Client, sim_state_dir


class Browser:
    """Cookies, TLS with the fleet CA, no automatic redirects after POST surprises."""

    def __init__(self, base: str, ca_file: Path) -> None:
        self.base = base
        context = ssl.create_default_context(cafile=str(ca_file))
        self.cookies = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPSHandler(context=context),
            urllib.request.HTTPCookieProcessor(self.cookies),
        )

    def get(self, path: str) -> tuple[int, str, str]:
        """Status, final URL path, body."""
        return self._open(path, None)

    def post(self, path: str, fields: dict[str, str]) -> tuple[int, str, str]:
        return self._open(path, urllib.parse.urlencode(fields).encode())

    def _open(self, path: str, data: bytes | None) -> tuple[int, str, str]:
        try:
            with self.opener.open(self.base + path, data=data, timeout=30) as response:
                return (
                    response.status,
                    urllib.parse.urlsplit(response.url).path,
                    response.read().decode(),
                )
        except urllib.error.HTTPError as exc:
            return exc.code, path, exc.read().decode()


@pytest.mark.slow
def test_log_in_see_the_fleet_pause_a_rollout_and_read_the_costs(
    server_factory: Callable[..., Server], color_models: Path
) -> None:
    server = server_factory(
        None, extra=("--dashboard-listen", "127.0.0.1:0", "--rollout-interval", "0.2")
    )
    info = json.loads((server.data_dir.parent / "server-ready.json").read_text())
    browser = Browser(f"https://127.0.0.1:{info['dashboard_port']}", server.ca_file)

    # Nothing but the login page without a session; a wrong token is refused.
    status, where, body = browser.get("/fleet")
    assert (status, where) == (200, "/login") and "Admin token" in body
    status, where, body = browser.post("/login", {"token": "wrong"})
    assert (status, where) == (401, "/login") and "not an admin token" in body
    status, where, body = browser.get("/fleet")
    assert "No device has enrolled yet" not in body and where == "/login"

    admin_token = (server.data_dir / "admin.token").read_text().strip()
    status, where, body = browser.post("/login", {"token": admin_token, "next": "/fleet"})
    assert (status, where) == (200, "/fleet")
    assert "No device has enrolled yet" in body  # a clear empty state

    server.admin("models", "push", str(color_models / "color_int8.tflite"), "--name", "color",
                 "--version", "1.0.0", "--deploy")  # fmt: skip
    server.admin("models", "push", str(color_models / "color_int8.tflite"), "--name", "color",
                 "--version", "2.0.0")  # fmt: skip
    fleet, token = server.sim_fleet(), server.enrollment_token()
    devices = [SimDevice.enroll(fleet, token, f"cam-{i:02d}", labels={"site": "lab"})
               for i in range(12)]  # fmt: skip
    for device in devices:
        device.check_in()
    created = json.loads(
        server.admin(
            "rollouts", "create", "color", "2.0.0", "--waves", "1,100%", "--bake", "600", "--json"
        ).stdout
    )
    rollout_id = int(created["rollout_id"])

    _, _, body = browser.get("/fleet")
    assert "<p class=big>12</p>" in body and "cam-00" in body and "color 1.0.0" in body
    _, _, body = browser.get("/fleet?q=cam-1")
    assert "cam-10" in body and "cam-01" not in body
    _, _, body = browser.get("/devices/cam-03")
    assert "x86_64" in body and "site=lab" in body
    assert "No telemetry in the last 24 hours" in body  # a clear empty state, no empty chart
    explained = json.loads(server.admin("devices", "explain", "cam-03", "color", "--json").stdout)
    shown = re.search(r"<td data-variant>([^<]*)</td><td>([^<]*)</td>", body)
    assert shown is not None and shown.group(1).startswith(explained["variant"])
    assert shown.group(2) == explained["reason"][:200]  # the same words as the CLI
    rows = seed_history(f"sqlite:///{server.data_dir / 'fleet.db'}", "cam-03", "color")
    import sqlite3

    with sqlite3.connect(server.data_dir / "fleet.db") as conn:  # outside the 24 h: not shown
        for bucket in (int(rows[0]["bucket"]) - 300, int(rows[-1]["bucket"]) + 300):
            conn.execute("INSERT INTO telemetry_history VALUES ('cam-03', 'color', ?, "
                         "99999, 9999, 0, 1.0, 999.0)", (bucket,))  # fmt: skip
    _, _, body = browser.get("/devices/cam-03")
    errors = sum(int(r["errors"]) for r in rows)
    assert f'<figure class=chart data-points="288" data-errors="{errors}">' in body
    assert body.count("<rect class=bad") == 12  # the buckets with errors, one bar each
    assert ">6.00 ms</text>" in body  # the latency scale: the worst bucket's p95
    _, _, body = browser.get("/models")  # the same over the fleet (one device here)
    assert f'<figure class=chart data-points="288" data-errors="{errors}">' in body
    assert "worst device&#x27;s p95" in body
    _, _, body = browser.get("/models")
    assert "<td>color</td><td>2.0.0</td>" in body and "1,104" in body
    _, _, body = browser.get("/rollouts?partial=1")
    assert f"Rollout {rollout_id}: color 2.0.0" in body and "running" in body
    assert "<html" not in body  # the live-update fragment is the main part only

    # Pause: a confirmation page, then the form (with its CSRF token) does it.
    _, _, body = browser.get(f"/rollouts/{rollout_id}/pause")
    csrf = re.search(r'name=csrf value="([^"]+)"', body)
    assert csrf and f"Yes, pause rollout {rollout_id}" in body
    status, where, body = browser.post(f"/rollouts/{rollout_id}/pause", {"csrf": "forged"})
    assert status == 403
    status, where, body = browser.post(f"/rollouts/{rollout_id}/pause", {"csrf": csrf.group(1)})
    assert where == "/rollouts" and f"Rollout {rollout_id}: pause done." in body
    status_json = json.loads(server.admin("rollouts", "status", str(rollout_id), "--json").stdout)
    assert status_json["state"] == "paused"
    audit = server.admin("audit").stdout
    assert "PauseRollout" in audit and "via dashboard" in audit

    # Costs: the same numbers as the CLI.
    _, _, body = browser.get("/costs")
    assert "No inference reported yet" in body
    status, where, body = browser.get("/nope")
    assert status == 404

    # A page that fails on the server says so (and the others keep working).
    with sqlite3.connect(server.data_dir / "fleet.db") as conn:
        conn.execute("ALTER TABLE telemetry_history RENAME TO history_gone")
    status, _, body = browser.get("/devices/cam-03")
    assert status == 500 and "This page failed on the server" in body
    assert browser.get("/fleet")[0] == 200
    with sqlite3.connect(server.data_dir / "fleet.db") as conn:
        conn.execute("ALTER TABLE history_gone RENAME TO telemetry_history")

    # Logging out ends the session: a POST with the session's CSRF token (a link cannot).
    _, _, body = browser.get("/fleet")
    csrf = re.search(r'name=csrf value="([^"]+)"', body)
    assert csrf is not None
    assert browser.get("/logout")[0] == 405
    assert browser.post("/logout", {})[0] == 403
    assert browser.get("/fleet")[1] == "/fleet"  # still logged in
    browser.post("/logout", {"csrf": csrf.group(1)})
    _, where, _ = browser.get("/fleet")
    assert where == "/login"


@pytest.mark.slow
def test_pages_aggregate_and_paginate_ten_thousand_devices(
    server_factory: Callable[..., Server],
) -> None:
    server = server_factory(None, extra=("--dashboard-listen", "127.0.0.1:0"))
    seed_devices(f"sqlite:///{server.data_dir / 'fleet.db'}", 10_000)
    info = json.loads((server.data_dir.parent / "server-ready.json").read_text())
    browser = Browser(f"https://127.0.0.1:{info['dashboard_port']}", server.ca_file)
    token = (server.data_dir / "admin.token").read_text().strip()
    browser.post("/login", {"token": token})
    # (How fast: bench/bench_dashboard.py; timing is not asserted in tests.)
    for path in ("/devices/dev-04242", "/rollouts", "/models", "/costs"):
        status, _, body = browser.get(path)
        assert status == 200, (path, body[:200])
    _, _, body = browser.get("/fleet")
    assert "<p class=big>10000</p>" in body and "1-50 of 10000" in body
    assert "aarch64+edgetpu</td><td class=n>5000" in body
    assert "online 9000" in body and "offline 1000" in body
    assert "<td>m</td><td>1.0.0</td><td class=n>10000</td>" in body
    _, _, body = browser.get("/fleet?offset=9950")
    assert "9951-10000 of 10000" in body and "dev-09999" in body and "next" not in body


@pytest.mark.slow
def test_in_chromium_log_in_pause_a_rollout_and_read_the_costs(
    tmp_path: Path, server_factory: Callable[..., Server], color_models: Path
) -> None:
    import os
    import shutil

    import paho.mqtt.client as paho

    from protos import telemetry_pb2
    from tests.browser import Chromium, chromium_path

    executable = chromium_path()
    if executable is None:
        assert not os.environ.get("CI"), ".ci/run must install Debian's chromium"
        raise AssertionError("no chromium here: apt install chromium")
    server = server_factory(None, extra=("--dashboard-listen", "127.0.0.1:0"))
    info = json.loads((server.data_dir.parent / "server-ready.json").read_text())
    base = f"https://127.0.0.1:{info['dashboard_port']}"
    server.admin("models", "push", str(color_models / "color_int8.tflite"), "--name", "color",
                 "--version", "1.0.0", "--deploy")  # fmt: skip
    server.admin("models", "push", str(color_models / "color_int8.tflite"), "--name", "color",
                 "--version", "2.0.0")  # fmt: skip
    fleet, token = server.sim_fleet(), server.enrollment_token()
    sims = [SimDevice.enroll(fleet, token, f"cam-{i:02d}", labels={"site": ["lab", "shop"][i % 2]})
            for i in range(8)]  # fmt: skip
    for sim in sims:
        sim.check_in()
    rollout_id = json.loads(
        server.admin(
            "rollouts", "create", "color", "2.0.0", "--waves", "1,100%", "--bake", "600", "--json"
        ).stdout
    )["rollout_id"]
    server.admin("routing", "set", "color", "cascade", "--threshold", "0.6",
                 "--max-spend-per-day", "0.2")  # fmt: skip
    seed_history(f"sqlite:///{server.data_dir / 'fleet.db'}", "cam-01", "color")
    # Usage for the cost page: two devices report a cascade over MQTT (the embedded broker).
    port = int(info["mqtt_url"].rsplit(":", 1)[1])
    for seq, (sim, spent) in enumerate(zip(sims[:2], (0.12, 0.2), strict=True), start=1):
        model = telemetry_pb2.ModelTelemetry(
            model_name="color", version="1.0.0", window_requests=1000, requests=1000,
            routing_policy="cascade", window_routed_requests=1000, window_cloud_requests=60,
            cloud_requests=60, window_cloud_cost_usd=spent, window_compute_ms=500.0,
        )  # fmt: skip
        report = telemetry_pb2.TelemetryReport(
            device_id=sim.device_id, seq=seq, epoch="e", models=[model],
            sent_unix_ms=int(time.time() * 1000),
        )  # fmt: skip
        state = sim_state_dir(sim, tmp_path / "sims")
        client = Client(port, state, sim.device_id, protocol=paho.MQTTv311)
        client.publish(
            f"edgefleet/v1/default/{sim.device_id}/telemetry", report.SerializeToString()
        )
        client.close()

    shots = tmp_path / "shots"
    shots.mkdir()
    browser = Chromium(executable, tmp_path / "profile")
    try:
        browser.goto(f"{base}/fleet")
        browser.wait("location.pathname === '/login'")
        admin_token = (server.data_dir / "admin.token").read_text().strip()
        browser.evaluate(
            f"document.querySelector('input[name=token]').value = {json.dumps(admin_token)};"
            "document.querySelector('form').submit(); true"
        )
        browser.wait("location.pathname === '/fleet'")
        browser.wait("document.body.innerText.includes('cam-07')")
        text = browser.text()
        assert browser.evaluate("document.querySelector('.card .big').innerText") == "8"
        assert "color" in text and "x86_64" in text
        browser.screenshot(shots / "fleet.png")

        browser.goto(f"{base}/devices/cam-01")
        browser.wait("document.body.innerText.includes('site=shop')")
        # The chart is drawn: 288 buckets, bars with a real on-screen size.
        assert browser.evaluate("document.querySelector('figure.chart').dataset.points") == "288"
        drawn = browser.evaluate(
            "[...document.querySelectorAll('figure.chart rect')]"
            ".filter(r => r.getBoundingClientRect().height > 0).length"
        )
        assert drawn >= 288
        browser.screenshot(shots / "device.png", full_page=True)

        browser.goto(f"{base}/rollouts")
        browser.wait(f"document.body.innerText.includes('Rollout {rollout_id}: color 2.0.0')")
        assert "running" in browser.text()
        browser.screenshot(shots / "rollouts.png")
        browser.evaluate(f"document.querySelector('a[href=\"/rollouts/{rollout_id}/pause\"]')"
                         ".click(); true")  # fmt: skip
        browser.wait(f"document.body.innerText.includes('Yes, pause rollout {rollout_id}')")
        browser.evaluate("document.querySelector('button.danger').click(); true")
        browser.wait(f"document.body.innerText.includes('Rollout {rollout_id}: pause done.')")
        assert "paused" in browser.text()
        audit = server.admin("audit").stdout
        assert "PauseRollout" in audit and "via dashboard" in audit

        browser.goto(f"{base}/models")
        browser.wait("document.body.innerText.includes('2.0.0')")
        assert browser.evaluate("document.querySelector('figure.chart').dataset.points") == "288"
        browser.screenshot(shots / "models.png", full_page=True)

        browser.goto(f"{base}/costs")
        browser.wait("document.body.innerText.includes('cascade')")
        shown = browser.evaluate(
            "[...document.querySelectorAll('td[data-usd-per-million]')].map(e => e.innerText)"
        )
        cli_rows = json.loads(server.admin("costs", "--json").stdout)["rows"]
        assert shown == [f"{float(r['per_million']):.4f}" for r in cli_rows]
        budget = browser.evaluate(
            "[document.querySelector('td[data-spent-usd]').innerText,"
            " document.querySelector('td[data-budget-use]').innerText]"
        )
        assert budget == ["0.3200", "80.0%"]  # 0.12 + 0.2 of 2 x 0.2 USD today
        (cli_budget,) = json.loads(server.admin("costs", "--json").stdout)["budgets"]
        assert (cli_budget["devices"], cli_budget["exhausted"]) == (2, 1)
        assert f"{cli_budget['spent_usd']:.4f}" == budget[0]
        table = server.admin("costs").stdout
        assert "cloud spend today (UTC)" in table and "80.0%" in table
        browser.screenshot(shots / "costs.png", full_page=True)

        # A tablet in portrait: nothing wider than the screen (tables scroll in their box),
        # and the chart scales down with it.
        browser.viewport(768, 1024, mobile=True)
        for page in ("/fleet", "/devices/cam-01", "/rollouts", "/models", "/costs"):
            browser.goto(f"{base}{page}")
            browser.wait("document.querySelector('main') !== null")
            overflow = browser.evaluate(
                "document.documentElement.scrollWidth - document.documentElement.clientWidth"
            )
            assert overflow <= 0, (page, overflow)
        browser.goto(f"{base}/devices/cam-01")
        browser.wait("document.querySelector('figure.chart') !== null")
        chart = browser.evaluate("document.querySelector('figure.chart svg').clientWidth")
        assert 600 <= chart <= 768
        browser.screenshot(shots / "device-tablet.png", full_page=True)
        browser.viewport(1280, 800)

        # Live updates: a change appears without reloading (the page refetches every 5 s).
        browser.goto(f"{base}/rollouts")
        browser.wait("document.querySelector('article.rollout.paused') !== null")
        browser.evaluate("window.__marker = 1; true")
        server.admin("rollouts", "resume", str(rollout_id))
        browser.wait(
            "window.__marker === 1 && document.querySelector('article.rollout.running') !== null",
            timeout=20,
        )
    finally:
        browser.close()
    target = os.environ.get("EDGEFLEET_SCREENSHOTS")
    if target:  # scripts: refresh the screenshots in docs/
        for shot in shots.iterdir():
            shutil.copy(shot, Path(target) / shot.name)
    assert {p.name for p in shots.iterdir()} == {
        "fleet.png",
        "device.png",
        "rollouts.png",
        "models.png",
        "costs.png",
        "device-tablet.png",
    }


def test_budget_use_follows_each_devices_policy_and_the_day(tmp_path: Path) -> None:
    from fleet_server.routing.budgets import budget_use
    from fleet_server.routing.prices import Prices
    from fleet_server.routing.store import RoutingRow, RoutingStore
    from fleet_server.storage.db import Database
    from fleet_server.telemetry.store import IngestBatch

    db = Database(f"sqlite:///{tmp_path / 'fleet.db'}")
    db.create_schema()
    devices, telemetry = DeviceStore(db), TelemetryStore(db)
    routing = RoutingStore(db)
    routing.set_prices(Prices(cloud_per_request=0.01))
    routing.set(RoutingRow("m", {}, "cascade", threshold=0.6, max_spend_per_day=1.0), "t")
    routing.set(RoutingRow("m", {"site": "shop"}, "cloud"), "t")  # no budget for these
    lab = [devices.add_device(f"lab-{i}", f"t{i}", {"site": "lab"}, {}) for i in range(3)]
    shop = devices.add_device("shop-0", "s", {"site": "shop"}, {})
    spend = {lab[0]: 0.25, lab[1]: 0.995, lab[2]: 0.0, shop: 3.0}
    telemetry.record_mqtt_batch(
        IngestBatch(usage={(d, "m", "cascade"): [100, 100, 50.0, int(c * 100), c]
                           for d, c in spend.items()})
    )  # fmt: skip
    cascade, cloud = budget_use(db, routing)
    assert (cascade.policy, cascade.per_device_usd, cascade.devices) == ("cascade", 1.0, 2)
    assert cascade.spent_usd == pytest.approx(1.245) and cascade.cloud_requests == 124
    assert cascade.use == pytest.approx(1.245 / 2)
    assert cascade.exhausted == 1  # 0.995 spent: its next 0.01 call would exceed 1.0
    assert cascade.top_use == pytest.approx(0.995)
    assert (cloud.policy, cloud.selector, cloud.per_device_usd) == ("cloud", {"site": "shop"}, None)
    assert cloud.use is None and cloud.spent_usd == pytest.approx(3.0)
    # Tomorrow nothing has been spent yet.
    assert budget_use(db, routing, now=time.time() + 86400) == []
    db.close()


def test_the_tls_key_is_not_left_on_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import datetime
    import ssl
    import tempfile

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from fleet_server.dashboard.server import load_pem

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(1).not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256())
    )  # fmt: skip
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())  # fmt: skip
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    load_pem(context, key_pem, cert.public_bytes(serialization.Encoding.PEM))
    assert list(tmp_path.iterdir()) == []  # loaded, and nothing of the key remains
