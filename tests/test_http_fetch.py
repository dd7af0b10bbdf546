"""Downloads from HTTP(S) sources the device does not trust (issue 25 item 2): a hostile mirror or
store can only slow a device down. Each misbehaviour of a real HTTP server (in a thread of the
test) is refused by agent/updates/http_fetch.py; what it wrote stays for the next source to
resume from, and the updater's hash check (tests/test_objstore.py) does the rest."""

from __future__ import annotations

import contextlib
import datetime
import http.server
import io
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.errors import DownloadError
from agent.updates.http_fetch import HttpSource, fetch
from tests.harness import run_cli

DATA = bytes(range(256)) * 400  # 102,400 bytes
Behaviour = Callable[[http.server.BaseHTTPRequestHandler, int], None]


def serve_range(handler: http.server.BaseHTTPRequestHandler, start: int, body: bytes = DATA,
                total: int | None = None) -> None:  # fmt: skip
    total = len(body) if total is None else total
    part = body[start:]
    handler.send_response(206 if start else 200)
    if start:
        handler.send_header("Content-Range", f"bytes {start}-{total - 1}/{total}")
    handler.send_header("Content-Length", str(len(part)))
    handler.end_headers()
    handler.wfile.write(part)


class Source:
    """An HTTP(S) server on a free loopback port whose GET does what ``behaviour`` says."""

    def __init__(self, behaviour: Behaviour, tls: ssl.SSLContext | None = None) -> None:
        self.requests: list[dict[str, str]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests.append(dict(self.headers))
                header = self.headers.get("Range", "bytes=0-")
                start = int(header.removeprefix("bytes=").split("-")[0])
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    behaviour(self, start)

            def log_message(self, *_args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.scheme = "https" if tls else "http"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.server.server_address[1]}/artifacts/abc"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def source_factory() -> Iterator[Callable[..., Source]]:
    started: list[Source] = []

    def factory(behaviour: Behaviour, tls: ssl.SSLContext | None = None) -> Source:
        started.append(Source(behaviour, tls))
        return started[-1]

    yield factory
    for source in started:
        source.close()


OPEN = HttpSource(allow_http=True, stall_s=1.0)


def download(url: str, offset: int = 0, source: HttpSource = OPEN, size: int = len(DATA)) -> bytes:
    sink = io.BytesIO()
    fetch(url, offset=offset, expected_size=size, sink=sink, source=source, deadline_s=10)
    return sink.getvalue()


def test_a_whole_download_and_a_resumed_one(source_factory: Callable[..., Source]) -> None:
    src = source_factory(serve_range)
    assert download(src.url) == DATA
    assert download(src.url, offset=1000) == DATA[1000:]
    assert src.requests[-1]["Range"] == "bytes=1000-"


def test_plain_http_is_refused_unless_allowed(source_factory: Callable[..., Source]) -> None:
    src = source_factory(serve_range)
    with pytest.raises(DownloadError, match="https only"):
        download(src.url, source=HttpSource())
    for bad in ("ftp://127.0.0.1/x", "file:///etc/passwd", "//127.0.0.1/x"):
        with pytest.raises(DownloadError, match="refused download URL scheme"):
            download(bad)
    assert not src.requests


@pytest.mark.parametrize(
    ("behaviour", "message"),
    [
        # Truncation: the connection closes early.
        (lambda h, s: (h.send_response(206),
                       h.send_header("Content-Range", f"bytes {s}-{len(DATA) - 1}/{len(DATA)}"),
                       h.send_header("Content-Length", str(len(DATA) - s)),
                       h.end_headers(), h.wfile.write(DATA[s : s + 5000])), "ended at byte 5100"),
        # A Range ignored on resume: a 200 with the whole file.
        (lambda h, s: serve_range(h, 0), "ignored the Range"),
        # Another range than asked for.
        (lambda h, s: serve_range(h, s + 10), "sent range"),
        # Another file (a different total size).
        (lambda h, s: serve_range(h, s, DATA + b"x"), "manifest names"),
        # Endless data announced: more than the manifest names.
        (lambda h, s: (h.send_response(206),
                       h.send_header("Content-Range", f"bytes {s}-{10**12}/*"),
                       h.send_header("Content-Length", str(10**12)), h.end_headers()),
         "announces"),
        # Errors.
        (lambda h, s: (h.send_response(403), h.end_headers()), "HTTP 403"),
        (lambda h, s: (h.send_response(404), h.end_headers()), "HTTP 404"),
    ],
)  # fmt: skip
def test_a_misbehaving_source_is_refused(
    source_factory: Callable[..., Source], behaviour: Behaviour, message: str
) -> None:
    src = source_factory(behaviour)
    with pytest.raises(DownloadError, match=message):
        download(src.url, offset=100)


def test_endless_data_without_a_length_stops_at_the_manifest_size(
    source_factory: Callable[..., Source],
) -> None:
    def endless(h: http.server.BaseHTTPRequestHandler, s: int) -> None:
        h.send_response(206)
        h.send_header("Content-Range", f"bytes {s}-{10**12}/*")
        h.end_headers()
        while True:
            h.wfile.write(b"\0" * 65536)

    src = source_factory(endless)
    got = download(src.url, offset=100)  # wrong bytes: the caller's hash refuses them
    assert len(got) == len(DATA) - 100


def test_a_stalled_source_is_given_up_within_the_stall_limit(
    source_factory: Callable[..., Source],
) -> None:
    def stall(h: http.server.BaseHTTPRequestHandler, s: int) -> None:
        h.send_response(200)
        h.send_header("Content-Length", str(len(DATA)))
        h.end_headers()
        h.wfile.write(DATA[:1000])
        h.wfile.flush()
        time.sleep(5)

    src = source_factory(stall)
    sink = io.BytesIO()
    started = time.monotonic()
    with pytest.raises(DownloadError, match="stopped at byte 1000"):
        fetch(src.url, offset=0, expected_size=len(DATA), sink=sink, source=OPEN, deadline_s=60)
    assert time.monotonic() - started < 4  # the 1 s stall limit, not the source's 5 s
    assert sink.getvalue() == DATA[:1000]  # kept, for the next source to resume from


def test_redirects_are_followed_but_never_down_to_plain_http(
    tmp_path: Path, source_factory: Callable[..., Source]
) -> None:
    ca_file, tls = tls_pair(tmp_path)
    plain = source_factory(serve_range)

    def to_plain(h: http.server.BaseHTTPRequestHandler, s: int) -> None:
        h.send_response(302)
        h.send_header("Location", plain.url)
        h.end_headers()

    secure = source_factory(serve_range, tls)
    hop = source_factory(lambda h, s: (h.send_response(307),
                                       h.send_header("Location", secure.url), h.end_headers()),
                         tls)  # fmt: skip
    trusted = HttpSource(ca_file=ca_file, allow_http=True, stall_s=2)
    assert download(hop.url, source=trusted) == DATA
    down = source_factory(to_plain, tls)
    with pytest.raises(DownloadError, match="from HTTPS"):
        download(down.url, source=trusted)
    # Without the CA the certificate is refused: the system's roots do not know it.
    with pytest.raises(DownloadError, match="CERTIFICATE_VERIFY_FAILED"):
        download(secure.url, source=HttpSource(stall_s=2))


def tls_pair(folder: Path) -> tuple[Path, ssl.SSLContext]:
    """A CA file and a server context with a certificate it signed for 127.0.0.1."""
    import ipaddress

    ca_key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test mirror CA")])
    ca = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(ca_key.public_key()).serial_number(1)
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(name).public_key(key.public_key()).serial_number(2)
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    ca_file = folder / "ca.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (folder / "server.pem").write_bytes(
        cert.public_bytes(serialization.Encoding.PEM)
        + key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    )  # fmt: skip
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(folder / "server.pem")
    return ca_file, context


