"""Artifacts in a real S3 object store (issue 25 item 1): Ceph's RADOS Gateway on a single-node
test cluster (tests/objstore.py), behind the same interface as the local folder. Runs in `make
test-objstore` (pytest --objstore)."""

from __future__ import annotations

import hashlib
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fleet_server.artifacts.s3 import S3ArtifactStore, S3Settings, parse_store_url
from fleet_server.artifacts.store import Artifacts, ArtifactStore
from fleet_server.errors import DataDirError, NotFoundError, TransientError
from tests import objstore
from tests.harness import (
    DATA,
    Server,
    active_version,
    free_port,
    make_agent,
    run_cli,
    start_mosquitto,
    wait_for,
)

pytestmark = [pytest.mark.objstore, pytest.mark.slow]
MODEL = DATA / "mobilenet_v1_0.25_128_quant.tflite"
MODEL2 = DATA / "keras_lstm_mnist_ptq.tflite"  # another model file for a second version


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[objstore.Gateway]:
    assert objstore.available(), "Ceph's radosgw, ceph-mon and ceph-osd (.ci/run installs them)"
    with objstore.gateway_in(tmp_path_factory.mktemp("ceph")) as gw:
        yield gw


def s3_store(
    gateway: objstore.Gateway, cache: Path, bucket: str, **kwargs: object
) -> S3ArtifactStore:
    creds = gateway.credentials_file(cache.parent / f"{bucket}.credentials")
    settings = S3Settings(
        bucket=bucket, prefix="fleet-a", endpoint=gateway.endpoint, credentials_file=creds,
        **kwargs,  # type: ignore[arg-type]
    )  # fmt: skip
    store = S3ArtifactStore(settings, cache)
    store.check(create=True)
    return store


