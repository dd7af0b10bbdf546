"""The enrollment loop: until the device has its identity, the agent serves the models in its
store and keeps trying to get one, whatever stands in the way; serving never waits for it.

Each attempt loads the stored identity, or enrolls with the token and the fleet CA of the live
config (read afresh: a file fixed meanwhile, or a SIGHUP reload, counts) and the key and CSR of
the enrollment in progress (:func:`agent.identity.pending_enrollment`: on disk before the
request, so a kill after the server answered makes the retry a repeat, which the server answers
with the same identity). A stored identity that cannot be read is reported, never replaced.

What stands in the way is logged once per distinct problem and shown in systemd's STATUS.
Retries back off (:func:`enroll_retry_delay`): an unreachable server from 1 s, a refusal or a
broken config from 15 s, both up to :data:`ENROLL_RETRY_MAX_S`; a change of the enrollment
settings ends the wait at once. It runs on the main thread before the update loop and writes
``identity`` in ``AgentState``.
"""

from __future__ import annotations

import hashlib
import logging
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from agent.client import DeviceClient
from agent.daemon._backoff import backoff
from agent.daemon._state import AgentState
from agent.errors import AgentError, EnrollmentError, ManifestError, TransientError
from agent.hardware.probe import HardwareInfo, to_capabilities
from agent.identity import Identity, clear_pending_enrollment, pending_enrollment
from agent.updates.trust import pin_keylist
from protos import device_pb2
from protos.topics import device_name, validate_segment

__all__ = ["ENROLL_RETRY_MAX_S", "EnrollLoop", "enroll_retry_delay"]

log = logging.getLogger(__name__)

ENROLL_RETRY_MAX_S = 120.0  # the longest wait between two attempts
_UNREACHABLE_MIN_S = 1.0
_REFUSED_MIN_S = 15.0  # a refusal or a broken config: the server is not asked again at once
_POLL_S = 1.0  # how often a wait looks at the enrollment settings
_MAX_STATUS = 240  # characters of the problem in systemd's STATUS
_MAX_TOLD = 64  # distinct problems remembered as logged


def enroll_retry_delay(attempt: int, *, transient: bool) -> float:
    """Seconds before the next attempt after ``attempt`` failed ones (1, 2, ...): jittered,
    doubling from 1 s (the server was unreachable) or 15 s (refused, or a broken config), never
    more than :data:`ENROLL_RETRY_MAX_S`."""
    floor = _UNREACHABLE_MIN_S if transient else _REFUSED_MIN_S
    return min(ENROLL_RETRY_MAX_S, max(floor, backoff(attempt, floor)))


class EnrollLoop:
    """Gets the device its identity (see the module docstring)."""

    def __init__(
        self,
        *,
        state: AgentState,
        root: Path,
        client: DeviceClient,
        probe: Callable[[], HardwareInfo],
    ) -> None:
        self._state = state
        self._root = root
        self._client = client
        self._probe = probe

    def load_stored(self) -> None:
        """At start, before the models are loaded: the stored identity into ``AgentState``, so
        an enrolled device starts as it always did. One that cannot be read is left to
        :meth:`run`, which reports it while the models are served."""
        try:
            self._state.identity = Identity.load(self._root)
        except AgentError as exc:
            log.debug("the stored identity is not usable yet: %s", exc)

    def run(self, stop: threading.Event, on_problem: Callable[[str], None]) -> Identity | None:
        """The device's identity, once it has one (None: ``stop`` was set first).
        ``on_problem`` hears each new reason it has none yet, and "" once it has."""
        attempt = 0
        problem = ""  # why there is no identity now
        told: set[str] = set()  # every reason logged so far: each is logged once
        while not stop.is_set():
            transient = False
            try:
                identity = self._state.identity or Identity.load(self._root) or self._enroll()
            except TransientError as exc:
                why, transient = str(exc), True
            except AgentError as exc:
                why = str(exc)
            except OSError as exc:
                why = f"cannot keep the enrollment in progress in {self._root}: {exc}"
            except Exception:
                # A bug must not take down a device that serves models: retry later.
                log.exception("unexpected error while enrolling")
                why = "unexpected error while enrolling (see the log)"
            else:
                clear_pending_enrollment(self._root)  # also what a kill after saving left
                self._state.identity = identity
                if problem:
                    log.info("enrollment unblocked: the device is %s", identity.device_id)
                    on_problem("")
                return identity
            attempt += 1
            wait = enroll_retry_delay(attempt, transient=transient)
            if why != problem:
                on_problem(why[:_MAX_STATUS])
                problem = why
            if why not in told:
                if len(told) >= _MAX_TOLD:  # a server that words its refusals anew each time
                    told.clear()
                told.add(why)
                log.log(
                    logging.WARNING if transient else logging.ERROR,
                    "not enrolled: %s; serving the models in the store meanwhile; retrying in "
                    "%.0f s, or as soon as the enrollment settings change",
                    why,
                    wait,
                )
            else:
                log.debug("still not enrolled: %s; retrying in %.0f s", why, wait)
            self._pause(stop, wait)
        return None

    def _pause(self, stop: threading.Event, seconds: float) -> None:
        """Wait ``seconds``, or until ``stop``, or until the enrollment settings change."""
        before = self._settings()
        deadline = time.monotonic() + seconds
        while not stop.wait(min(_POLL_S, max(0.0, deadline - time.monotonic()))):
            if time.monotonic() >= deadline:
                return
            if self._settings() != before:
                log.info("the enrollment settings changed; enrolling now")
                return

    def _settings(self) -> bytes:
        """A digest of what an attempt would use: the [server] section, the name, and what the
        token and CA files hold now (or why they cannot be read)."""
        config = self._state.config
        parts = [repr(config.server), config.agent.name]
        for read in (config.enrollment_token, config.fleet_ca):
            try:
                parts.append(repr(read()))
            except AgentError as exc:
                parts.append(str(exc))
        return hashlib.sha256("\0".join(parts).encode()).digest()

    def _enroll(self) -> Identity:
        """Enroll with the live config and save the identity.

        Raises:
            ConfigError: the token or the CA is missing or unreadable.
            EnrollmentError: the server refused, or answered something unusable.
            TransientError: the server could not be reached.
            OSError: the state dir cannot be written.
        """
        config = self._state.config
        token, ca_pem = config.enrollment_inputs()
        name = device_name(config.agent.name or socket.gethostname())
        key_pem, csr_pem = pending_enrollment(self._root, name)
        self._client.set_fleet_ca(ca_pem)
        response = self._client.enroll(
            device_pb2.EnrollRequest(
                enrollment_token=token,
                requested_name=name,
                capabilities=to_capabilities(self._probe()),
                labels=config.agent.labels,
                csr_pem=csr_pem,
            )
        )
        try:
            fleet_id = validate_segment(response.fleet_id, "fleet id")
            device_id = validate_segment(response.device_id, "device id")
            trust = pin_keylist(
                response.keylist.SerializeToString(), fleet_id=fleet_id, now=time.time()
            )
        except (ValueError, ManifestError) as exc:
            raise EnrollmentError(f"the server's enrollment answer is unusable: {exc}") from exc
        identity = Identity(
            device_id=device_id,
            fleet_id=fleet_id,
            trust=trust,
            mqtt_url=response.mqtt_url,
            device_address=response.device_address,
            certificate_pem=response.certificate_pem,
            key_pem=key_pem,
            ca_pem=response.ca_pem or ca_pem,
        )
        identity.save(self._root)
        log.info(
            "enrolled as %s in fleet %s; pinned key list version %d",
            identity.device_id,
            identity.fleet_id,
            trust.version,
        )
        return identity
