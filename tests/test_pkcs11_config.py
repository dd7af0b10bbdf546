"""Release keys in a PKCS#11 token, the parts that need no token: the PIN file and systemd
credential, the options that go together, public key formats, and publishing a token's key in
the key list (tests/test_pkcs11.py signs with a real SoftHSM2 token)."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from types import SimpleNamespace

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed448 import Ed448PrivateKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.updates.trust import pin_keylist, update_keylist
from fleet_server.admin_cli import main as admin_main
from fleet_server.errors import DataDirError
from fleet_server.signing.keys import KeyStore, load_public_key
from fleet_server.signing.pkcs11 import PIN_CREDENTIAL, TokenSettings, ed25519_public, read_pin

RAW = bytes(range(32))


def pin_file(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "pin"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_the_pin_comes_from_its_file_without_the_newline(tmp_path: Path) -> None:
    assert read_pin(pin_file(tmp_path, "1234\n"), None) == "1234"
    assert read_pin(pin_file(tmp_path, "1234", 0o640), None) == "1234"  # the service's group


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o602])
def test_a_pin_file_other_users_can_read_or_write_is_refused(tmp_path: Path, mode: int) -> None:
    path = pin_file(tmp_path, "1234", mode)
    with pytest.raises(DataDirError, match=rf"open to other users \(mode 0{mode:o}\); chmod 600"):
        read_pin(path, None)


def test_an_empty_missing_or_huge_pin_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataDirError, match="must hold 1-256 bytes"):
        read_pin(pin_file(tmp_path, "\n"), None)
    with pytest.raises(DataDirError, match="must hold 1-256 bytes"):
        read_pin(pin_file(tmp_path, "1" * 257), None)
    with pytest.raises(DataDirError, match=r"cannot read the PIN file .*nope: No such file"):
        read_pin(tmp_path / "nope", None)


def test_the_pin_comes_from_systemd_credentials_when_no_file_is_given(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    with pytest.raises(DataDirError, match=f"give --pkcs11-pin-file .* {PIN_CREDENTIAL}"):
        read_pin(None, str(creds))
    (creds / PIN_CREDENTIAL).write_text("4321\n")
    (creds / PIN_CREDENTIAL).chmod(0o400)
    assert read_pin(None, str(creds)) == "4321"
    assert read_pin(pin_file(tmp_path, "1234"), str(creds)) == "1234"  # the option wins


def options(**given: object) -> SimpleNamespace:
    values: dict[str, object] = {
        "pkcs11_module": None,
        "pkcs11_token": None,
        "pkcs11_key_label": None,
        "pkcs11_pin_file": None,
    }
    values.update(given)
    return SimpleNamespace(**values)


def test_the_token_options_go_together() -> None:
    assert TokenSettings.from_options(options()) is None  # key files, as before
    full = TokenSettings.from_options(
        options(pkcs11_module=Path("/m.so"), pkcs11_token="t", pkcs11_key_label="k")  # noqa: S106 - a label
    )
    assert full == TokenSettings(Path("/m.so"), "t", "k", None)
    with pytest.raises(DataDirError, match="missing: --pkcs11-token, --pkcs11-key-label"):
        TokenSettings.from_options(options(pkcs11_module=Path("/m.so")))
    with pytest.raises(DataDirError, match="missing: --pkcs11-module"):
        TokenSettings.from_options(options(pkcs11_pin_file=Path("/pin")))
    with pytest.raises(DataDirError, match=r"--pkcs11-token 'x+' is over 32 bytes"):
        TokenSettings.from_options(
            options(pkcs11_module=Path("/m.so"), pkcs11_token="x" * 33, pkcs11_key_label="k")
        )


def test_ec_points_of_both_encodings_give_the_raw_key_and_others_none() -> None:
    assert ed25519_public(b"\x04\x20" + RAW) == RAW  # DER OCTET STRING (SoftHSM2, OpenSC)
    assert ed25519_public(RAW) == RAW  # bare, as some modules give it
    assert ed25519_public(b"\x04\x39" + bytes(57)) is None  # Ed448
    assert ed25519_public(b"\x04\x41\x04" + bytes(64)) is None  # an uncompressed P-256 point
    assert ed25519_public(b"\x03\x20" + RAW) is None


def write_public(path: Path, key: object, encoding: serialization.Encoding) -> Path:
    public = key.public_key()  # type: ignore[attr-defined]
    path.write_bytes(public.public_bytes(encoding, serialization.PublicFormat.SubjectPublicKeyInfo))
    return path


def test_public_key_files_in_pem_or_der_and_only_ed25519(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    for encoding in (serialization.Encoding.PEM, serialization.Encoding.DER):
        assert load_public_key(write_public(tmp_path / "pub", key, encoding)) == raw
    p256 = write_public(tmp_path / "p256", ec.generate_private_key(ec.SECP256R1()), encoding)
    with pytest.raises(
        DataDirError, match="holds a ECDSA secp256r1 public key; release keys must be Ed25519"
    ):
        load_public_key(p256)
    ed448 = write_public(tmp_path / "ed448", Ed448PrivateKey.generate(), encoding)
    with pytest.raises(DataDirError, match="holds a Ed448 public key"):
        load_public_key(ed448)
    (tmp_path / "junk").write_bytes(b"junk")
    with pytest.raises(DataDirError, match="junk is not a PEM or DER public key"):
        load_public_key(tmp_path / "junk")


def test_a_published_token_key_is_the_only_release_key_and_devices_adopt_the_list(
    tmp_path: Path,
) -> None:
    store = KeyStore.create(tmp_path / "keys", "fleet")
    pinned = pin_keylist(store.keylist_bytes(), fleet_id="fleet", now=1_790_000_000)
    keylist = store.publish_release_key(RAW)
    assert keylist.version == 2 and keylist.release_keys[0].public_key == RAW
    # The file key it replaced stays for the overlap, with an expiry: it verifies, never signs.
    assert all(k.expires_unix for k in keylist.release_keys[1:])
    assert not (tmp_path / "keys" / f"release-{keylist.release_keys[0].keyid}.key").exists()
    adopted = update_keylist(pinned, store.keylist_bytes(), now=1_790_000_000)
    assert adopted.version == 2
    # Without the token the server has no private half of it: a push says so.
    with pytest.raises(DataDirError, match="0 usable release key"):
        store.manifest_signer()
    with pytest.raises(DataDirError, match="has 32 bytes, not 31"):
        store.publish_release_key(RAW[:31])


def test_keys_rotate_takes_a_release_public_key_and_list_shows_it_keyless(tmp_path: Path) -> None:
    KeyStore.create(tmp_path / "keys", "fleet")
    key = Ed25519PrivateKey.generate()
    pub = write_public(tmp_path / "pub.pem", key, serialization.Encoding.PEM)
    rotate = ["--data-dir", str(tmp_path), "keys", "rotate", "--release-pub"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert admin_main([*rotate, str(pub)]) == 0
        assert admin_main(["--data-dir", str(tmp_path), "keys", "list"]) == 0
    text = out.getvalue()
    assert "published key list version 2" in text
    assert "no key file here (in a token, or offline)" in text
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = admin_main([*rotate, str(tmp_path / "x")])
    assert code == 1 and "edgefleet: error: cannot read" in err.getvalue()
