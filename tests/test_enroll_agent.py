"""The agent's side of kill-safe enrollment, without processes: the key and CSR of the
enrollment in progress outlive a kill and are reused, the retry timing stays within its bounds,
and the enrollment settings name everything that is missing."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st

from agent.config import AgentConfig, ServerSection
from agent.daemon import ENROLL_RETRY_MAX_S, enroll_retry_delay
from agent.errors import ConfigError
from agent.identity import clear_pending_enrollment, pending_enrollment


def _public(key_pem: bytes) -> bytes:
    key = serialization.load_pem_private_key(key_pem, password=None)
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _csr(csr_pem: bytes) -> tuple[str, bytes]:
    csr = x509.load_pem_x509_csr(csr_pem)
    assert csr.is_signature_valid
    name = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    der = csr.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return str(name), der


def test_the_enrollment_in_progress_is_on_disk_first_and_reused(tmp_path: Path) -> None:
    key_pem, csr_pem = pending_enrollment(tmp_path, "cam")
    folder = tmp_path / "enrollment"
    assert folder.stat().st_mode & 0o777 == 0o700
    for name in ("device.key", "device.csr"):
        assert (folder / name).stat().st_mode & 0o777 == 0o600
    assert (folder / "device.key").read_bytes() == key_pem
    assert _csr(csr_pem) == ("cam", _public(key_pem))
    # A retry (after a kill: nothing but the files is left) asks with the same key and CSR.
    assert pending_enrollment(tmp_path, "cam") == (key_pem, csr_pem)
    # A new name keeps the key (the server knows the request by its key).
    again_key, renamed = pending_enrollment(tmp_path, "cam-2")
    assert again_key == key_pem and _csr(renamed) == ("cam-2", _public(key_pem))
    # A CSR lost before it was written is made again for the same key.
    (folder / "device.csr").unlink()
    assert _csr(pending_enrollment(tmp_path, "cam")[1]) == ("cam", _public(key_pem))
    (folder / ".device.key.x1y2.tmp").write_bytes(b"what a kill in atomic_write leaves")
    clear_pending_enrollment(tmp_path)
    assert not folder.exists()
    clear_pending_enrollment(tmp_path)  # nothing to clear: no error
    assert pending_enrollment(tmp_path, "cam")[0] != key_pem  # a new enrollment, a new key


def test_a_damaged_key_is_replaced_not_fatal(tmp_path: Path) -> None:
    key_pem, _ = pending_enrollment(tmp_path, "cam")
    (tmp_path / "enrollment" / "device.key").write_bytes(b"-----BEGIN nonsense")
    new_key, csr_pem = pending_enrollment(tmp_path, "cam")
    assert new_key != key_pem and _csr(csr_pem) == ("cam", _public(new_key))


@given(st.integers(min_value=1, max_value=10_000), st.booleans())
def test_retries_wait_within_bounds(attempt: int, transient: bool) -> None:
    wait = enroll_retry_delay(attempt, transient=transient)
    assert (1.0 if transient else 15.0) <= wait <= ENROLL_RETRY_MAX_S


def test_the_enrollment_settings_name_everything_missing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        AgentConfig().enrollment_inputs()
    assert "no enrollment token is configured" in str(info.value)
    assert "no fleet CA" in str(info.value)
    missing = AgentConfig(
        server=ServerSection(enrollment_token="t", ca_file=tmp_path / "ca.crt")  # noqa: S106
    )
    with pytest.raises(ConfigError, match=r"server.ca_file .*ca.crt does not exist"):
        missing.enrollment_inputs()
    (tmp_path / "ca.crt").write_bytes(b"the CA")
    assert missing.enrollment_inputs() == ("t", b"the CA")
