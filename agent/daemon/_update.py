"""The update loop: everything an enrolled agent does with its fleet server over gRPC.

It starts once the enrollment loop (``_enroll``) has given the device its identity; it renews
the certificate, checks in every ``checkin_interval_s``, hands the desired state to the updater
(download, verify, stage, activate), adopts rotated keys and the server's routing policies and
cloud endpoint, forgets the refusals an operator cleared (each check-in reports them), and
judges open health windows between check-ins; it uploads the recent log an operator asked for
(``_devlog``). It runs on the main thread; errors are retried with backoff, nothing ends it but
the stop event. It owns its last check-in answer; what it shares is in ``AgentState``: it writes
the identity and the server's cloud endpoint, and wakes early when the control loop sets the
``nudge`` event ("check in now").
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

from agent.client import DeviceClient, with_server_host
from agent.config import AgentConfig
from agent.daemon._backoff import UNREACHABLE_BACKOFF_S, backoff
from agent.daemon._cloud import close_later, open_cloud
from agent.daemon._devlog import LogAnswers
from agent.daemon._state import AgentState
from agent.errors import AgentError, ConfigError, ManifestError, TransientError
from agent.hardware.probe import HardwareInfo, to_capabilities
from agent.identity import Identity, new_key_and_csr
from agent.inference.engine import Engine
from agent.routing.cloud import CloudTarget
from agent.routing.policy import Policy
from agent.routing.router import Router
from agent.telemetry.mqtt import masked, parse_mqtt_url
from agent.telemetry.outbox import deliver
from agent.updates.health import HealthPolicy
from agent.updates.http_fetch import HttpSource
from agent.updates.lifecycle import Lifecycle
from agent.updates.trust import update_keylist
from agent.updates.updater import Updater
from protos import device_pb2
from protos.names import is_name, is_sha256
from protos.refusals import MAX_REFUSALS

__all__ = ["RENEW_BEFORE_S", "UpdateLoop", "health_policy"]

log = logging.getLogger(__name__)
RENEW_BEFORE_S = 30 * 86400  # renew the device certificate in its last 30 days
_CLEAR_ROUNDS = 3  # check-ins in a row that may clear refusals before the answer is acted on


def health_policy(config: AgentConfig) -> HealthPolicy:
    """The health window an activated model must pass, from ``[updates]``."""
    u = config.updates
    return HealthPolicy(
        window_s=u.health_window_s,
        min_requests=u.health_min_requests,
        max_error_rate=u.health_max_error_rate,
        max_latency_ratio=u.health_max_latency_ratio,
        max_starts=u.crash_loop_starts,
    )


def _server_policies(response: device_pb2.CheckInResponse) -> dict[str, Policy]:
    """The routing policies in a check-in answer; an invalid one is logged and skipped."""
    policies = {}
    for r in response.routing:
        try:
            policies[r.model_name] = Policy(
                kind=r.policy,
                threshold=r.threshold,
                latency_budget_ms=r.latency_budget_ms,
                cloud_model=r.cloud_model,
                cloud_cost=r.cloud_cost,
                max_per_minute=r.max_per_minute if r.HasField("max_per_minute") else None,
                max_spend_per_day=r.max_spend_per_day if r.HasField("max_spend_per_day") else None,
                source="server",
                reason=r.reason,
            )
        except ConfigError as exc:
            log.warning("ignoring the server's routing for %s: %s", r.model_name, exc)
    return policies


class UpdateLoop:
    """Enrollment, check-ins and updates (see the module docstring)."""

    def __init__(
        self,
        *,
        state: AgentState,
        lifecycle: Lifecycle,
        engine: Engine,
        client: DeviceClient,
        router: Router,
        probe: Callable[[], HardwareInfo],
        active: Callable[[], list[device_pb2.ActiveModel]],
        logs: LogAnswers | None = None,
    ) -> None:
        self._state = state
        self._logs = logs
        self._lifecycle = lifecycle
        self._store = lifecycle.store
        self._engine = engine
        self._client = client
        self._router = router
        self._probe = probe
        self._active = active
        self._pending: list[device_pb2.StatusReport] = []  # from recover(), sent once enrolled
        self._answer: device_pb2.CheckInResponse | None = None  # the last full check-in answer
        self._cloud_routes: dict[str, tuple[str, str]] = {}
        self._fresh = False  # ask the server to skip its caches (after a nudge)

    def recover(self) -> None:
        """At start, before any model is loaded: settle the health windows a crash left open
        (see ``Updater.recover``); their reports go out once the server can be reached."""
        self._pending = Updater.recover(self._lifecycle)

    def run(
        self, stop: threading.Event, identity: Identity, on_enrolled: Callable[[], None]
    ) -> None:
        """Check in as ``identity`` (from the enrollment loop) until ``stop`` is set;
        ``on_enrolled`` is called once, when the device client uses its certificate."""
        attempt = 0
        updater: Updater | None = None
        state = self._state
        interval = state.config.server.checkin_interval_s
        while not stop.is_set():
            try:
                if updater is None:
                    self._client.use_certificate(
                        identity.device_address,
                        certificate_pem=identity.certificate_pem,
                        key_pem=identity.key_pem,
                        ca_pem=identity.ca_pem,
                    )
                    updater = Updater(
                        lifecycle=self._lifecycle,
                        engine=self._engine,
                        client=self._client,
                        identity=identity,
                        max_download_bytes_per_s=state.config.updates.max_download_kbps * 1024,
                        http=HttpSource(
                            ca_file=state.config.updates.download_ca_file,
                            allow_http=state.config.updates.allow_http_downloads,
                            stall_s=state.config.server.stall_timeout_s,
                        ),
                    )
                    on_enrolled()
                    for report in self._pending:
                        self._client.report(report)
                    self._pending = []
                self._renew_if_due()
                self._check_in(updater)
                attempt = 0
                self._watch(stop, updater, interval)
                continue
            except TransientError as exc:
                attempt += 1
                wait = max(1.0, backoff(attempt, min(interval, 5.0), UNREACHABLE_BACKOFF_S))
                log.warning("%s; retrying in %.0f s", exc, wait)
            except AgentError as exc:
                attempt += 1
                wait = max(interval, backoff(attempt, interval))
                log.error("check-in failed: %s; retrying in %.0f s", exc, wait)
            except Exception:
                # A bug must not take down a device that is serving models: log it with its
                # traceback and try again later.
                attempt += 1
                wait = max(interval, backoff(attempt, interval))
                log.exception("unexpected error in the update loop; retrying in %.0f s", wait)
            stop.wait(wait)

    def _check_in(self, updater: Updater) -> None:
        """One check-in, and act on its answer.

        An answer that clears refusals is acted on after one more check-in, which reports
        them gone: the server then stops sending the clear before the release can be tried,
        and refused, again (or it would clear it again and again)."""
        response = self._ask()
        self._deliver()
        if self._logs is not None and response.HasField("log_request"):
            self._logs.answer(response.log_request)  # before a download can take minutes
        for _round in range(_CLEAR_ROUNDS):
            if not self._clear_refusals(response.clear_refusals):
                break
            updater.forget_refusals()
            response = self._ask()
        if response.HasField("keylist"):
            self._rotate_keys(response.keylist.SerializeToString(), updater)
        updater.sources.mirror_url = response.mirror_url  # _ask gives the last full answer
        updater.apply(response.desired)
        self._note_cloud_routes(response.cloud)
        self._apply_routing(response)
        self._adopt_broker(response.mqtt_url)

    def _deliver(self) -> None:
        """Deliver the outbox (update events again until stored) and take the server's
        acknowledgement of the message sequence; a failure waits for the next check-in."""
        try:
            deliver(self._state.spool, self._client)
        except AgentError as exc:
            log.warning("outbox kept for the next check-in: %s", exc)

    def _ask(self) -> device_pb2.CheckInResponse:
        """Check in, reporting what serves and what this device refuses; the answer to act on
        (the last full one when the server says it is unchanged)."""
        refused = device_pb2.RefusalList(
            refusals=[
                device_pb2.Refusal(model_name=name, sha256=sha)
                for name, sha in sorted(self._store.refused())
            ]
        )
        response = self._client.check_in(
            device_pb2.CheckInRequest(
                capabilities=to_capabilities(self._probe()),
                active=self._active(),
                state_version=self._answer.state_version if self._answer else "",
                fresh=self._fresh,
                refused=refused,
            )
        )
        self._fresh = False
        if response.unchanged and self._answer is not None:
            return self._answer  # the server confirms what we acted on last
        self._answer = response
        return response

    def _clear_refusals(self, clears: Sequence[device_pb2.RefusalClear]) -> bool:
        """Forget the refusals an operator cleared; True when one was forgotten (a clear of
        nothing, sent again until the server sees it done, changes nothing)."""
        forgot = False
        for clear in clears[:MAX_REFUSALS]:
            name, sha = clear.model_name, clear.sha256
            if not is_name(name) or (sha and not is_sha256(sha)):
                log.warning("ignoring the server's clear of an invalid refusal %r", name[:80])
                continue
            if self._lifecycle.clear_refusal(name, sha):
                forgot = True
                log.info(
                    "the server cleared the refusal of %s %s: it may be installed again",
                    name,
                    f"sha256 {sha[:12]}" if sha else "(every release)",
                )
        return forgot

    def _adopt_broker(self, url: str) -> None:
        """Keep the broker address the server gives (the same trust as the check-in itself):
        the telemetry loop moves to it."""
        identity = self._state.identity
        if not url or identity is None or url == identity.mqtt_url:
            return
        try:
            parse_mqtt_url(with_server_host(url, self._state.config.server.addresses()[0]))
        except AgentError as exc:
            log.warning("ignoring the server's MQTT URL: %s", exc)
            return
        moved = replace(identity, mqtt_url=url)
        moved.save(self._store.root)
        self._state.identity = moved
        log.info(
            "the server's MQTT broker is now %s (was %s)",
            masked(url),
            masked(identity.mqtt_url) or "none",
        )

    def _watch(self, stop: threading.Event, updater: Updater, seconds: float) -> None:
        """Wait until the next check-in, judging open health windows every second; a nudge
        ends the wait early."""
        deadline = time.monotonic() + seconds
        while not stop.is_set():
            updater.check_health()
            remaining = deadline - time.monotonic()
            if remaining <= 0 or stop.wait(min(1.0, remaining)):
                return
            if self._state.nudge.is_set():
                self._state.nudge.clear()
                self._fresh = True
                log.info("the server asked for a check-in now")
                return

    def _apply_routing(self, response: device_pb2.CheckInResponse) -> None:
        """Adopt the server's routing policies and, unless the config names one, its cloud
        endpoint."""
        self._router.set_server_policies(_server_policies(response))
        endpoint = response.cloud_endpoint if response.HasField("cloud_endpoint") else None
        state, router = self._state, self._router
        with state.cloud_lock:  # a reload may change [cloud] meanwhile
            config = state.config
            if config.cloud.url or endpoint == state.server_endpoint:
                return
            state.server_endpoint = endpoint
            old = router.cloud
            try:
                router.cloud = (
                    open_cloud(
                        config.cloud,
                        CloudTarget(
                            with_server_host(endpoint.url, config.server.addresses()[0]),
                            endpoint.token,
                            endpoint.ca_pem or None,
                        ),
                    )
                    if endpoint is not None and endpoint.url
                    else None
                )
            except ValueError as exc:
                log.warning("ignoring the server's cloud endpoint: %s", exc)
                router.cloud = None
            if old is not None:
                close_later(old)

    def _renew_if_due(self) -> None:
        """Renew the client certificate in its last 30 days (a new key each time)."""
        identity = self._state.identity
        if identity is None or identity.certificate_expires - time.time() > RENEW_BEFORE_S:
            return
        key_pem, csr_pem = new_key_and_csr(identity.device_id)
        renewed = identity.with_certificate(self._client.renew(csr_pem), key_pem)
        renewed.save(self._store.root)
        self._state.identity = renewed
        self._client.use_certificate(
            renewed.device_address,
            certificate_pem=renewed.certificate_pem,
            key_pem=renewed.key_pem,
            ca_pem=renewed.ca_pem,
        )
        log.info(
            "renewed the device certificate (valid until %s)",
            time.ctime(renewed.certificate_expires),
        )

    def _note_cloud_routes(self, routes: Sequence[device_pb2.CloudRoute]) -> None:
        """Log, once per change, the models the server says this device cannot run locally
        (they come with a "cloud" routing policy)."""
        current = {r.model_name: (r.version, r.reason) for r in routes}
        for name, (version, why) in current.items():
            if self._cloud_routes.get(name) != (version, why):
                log.warning("server routes %s %s to the cloud: %s", name, version, why)
        self._cloud_routes = current

    def _rotate_keys(self, raw: bytes, updater: Updater) -> None:
        """Adopt a newer key list if the pinned root keys signed it; otherwise keep the old."""
        identity = self._state.identity
        assert identity is not None  # noqa: S101 - enrolled before check-in
        try:
            trust = update_keylist(identity.trust, raw, now=time.time())
        except ManifestError as exc:
            log.error(
                "refusing the server's key list: %s; keeping version %d",
                exc,
                identity.trust.version,
            )
            return
        if trust is identity.trust:
            return
        identity = identity.with_trust(trust)
        identity.save(self._store.root)
        self._state.identity = identity
        updater.set_identity(identity)
        log.info(
            "key list rotated to version %d (release keys: %s)",
            trust.version,
            ", ".join(sorted(trust.release)),
        )