def blob(size: int, seed: int = 0) -> bytes:
    return (hashlib.sha256(str(seed).encode()).digest() * (size // 32 + 1))[:size]


def chunks(data: bytes) -> Iterator[bytes]:
    for i in range(0, len(data), 1 << 20):
        yield data[i : i + (1 << 20)]


@pytest.mark.parametrize("backend", ["folder", "s3"])
def test_both_backends_keep_the_same_contract(
    backend: str, gateway: objstore.Gateway, tmp_path: Path
) -> None:
    store: Artifacts = (
        ArtifactStore(tmp_path / "artifacts")
        if backend == "folder"
        else s3_store(gateway, tmp_path / "cache", "contract")
    )
    data = blob(3 << 20)
    digest, size, path = store.put(chunks(data), max_bytes=len(data))
    assert digest == hashlib.sha256(data).hexdigest() and size == len(data)
    assert path.read_bytes() == data and store.path(digest) == path
    assert b"".join(c for _, c, _ in store.read(digest, 1000)) == data[1000:]
    assert (digest, len(data)) in {(a, s) for a, s, _ in store.entries()}
    packed = store.put_compressed(path)
    assert packed is not None and packed[1] < size  # repetitive bytes compress
    assert store.delete(digest) and not store.delete(digest)
    with pytest.raises(NotFoundError):
        store.path(digest)
    with pytest.raises(NotFoundError):
        store.path("not-a-digest")
    if backend == "folder":
        assert store.download_url(packed[0]) is None  # devices use the server's stream
    else:
        assert store.download_url(packed[0]) is not None


def test_the_bucket_is_the_truth_and_the_cache_is_checked(
    gateway: objstore.Gateway, tmp_path: Path
) -> None:
    store = s3_store(gateway, tmp_path / "cache", "truth")
    data = blob(20 << 20, seed=1)  # 3 parts of 8 MiB
    digest, _, path = store.put(chunks(data), max_bytes=len(data))
    key = f"fleet-a/artifacts/{digest}"
    head = store._s3.head_object(Bucket="truth", Key=key)  # the bucket itself
    assert head["ContentLength"] == len(data) and head["ETag"].strip('"').endswith("-3")
    # Another replica (an empty cache) reads it from the bucket: streamed, then fetched whole.
    other = s3_store(gateway, tmp_path / "other-cache", "truth")
    assert b"".join(c for _, c, _ in other.read(digest, len(data) - 5)) == data[-5:]
    assert not (tmp_path / "other-cache" / f"{digest}.tflite").exists()  # streamed, not cached
    assert other.path(digest).read_bytes() == data
    # A damaged object (bit rot, a careless operator) never joins a cache.
    store._s3.put_object(Bucket="truth", Key=key, Body=b"x" * len(data))
    third = s3_store(gateway, tmp_path / "third-cache", "truth")
    with pytest.raises(TransientError, match="does not match its sha256"):
        third.path(digest)
    assert not list((tmp_path / "third-cache").iterdir())
    path.unlink()


def test_presigned_urls_serve_ranges_and_expire(gateway: objstore.Gateway, tmp_path: Path) -> None:
    store = s3_store(gateway, tmp_path / "cache", "urls", url_lifetime_s=2)
    data = blob(100_000, seed=2)
    digest, _, _ = store.put(chunks(data), max_bytes=len(data))
    found = store.download_url(digest)
    assert found is not None
    url, lifetime = found
    assert lifetime == 2 and "X-Amz-Signature=" in url and "X-Amz-Expires=2" in url
    request = urllib.request.Request(url, headers={"Range": "bytes=99990-"})  # noqa: S310
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - the test's store
        assert response.status == 206 and response.read() == data[99990:]
    tampered = url.replace(digest, hashlib.sha256(b"other").hexdigest())
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(tampered, timeout=10)  # noqa: S310
    assert refused.value.code == 403
    time.sleep(3)
    with pytest.raises(urllib.error.HTTPError) as expired:
        urllib.request.urlopen(url, timeout=10)  # noqa: S310
    assert expired.value.code == 403


def test_bad_settings_and_an_unreachable_store_fail_at_the_start(
    gateway: objstore.Gateway, tmp_path: Path
) -> None:
    for url in ("s3://", "http://bucket", "s3://b", "s3://bucket?x=1", "s3://Bad_Bucket"):
        with pytest.raises(DataDirError):
            parse_store_url(url)
    assert parse_store_url("s3://fleet-artifacts/site-a/") == ("fleet-artifacts", "site-a")
    creds = tmp_path / "creds"
    creds.write_text("[default]\naws_access_key_id = x\n")
    with pytest.raises(DataDirError, match="aws_secret_access_key"):
        S3ArtifactStore(S3Settings(bucket="b", credentials_file=creds), tmp_path / "c")
    wrong = gateway.credentials_file(tmp_path / "wrong")
    wrong.write_text(wrong.read_text().replace(gateway.secret_key, "0" * 40))
    with pytest.raises(DataDirError, match="bucket"):
        S3ArtifactStore(
            S3Settings(bucket="nope", endpoint=gateway.endpoint, credentials_file=wrong),
            tmp_path / "c",
        ).check(create=True)
    missing = s3_store(gateway, tmp_path / "c2", "exists")
    with pytest.raises(DataDirError, match=r"NoSuchBucket|404|Not Found"):
        S3ArtifactStore(
            S3Settings(bucket="missing", endpoint=gateway.endpoint,
                       credentials_file=missing.settings.credentials_file),
            tmp_path / "c3",
        ).check()  # fmt: skip


def test_a_server_keeps_pushed_models_in_the_bucket_and_serves_them_from_it(
    gateway: objstore.Gateway, tmp_path: Path, server_factory: Callable[..., Server]
) -> None:
    from fleet_server.simulator import SimDevice
    from protos import device_pb2 as pb

    creds = gateway.credentials_file(tmp_path / "s3.credentials")
    server = server_factory(None, extra=[
        "--artifact-store", "s3://fleet/site-a", "--s3-endpoint", gateway.endpoint,
        "--s3-credentials", str(creds), "--s3-create-bucket",
    ])  # fmt: skip
    server.admin("models", "push", str(MODEL), "--name", "mnet", "--version", "1.0.0")
    listed = json.loads(server.admin("models", "list", "--json").stdout)
    sha = listed[0]["sha256"]
    store = s3_store(gateway, tmp_path / "reader", "fleet")
    store.settings = S3Settings(**{**store.settings.__dict__, "prefix": "site-a"})
    keys = {a for a, _, _ in store.entries()}
    assert sha in keys and len(keys) >= 2  # the model, its zstd copy and the smoke sample
    # The server's own cache gone (another host's replica): its stream reads the bucket.
    for cached in (server.data_dir / "artifacts").glob("*.tflite"):
        cached.unlink()
    device = SimDevice.enroll(server.sim_fleet(), server.enrollment_token(), "dev-1")
    try:
        received = b"".join(
            chunk.data
            for chunk in device.stub.DownloadArtifact(
                pb.DownloadRequest(artifact_id=sha, offset=0), timeout=30
            )
        )
    finally:
        device.close()
    assert received == MODEL.read_bytes()
    # Deleting the version deletes its objects (once past the grace a push in flight gets:
    # here the server's database is swept an hour later, through the bucket's listing).
    server.admin("models", "delete", "mnet", "1.0.0", "--force")
    from fleet_server.rollouts.retention import GRACE_S, Retention, Swept
    from fleet_server.storage.db import Database

    swept = Swept()
    db = Database(f"sqlite:///{server.data_dir / 'fleet.db'}")
    try:
        Retention(db, store).collect(swept, now=time.time() + GRACE_S + 1)
    finally:
        db.close()
    assert swept.files == len(keys) and not {a for a, _, _ in store.entries()} & keys


def dead_store(folder: Path) -> S3ArtifactStore:
    """A bucket behind an endpoint nobody listens on."""
    creds = folder / "creds"
    creds.write_text("[default]\naws_access_key_id = x\naws_secret_access_key = y\n")
    return S3ArtifactStore(
        S3Settings(bucket="gone", endpoint=f"http://127.0.0.1:{free_port()}",
                   credentials_file=creds),
        folder / "cache",
    )  # fmt: skip


def s3_server(
    gateway: objstore.Gateway, folder: Path, factory: Callable[..., Server], *extra: str
) -> Server:
    creds = gateway.credentials_file(folder / "s3.credentials")
    return factory(None, extra=[
        "--artifact-store", "s3://fleet-e2e", "--s3-endpoint", gateway.endpoint,
        "--s3-credentials", str(creds), "--s3-create-bucket", *extra,
    ])  # fmt: skip


HTTP_AGENT = "[updates]\nallow_http_downloads = true\n"  # the test's radosgw speaks plain HTTP


def test_agents_download_from_the_store_and_from_the_server_when_it_is_away(
    tmp_path: Path, server_factory: Callable[..., Server]
) -> None:
    with objstore.gateway_in(tmp_path / "ceph") as gateway:
        server = s3_server(gateway, tmp_path, server_factory)
        agent = make_agent(tmp_path, "dev-a", server, extra=HTTP_AGENT).start()
        try:
            server.admin("models", "push", str(MODEL), "--name", "mnet", "--version", "1.0.0",
                         "--deploy", "--no-compress")  # fmt: skip
            wait_for("1.0.0 from the store", lambda: active_version(agent, "mnet") == "1.0.0",
                     timeout=60)  # fmt: skip
            assert "from the object store" in agent.output()
            shown = json.loads(server.admin("devices", "show", "dev-a", "--json").stdout)
            assert not shown.get("downloads"), shown  # not one byte through the server
            # The next version is in the store; then the store goes away: it comes through the
            # server's stream instead.
            server.admin("models", "push", str(MODEL2), "--name", "mnet", "--version", "1.1.0",
                         "--no-compress")  # fmt: skip
            gateway.stop_gateway()
            server.admin("deploy", "mnet", "1.1.0")
            wait_for("1.1.0 from the server", lambda: active_version(agent, "mnet") == "1.1.0",
                     timeout=90)  # fmt: skip
            assert "trying the next source" in agent.output()
            shown = json.loads(server.admin("devices", "show", "dev-a", "--json").stdout)
            assert shown.get("downloads"), shown  # this one went through the server
        finally:
            agent.stop()


def test_a_hostile_mirror_only_slows_a_device_down(
    tmp_path: Path, server_factory: Callable[..., Server], gateway: objstore.Gateway
) -> None:
    from tests.test_http_fetch import Source

    def wrong(h: Any, start: int) -> None:
        body = b"\0" * MODEL.stat().st_size
        h.send_response(206 if start else 200)
        if start:
            h.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        h.send_header("Content-Length", str(len(body) - start))
        h.end_headers()
        h.wfile.write(body[start:])

    mirror = Source(wrong)
    try:
        template = mirror.url.replace("/artifacts/abc", "/{artifact}")
        server = s3_server(gateway, tmp_path, server_factory, "--artifact-mirror", template)
        agent = make_agent(tmp_path, "dev-m", server, extra=HTTP_AGENT).start()
        server.admin("models", "push", str(MODEL), "--name", "mnet", "--version", "1.0.0",
                     "--deploy", "--no-compress")  # fmt: skip
        wait_for("1.0.0 despite the mirror", lambda: active_version(agent, "mnet") == "1.0.0",
                 timeout=90)  # fmt: skip
        out = agent.output()
        assert mirror.requests, "the agent never asked the mirror"
        assert "did not verify; fetching it from the fleet server next" in out
        assert "FAILED" not in server.admin("devices", "show", "dev-m").stdout
        agent.stop()
    finally:
        mirror.close()


def test_an_agent_fails_over_to_another_replica_sharing_database_and_store(
    tmp_path: Path, gateway: objstore.Gateway, postgres_url: str,
    server_factory: Callable[..., Server],
) -> None:  # fmt: skip
    """Two replicas (127.0.0.1 and 127.0.0.2: one host, two addresses, the same ports), one
    PostgreSQL database, one bucket, one broker; the agent lists both. The first is killed
    (SIGKILL) after the agent enrolled through it: the next version reaches the agent through
    the second."""
    broker = start_mosquitto(tmp_path / "broker")
    creds = gateway.credentials_file(tmp_path / "s3.credentials")
    main, device = free_port(), free_port()
    store = ["--artifact-store", "s3://replicas", "--s3-endpoint", gateway.endpoint,
             "--s3-credentials", str(creds), "--s3-create-bucket"]  # fmt: skip

    def replica(host: str, data_dir: Path | None = None) -> Server:
        return server_factory(broker.url, folder=tmp_path / host, db_url=postgres_url,
                              data_dir=data_dir, extra=[
            *store, "--listen", f"{host}:{main}", "--device-listen", f"{host}:{device}",
            "--server-name", host.replace(".", "-"), "--tls-name", host,
        ])  # fmt: skip

    first = replica("127.0.0.1")
    second = replica("127.0.0.2", data_dir=first.data_dir)
    agent = make_agent(tmp_path, "dev-r", first, extra=HTTP_AGENT, timeout_s=2.0)
    text = agent.config.read_text()
    agent.config.write_text(
        text.replace(
            f'address = "{first.address}"', f'address = "127.0.0.1:{main}, 127.0.0.2:{main}"'
        )
    )
    agent.start()
    try:
        first.admin("models", "push", str(MODEL), "--name", "mnet", "--version", "1.0.0",
                    "--deploy", "--no-compress")  # fmt: skip
        wait_for("1.0.0", lambda: active_version(agent, "mnet") == "1.0.0", timeout=60)
        first.proc.stop(9)
        run_cli("edgefleet", "--server", f"127.0.0.2:{main}", "--data-dir", str(second.data_dir),
                "models", "push", str(MODEL2), "--name", "mnet", "--version", "1.1.0",
                "--deploy", "--no-compress")  # fmt: skip
        wait_for("1.1.0 through the second replica",
                 lambda: active_version(agent, "mnet") == "1.1.0", timeout=90)  # fmt: skip
        assert f"to 127.0.0.2:{device}" in agent.output()
    finally:
        agent.stop()
        broker.proc.stop()


def test_a_push_the_bucket_refused_leaves_nothing_in_the_cache(tmp_path: Path) -> None:
    # A dead endpoint: the push fails (TransientError) and nothing refers to its file. The
    # cache is not listed by retention (the bucket is the truth): a file left there by each
    # failed push would never go.
    dead = dead_store(tmp_path)
    data = blob(100_000, seed=7)
    with pytest.raises(TransientError):
        dead.put(chunks(data), max_bytes=len(data))
    source = tmp_path / "model.tflite"
    source.write_bytes(data)
    with pytest.raises(TransientError):
        dead.put_compressed(source)
    assert not list((tmp_path / "cache").iterdir())


def test_a_repushed_orphan_gets_the_grace_of_a_push_in_flight(
    gateway: objstore.Gateway, tmp_path: Path
) -> None:
    # A push that failed after its upload leaves an orphan object; the same bytes pushed again
    # an hour later find it in the bucket. Until the push records its release, retention must
    # see the object as young, as the folder store's new file is: not its first upload's age.
    from fleet_server.rollouts.retention import GRACE_S, Retention, Swept
    from fleet_server.storage.db import Database

    store = s3_store(gateway, tmp_path / "cache", "regrace")
    data = blob(50_000, seed=8)
    digest, _, _ = store.put(chunks(data), max_bytes=len(data))
    time.sleep(2)
    again = time.time()
    store.put(chunks(data), max_bytes=len(data))  # the retried push, its release not recorded
    db = Database(f"sqlite:///{tmp_path / 'fleet.db'}")
    db.create_schema()
    try:
        swept = Swept()
        Retention(db, store).collect(swept, now=again + GRACE_S - 1)
    finally:
        db.close()
    assert swept.files == 0 and digest in {a for a, _, _ in store.entries()}


def test_deleting_a_version_while_the_bucket_is_down_is_not_an_internal_error(
    tmp_path: Path,
) -> None:
    # The version's rows are gone once its transaction commits; its files are swept after. A
    # bucket away then leaves orphans for a later sweep: the deletion itself succeeded.
    from fleet_server.catalog.store import CatalogStore, ModelRow
    from fleet_server.rollouts.retention import Retention
    from fleet_server.storage.db import Database

    dead = dead_store(tmp_path)
    db = Database(f"sqlite:///{tmp_path / 'fleet.db'}")
    db.create_schema()
    try:
        CatalogStore(db).add_model(
            ModelRow("m", "1.0.0", "int8", 1, "ab" * 32, 10, False, b"x", int(time.time()))
        )
        swept = Retention(db, dead).delete("m", "1.0.0")
        assert swept.deleted == ["1.0.0"] and swept.files == 0
    finally:
        db.close()