@pytest.mark.parametrize(
    "location",
    [
        "https://127.0.0.1:99999/artifacts/abc",  # a port out of range
        "https://127.0.0.1:port/artifacts/abc",  # not a port
        "https://" + "a" * 64 + "\u00e9.example/artifacts/abc",  # a name IDNA cannot encode
    ],
)
def test_a_redirect_to_a_malformed_url_is_a_download_error(
    source_factory: Callable[..., Source], location: str
) -> None:
    # Anything else than a DownloadError skips the next sources (sources.py catches only that):
    # one hostile or broken mirror would keep a device from its model, the server's stream too.
    src = source_factory(lambda h, s: (h.send_response(302), h.send_header("Location", location),
                                       h.end_headers()))  # fmt: skip
    with pytest.raises(DownloadError):
        download(src.url)
    with pytest.raises(DownloadError):
        download(location)  # the same as a mirror template (--artifact-mirror)


def test_the_deadline_holds_while_a_source_trickles_its_headers(
    source_factory: Callable[..., Source],
) -> None:
    # A byte of header a little more often than the stall limit: no read ever stalls.
    def slowloris(h: http.server.BaseHTTPRequestHandler, s: int) -> None:
        h.wfile.write(b"HTTP/1.1 200 OK\r\n")
        for _ in range(40):
            h.wfile.write(b"X")
            h.wfile.flush()
            time.sleep(0.3)

    src = source_factory(slowloris)
    started = time.monotonic()
    with pytest.raises(DownloadError):
        fetch(src.url, offset=0, expected_size=len(DATA), sink=io.BytesIO(), source=OPEN,
              deadline_s=2)  # fmt: skip
    assert time.monotonic() - started < 4  # the 2 s deadline (and 1 s stall limit), not 12 s


