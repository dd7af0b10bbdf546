"""Issue 22 item 2 against a real server process: webhooks added, tested, listed and removed
with the admin CLI (audited, the secret shown once and never again), deliveries signed,
retried after 500s and after a receiver that hangs, a real event (a paused rollout) delivered,
and an event a server recorded before it was killed with SIGKILL delivered after its restart.
The receivers are real HTTP(S) servers in this process (tests/webhook_receiver.py)."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fleet_server.registry.ca import FleetCA
from tests.harness import DATA, Server, free_port, scrape_metrics, wait_for
from tests.webhook_receiver import Receiver

pytestmark = pytest.mark.slow

OWN = "a-secret-of-my-own-choosing"
FAST = ("--webhook-timeout", "1", "--webhook-retry-after", "0.2")


def _deliveries(server: Server, name: str) -> list[dict[str, Any]]:
    return list(json.loads(server.admin("webhooks", "deliveries", name, "--json").stdout))


def _https_receiver(folder: Path) -> tuple[Receiver, Path]:
    """An HTTPS receiver with a certificate for 127.0.0.1 from a CA of its own; that CA's file."""
    ca = FleetCA.create(folder / "receiver-ca", "receiver")
    key_pem, cert_pem = ca.server_credentials(["127.0.0.1"])
    key, cert = folder / "receiver.key", folder / "receiver.crt"
    key.write_bytes(key_pem)
    cert.write_bytes(cert_pem)
    ca_file = folder / "receiver-ca.pem"
    ca_file.write_bytes(ca.cert_pem)
    return Receiver(tls_files=(cert, key)), ca_file


def test_webhooks_are_signed_retried_listed_audited_and_told_of_a_paused_rollout(
    server_factory: Callable[..., Server], tmp_path: Path
) -> None:
    server = server_factory(None, extra=(*FAST, "--metrics-listen", "127.0.0.1:0"))
    https, ca_file = _https_receiver(tmp_path)
    flaky, slow = Receiver(script=[500, 500]), Receiver(script=["hang"])
    try:
        # An http:// URL needs --allow-http; credentials in a URL are refused.
        plain = server.admin("webhooks", "add", "flaky", flaky.url(), check=False)
        assert plain.returncode == 1 and "--allow-http" in plain.stderr
        creds = server.admin("webhooks", "add", "x", "https://u:p@127.0.0.1/x", check=False)
        assert creds.returncode == 1 and "must not carry credentials" in creds.stderr

        add = ("webhooks", "add", "ops", https.url("/ops?token=abc"), "--receiver-ca",
               str(ca_file), "--json")  # fmt: skip
        added = json.loads(server.admin(*add).stdout)
        secret = added["secret"]
        assert secret.startswith("whsec_") and added["webhook"]["url"].endswith("/ops?…")
        https.secret = secret
        secret_file = tmp_path / "flaky.secret"
        secret_file.write_text(OWN + "\n")
        flaky.secret = slow.secret = OWN
        text = server.admin("webhooks", "add", "flaky", flaky.url(), "--allow-http",
                            "--secret-file", str(secret_file)).stdout  # fmt: skip
        assert OWN not in text and "shown this once" not in text
        server.admin("webhooks", "add", "slow", slow.url(), "--allow-http", "--secret-file",
                     str(secret_file), "--event", "webhook.test")  # fmt: skip

        # Delivered, signed, over TLS to a receiver the system does not trust by itself.
        tested = server.admin("webhooks", "test", "ops").stdout
        assert "delivered: #1" in tested and "HTTP 200" in tested
        (got,) = https.wait_for(1)
        assert got.signature_ok and got.path == "/ops?token=abc"
        assert got.payload["type"] == "webhook.test" and got.payload["version"] == 1

        # Two 500s, then the third attempt gets it; the log shows all three.
        server.admin("webhooks", "test", "flaky", "--wait", "60")
        assert [r.answered for r in flaky.wait_for(3)] == [500, 500, 200]
        assert all(r.signature_ok for r in flaky.received)
        (log,) = _deliveries(server, "flaky")
        assert log["state"] == "delivered" and log["attempts"] == 3
        assert [a["status"] for a in log["log"]] == [500, 500, 200]

        # A receiver that hangs is cut off after --webhook-timeout and tried again.
        server.admin("webhooks", "test", "slow", "--wait", "60")
        (log,) = _deliveries(server, "slow")
        assert [a["error"] for a in log["log"]] == ["no answer within 1 s", ""]

        # A real event: an admin pauses a rollout; slow asked for webhook.test only.
        digits = str(DATA / "digits_local_float.tflite")
        server.admin("models", "push", digits, "--name", "digits", "--version", "1.0.0")
        create = ("rollouts", "create", "digits", "1.0.0", "--allow-empty", "--json")
        created = json.loads(server.admin(*create).stdout)
        rollout_id = int(created["rollout_id"])
        server.admin("rollouts", "pause", str(rollout_id))
        paused = wait_for(
            "the paused rollout's webhook",
            lambda: [r for r in https.received if r.payload["type"] == "rollout.paused"],
        )
        assert paused[0].signature_ok
        assert paused[0].payload["data"]["rollout_id"] == rollout_id
        assert paused[0].payload["data"]["by"] == "admin"
        assert not [r for r in slow.received if r.payload["type"] != "webhook.test"]

        # Listed without its secret; adding and removing are audited without it too.
        listed = server.admin("webhooks", "list", "--json").stdout
        assert secret not in listed and OWN not in listed
        hooks = {h["name"]: h for h in json.loads(listed)}
        assert hooks["flaky"]["delivered"] >= 1 and hooks["ops"]["custom_ca"]
        metrics = scrape_metrics(tmp_path, server.data_dir)
        assert 'edgefleet_webhook_deliveries{state="delivered",webhook="flaky"}' in metrics
        assert 'edgefleet_webhook_dropped_total{webhook="ops"} 0' in metrics
        server.admin("webhooks", "remove", "slow")
        assert "slow" not in server.admin("webhooks", "list").stdout
        audit = server.admin("audit", "--json").stdout
        assert secret not in audit and OWN not in audit
        actions = [e["action"] for e in json.loads(audit)]
        assert actions.count("AddWebhook") == 5  # the two refused ones too
        assert "RemoveWebhook" in actions and "TestWebhook" in actions
    finally:
        for receiver in (https, flaky, slow):
            receiver.close()


def test_an_event_recorded_before_a_sigkill_is_delivered_after_the_restart(
    server_factory: Callable[..., Server], tmp_path: Path
) -> None:
    server = server_factory(None, extra=FAST)
    port = free_port()  # nobody listens there yet
    url = f"http://127.0.0.1:{port}/hook"
    server.admin("webhooks", "add", "ops", url, "--allow-http", "--event", "webhook.test")
    event_id = server.admin("webhooks", "test", "ops", "--wait", "0").stdout.split()[1]
    wait_for("a refused attempt", lambda: _deliveries(server, "ops")[0]["log"])
    server.proc.stop(signal.SIGKILL)

    with Receiver(port=port) as receiver:
        again = server_factory(None, extra=FAST, data_dir=server.data_dir)
        (got,) = receiver.wait_for(1, timeout=90)
        assert got.headers["X-EdgeFleet-Event-Id"] == event_id == got.payload["id"]
        (log,) = _deliveries(again, "ops")
        assert log["state"] == "delivered" and log["attempts"] >= 2
        assert "refused" in log["log"][0]["error"]
