"""Release keys in a PKCS#11 token, against a real SoftHSM2 token made in a temporary folder:
the server signs with it, a real agent verifies and installs what it signed, and every way to
get the token wrong is one clear line, at start or at push."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest

from agent.updates.trust import pin_keylist, update_keylist
from agent.updates.verify import verify_manifest
from fleet_server.errors import DataDirError
from fleet_server.signing.keys import KeyStore, load_public_key
from fleet_server.signing.pkcs11 import open_key_store
from protos import manifest_pb2
from protos.envelope import keyid
from tests.harness import Agent, Server, run_cli, wait_for

pytestmark = pytest.mark.slow

SOFTHSM = Path("/usr/lib/softhsm/libsofthsm2.so")
PIN = "1234"


@dataclass(frozen=True)
class Token:
    """A SoftHSM2 token 'edgefleet' holding release-1 (Ed25519), rsa-1 and p256-1."""

    conf: Path
    pin_file: Path
    public_pem: Path  # release-1's public key, as pkcs11-tool exports it


def _run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, f"{' '.join(cmd)}:\n{done.stdout}\n{done.stderr}"


@pytest.fixture(scope="module")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Token]:
    """The token, in this process's environment (SOFTHSM2_CONF) and so in the servers'."""
    if not SOFTHSM.exists():
        pytest.fail(f"{SOFTHSM} is missing: apt install softhsm2 (.ci/run installs it)")
    if shutil.which("pkcs11-tool") is None:
        pytest.fail("pkcs11-tool is missing: apt install opensc (.ci/run installs it)")
    folder = tmp_path_factory.mktemp("softhsm")
    (folder / "tokens").mkdir()
    conf = folder / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {folder / 'tokens'}\nobjectstore.backend = file\n"
        "log.level = ERROR\n"
    )
    before = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    try:
        init = ["softhsm2-util", "--init-token", "--free", "--label", "edgefleet"]
        _run([*init, "--pin", PIN, "--so-pin", "5678"])
        tool = ["pkcs11-tool", "--module", str(SOFTHSM), "--token-label", "edgefleet"]
        login = [*tool, "--login", "--pin", PIN, "--keypairgen"]
        _run([*login, "--key-type", "EC:edwards25519", "--label", "release-1", "--id", "01"])
        _run([*login, "--key-type", "rsa:2048", "--label", "rsa-1", "--id", "02"])
        _run([*login, "--key-type", "EC:prime256v1", "--label", "p256-1", "--id", "03"])
        public_pem = folder / "release-1.pub"
        read = [*tool, "--read-object", "--type", "pubkey", "--label", "release-1"]
        _run([*read, "-o", str(public_pem)])
        pin_file = folder / "pin"
        pin_file.write_text(PIN + "\n")
        pin_file.chmod(0o600)
        yield Token(conf, pin_file, public_pem)
    finally:
        if before is None:
            os.environ.pop("SOFTHSM2_CONF", None)
        else:
            os.environ["SOFTHSM2_CONF"] = before


def options(token: Token, **given: object) -> SimpleNamespace:
    values: dict[str, object] = {
        "pkcs11_module": SOFTHSM,
        "pkcs11_token": "edgefleet",
        "pkcs11_key_label": "release-1",
        "pkcs11_pin_file": token.pin_file,
    }
    values.update(given)
    return SimpleNamespace(**values)


def a_manifest(now: float) -> manifest_pb2.Manifest:
    sha = "ab" * 32
    return manifest_pb2.Manifest(
        model_name="m",
        version="1.0.0",
        release_counter=1,
        sha256=sha,
        artifact_id=sha,
        size=100,
        created_unix=int(now),
        expires_unix=int(now) + 3600,
        fleet_id="fleet",
    )


def test_the_token_signs_manifests_a_device_verifies_also_after_its_session_closed(
    softhsm: Token, tmp_path: Path
) -> None:
    now = time.time()
    files = KeyStore.create(tmp_path / "keys", "fleet")
    pinned = pin_keylist(files.keylist_bytes(), fleet_id="fleet", now=now)
    with pytest.raises(DataDirError, match="is not a current release key of key list version 1"):
        open_key_store(tmp_path / "keys", options(softhsm), None)
    # What pkcs11-tool exports and what the server reads from CKA_EC_POINT are one key.
    public = load_public_key(softhsm.public_pem)
    files.publish_release_key(public)
    trust = update_keylist(pinned, files.keylist_bytes(), now=now)
    store = open_key_store(tmp_path / "keys", options(softhsm), None)
    try:
        for _ in range(2):
            envelope = store.manifest_signer().sign(a_manifest(now))
            assert [s.keyid for s in envelope.signatures] == [keyid(public)]
            verified = verify_manifest(
                envelope.SerializeToString(),
                trust=trust,
                fleet_id="fleet",
                now=now,
                installed={},
                max_artifact_bytes=1000,
            )
            assert verified.model_name == "m"
            store.close()  # the next signature opens a session again
    finally:
        store.close()


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"pkcs11_key_label": "nope"}, "no private key labelled 'nope' in PKCS#11 token "
         "'edgefleet' (private keys: 'p256-1', 'release-1', "),
        ({"pkcs11_key_label": "rsa-1"}, "key 'rsa-1' in PKCS#11 token 'edgefleet' is a RSA key; "
         "release keys must be Ed25519"),
        ({"pkcs11_key_label": "p256-1"}, "is a EC key; release keys must be Ed25519"),
        ({"pkcs11_token": "other"}, "no PKCS#11 token labelled 'other' in "
         f"{SOFTHSM} (tokens: 'edgefleet')"),
        ({"pkcs11_module": Path("/nonexistent/libhsm.so")}, "PKCS#11 module "
         "/nonexistent/libhsm.so does not exist; install the HSM's library"),
        ({"pkcs11_module": Path(__file__)}, f"cannot load PKCS#11 module {__file__}"),
        ({"pkcs11_pin_file": None}, "the PKCS#11 token needs a PIN: give --pkcs11-pin-file"),
        ({"pin": "0000"}, "wrong PIN for PKCS#11 token 'edgefleet' (CKR_PIN_INCORRECT)"),
    ],
)  # fmt: skip
def test_each_wrong_token_setting_is_named(
    softhsm: Token, tmp_path: Path, given: dict[str, object], message: str
) -> None:
    files = KeyStore.create(tmp_path / "keys", "fleet")
    files.publish_release_key(load_public_key(softhsm.public_pem))
    if "pin" in given:
        pin_file = tmp_path / "wrong-pin"
        pin_file.write_text(str(given.pop("pin")))
        pin_file.chmod(0o600)
        given["pkcs11_pin_file"] = pin_file
    with pytest.raises(DataDirError) as raised:
        open_key_store(tmp_path / "keys", options(softhsm, **given), None)
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_a_key_swapped_in_the_token_behind_the_servers_back_is_refused_not_used(
    softhsm: Token, tmp_path: Path
) -> None:
    tool = ["pkcs11-tool", "--module", str(SOFTHSM), "--token-label", "edgefleet", "--login"]
    tool += ["--pin", PIN]
    keypair = [*tool, "--keypairgen", "--key-type", "EC:edwards25519", "--label", "swapped-1"]
    _run([*keypair, "--id", "04"])
    files = KeyStore.create(tmp_path / "keys", "fleet")
    first = tmp_path / "first.pub"
    _run([*tool, "--read-object", "--type", "pubkey", "--label", "swapped-1", "-o", str(first)])
    files.publish_release_key(load_public_key(first))
    store = open_key_store(tmp_path / "keys", options(softhsm, pkcs11_key_label="swapped-1"), None)
    try:
        signer = store.manifest_signer()
        store.close()  # as if the HSM restarted: the next signature opens a new session
        for kind in ("privkey", "pubkey"):
            _run([*tool, "--delete-object", "--type", kind, "--label", "swapped-1"])
        _run([*keypair, "--id", "05"])
        with pytest.raises(DataDirError, match=r"changed since the server started \(key id "):
            signer.sign(a_manifest(time.time()))
    finally:
        store.close()


def installed(server: Server, device: str, model: str, version: str) -> bool:
    for d in server.devices():
        for m in d.get("models", []) if d["device_id"] == device else []:
            if (m["model_name"], m["version"], m["state"]) == (model, version, "INSTALLED"):
                return True
    return False


def one_error_line(stderr: str, prog: str) -> str:
    """The error line a command failed with; the rest may be log lines, never a traceback."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith(f"{prog}: error: ")]
    assert len(lines) == 1, stderr
    return lines[0]


