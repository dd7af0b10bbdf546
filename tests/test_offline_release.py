"""Issue 21 item 1 with the release keys kept offline: after a rotation and as expiry nears, the
server lists what needs signing (``manifest pending``), an admin signs the batch where the keys
are (``manifest sign``) and attaches it (``manifest attach``); a running device keeps its model
throughout, downloads nothing again and refuses nothing. What is not the manifest in use, or
not a re-issue of it, or under-signed, is refused."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from protos import manifest_pb2
from tests.harness import DATA, Agent, Server, free_port, run_cli, wait_for
from tests.test_fleet_e2e import model_state, wait_state

pytestmark = pytest.mark.slow


def offline_key(folder: Path, name: str) -> tuple[Path, Path]:
    """A release key made away from the server: its private file and its public PEM."""
    folder.mkdir(exist_ok=True, mode=0o700)
    key = folder / f"{name}.key"
    run_cli("edgefleet", "keys", "create", "--out", str(key))
    private = serialization.load_pem_private_key(key.read_bytes(), password=None)
    pub = folder / f"{name}.pub"
    pub.write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return key, pub


def pending(server: Server, out: Path | None = None) -> str:
    args = ["manifest", "pending"] + (["--out", str(out)] if out else [])
    return server.admin(*args).stdout


def manifest_expiry(server: Server) -> float:
    status = json.loads(server.admin("keys", "status", "--json", check=False).stdout)
    (item,) = [i for i in status["items"] if i["kind"] == "manifest"]
    return float(item["expires_unix"])


def healthy(server: Server, agent: Agent) -> None:
    """The device runs digits 1.0.0, the server says so, and it refused nothing."""
    state = model_state(server, agent.name, "digits") or {}
    assert (state.get("version"), state.get("state")) == ("1.0.0", "INSTALLED"), state
    assert not [line for line in agent.output().splitlines() if "refusing" in line], agent.output()
    assert agent.output().count("updating ") == 1  # nothing downloaded again


def test_offline_release_keys_sign_what_a_rotation_and_an_expiry_need_in_one_batch(
    broker_url: str,
    server_factory: Callable[..., Server],
    agent_factory: Callable[..., Agent],
    tmp_path: Path,
) -> None:
    ports = ["--listen", f"127.0.0.1:{free_port()}", "--device-listen", f"127.0.0.1:{free_port()}"]
    lifetime = ["--manifest-lifetime-days", "20", "--renew-ahead-days", "10"]
    server = server_factory(broker_url, extra=[*ports, *lifetime])
    server.admin(
        "models", "push", str(DATA / "digits_local_float.tflite"), "--name", "digits",
        "--version", "1.0.0", "--deploy",
    )  # fmt: skip
    agent = agent_factory("dev-o", server)
    wait_state(server, agent.name, "digits", "1.0.0", "INSTALLED")
    assert "no manifest in use needs signatures" in pending(server)

    # The admins take the release keys off the server: the first one's file goes, and the
    # rotation publishes a key made elsewhere.
    vault = tmp_path / "vault"
    for path in (server.data_dir / "keys").glob("release-*.key"):
        path.unlink()
    second, second_pub = offline_key(vault, "second")
    rotated = server.admin(
        "keys", "rotate", "--root-key-dir", str(server.root_key_dir),
        "--release-pub", str(second_pub), "--overlap-days", "0.0002",
    ).stdout  # fmt: skip
    assert "is not on this server" in rotated, rotated
    assert "1 manifest(s) in use wait for it: digits 1.0.0 (" in rotated, rotated
    overlap_ends = time.time() + 0.0002 * 86400
    listing = server.admin("keys", "list").stdout
    assert "(replaced: verifies only, signs nothing)  no key file here" in listing, listing
    batch = tmp_path / "batch"
    listed = pending(server, batch)
    assert "1 manifest(s) in use need 1 signature(s)" in listed, listed
    assert "digits 1.0.0 (" in listed and "add signatures" in listed, listed
    (unsigned,) = batch.glob("*.manifest")

    # An unsigned file and one signed by a key the list does not name are refused.
    refused = server.admin("manifest", "attach", str(unsigned), check=False)
    assert refused.returncode != 0 and "not signed" in refused.stderr, refused.stderr
    stranger, _ = offline_key(vault, "stranger")
    run_cli("edgefleet", "manifest", "sign", str(unsigned), "--key", str(stranger),
            "--out", str(tmp_path / "stranger.signed"))  # fmt: skip
    refused = server.admin("manifest", "attach", str(tmp_path / "stranger.signed"), check=False)
    assert refused.returncode != 0 and "0 valid release-key signature(s)" in refused.stderr

    signed = run_cli("edgefleet", "manifest", "sign", *map(str, batch.glob("*.manifest")),
                     "--key", str(second)).stdout  # fmt: skip
    assert "signed digits 1.0.0" in signed
    attached = server.admin("manifest", "attach", *map(str, batch.glob("*.signed"))).stdout
    assert "attached" in attached and "digits 1.0.0" in attached
    assert "no manifest in use needs signatures" in pending(server)
    audit = json.loads(server.admin("audit", "--json").stdout)
    assert [e for e in audit if e["action"] == "AttachSignatures" and e["ok"]]
    wait_for(
        "the device to adopt key list 2",
        lambda: "key list rotated to version 2" in agent.output(),
    )

    # Ten days before expiry the manifest is due for a re-issue; no release key is online, so
    # the restarted server (60-day manifests now) lists it instead of signing.
    server.proc.stop()
    server = server_factory(
        broker_url,
        folder=tmp_path / "restarted",
        data_dir=server.data_dir,
        extra=[*ports, "--manifest-lifetime-days", "60"],
    )
    assert manifest_expiry(server) < time.time() + 21 * 86400
    renew = tmp_path / "renew"
    listed = pending(server, renew)
    assert "re-issue" in listed, listed
    (reissue,) = renew.glob("*.manifest")
    run_cli("edgefleet", "manifest", "sign", str(reissue), "--key", str(second))
    # A re-issue that changes the artifact is a new release in disguise: refused.
    forged = manifest_pb2.Manifest.FromString(reissue.read_bytes())
    forged.sha256 = "0" * 64
    (tmp_path / "forged.manifest").write_bytes(forged.SerializeToString())
    run_cli("edgefleet", "manifest", "sign", str(tmp_path / "forged.manifest"), "--key",
            str(second))  # fmt: skip
    refused = server.admin("manifest", "attach", str(tmp_path / "forged.signed"), check=False)
    assert refused.returncode != 0 and "nor a re-issue" in refused.stderr, refused.stderr
    # A batch attaches what it can and says what it could not (exit 1).
    both = server.admin(
        "manifest", "attach", str(tmp_path / "forged.signed"), str(reissue.with_suffix(".signed")),
        check=False,
    )  # fmt: skip
    assert both.returncode == 1 and "1 of 2 file(s) not attached" in both.stderr
    assert "attached" in both.stdout
    assert manifest_expiry(server) > time.time() + 59 * 86400
    # Attaching the re-issue again, or the older signed file, would shorten nothing: refused.
    again = server.admin("manifest", "attach", str(reissue.with_suffix(".signed")), check=False)
    assert again.returncode == 0  # the same payload: its signatures merge, nothing changes
    older = server.admin("manifest", "attach", str(unsigned.with_suffix(".signed")), check=False)
    assert older.returncode != 0 and "expires no later" in older.stderr, older.stderr

    # Once the first key's overlap has passed, a third rotation leaves it out: the device then
    # verifies digits with the second key's signature only, which it has from the attach.
    time.sleep(max(0.0, overlap_ends - time.time()) + 1)
    _, third_pub = offline_key(vault, "third")
    server.admin(
        "keys", "rotate", "--root-key-dir", str(server.root_key_dir),
        "--release-pub", str(third_pub),
    )  # fmt: skip
    wait_for(
        "the device to adopt key list 3",
        lambda: "key list rotated to version 3" in agent.output(),
    )
    assert "add signatures" in pending(server)  # the third key's, for its own rotation
    time.sleep(3)  # a few more check-ins
    healthy(server, agent)


def test_pending_files_of_releases_whose_names_clean_up_alike_do_not_overwrite_each_other(
    server_factory: Callable[..., Server], tmp_path: Path
) -> None:
    server = server_factory(None)
    digits = str(DATA / "digits_local_float.tflite")
    server.admin("models", "push", digits, "--name", "m-1.0.0", "--version", "2.0.0", "--deploy")
    server.admin("models", "push", digits, "--name", "m", "--version", "1.0.0-2.0.0", "--deploy")
    for path in (server.data_dir / "keys").glob("release-*.key"):
        path.unlink()
    _, pub = offline_key(tmp_path / "vault", "next")
    server.admin("keys", "rotate", "--root-key-dir", str(server.root_key_dir),
                 "--release-pub", str(pub))  # fmt: skip
    listed = pending(server, tmp_path / "batch")
    assert "2 manifest(s) in use" in listed, listed
    written = sorted(p.name for p in (tmp_path / "batch").glob("*.manifest"))
    assert len(written) == 2, written
    payloads = {manifest_pb2.Manifest.FromString(p.read_bytes()).model_name
                for p in (tmp_path / "batch").glob("*.manifest")}  # fmt: skip
    assert payloads == {"m-1.0.0", "m"}
