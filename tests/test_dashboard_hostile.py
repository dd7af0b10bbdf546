"""The dashboard against hostile and careless clients, over real HTTPS to a real server (issue 22
item 7): an idle connection that never starts TLS blocks no one and not the stop; wrong tokens
are limited per address and overall, and logged at a bounded rate; a login goes on only to a
local path; bad query values are a 400 with one line; every answer carries the security
headers; the metrics need an admin token, on the dashboard and on ``metrics_listen``."""

from __future__ import annotations

import http.client
import json
import re
import socket
import ssl
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.harness import Server, run_cli, scrape_metrics, wait_for


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: str


class Client:
    """One HTTPS request per call, redirects not followed, from a chosen loopback address."""

    def __init__(self, port: int, ca_file: Path, source: str = "127.0.0.1") -> None:
        self.port, self.source = port, source
        self.context = ssl.create_default_context(cafile=str(ca_file))
        self.cookie = ""

    def request(
        self,
        method: str,
        path: str,
        fields: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 15,
    ) -> Answer:
        connection = http.client.HTTPSConnection(
            "127.0.0.1", self.port, context=self.context, timeout=timeout,
            source_address=(self.source, 0),
        )  # fmt: skip
        sent = dict(headers or {})
        if self.cookie:
            sent["Cookie"] = self.cookie
        body = None
        if fields is not None:
            body = urllib.parse.urlencode(fields)
            sent["Content-Type"] = "application/x-www-form-urlencoded"
        try:
            connection.request(method, path, body=body, headers=sent)
            response = connection.getresponse()
            answer = Answer(response.status, response.headers, response.read().decode())
        finally:
            connection.close()
        cookie = answer.headers.get("set-cookie", "")
        if cookie and "Max-Age=0" not in cookie:
            self.cookie = cookie.split(";", 1)[0]
        return answer

    def login(self, token: str, next_path: str = "/fleet") -> Answer:
        return self.request("POST", "/login", {"token": token, "next": next_path})


def _dashboard(server_factory: Callable[..., Server], *extra: str) -> tuple[Server, int]:
    server = server_factory(None, extra=("--dashboard-listen", "127.0.0.1:0", *extra))
    info = json.loads((server.data_dir.parent / "server-ready.json").read_text())
    return server, int(info["dashboard_port"])


def _as(server: Server, token_file: Path, *args: str) -> str:
    """The admin CLI with a named admin's token."""
    return run_cli("edgefleet", "--server", server.address, "--ca-file", str(server.ca_file),
                   "--token-file", str(token_file), *args).stdout  # fmt: skip


def _token(server: Server) -> str:
    return (server.data_dir / "admin.token").read_text().strip()


@pytest.mark.slow
def test_an_idle_connection_blocks_no_one_and_not_the_stop(
    server_factory: Callable[..., Server],
) -> None:
    server, port = _dashboard(server_factory)
    # Connections that never start TLS (http.server did the handshake on its accept path: the
    # first one held every other client, and the stop, for ever).
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
    client = Client(port, server.ca_file)
    try:
        assert client.request("GET", "/login", timeout=10).status == 200
        assert client.login(_token(server)).status == 303
        assert client.request("GET", "/fleet", timeout=10).status == 200
        # A client that finished TLS but never sends a request is let go in the end.
        tls = client.context.wrap_socket(
            socket.create_connection(("127.0.0.1", port)), server_hostname="127.0.0.1"
        )
        tls.settimeout(60)
        assert tls.recv(1) == b""  # closed by the server, not by our timeout
        tls.close()
        # SIGTERM: the server stops on its own (not SIGKILLed after the harness's 20 s).
        assert server.proc.stop() == 0
        assert "server stopped" in server.proc.output()
    finally:
        for sock in idle:
            sock.close()


@pytest.mark.slow
def test_wrong_tokens_are_refused_for_a_while_and_logged_at_a_bounded_rate(
    server_factory: Callable[..., Server],
) -> None:
    server, port = _dashboard(server_factory)
    token = _token(server)
    here = Client(port, server.ca_file, "127.0.0.1")
    for _ in range(5):
        answer = here.login("wrong-token")
        assert answer.status == 401 and "not an admin token" in answer.body
    refused = here.login("wrong-token")
    assert refused.status == 429 and "Too many wrong tokens" in refused.body
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    # From that address even the right token waits; the metrics too.
    assert here.login(token).status == 429
    auth = {"Authorization": f"Bearer {token}"}
    assert here.request("GET", "/metrics", headers=auth).status == 429
    # Other addresses are not held up by it...
    other = Client(port, server.ca_file, "127.0.0.2")
    assert other.login(token).status == 303
    assert other.request("GET", "/fleet").status == 200
    # ...until wrong tokens from all addresses together reach the overall limit (60 a minute).
    for i in range(3, 14):
        flood = Client(port, server.ca_file, f"127.0.0.{i}")
        for _ in range(5):
            assert flood.login("wrong-token").status in (401, 429)
    assert Client(port, server.ca_file, "127.0.0.99").login(token).status == 429
    assert other.request("GET", "/fleet").status == 200  # a session already open goes on
    log = server.proc.output()
    lines = [x for x in log.splitlines() if "wrong admin token" in x]
    assert 1 <= len(lines) <= 20, len(lines)  # 60 wrong tokens, ten lines a minute
    assert token not in log and "wrong-token" not in log