def test_a_server_signing_in_the_token_gets_a_release_installed_on_a_real_agent(
    softhsm: Token,
    tmp_path: Path,
    server_factory: Callable[..., Server],
    agent_factory: Callable[..., Agent],
    color_models: Path,
) -> None:
    data = tmp_path / "server"
    run_cli("edgefleet-server", "init", "--data-dir", str(data))
    config = tmp_path / "server.toml"
    config.write_text(
        f'[server]\npkcs11_module = "{SOFTHSM}"\npkcs11_token = "edgefleet"\n'
        f'pkcs11_key_label = "release-1"\npkcs11_pin_file = "{softhsm.pin_file}"\n'
    )
    run = ["edgefleet-server", "run", "--data-dir", str(data), "--listen", "127.0.0.1:0"]
    run += ["--mqtt-listen", "127.0.0.1:0", "--config", str(config)]

    # Not yet in the key list: the server refuses to start and says how to publish the key.
    refused = run_cli(*run, check=False)
    assert refused.returncode == 1
    how = (
        "is not a current release key of key list version 1; publish it with 'edgefleet keys "
        "rotate --release-pub FILE'"
    )
    assert how in one_error_line(refused.stderr, "edgefleet-server")
    root_keys = data.with_name(data.name + ".root-keys")  # where init wrote them
    published = run_cli(
        "edgefleet", "--data-dir", str(data), "keys", "rotate", "--release-pub",
        str(softhsm.public_pem), "--root-key-dir", str(root_keys),
    )  # fmt: skip
    assert "published key list version 2" in published.stdout

    # A wrong PIN or key label stops it at start, one line each.
    wrong_pin = tmp_path / "wrong-pin"
    wrong_pin.write_text("9999")
    wrong_pin.chmod(0o600)
    for extra, message in (
        (["--pkcs11-pin-file", str(wrong_pin)], "wrong PIN for PKCS#11 token 'edgefleet'"),
        (["--pkcs11-key-label", "release-2"], "no private key labelled 'release-2'"),
    ):
        refused = run_cli(*run, *extra, check=False)
        assert refused.returncode == 1
        assert message in one_error_line(refused.stderr, "edgefleet-server")

    server = server_factory(None, data_dir=data, extra=["--config", str(config)])
    token_keyid = keyid(load_public_key(softhsm.public_pem))
    assert f"PKCS#11 token 'edgefleet', key id {token_keyid}" in server.proc.output()
    model = str(color_models / "color_float.tflite")
    server.admin("models", "push", model, "--name", "colors", "--version", "1.0.0", "--deploy")
    agent_factory("dev-h", server)
    # The agent pinned key list 2 at enrollment: only the token's key signs for it.
    wait_for("dev-h to install colors 1.0.0", lambda: installed(server, "dev-h", "colors", "1.0.0"))
    assert not (data / "keys" / f"release-{token_keyid}.key").exists()

    # A routine rotation to a key file leaves the token's key out: the push fails, one line.
    server.admin("keys", "rotate", "--root-key-dir", str(root_keys))
    push = server.admin(
        "models", "push", model, "--name", "colors", "--version", "1.1.0", check=False
    )
    assert push.returncode == 1
    assert "is not a current release key of key list version 3" in one_error_line(
        push.stderr, "edgefleet"
    )
