"""Release signing with a key in a PKCS#11 token: an HSM, a YubiHSM 2, a cloud HSM's library.

The server loads the token's PKCS#11 module, logs in once at start, checks that the key is an
Ed25519 key that signs with CKM_EDDSA (a self-test signature over a PAE no manifest can share),
and keeps that session. A session the token drops (an HSM restart, a network HSM's reconnect) is
reopened once per signature. The PIN comes from a file others cannot read, or from systemd's
credential ``edgefleet-pkcs11-pin`` in ``$CREDENTIALS_DIRECTORY`` (``LoadCredential=``).

Ed25519 only: devices accept 32-byte release keys (``agent/updates/trust.py``); see
docs/security.md for the HSMs that offer CKM_EDDSA and why ECDSA waits.
"""

from __future__ import annotations

import logging
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fleet_server.errors import DataDirError, TransientError
from fleet_server.signing.keys import KeyStore
from protos.envelope import keyid, pae

if TYPE_CHECKING:
    from pkcs11 import Session

__all__ = [
    "PIN_CREDENTIAL",
    "TokenKey",
    "TokenOptions",
    "TokenSettings",
    "ed25519_public",
    "open_key_store",
    "read_pin",
]

log = logging.getLogger(__name__)

PIN_CREDENTIAL = "edgefleet-pkcs11-pin"
_MAX_PIN_BYTES = 256
_MAX_TOKEN_LABEL = 32  # CK_TOKEN_INFO.label is 32 bytes
_MAX_KEY_LABEL = 256
# Signed once at start to prove the key and the mechanism work; no manifest or key list has
# this payload type, so the signature can never pass for one (PAE binds the type).
_SELFTEST = pae("application/vnd.edgefleet.pkcs11-selftest", b"")


class TokenOptions(Protocol):
    """The ``run`` options that name a token (``Settings`` has them)."""

    @property
    def pkcs11_module(self) -> Path | None: ...
    @property
    def pkcs11_token(self) -> str | None: ...
    @property
    def pkcs11_key_label(self) -> str | None: ...
    @property
    def pkcs11_pin_file(self) -> Path | None: ...


@dataclass(frozen=True)
class TokenSettings:
    """Where the release key is: a PKCS#11 module, a token label, a key label, the PIN."""

    module: Path
    token_label: str
    key_label: str
    pin_file: Path | None = None

    @classmethod
    def from_options(cls, options: TokenOptions) -> TokenSettings | None:
        """The settings, or None when no ``--pkcs11-*`` option is given.

        Raises:
            DataDirError: some but not all of module, token and key label; a label too long.
        """
        given = {
            "--pkcs11-module": options.pkcs11_module,
            "--pkcs11-token": options.pkcs11_token,
            "--pkcs11-key-label": options.pkcs11_key_label,
        }
        if not any(given.values()) and options.pkcs11_pin_file is None:
            return None
        missing = [name for name, value in given.items() if not value]
        if missing:
            raise DataDirError(
                "--pkcs11-module, --pkcs11-token and --pkcs11-key-label go together "
                f"(pkcs11_* in server.toml); missing: {', '.join(missing)}"
            )
        token, key = str(options.pkcs11_token), str(options.pkcs11_key_label)
        if len(token.encode()) > _MAX_TOKEN_LABEL:
            raise DataDirError(f"--pkcs11-token {token!r} is over {_MAX_TOKEN_LABEL} bytes")
        if len(key.encode()) > _MAX_KEY_LABEL:
            raise DataDirError(f"--pkcs11-key-label is over {_MAX_KEY_LABEL} bytes")
        return cls(Path(str(options.pkcs11_module)), token, key, options.pkcs11_pin_file)

    def describe(self) -> str:
        return f"key {self.key_label!r} in PKCS#11 token {self.token_label!r}"


def read_pin(pin_file: Path | None, credentials_dir: str | None) -> str:
    """The user PIN from ``pin_file``, else from ``$CREDENTIALS_DIRECTORY/edgefleet-pkcs11-pin``.

    A PIN file others can read is refused (systemd's credentials are 0400 already).

    Raises:
        DataDirError: no PIN given, unreadable, readable by others, empty or too long.
    """
    if pin_file is None:
        if credentials_dir and (Path(credentials_dir) / PIN_CREDENTIAL).is_file():
            pin_file = Path(credentials_dir) / PIN_CREDENTIAL
        else:
            raise DataDirError(
                "the PKCS#11 token needs a PIN: give --pkcs11-pin-file (pkcs11_pin_file) or "
                f"the systemd credential {PIN_CREDENTIAL} (LoadCredential=)"
            )
    try:
        mode = pin_file.stat().st_mode
        data = pin_file.read_bytes()
    except OSError as exc:
        raise DataDirError(f"cannot read the PIN file {pin_file}: {exc.strerror}") from exc
    if mode & (stat.S_IROTH | stat.S_IWOTH):
        raise DataDirError(
            f"the PIN file {pin_file} is open to other users (mode {stat.S_IMODE(mode):04o}); "
            f"chmod 600 {pin_file}"
        )
    pin = data.strip()
    if not pin or len(pin) > _MAX_PIN_BYTES:
        raise DataDirError(f"the PIN file {pin_file} must hold 1-{_MAX_PIN_BYTES} bytes")
    try:
        return pin.decode()
    except UnicodeDecodeError as exc:
        raise DataDirError(f"the PIN file {pin_file} is not UTF-8 text") from exc