@pytest.mark.slow
def test_a_login_goes_on_only_to_a_local_path(server_factory: Callable[..., Server]) -> None:
    server, port = _dashboard(server_factory)
    token = _token(server)
    hostile = (
        "//evil.example",
        "/\\evil.example",
        "https://evil.example/",
        "/fleet\r\nSet-Cookie: planted=1",
        "/fleet\r\n\r\n<script>alert(1)</script>",
    )
    for target in hostile:
        answer = Client(port, server.ca_file).login(token, target)
        assert (answer.status, answer.headers["location"]) == (303, "/"), target
        assert "planted" not in str(answer.headers)
    answer = Client(port, server.ca_file).login(token, "/devices/cam-01?partial=1")
    assert answer.headers["location"] == "/devices/cam-01?partial=1"
    # The query's next, percent-encoded CR LF included, comes back escaped into the form only
    # when it is a local path.
    page = Client(port, server.ca_file).request("GET", "/login?next=%2F%2Fevil.example")
    assert 'name=next value="/"' in page.body
    page = Client(port, server.ca_file).request("GET", "/login?next=/fleet%0d%0aX-A:%201")
    assert 'name=next value="/"' in page.body and "X-A" not in str(page.headers)


@pytest.mark.slow
def test_bad_query_values_are_answered_400_never_500(
    server_factory: Callable[..., Server],
) -> None:
    server, port = _dashboard(server_factory)
    client = Client(port, server.ca_file)
    client.login(_token(server))
    bad = {
        "/fleet?offset=99999999999999999999999": "offset must be a whole number",
        "/fleet?offset=-1": "offset must be a whole number",
        "/fleet?offset=abc": "offset must be a whole number",
        "/fleet?size=7": "size must be one of 25, 50, 100, 200",
        "/fleet?q=" + "x" * 65: "q must be at most 64 characters",
        "/fleet?q=a%00b": "q must not contain control characters",
        "/costs?by=" + "y" * 65: "by must be at most 64 characters",
    }
    for path, message in bad.items():
        answer = client.request("GET", path)
        assert answer.status == 400 and message in answer.body, (path, answer.body[-300:])
    for path in ("/rollouts/99999999999999999999999/pause", "/rollouts/1/explode",
                 "/devices/%00", "/models/x/1.0.0/explode", "/nope"):  # fmt: skip
        assert client.request("GET", path).status == 404, path
    assert client.request("GET", "/fleet?offset=150&size=25").status == 200
    big = client.request("POST", "/rollouts/new", {"csrf": "x", "model": "m" * 20_000})
    assert big.status == 413


@pytest.mark.slow
def test_every_answer_carries_the_security_headers(server_factory: Callable[..., Server]) -> None:
    server, port = _dashboard(server_factory)
    client = Client(port, server.ca_file)
    login = client.login(_token(server))
    cookie = login.headers["set-cookie"]
    assert cookie.startswith("__Host-edgefleet_session=")
    for attribute in ("HttpOnly", "Secure", "SameSite=Strict", "Path=/"):
        assert attribute in cookie
    for path in ("/login", "/static/app.js", "/fleet", "/rollouts", "/nope", "/logout"):
        answer = client.request("GET", path)
        headers = answer.headers
        csp = headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp, path
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert headers["x-frame-options"] == "DENY" and headers["x-content-type-options"]
        if path in ("/fleet", "/rollouts"):
            assert headers["cache-control"] == "no-store"
            # No inline script on a page: the one script is /static/app.js.
            assert re.findall(r"<script[^>]*>", answer.body) == [
                '<script src="/static/app.js" defer>'
            ]
    assert client.request("GET", "/logout").status == 405


@pytest.mark.slow
def test_metrics_need_an_admin_token_on_the_dashboard_and_on_metrics_listen(
    server_factory: Callable[..., Server], tmp_path: Path
) -> None:
    server, port = _dashboard(server_factory, "--metrics-listen", "127.0.0.1:0")
    token = _token(server)
    ready = json.loads((server.data_dir.parent / "server-ready.json").read_text())
    for where in (port, int(ready["metrics_port"])):
        client = Client(where, server.ca_file)
        answer = client.request("GET", "/metrics")
        assert answer.status == 401 and answer.headers["www-authenticate"].startswith("Bearer")
        assert "edgefleet_devices" not in answer.body
        wrong = client.request("GET", "/metrics", headers={"Authorization": "Bearer nope"})
        assert wrong.status == 401
        good = client.request("GET", "/metrics", headers={"Authorization": f"Bearer {token}"})
        assert good.status == 200 and 'edgefleet_devices{state="online"} 0' in good.body
        assert good.headers["content-type"].startswith("text/plain; version=0.0.4")
    # Plain HTTP is not served on the metrics port any more.
    with pytest.raises((http.client.HTTPException, ConnectionError, OSError)):
        plain = http.client.HTTPConnection("127.0.0.1", int(ready["metrics_port"]), timeout=10)
        plain.request("GET", "/metrics")
        assert plain.getresponse().status != 200
    # A viewer's token will do (Prometheus' credentials_file), until it is revoked.
    assert "edgefleet_rollouts" in scrape_metrics(server.data_dir.parent, server.data_dir)
    files = {name: tmp_path / f"{name}.token" for name in ("alice", "prom")}
    server.admin("admins", "add", "alice", "--role", "admin", "--out", str(files["alice"]))
    _as(server, files["alice"], "admins", "add", "prom", "--role", "viewer", "--out",
        str(files["prom"]))  # fmt: skip
    prom = files["prom"].read_text().strip()
    client = Client(int(ready["metrics_port"]), server.ca_file)
    auth = {"Authorization": f"Bearer {prom}"}
    assert client.request("GET", "/metrics", headers=auth).status == 200
    _as(server, files["alice"], "admins", "revoke", "prom")
    wait_for("the revocation", lambda: client.request("GET", "/metrics", headers=auth).status
             == 401, timeout=15)  # fmt: skip
    assert client.request("GET", "/elsewhere", headers=auth).status == 404
