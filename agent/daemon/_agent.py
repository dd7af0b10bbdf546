"""The agent process: the composition root of the daemon.

``Agent.__init__`` builds every part (model store, engine, device client, router, event spool,
the shared ``AgentState`` and the loops) and touches no network and no enrollment file.
``Agent.run`` starts them in a fixed order: load the active models from disk and serve them (a
device keeps working without its server, and whatever is wrong with its enrollment settings),
say READY, start the control loop (reloads and commands work from then on, whatever the other
loops are doing), run the enrollment loop until the device has its identity (what stands in
the way goes to the log once and to systemd's STATUS), then the update loop, which checks in
periodically and starts the telemetry loop. One stop event ends every loop; the parts stop in
reverse order. From ``run`` to its end, the agent's log records are kept for an operator who
asks for them (``agent.logs``; the update loop answers the requests).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import threading
import time
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

from agent.client import DeviceClient
from agent.config import AgentConfig, routing_policy
from agent.daemon._cloud import open_cloud
from agent.daemon._control import ControlLoop, input_rules
from agent.daemon._devlog import LogAnswers, attach_tail
from agent.daemon._enroll import EnrollLoop
from agent.daemon._state import AgentState
from agent.daemon._telemetry import TelemetryLoop
from agent.daemon._update import UpdateLoop, health_policy
from agent.errors import AgentError
from agent.hardware.probe import HardwareInfo, probe
from agent.inference.engine import Engine, EngineOptions
from agent.inference.metrics_http import MetricsServer
from agent.inference.metrics_http import render as render_metrics
from agent.inference.oip import create_server
from agent.inference.rest import create_rest_server
from agent.inference.serving import Serving
from agent.inference.status import AgentFacts, Release
from agent.logs import RecentLog, TailFile
from agent.ports import PortInUseError, held_by_another, unix_socket_in_use
from agent.routing.cloud import CloudTarget
from agent.routing.guards import Breaker
from agent.routing.router import Router
from agent.systemd import Notifier, watchdog_interval
from agent.telemetry.outbox import deliver
from agent.telemetry.spool import Spool
from agent.updates import plan
from agent.updates.lifecycle import Lifecycle
from agent.updates.store import ModelStore
from agent.updates.updater import Updater
from protos import device_pb2

__all__ = ["Agent"]

log = logging.getLogger(__name__)


class Agent:
    """One agent process."""

    def __init__(self, config: AgentConfig, config_path: Path | None = None) -> None:
        # The recent log an operator may ask for (edgefleet devices log): kept from run().
        self.recent_log = RecentLog(secrets=self._secrets)
        self._tail: TailFile | None = None
        self._file_secrets: tuple[str, ...] = ()
        self.store = ModelStore(config.agent.state_dir, keep_versions=config.updates.keep_versions)
        self.lifecycle = Lifecycle(self.store, health_policy(config))
        spool = Spool(
            self.store.root / "spool.db", max_messages=config.telemetry.spool_max_messages
        )
        self.state = AgentState(config, spool)
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
        # The fleet CA is read at each enrollment attempt (EnrollLoop), not here: a missing one
        # must not keep the models in the store from being served.
        self._client = DeviceClient(
            config.server.address,
            timeout_s=config.server.timeout_s,
            stall_timeout_s=config.server.stall_timeout_s,
        )
        self._client.on_report = self._on_report
        self._client.deliver_outbox = lambda: deliver(self.state.spool, self._client)
        cloud = config.cloud
        self.router = Router(
            open_cloud(cloud, CloudTarget(cloud.url, config.cloud_token(), config.cloud_ca()))
            if cloud.url
            else None,
            overrides={name: routing_policy(r) for name, r in config.routing.items()},
            breaker=Breaker(cloud.breaker_failures, cloud.breaker_cooldown_s),
        )
        self.engine.set_input_rules(input_rules(config))
        self.notifier = Notifier()
        self._control = ControlLoop(
            state=self.state,
            router=self.router,
            engine=self.engine,
            client=self._client,
            config_path=config_path,
        )
        self._enroll = EnrollLoop(
            state=self.state, root=self.store.root, client=self._client, probe=self.probe
        )
        self._update = UpdateLoop(
            state=self.state,
            lifecycle=self.lifecycle,
            engine=self.engine,
            client=self._client,
            router=self.router,
            probe=self.probe,
            active=self._active,
            logs=LogAnswers(self.recent_log, self._client),
        )
        self._telemetry = TelemetryLoop(
            state=self.state,
            store=self.store,
            engine=self.engine,
            router=self.router,
            probe=self.probe,
            active=self._active,
            on_command=self._control.submit,
            started=time.monotonic(),
            on_silence=lambda why: self.notifier.status(why or self._serving_status()),
        )

    def request_reload(self) -> None:
        """Reload the config soon, whatever the agent is doing (from a SIGHUP handler: only
        queues the request for the control loop)."""
        self._control.request_reload("SIGHUP")

    def run(self, stop: threading.Event) -> None:
        """Run until ``stop`` is set.

        Raises:
            AgentError: the local API could not start.
        """
        root = logging.getLogger()
        root.addHandler(self.recent_log)
        try:
            self._serve(stop)
        except Exception as exc:
            # The command line prints it, not the log: the recent log keeps it too (a crash
            # loop's reason is what an operator asks the log for).
            self.recent_log.note(logging.ERROR, "agent", f"the agent stopped: {exc}")
            raise
        finally:
            # Whatever ended the run (a stop, a start failure, a bug), it ended through the
            # agent's own code: no crash to blame on a model (see agent.updates.plan).
            self.lifecycle.stop()
            self._client.close()
            self.state.spool.close()
            root.removeHandler(self.recent_log)
            if self._tail is not None:
                self._tail.close()

    def _serve(self, stop: threading.Event) -> None:
        state = self.state
        self._claim(state.config)  # before any model loads: a second agent stops here
        # After the claim: a second agent must not take the running one's tail files.
        self._tail = attach_tail(self.recent_log, self.store.root / "log")
        self._file_secrets = self._read_file_secrets()
        self._enroll.load_stored()  # no network: enrolling waits until the models are served
        self._update.recover()
        Updater.load_active_into(self.lifecycle, self.engine)
        config = state.config
        try:
            server, port = create_server(
                self.engine,
                socket_path=config.api.socket,
                tcp_address=config.api.listen or None,
                router=self.router,
                facts=self._facts,
            )
        except (OSError, RuntimeError, ValueError) as exc:  # grpcio: "port taken", RuntimeError
            raise AgentError(f"cannot start the local inference API: {exc}") from exc
        try:
            # The same core as the gRPC servicer's; REST serves no shared memory.
            rest = create_rest_server(
                Serving(self.engine, router=self.router),
                socket_path=config.api.rest_socket_path,
                tcp_address=config.api.rest_listen or None,
            )
        except (OSError, ValueError) as exc:
            server.stop(0)
            if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
                raise PortInUseError("api.rest_listen", config.api.rest_listen) from exc
            raise AgentError(f"cannot start the local REST inference API: {exc}") from exc
        server.start()
        try:
            rest.start()
        except OSError as exc:
            server.stop(0)
            raise AgentError(f"cannot start the local REST inference API: {exc}") from exc
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
            "local inference API on unix:%s%s; REST on unix:%s%s",
            config.api.socket,
            f" and port {port}" if port else "",
            config.api.rest_socket_path,
            f" and port {rest.port}" if rest.port else "",
        )
        for warning in config.warnings():
            log.warning("%s", warning)
        control = threading.Thread(
            target=self._control.run, args=(stop,), name="control", daemon=True
        )
        # Telemetry has its own stop: its last report must count the requests served while
        # the inference server drains.
        telemetry_stop = threading.Event()
        telemetry = threading.Thread(
            target=self._telemetry.run, args=(telemetry_stop,), name="telemetry", daemon=True
        )
        control.start()
        try:
            identity = self._enroll.run(stop, on_problem=self._not_enrolled)
            if identity is not None:
                self._update.run(stop, identity, on_enrolled=telemetry.start)
        finally:
            log.info("stopping: draining requests")
            self.notifier.notify("STOPPING=1", "STATUS=stopping: draining requests")
            stop.set()
            # Requests accepted before the stop are served; then the control loop's last
            # answer and the telemetry's last report (counting every served request) and
            # "stopped" state go out, in that order (both write the spool).
            stopped = server.stop(grace=5)
            rest.stop(grace=5)
            stopped.wait()
            if control.is_alive():
                control.join(timeout=10)
            telemetry_stop.set()
            if telemetry.is_alive():
                telemetry.join(timeout=10)
            if metrics is not None:
                metrics.stop()
            log.info("agent stopped")

    @staticmethod
    def _claim(config: AgentConfig) -> None:
        """Refuse ports and sockets another process listens on (agent.ports)."""
        api = config.api
        for what, address in (("api.listen", api.listen), ("api.rest_listen", api.rest_listen)):
            if address and held_by_another(address):
                raise PortInUseError(what, address)
        for what, path in (("api.socket", api.socket), ("api.rest_socket", api.rest_socket_path)):
            if unix_socket_in_use(path):
                raise PortInUseError(what, str(path))

    def _read_file_secrets(self) -> tuple[str, ...]:
        """The tokens the config names files for, read once: kept out of the recent log."""
        found = []
        for read in (self.state.config.enrollment_token, self.state.config.cloud_token):
            try:
                found.append(read())
            except AgentError:
                continue  # unreadable: the part that needs it says so
        return tuple(found)

    def _secrets(self) -> list[str]:
        """The secrets the agent holds now, for the recent log to take out (memory only: it
        is called for every record)."""
        state = self.state
        config = state.config
        found = [config.server.enrollment_token, *self._file_secrets]
        if config.telemetry.mqtt_url:
            with contextlib.suppress(ValueError):
                found.append(urlsplit(config.telemetry.mqtt_url).password or "")
        endpoint = state.server_endpoint
        if endpoint is not None:
            found.append(endpoint.token)
        cloud = self.router.cloud
        if cloud is not None:
            found.append(cloud.target.token)
        return found

    def probe(self) -> HardwareInfo:
        """What this device has now (free disk and temperatures change), and its configured
        time zone (a reload changes it)."""
        config = self.state.config
        hw = config.hardware
        found = probe(
            self.store.root,
            sysfs=hw.sysfs_root,
            devfs=hw.dev_root,
            edgetpu_library=hw.edgetpu_library,
        )
        return replace(found, timezone=config.device.timezone)

    def _serving_status(self) -> str:
        models = self.engine.models()
        if not models:
            return "up; no model assigned yet"
        names = ", ".join(f"{m.name} {m.version} ({m.backend})" for m in models)
        status = f"serving {len(models)} model(s): {names}"
        problem = self.state.telemetry_problem
        return f"{status}; telemetry degraded: {problem}" if problem else status

    def _not_enrolled(self, why: str) -> None:
        """systemd's STATUS says what keeps the device from enrolling ("": nothing any more)."""
        serving = self._serving_status()
        self.notifier.status(f"{serving}; not enrolled: {why}" if why else serving)

    def _on_report(self, report: device_pb2.StatusReport) -> bool:
        """Every update state change goes to systemd's STATUS and out as an event (True: it
        was spooled)."""
        state = device_pb2.UpdateState.Name(report.state)
        self.state.last_update = f"{report.model_name} {report.version}: {state}"
        self.state.last_update_detail = report.detail
        if state in ("INSTALLED", "ROLLED_BACK"):
            self.notifier.status(self._serving_status())
        else:
            self.notifier.status(f"{report.model_name} {report.version}: {state}")
        return self.state.event(report=report)

    def _facts(self) -> AgentFacts:
        """What the local API's Status says beyond the engine (gRPC threads call this)."""
        state, error = self.state, ""
        try:
            journal = self.store.journal()
        except AgentError as exc:
            journal, error = plan.Journal(), str(exc)
        releases = {
            name: Release(
                entry.release_counter,
                journal.previous[name].version if name in journal.previous else "",
                name in journal.health or name in journal.trials,
            )
            for name, entry in journal.models.items()
        }
        identity = state.identity
        return AgentFacts(
            enrolled=identity is not None,
            device_id=identity.device_id if identity else "",
            broker=state.broker,
            broker_connected=state.broker_connected,
            spooled=len(state.spool),
            spool_dropped=state.spool.dropped,
            telemetry_problem=state.telemetry_problem,
            telemetry_error=state.telemetry_error,
            last_update=state.last_update,
            last_update_detail=state.last_update_detail,
            releases=releases,
            refused_releases=len(journal.refused),
            journal_error=error,
        )

    def _active(self) -> list[device_pb2.ActiveModel]:
        """The models this device serves, with what the store knows of each."""
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

    def _telemetry_metrics(self) -> str:
        """The spool's state as Prometheus text: held, dropped, and whether reports fit."""
        spool = self.state.spool
        values = {
            "spool_messages": len(spool),
            "spool_dropped_total": spool.dropped,
            "telemetry_degraded": int(bool(self.state.telemetry_problem)),
        }
        kinds = {"spool_dropped_total": "counter"}
        return "".join(
            f"# TYPE edgefleet_agent_{k} {kinds.get(k, 'gauge')}\nedgefleet_agent_{k} {v}\n"
            for k, v in values.items()
        )

    def _start_metrics(self) -> MetricsServer | None:
        address = self.state.config.api.metrics_listen
        if not address:
            return None
        host, _, port = address.rpartition(":")
        try:
            metrics = MetricsServer(
                lambda: render_metrics(self.engine) + self._telemetry_metrics(), host, int(port)
            )
        except (OSError, ValueError) as exc:
            raise AgentError(f"cannot serve metrics on {address}: {exc}") from exc
        metrics.start()
        return metrics