@pytest.mark.slow
def test_a_mirror_template_no_agent_could_use_is_refused_at_the_start(tmp_path: Path) -> None:
    data_dir = str(tmp_path / "d")
    run_cli("edgefleet-server", "init", "--data-dir", data_dir)
    for template in ("https://mirror.example:99999/{artifact}", "https://mirror.example:x/{artifact}",
                     "https://:443/{artifact}"):  # fmt: skip
        words = ("--listen", "127.0.0.1:0", "--artifact-mirror", template)
        run = run_cli("edgefleet-server", "run", "--data-dir", data_dir, *words, check=False,
                      timeout=30)  # fmt: skip
        assert run.returncode != 0 and "--artifact-mirror" in run.stderr, (template, run.stderr)


@pytest.mark.parametrize("header", [True, False])
def test_the_deadline_cuts_a_trickling_tls_source_with_a_download_error(
    tmp_path: Path, source_factory: Callable[..., Source], header: bool
) -> None:
    ca_file, tls = tls_pair(tmp_path)

    def trickle(h: http.server.BaseHTTPRequestHandler, s: int) -> None:
        if not header:
            h.send_response(200)
            h.send_header("Content-Length", str(len(DATA)))
            h.end_headers()
        else:
            h.wfile.write(b"HTTP/1.1 200 OK\r\n")
        for at in range(40):
            h.wfile.write(DATA[at : at + 1] if not header else b"X")
            h.wfile.flush()
            time.sleep(0.11)

    src = source_factory(trickle, tls)
    for deadline in (0.5, 1.0, 1.25):  # the cut lands in a read, or between two
        started = time.monotonic()
        with pytest.raises(DownloadError):
            fetch(src.url, offset=0, expected_size=len(DATA), sink=io.BytesIO(),
                  source=HttpSource(ca_file=ca_file, stall_s=1), deadline_s=deadline)  # fmt: skip
        assert time.monotonic() - started < deadline + 1.5
