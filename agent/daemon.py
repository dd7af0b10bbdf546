"""The agent daemon: serve the active models, keep them up to date, report telemetry.

Start order: load the active models from disk and serve them (a device keeps working without its
server), then enroll if needed, then check in periodically and publish telemetry. One stop event
ends every loop; components stop in reverse order.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import random
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from google.protobuf.message import DecodeError

from agent import __version__
from agent.client import DeviceClient
from agent.config import AgentConfig, load_config, routing_policy
from agent.errors import (
    AgentError,
    ConfigError,
    EnrollmentError,
    ManifestError,
    TransientError,
)
from agent.hardware.probe import HardwareInfo, probe, to_capabilities
from agent.identity import Identity, new_key_and_csr
from agent.inference.bench import run_benchmark
from agent.inference.engine import Engine, EngineOptions
from agent.inference.metrics_http import MetricsServer
from agent.inference.metrics_http import render as render_metrics
from agent.inference.oip import create_server
from agent.routing.cloud import CloudClient, CloudTarget
from agent.routing.guards import Breaker
from agent.routing.policy import Policy
from agent.routing.router import Router
from agent.systemd import Notifier, watchdog_interval
from agent.telemetry.forward import Forwarder
from agent.telemetry.mqtt import MqttPublisher, parse_mqtt_url
from agent.telemetry.report import build_report
from agent.telemetry.spool import EVENT, Spool
from agent.telemetry.system import SystemSampler
from agent.updates.health import HealthPolicy
from agent.updates.store import ModelStore
from agent.updates.trust import pin_keylist, update_keylist
from agent.updates.updater import Updater
from protos import device_pb2, telemetry_pb2
from protos.topics import commands_topic, device_name, device_topic, validate_segment

__all__ = ["Agent"]

log = logging.getLogger(__name__)
_MAX_BACKOFF_S = 300.0
_MQTT_MAX_BACKOFF_S = 15.0  # between MQTT connection attempts
_BENCH_SECONDS = 2.0  # a "bench" command runs the model this long
RENEW_BEFORE_S = 30 * 86400  # renew the device certificate in its last 30 days


def _backoff(attempt: int, base: float) -> float:
    """Capped exponential backoff with full jitter."""
    return random.uniform(0, min(_MAX_BACKOFF_S, base * 2 ** min(attempt, 10)))  # noqa: S311


def _close_later(client: CloudClient) -> None:
    """Close a replaced cloud client once the calls that hold it have had time to end."""
    timer = threading.Timer(60.0, client.close)
    timer.daemon = True
    timer.start()


class Agent:
    """One agent process."""

    def __init__(self, config: AgentConfig, config_path: Path | None = None) -> None:
        self.config = config
        self._config_path = config_path
        self.store = ModelStore(config.agent.state_dir, keep_versions=config.updates.keep_versions)
        hardware = self.probe()
        if hardware.edgetpus:
            log.info("Edge TPUs: %s", ", ".join(t.device for t in hardware.edgetpus))
        self.engine = Engine(
            EngineOptions(
                workers=config.inference.workers,
                queue_depth=config.inference.queue_depth,
                num_threads=config.inference.num_threads,
                memory_budget_bytes=config.inference.memory_budget_mb * 1024 * 1024,
                edgetpus=tuple(t.device for t in hardware.edgetpus),
                edgetpu_library=hardware.libedgetpu or config.hardware.edgetpu_library,
            )
        )
        self.identity: Identity | None = None
        self._client = DeviceClient(
            config.server.address, timeout_s=config.server.timeout_s, ca_pem=config.fleet_ca()
        )
        self._started = time.monotonic()
        cloud = config.cloud
        self.router = Router(
            self._cloud_client(CloudTarget(cloud.url, config.cloud_token(), config.cloud_ca()))
            if cloud.url
            else None,
            overrides={name: routing_policy(r) for name, r in config.routing.items()},
            breaker=Breaker(cloud.breaker_failures, cloud.breaker_cooldown_s),
        )
        self._endpoint: device_pb2.CloudEndpoint | None = None
        self._benching = threading.Lock()
        self.notifier = Notifier()
        self._reload_requested = threading.Event()

    def request_reload(self) -> None:
        """Reload the config soon (from a SIGHUP handler: only sets a flag)."""
        self._reload_requested.set()

    def _serving_status(self) -> str:
        models = self.engine.models()
        if not models:
            return "up; no model assigned yet"
        names = ", ".join(f"{m.name} {m.version} ({m.backend})" for m in models)
        return f"serving {len(models)} model(s): {names}"

    def _watchdog(self, stop: threading.Event, interval: float) -> None:
        """Ping the systemd watchdog while the engine makes progress; stop pinging when a
        model is wedged, so systemd restarts the agent."""
        limit = max(4 * interval, 5.0)
        wedged = ""
        while not stop.wait(interval):
            why = self.engine.wedged(limit)
            if why:
                if why != wedged:
                    log.error("engine wedged, no more watchdog pings: %s", why)
                    self.notifier.status(f"wedged: {why}")
                wedged = why
                continue
            if wedged:
                log.info("the engine makes progress again")
                self.notifier.status(self._serving_status())
                wedged = ""
            self.notifier.notify("WATCHDOG=1")

    def _cloud_client(self, target: CloudTarget) -> CloudClient:
        c = self.config.cloud
        log.info("cloud endpoint %s", target.url)
        return CloudClient(target, timeout_s=c.timeout_s, retries=c.retries)

    def _apply_routing(self, response: device_pb2.CheckInResponse) -> None:
        """Adopt the server's routing policies and, unless the config names one, its cloud
        endpoint."""
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
                    max_spend_per_day=r.max_spend_per_day
                    if r.HasField("max_spend_per_day")
                    else None,
                    source="server",
                    reason=r.reason,
                )
            except ConfigError as exc:
                log.warning("ignoring the server's routing for %s: %s", r.model_name, exc)
        self.router.set_server_policies(policies)
        endpoint = response.cloud_endpoint if response.HasField("cloud_endpoint") else None
        if self.config.cloud.url or endpoint == self._endpoint:
            return
        self._endpoint = endpoint
        old = self.router.cloud
        try:
            self.router.cloud = (
                self._cloud_client(
                    CloudTarget(
                        self._with_server_host(endpoint.url),
                        endpoint.token,
                        endpoint.ca_pem or None,
                    )
                )
                if endpoint is not None and endpoint.url
                else None
            )
        except ValueError as exc:
            log.warning("ignoring the server's cloud endpoint: %s", exc)
            self.router.cloud = None
        if old is not None:
            _close_later(old)

    def reload(self) -> str:
        """Re-read the config file and apply what can change while running: the [routing.*]
        overrides and the [cloud] endpoint. Returns what happened, for logs and the ack.

        Raises:
            ConfigError: the file is missing or invalid (nothing is changed then).
        """
        if self._config_path is None:
            raise ConfigError("this agent was not started from a config file")
        new = load_config(self._config_path)
        # Everything is built before anything changes: a bad file changes nothing.
        overrides = {n: routing_policy(r) for n, r in new.routing.items()}
        changed = [f"{len(new.routing)} routing override(s)"]
        cloud_changed = new.cloud != self.config.cloud
        client = None
        if cloud_changed and new.cloud.url:
            client = self._cloud_client(
                CloudTarget(new.cloud.url, new.cloud_token(), new.cloud_ca())
            )
        self.router.set_overrides(overrides)
        if cloud_changed:
            old = self.router.cloud
            self.config = replace(self.config, cloud=new.cloud)
            self.router.cloud = client
            self._endpoint = None  # the server's endpoint applies again at the next check-in
            if old is not None:
                _close_later(old)
            changed.append(f"cloud {new.cloud.url or 'from the server'}")
        self.config = replace(self.config, routing=new.routing)
        if new.telemetry.interval_s != self.config.telemetry.interval_s:
            telemetry = replace(self.config.telemetry, interval_s=new.telemetry.interval_s)
            self.config = replace(self.config, telemetry=telemetry)
            changed.append(f"telemetry every {new.telemetry.interval_s:g} s")
        rest = [
            name
            for name in ("agent", "server", "api", "inference", "hardware", "updates", "telemetry")
            if getattr(new, name) != getattr(self.config, name)
        ]
        if rest:
            changed.append(f"[{'], ['.join(rest)}] changed: they apply after a restart")
        message = "reloaded " + self._config_path.name + ": " + "; ".join(changed)
        log.info("%s", message)
        return message

    def _start_bench(self, name: str) -> tuple[bool, str]:
        """Benchmark an installed model in the background (its own interpreter, the agent's
        thread count) and report it over the device API."""
        model = self.engine.peek(name)
        if model is None:
            return False, f"{name[:64]!r} is not loaded here"
        if self._benching.locked():
            return False, "a benchmark is already running"

        def run() -> None:
            with self._benching:
                try:
                    result = run_benchmark(
                        model.path,
                        threads=self.config.inference.num_threads,
                        seconds=_BENCH_SECONDS,
                        edgetpus=self.engine.options.edgetpus,
                        edgetpu_library=self.engine.options.edgetpu_library,
                    )
                    self._client.report_benchmark(
                        device_pb2.BenchmarkReport(
                            model_name=model.name,
                            version=model.version,
                            sha256=hashlib.sha256(model.path.read_bytes()).hexdigest(),
                            backend=result.backend,
                            threads=result.threads,
                            requests=result.requests,
                            seconds=result.seconds,
                            p50_ms=result.p50_ms,
                            p95_ms=result.p95_ms,
                            throughput_per_s=result.throughput_per_s,
                            runtime=result.runtime,
                        )
                    )
                    log.info("benchmarked %s %s: p50 %.3f ms", name, model.version, result.p50_ms)
                except (AgentError, OSError) as exc:
                    log.warning("benchmark of %s failed: %s", name, exc)

        threading.Thread(target=run, name="bench", daemon=True).start()
        return True, f"benchmarking {name} {model.version} for {_BENCH_SECONDS:g} s"

    def _with_server_host(self, url: str) -> str:
        """``grpcs://:8443`` (the server's own service, on any address) -> the host this
        agent reaches the fleet server on."""
        scheme, _, rest = url.partition("://")
        if not rest.startswith(":"):
            return url
        host = self.config.server.address.rsplit(":", 1)[0]
        return f"{scheme}://{host}{rest}"

    def run(self, stop: threading.Event) -> None:
        """Run until ``stop`` is set.

        Raises:
            EnrollmentError: the server refused this device's enrollment (fatal).
            AgentError: the local API could not start.
        """
        self.store.root.mkdir(parents=True, exist_ok=True)
        self.identity = Identity.load(self.store.root)
        if self.identity is None and not self.config.enrollment_token():
            # Fail before READY=1: a service that can never enroll should not look started.
            raise EnrollmentError(
                "this device is not enrolled and no enrollment token is configured "
                "(server.enrollment_token, server.enrollment_token_file, or systemd's "
                "LoadCredential=enrollment-token:...)"
            )
        self._pending_reports = Updater.recover(self.store, self._health_policy())
        self._cloud_routes: dict[str, tuple[str, str]] = {}
        self._answer: device_pb2.CheckInResponse | None = None  # the last full check-in answer
        self._nudged = threading.Event()  # a "check in now" command arrived
        self._fresh = False  # ask the server to skip its caches (after a nudge)
        self._seen_commands: set[str] = set()
        self._birth: Callable[[], object] | None = None  # publishes the online state again
        self._spool = Spool(
            self.store.root / "spool.db", max_messages=self.config.telemetry.spool_max_messages
        )
        self._client.on_report = self._spool_event
        Updater.load_active_into(self.store, self.engine)
        try:
            server, port = create_server(
                self.engine,
                socket_path=self.config.api.socket,
                tcp_address=self.config.api.listen or None,
                router=self.router,
            )
        except OSError as exc:
            raise AgentError(f"cannot start the local inference API: {exc}") from exc
        server.start()
        # Ready: the active models are loaded (above) and the API serves them.
        self.notifier.notify("READY=1", f"STATUS={self._serving_status()}")
        self.notifier.last_status = self._serving_status()
        interval = watchdog_interval()
        if interval is not None:
            threading.Thread(
                target=self._watchdog, args=(stop, interval), name="watchdog", daemon=True
            ).start()
        metrics = self._start_metrics()
        log.info(
            "local inference API on unix:%s%s",
            self.config.api.socket,
            f" and port {port}" if port else "",
        )
        telemetry = threading.Thread(
            target=self._telemetry_loop, args=(stop,), name="telemetry", daemon=True
        )
        try:
            self._update_loop(stop, telemetry)
        finally:
            self.notifier.notify("STOPPING=1", "STATUS=stopping: draining requests")
            stop.set()
            if telemetry.is_alive():
                telemetry.join(timeout=10)
            server.stop(grace=5).wait()
            if metrics is not None:
                metrics.stop()
            self._client.close()
            self._spool.close()
            log.info("agent stopped")

    def _start_metrics(self) -> MetricsServer | None:
        address = self.config.api.metrics_listen
        if not address:
            return None
        host, _, port = address.rpartition(":")
        try:
            metrics = MetricsServer(lambda: render_metrics(self.engine), host, int(port))
        except (OSError, ValueError) as exc:
            raise AgentError(f"cannot serve metrics on {address}: {exc}") from exc
        metrics.start()
        return metrics

    def probe(self) -> HardwareInfo:
        """What this device has now (free disk and temperatures change)."""
        hw = self.config.hardware
        return probe(
            self.store.root,
            sysfs=hw.sysfs_root,
            devfs=hw.dev_root,
            edgetpu_library=hw.edgetpu_library,
        )

    def _health_policy(self) -> HealthPolicy:
        u = self.config.updates
        return HealthPolicy(
            window_s=u.health_window_s,
            min_requests=u.health_min_requests,
            max_error_rate=u.health_max_error_rate,
            max_latency_ratio=u.health_max_latency_ratio,
            max_starts=u.crash_loop_starts,
        )

    def _enroll(self) -> Identity:
        token = self.config.enrollment_token()
        if not token:
            raise EnrollmentError(
                "this device is not enrolled and no enrollment token is configured "
                "(server.enrollment_token or server.enrollment_token_file)"
            )
        name = device_name(self.config.agent.name or socket.gethostname())
        key_pem, csr_pem = new_key_and_csr(name)
        response = self._client.enroll(
            device_pb2.EnrollRequest(
                enrollment_token=token,
                requested_name=name,
                capabilities=to_capabilities(self.probe()),
                labels=self.config.agent.labels,
                csr_pem=csr_pem,
            )
        )
        fleet_id = validate_segment(response.fleet_id, "fleet id")
        try:
            trust = pin_keylist(
                response.keylist.SerializeToString(), fleet_id=fleet_id, now=time.time()
            )
        except ManifestError as exc:
            raise EnrollmentError(f"the server's key list does not verify: {exc}") from exc
        identity = Identity(
            device_id=validate_segment(response.device_id, "device id"),
            fleet_id=fleet_id,
            trust=trust,
            mqtt_url=response.mqtt_url,
            device_address=response.device_address,
            certificate_pem=response.certificate_pem,
            key_pem=key_pem,
            ca_pem=response.ca_pem or self.config.fleet_ca(),
        )
        identity.save(self.store.root)
        log.info(
            "enrolled as %s in fleet %s; pinned key list version %d",
            identity.device_id,
            identity.fleet_id,
            trust.version,
        )
        return identity

    def _update_loop(self, stop: threading.Event, telemetry: threading.Thread) -> None:
        attempt = 0
        updater: Updater | None = None
        interval = self.config.server.checkin_interval_s
        while not stop.is_set():
            try:
                if self.identity is None:
                    self.identity = self._enroll()
                if updater is None:
                    self._client.use_certificate(
                        self.identity.device_address,
                        certificate_pem=self.identity.certificate_pem,
                        key_pem=self.identity.key_pem,
                        ca_pem=self.identity.ca_pem,
                    )
                    updater = Updater(
                        store=self.store,
                        engine=self.engine,
                        client=self._client,
                        identity=self.identity,
                        health=self._health_policy(),
                        max_download_bytes_per_s=self.config.updates.max_download_kbps * 1024,
                    )
                    telemetry.start()
                    for report in self._pending_reports:
                        self._client.report(report)
                    self._pending_reports = []
                self._renew_if_due()
                response = self._client.check_in(
                    device_pb2.CheckInRequest(
                        capabilities=to_capabilities(self.probe()),
                        active=self._active(),
                        state_version=self._answer.state_version if self._answer else "",
                        fresh=self._fresh,
                    )
                )
                self._fresh = False
                if response.unchanged and self._answer is not None:
                    response = self._answer  # the server confirms what we acted on last
                else:
                    self._answer = response
                if response.HasField("keylist"):
                    self._rotate_keys(response.keylist.SerializeToString(), updater)
                updater.apply(response.desired)
                self._note_cloud_routes(response.cloud)
                self._apply_routing(response)
                attempt = 0
                wait = interval
                self._watch(stop, updater, wait)
                continue
            except TransientError as exc:
                attempt += 1
                wait = max(1.0, _backoff(attempt, min(interval, 5.0)))
                log.warning("%s; retrying in %.0f s", exc, wait)
            except EnrollmentError:
                raise
            except AgentError as exc:
                attempt += 1
                wait = max(interval, _backoff(attempt, interval))
                log.error("check-in failed: %s; retrying in %.0f s", exc, wait)
            except Exception:
                # A bug must not take down a device that is serving models: log it with its
                # traceback and try again later.
                attempt += 1
                wait = max(interval, _backoff(attempt, interval))
                log.exception("unexpected error in the update loop; retrying in %.0f s", wait)
            stop.wait(wait)

    def _watch(self, stop: threading.Event, updater: Updater, seconds: float) -> None:
        """Wait until the next check-in, judging open health windows every second."""
        deadline = time.monotonic() + seconds
        while not stop.is_set():
            updater.check_health()
            remaining = deadline - time.monotonic()
            if remaining <= 0 or stop.wait(min(1.0, remaining)):
                return
            if self._reload_requested.is_set():
                self._reload_requested.clear()
                try:
                    self.reload()
                except (ConfigError, ValueError) as exc:
                    log.error("reload refused, nothing changed: %s", exc)
            if self._nudged.is_set():
                self._nudged.clear()
                self._fresh = True
                log.info("the server asked for a check-in now")
                return

    def _renew_if_due(self) -> None:
        """Renew the client certificate in its last 30 days (a new key each time)."""
        identity = self.identity
        if identity is None or identity.certificate_expires - time.time() > RENEW_BEFORE_S:
            return
        key_pem, csr_pem = new_key_and_csr(identity.device_id)
        renewed = identity.with_certificate(self._client.renew(csr_pem), key_pem)
        renewed.save(self.store.root)
        self.identity = renewed
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
        assert self.identity is not None  # noqa: S101 - enrolled before check-in
        try:
            trust = update_keylist(self.identity.trust, raw, now=time.time())
        except ManifestError as exc:
            log.error(
                "refusing the server's key list: %s; keeping version %d",
                exc,
                self.identity.trust.version,
            )
            return
        if trust is self.identity.trust:
            return
        self.identity = self.identity.with_trust(trust)
        self.identity.save(self.store.root)
        updater.set_identity(self.identity)
        log.info(
            "key list rotated to version %d (release keys: %s)",
            trust.version,
            ", ".join(sorted(trust.release)),
        )

    def _active(self) -> list[device_pb2.ActiveModel]:
        active = self.store.active()
        return [
            device_pb2.ActiveModel(
                model_name=model.name,
                version=model.version,
                release_counter=active[model.name].release_counter if model.name in active else 0,
                sha256=active[model.name].sha256 if model.name in active else "",
                backend=model.backend,
            )
            for model in self.engine.models()
        ]

    def _state_message(self, state: str) -> bytes:
        """The retained DeviceState payload: online (birth), offline (Will) or stopped."""
        identity = self.identity
        message = telemetry_pb2.DeviceState(
            device_id=identity.device_id if identity else "",
            state=state,
            sent_unix_ms=int(time.time() * 1000),
            agent_version=__version__,
            active=self._active(),
            epoch=self._spool.epoch,
        )
        if state == "online":
            message.capabilities.CopyFrom(to_capabilities(self.probe()))
        return message.SerializeToString()

    def _spool_event(
        self,
        report: device_pb2.StatusReport | None = None,
        *,
        ack: telemetry_pb2.CommandAck | None = None,
    ) -> None:
        """Every update state change and command answer goes out as an event (spooled, never
        dropped); update steps also go to systemd's STATUS."""
        if report is not None:
            state = device_pb2.UpdateState.Name(report.state)
            if state in ("INSTALLED", "ROLLED_BACK"):
                self.notifier.status(self._serving_status())
            else:
                self.notifier.status(f"{report.model_name} {report.version}: {state}")
        identity, spool = self.identity, self._spool
        if identity is None:
            return
        event = telemetry_pb2.DeviceEvent(
            device_id=identity.device_id,
            seq=spool.next_seq(),
            epoch=spool.epoch,
            sent_unix_ms=int(time.time() * 1000),
        )
        if report is not None:
            event.update.CopyFrom(report)
        if ack is not None:
            event.ack.CopyFrom(ack)
        spool.append(
            device_topic(identity.fleet_id, identity.device_id, "events"),
            event.SerializeToString(),
            EVENT,
        )

    def _on_command(self, payload: bytes) -> None:
        """A server command (paho's thread): act on each id once, acknowledge it on the events
        topic (spooled); a bad one is ignored."""
        try:
            command = telemetry_pb2.Command.FromString(payload)
        except DecodeError:
            log.warning("ignoring an undecodable command")
            return
        if command.id in self._seen_commands:
            return
        if len(self._seen_commands) > 1024:
            self._seen_commands.clear()
        self._seen_commands.add(command.id)
        ok, detail = True, ""
        if command.kind == "checkin":
            # At worst an extra check-in over mTLS: a command cannot change what runs.
            self._nudged.set()
            detail = "checking in"
        elif command.kind == "routing":
            # The new policy comes from the server's authenticated answer, not from MQTT. A
            # fleet-wide change reaches every device at once: spread the check-ins out.
            delay = random.uniform(0, min(5.0, self.config.server.checkin_interval_s))  # noqa: S311
            timer = threading.Timer(delay, self._nudged.set)
            timer.daemon = True
            timer.start()
            detail = f"checking in for the new routing policy in {delay:.1f} s"
        elif command.kind == "bench":
            ok, detail = self._start_bench(command.model_name)
        elif command.kind == "reload":
            try:
                detail = self.reload()
            except (ConfigError, ValueError) as exc:
                ok, detail = False, f"reload refused, nothing changed: {exc}"
        elif command.kind == "birth":
            birth = self._birth
            if birth is not None:
                birth()
            detail = "state published"
        else:
            ok, detail = False, f"unknown command {command.kind[:32]!r}"
            log.warning("ignoring command of unknown kind %r", command.kind[:32])
        self._spool_event(
            ack=telemetry_pb2.CommandAck(
                id=command.id[:64], kind=command.kind[:32], ok=ok, detail=detail
            )
        )

    def _telemetry_loop(self, stop: threading.Event) -> None:
        try:
            self._publish_telemetry(stop)
        except Exception:
            log.exception("telemetry stopped by an unexpected error; inference goes on")

    def _publish_telemetry(self, stop: threading.Event) -> None:
        identity = self.identity
        if identity is None:  # started only after enrollment
            return
        url = self.config.telemetry.mqtt_url or identity.mqtt_url
        if not url:
            log.warning("no MQTT URL from the server or the config; telemetry is off")
            return
        try:
            endpoint = parse_mqtt_url(url)
            if endpoint.tls:  # the broker knows devices by their fleet certificates
                root = self.store.root
                endpoint = endpoint.with_tls_files(
                    str(Identity.ca_path(root)),
                    str(Identity.cert_path(root)),
                    str(Identity.key_path(root)),
                )
        except AgentError as exc:
            log.error("telemetry is off: %s", exc)
            return
        spool = self._spool
        fleet, device = identity.fleet_id, identity.device_id
        telemetry, state = (
            device_topic(fleet, device, "telemetry"),
            device_topic(fleet, device, "state"),
        )
        commands = commands_topic(fleet, device)

        def on_connected(client: Any) -> None:
            # After every (re)connect: subscriptions do not outlive a broker restart, and the
            # retained birth replaces the Will the broker may have published.
            client.on_message = lambda _c, _u, message: self._on_command(message.payload)
            client.subscribe(commands, qos=1)
            client.publish(state, self._state_message("online"), qos=1, retain=True)
            self._birth = lambda: client.publish(
                state, self._state_message("online"), qos=1, retain=True
            )

        publisher = MqttPublisher(
            endpoint,
            client_id=f"edgefleet-agent-{device}",
            on_connected=on_connected,
            will=(state, self._state_message("offline")),
        )
        forwarder = Forwarder(spool, publisher)
        system = SystemSampler(self.store.root, sysfs=self.config.hardware.sysfs_root)
        last_report = time.monotonic()
        next_connect = 0.0

        def report() -> None:
            # Spooled first, published when the broker is there: nothing is lost.
            payload = build_report(
                self.engine,
                device_id=device,
                seq=spool.next_seq(),
                started=self._started,
                epoch=spool.epoch,
                spool_dropped=spool.dropped,
                system=system.sample(),
                router=self.router,
            )
            spool.append(telemetry, payload)

        attempt = 0
        try:
            while not stop.is_set():
                now = time.monotonic()
                if publisher.protocol is None and now >= next_connect:
                    try:
                        publisher.connect()
                        attempt = 0
                    except TransientError as exc:
                        attempt += 1
                        # Capped low: a broker back from a restart should get the spool soon.
                        wait = max(1.0, min(_MQTT_MAX_BACKOFF_S, _backoff(attempt, 2.0)))
                        next_connect = now + wait
                        log.warning(
                            "telemetry: %s; retrying in %.0f s (%d spooled)", exc, wait, len(spool)
                        )
                # Read each time: a reload may change the interval.
                next_report = last_report + self.config.telemetry.interval_s
                if now >= next_report:
                    report()
                    last_report = max(next_report, now - self.config.telemetry.interval_s)
                    next_report = last_report + self.config.telemetry.interval_s
                forwarder.drain(stop, budget_s=1.0)
                stop.wait(min(0.5, max(0.05, next_report - time.monotonic())))
        finally:
            try:
                report()  # the last window's counts, spooled before anything else happens
            except Exception:
                log.exception("could not spool the last telemetry report")
            if publisher.connected:
                forwarder.drain(threading.Event(), budget_s=3.0)
                info = publisher.publish_info(state, self._state_message("stopped"), retain=True)
                if info is not None:
                    with contextlib.suppress(RuntimeError, ValueError):
                        info.wait_for_publish(2.0)
            left = len(spool)
            if left:
                log.info("%d telemetry message(s) stay spooled for the next start", left)
            publisher.close()