def ed25519_public(ec_point: bytes) -> bytes | None:
    """The raw 32-byte Ed25519 public key in a CKA_EC_POINT value, or None if it holds none.

    PKCS#11 3.0 asks for a DER OCTET STRING (``04 20`` + 32 bytes; SoftHSM2, OpenSC); some
    modules give the 32 bytes bare. Ed448 (57 bytes) and anything else is None.
    """
    if len(ec_point) == 34 and ec_point[:2] == b"\x04\x20":
        return ec_point[2:]
    if len(ec_point) == 32:
        return ec_point
    return None


class TokenKey:
    """An Ed25519 release key in a PKCS#11 token: its raw public key and raw signatures.

    Thread-safe; one session, reopened when the token dropped it.
    """

    def __init__(self, settings: TokenSettings, pin: str) -> None:
        self.settings = settings
        self._pin = pin
        self._lock = threading.Lock()
        self._session: Session | None = None
        self._key: Any = None
        self._public = b""
        self._fatal = ""  # a refused PIN: never retried, a token locks after a few

    @property
    def public_raw(self) -> bytes:
        """The raw 32-byte public key (after :meth:`connect`)."""
        return self._public

    @property
    def keyid(self) -> str:
        return keyid(self._public)

    def connect(self) -> None:
        """Load the module, log in, find the key and check that it signs Ed25519.

        Raises:
            DataDirError: the module is missing, no such token, a wrong or locked PIN, no such
                key, not an Ed25519 key, or the module cannot sign with CKM_EDDSA.
        """
        with self._lock:
            self._connect()

    def sign(self, message: bytes) -> bytes:
        """A raw 64-byte Ed25519 signature over ``message`` (CKM_EDDSA).

        Raises:
            TransientError: the token cannot sign now, also after reopening the session.
            DataDirError: reopening it failed for good (a PIN the token now refuses).
        """
        import pkcs11  # noqa: PLC0415 - the server extra; only loaded when a token is configured

        with self._lock:
            for attempt in (1, 2):
                try:
                    if self._session is None:
                        self._connect()
                    return bytes(self._key.sign(message, mechanism=pkcs11.Mechanism.EDDSA))
                except pkcs11.PKCS11Error as exc:
                    self._close()
                    if attempt == 2:
                        raise TransientError(
                            f"{self.settings.describe()} cannot sign now ({_name(exc)}); "
                            "nothing was stored: push again once the token is back"
                        ) from exc
                    log.warning(
                        "%s failed to sign (%s); reopening the session",
                        self.settings.describe(),
                        _name(exc),
                    )
                except DataDirError as exc:
                    if self._fatal:
                        raise
                    raise TransientError(f"cannot reach the token again: {exc}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        """Log out and close the session (the next :meth:`sign` opens one again)."""
        with self._lock:
            self._close()

    def _close(self) -> None:
        session, self._session, self._key = self._session, None, None
        if session is not None:
            try:
                session.close()
            except Exception as exc:  # noqa: BLE001 - a dead session may fail to close; it is gone
                log.debug("closing the PKCS#11 session: %s", exc)

    def _connect(self) -> None:
        if self._fatal:
            raise DataDirError(self._fatal)
        try:
            import pkcs11  # noqa: PLC0415 - see sign()
        except ImportError as exc:
            raise DataDirError(
                "python-pkcs11 is missing; install the server with: pip install 'edgefleet[server]'"
            ) from exc
        s = self.settings
        if not s.module.is_file():
            raise DataDirError(
                f"PKCS#11 module {s.module} does not exist; install the HSM's library or fix "
                "--pkcs11-module (SoftHSM2: apt install softhsm2, /usr/lib/softhsm/libsofthsm2.so)"
            )
        try:
            lib = pkcs11.lib(str(s.module))
        except pkcs11.PKCS11Error as exc:
            raise DataDirError(f"cannot load PKCS#11 module {s.module}: {exc}") from exc
        try:
            token = lib.get_token(token_label=s.token_label)
        except pkcs11.NoSuchToken as exc:
            labels = sorted(t.label for t in lib.get_tokens() if t.label)
            raise DataDirError(
                f"no PKCS#11 token labelled {s.token_label!r} in {s.module} "
                f"(tokens: {', '.join(map(repr, labels)) or 'none'})"
            ) from exc
        except pkcs11.PKCS11Error as exc:
            raise DataDirError(f"token {s.token_label!r} in {s.module}: {_name(exc)}") from exc
        try:
            session = token.open(user_pin=self._pin)
        except pkcs11.UserAlreadyLoggedIn:
            # Login is per process and token: another session of this process (one the token
            # has not dropped yet) logged in already, so a plain session is the user's too.
            session = token.open()
        except pkcs11.PinIncorrect as exc:
            self._fatal = (
                f"wrong PIN for PKCS#11 token {s.token_label!r} (CKR_PIN_INCORRECT); fix the PIN "
                "file and restart: the token locks after a few wrong PINs"
            )
            raise DataDirError(self._fatal) from exc
        except (pkcs11.PinLocked, pkcs11.PinExpired) as exc:
            self._fatal = (
                f"the PIN of PKCS#11 token {s.token_label!r} is {_name(exc)}; "
                "its security officer must reset it"
            )
            raise DataDirError(self._fatal) from exc
        except pkcs11.PKCS11Error as exc:
            raise DataDirError(
                f"cannot log in to PKCS#11 token {s.token_label!r}: {_name(exc)}"
            ) from exc
        try:
            key, public = _find_key(session, s)
        except BaseException:
            session.close()
            raise
        if self._public and public != self._public:
            session.close()
            self._fatal = (
                f"the {s.describe()} changed since the server started (key id {self.keyid}, "
                f"now {keyid(public)}); restart the server"
            )
            raise DataDirError(self._fatal)
        self._key, self._public, self._session = key, public, session

    def __repr__(self) -> str:  # never the PIN
        return f"TokenKey({self.settings.describe()}, keyid={self.keyid})"


def _find_key(session: Session, s: TokenSettings) -> tuple[Any, bytes]:
    """The private key and its raw public key, checked by a self-test signature.

    Raises:
        DataDirError: no such key, not Ed25519, or it cannot sign with CKM_EDDSA.
    """
    import pkcs11  # noqa: PLC0415 - see TokenKey.sign

    where = f"PKCS#11 token {s.token_label!r}"
    try:
        key: Any = session.get_key(object_class=pkcs11.ObjectClass.PRIVATE_KEY, label=s.key_label)
    except pkcs11.NoSuchKey as exc:
        labels = sorted(
            str(o[pkcs11.Attribute.LABEL])
            for o in session.get_objects({pkcs11.Attribute.CLASS: pkcs11.ObjectClass.PRIVATE_KEY})
        )
        raise DataDirError(
            f"no private key labelled {s.key_label!r} in {where} "
            f"(private keys: {', '.join(map(repr, labels)) or 'none'})"
        ) from exc
    except pkcs11.MultipleObjectsReturned as exc:
        raise DataDirError(
            f"several private keys are labelled {s.key_label!r} in {where}; label them apart"
        ) from exc
    if key.key_type != pkcs11.KeyType.EC_EDWARDS:
        raise DataDirError(
            f"key {s.key_label!r} in {where} is a {key.key_type.name} key; release keys must "
            "be Ed25519 (CKK_EC_EDWARDS, signing with CKM_EDDSA)"
        )
    try:
        public_key = session.get_key(object_class=pkcs11.ObjectClass.PUBLIC_KEY, label=s.key_label)
        raw = ed25519_public(bytes(public_key[pkcs11.Attribute.EC_POINT]))
    except pkcs11.PKCS11Error as exc:
        raise DataDirError(
            f"no public key labelled {s.key_label!r} in {where} ({_name(exc)}); the server "
            "needs it to name the key in the key list"
        ) from exc
    if raw is None:
        raise DataDirError(f"key {s.key_label!r} in {where} is not an Ed25519 key (Ed448?)")
    try:
        signature = bytes(key.sign(_SELFTEST, mechanism=pkcs11.Mechanism.EDDSA))
    except pkcs11.PKCS11Error as exc:
        raise DataDirError(
            f"{where} cannot sign with CKM_EDDSA (Ed25519): {_name(exc)}; its module may lack "
            "EdDSA (docs/security.md lists HSMs that have it)"
        ) from exc
    try:
        Ed25519PublicKey.from_public_bytes(raw).verify(signature, _SELFTEST)
    except InvalidSignature as exc:
        raise DataDirError(
            f"the private and public keys labelled {s.key_label!r} in {where} are not a pair"
        ) from exc
    return key, raw


def _name(exc: Exception) -> str:
    """``PinIncorrect`` and its message, as one short phrase."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def open_key_store(
    keys_dir: Path, options: TokenOptions | None, credentials_dir: str | None
) -> KeyStore:
    """The data dir's keys, with the token ``options`` name when they name one: connected,
    and its key checked to be a current release key, so that a server refuses to start rather
    than fail its first push.

    Raises:
        DataDirError: see :func:`read_pin` and :meth:`TokenKey.connect`; or the token's key is
            not a current release key of the key list.
    """
    settings = TokenSettings.from_options(options) if options is not None else None
    if settings is None:
        return KeyStore(keys_dir)
    token = TokenKey(settings, read_pin(settings.pin_file, credentials_dir))
    token.connect()
    store = KeyStore(keys_dir, token)
    try:
        store.manifest_signer()
    except BaseException:
        token.close()
        raise
    log.info("release signing: %s, key id %s", settings.describe(), token.keyid)
    return store
