"""The control loop: the one place where a running agent is told to change.

It owns config reloads and the server's MQTT commands. The SIGHUP handler and paho's message
callback only put an item in its inbox (a ``queue.SimpleQueue``, whose ``put`` may be called
from a signal handler); this loop takes the items in order and applies them at once, whatever
the update loop is doing (enrolling, backing off from an unreachable server, downloading).
Two reloads never run at the same time, so the last one applied is the file as it was last read.

Commands that need the update loop ("checkin", "routing") are forwarded to it through the shared
``nudge`` event; "bench" runs in a thread of its own; "birth" republishes the retained online
state. Every command is answered on the events topic, a reload with what it applied.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import random
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path

from google.protobuf.message import DecodeError

from agent.client import DeviceClient
from agent.config import AgentConfig, load_config, routing_policy
from agent.daemon._cloud import close_later, open_cloud
from agent.daemon._state import AgentState
from agent.errors import AgentError, ConfigError
from agent.inference.bench import run_benchmark
from agent.inference.engine import Engine
from agent.inference.validation import InputRule
from agent.routing.cloud import CloudTarget
from agent.routing.router import Router
from protos import device_pb2, telemetry_pb2

__all__ = ["ControlLoop", "ReloadPlan", "input_rules", "plan_reload"]

log = logging.getLogger(__name__)

_POLL_S = 0.5  # how soon the loop sees the stop event when its inbox is empty
_MAX_PENDING = 256  # commands waiting in the inbox; more are dropped (the broker floods us)
_MAX_SEEN = 1024  # command ids remembered to act on each once
_MAX_COMMAND_BYTES = 4096  # a command is an id, a kind and a model name: ~100 bytes
_BENCH_SECONDS = 2.0  # a "bench" command runs the model this long
_NAMED = 8  # routing overrides named in a reload's message
_RESTART_ONLY = ("agent", "server", "api", "inference", "hardware", "updates", "telemetry")
_ENROLLMENT = ("enrollment_token", "enrollment_token_file", "ca_file")  # [server], live


@dataclass(frozen=True)
class ReloadPlan:
    """What a reload does: the config to run with from now on, whether the cloud client must be
    replaced, and what changed (for the log and the command's answer)."""

    config: AgentConfig
    cloud_changed: bool
    changes: tuple[str, ...]


def input_rules(config: AgentConfig) -> dict[str, InputRule]:
    """The engine's input validation per model, from the [validation.MODEL] tables."""
    return {
        name: InputRule(finite=v.finite, low=v.min, high=v.max)
        for name, v in config.validation.items()
    }


def plan_reload(current: AgentConfig, new: AgentConfig) -> ReloadPlan:
    """Decide what a reload from ``new`` applies to an agent running with ``current``: the
    ``[routing.*]`` overrides, ``[validation.*]``, ``[cloud]``, ``[device]`` (the time zone,
    reported at the next check-in), ``telemetry.interval_s`` and the enrollment settings of
    ``[server]`` (token, token file, CA file) apply at once; any other setting that differs is
    named as applying after a restart and keeps its running value.
    """
    live = replace(
        current, routing=new.routing, validation=new.validation, cloud=new.cloud, device=new.device
    )
    changes = [f"{len(new.routing)} routing override(s)"]
    if new.routing:
        named = [f"{name[:64]} {r.policy}" for name, r in sorted(new.routing.items())]
        more = f" and {len(named) - _NAMED} more" if len(named) > _NAMED else ""
        changes[0] += f" ({', '.join(named[:_NAMED])}{more})"
    if new.validation != current.validation:
        changes.append(f"input validation of {len(new.validation)} model(s)")
    if new.device != current.device:
        changes.append(f"time zone {new.device.timezone}")
    cloud_changed = new.cloud != current.cloud
    if cloud_changed:
        changes.append(f"cloud {new.cloud.url or 'from the server'}")
    # Read only to enroll, afresh at each attempt: a device that cannot enroll takes the fix.
    enrolling = {name: getattr(new.server, name) for name in _ENROLLMENT}
    if any(getattr(current.server, name) != value for name, value in enrolling.items()):
        live = replace(live, server=replace(live.server, **enrolling))
        changes.append("enrollment token and CA (used until the device is enrolled)")
    if new.telemetry.interval_s != current.telemetry.interval_s:
        live = replace(live, telemetry=replace(live.telemetry, interval_s=new.telemetry.interval_s))
        changes.append(f"telemetry every {new.telemetry.interval_s:g} s")
    rest = [name for name in _RESTART_ONLY if getattr(new, name) != getattr(live, name)]
    if rest:
        changes.append(f"[{'], ['.join(rest)}] changed: they apply after a restart")
    return ReloadPlan(live, cloud_changed, tuple(changes))


@dataclass(frozen=True)
class _Reload:
    source: str  # who asked, for the log: "SIGHUP"


@dataclass(frozen=True)
class _Command:
    payload: bytes  # as it came from the broker: decoded on the loop, not on paho's thread


class ControlLoop:
    """Reloads and MQTT commands, one at a time, on the control thread."""

    def __init__(
        self,
        *,
        state: AgentState,
        router: Router,
        engine: Engine,
        client: DeviceClient,
        config_path: Path | None,
    ) -> None:
        self._state = state
        self._router = router
        self._engine = engine
        self._client = client
        self._config_path = config_path
        self._inbox: queue.SimpleQueue[_Reload | _Command] = queue.SimpleQueue()
        self._seen: OrderedDict[str, None] = OrderedDict()  # ids acted on, oldest first
        self._nudge_at: float | None = None  # a "routing" command's spread-out check-in
        self._benching = threading.Lock()
        self._reload_queued = False  # a reload waits in the inbox

    def request_reload(self, source: str = "SIGHUP") -> None:
        """Reload the config file soon (safe from a signal handler: only queues). Requests that
        arrive while one waits are that one (it reads the file when it runs): a storm of
        SIGHUPs neither grows the inbox nor takes the commands' places in it."""
        if self._reload_queued:
            return
        self._reload_queued = True
        self._inbox.put(_Reload(source))

    def submit(self, payload: bytes) -> None:
        """A command as it arrived (from paho's thread: only queues, never blocks)."""
        if len(payload) > _MAX_COMMAND_BYTES:
            log.warning("dropping a %d-byte command (at most %d)", len(payload), _MAX_COMMAND_BYTES)
            return
        if self._inbox.qsize() >= _MAX_PENDING:
            log.warning("%d commands are waiting; dropping one", self._inbox.qsize())
            return
        self._inbox.put(_Command(payload))

    def run(self, stop: threading.Event) -> None:
        """Apply what arrives until ``stop`` is set; an unexpected error in one item is logged
        and the loop goes on (a bug in a command must not end reloads)."""
        # The inbox's timeout is this loop's wait: an item is handled the moment it arrives.
        while not stop.is_set():
            if self._nudge_at is not None and time.monotonic() >= self._nudge_at:
                self._nudge_at = None
                self._state.nudge.set()
            try:
                item = self._inbox.get(timeout=self._wait_s())
            except queue.Empty:
                continue
            try:
                if isinstance(item, _Reload):
                    self._reload_queued = False  # before reading: a later SIGHUP reads again
                    self._reload_logged(item.source)
                else:
                    self._command(item.payload)
            except Exception:
                log.exception("unexpected error in the control loop; it goes on")

    def _wait_s(self) -> float:
        if self._nudge_at is None:
            return _POLL_S
        return max(0.0, min(_POLL_S, self._nudge_at - time.monotonic()))

    def reload(self, source: str) -> str:
        """Re-read the config file and apply what can change while running (see
        :func:`plan_reload`). Returns what happened, for the log and a command's answer.

        Raises:
            ConfigError: the file is missing or invalid (nothing is changed then).
            ValueError: the new cloud URL is not usable (nothing is changed then).
        """
        if self._config_path is None:
            raise ConfigError("this agent was not started from a config file")
        state = self._state
        new = load_config(self._config_path)
        # Everything is built before anything changes: a bad file changes nothing.
        plan = plan_reload(state.config, new)
        overrides = {name: routing_policy(r) for name, r in new.routing.items()}
        rules = input_rules(new)
        client = None
        if plan.cloud_changed and new.cloud.url:
            target = CloudTarget(new.cloud.url, new.cloud_token(), new.cloud_ca())
            client = open_cloud(new.cloud, target)
        with state.cloud_lock:
            self._router.set_overrides(overrides)
            self._engine.set_input_rules(rules)
            if plan.cloud_changed:
                old, self._router.cloud = self._router.cloud, client
                state.server_endpoint = None  # the server's applies again at the next check-in
                if old is not None:
                    close_later(old)
            state.config = plan.config
        message = f"reloaded {self._config_path.name}: {'; '.join(plan.changes)}"
        log.info("%s: %s", source, message)
        return message

    def _reload_logged(self, source: str) -> tuple[bool, str]:
        try:
            return True, self.reload(source)
        except (ConfigError, ValueError) as exc:
            detail = f"reload refused, nothing changed: {exc}"
            log.error("%s: %s", source, detail)
            return False, detail

    def _command(self, payload: bytes) -> None:
        """Act on a server command once per id and answer it on the events topic; a bad one is
        ignored."""
        try:
            command = telemetry_pb2.Command.FromString(payload)
        except DecodeError:
            log.warning("ignoring an undecodable command")
            return
        identity = self._state.identity
        if identity is None or command.device_id != identity.device_id:
            log.warning(
                "ignoring a %r command addressed to %r, not to this device",
                command.kind[:32],
                command.device_id[:64],
            )
            return
        if command.id in self._seen:
            return
        self._seen[command.id] = None
        while len(self._seen) > _MAX_SEEN:  # forget the oldest ids first
            self._seen.popitem(last=False)
        ok, detail = True, ""
        if command.kind == "checkin":
            # At worst an extra check-in over mTLS: a command cannot change what runs.
            self._state.nudge.set()
            detail = "checking in"
        elif command.kind == "routing":
            # The new policy comes from the server's authenticated answer, not from MQTT. A
            # fleet-wide change reaches every device at once: spread the check-ins out.
            interval = self._state.config.server.checkin_interval_s
            delay = random.uniform(0, min(5.0, interval))  # noqa: S311
            due = time.monotonic() + delay
            self._nudge_at = due if self._nudge_at is None else min(self._nudge_at, due)
            detail = f"checking in for the new routing policy in {delay:.1f} s"
        elif command.kind == "bench":
            ok, detail = self._start_bench(command.model_name)
        elif command.kind == "reload":
            ok, detail = self._reload_logged(f"command {command.id[:64]}")
        elif command.kind == "birth":
            birth = self._state.birth
            if birth is not None:
                birth()
            detail = "state published"
        else:
            ok, detail = False, f"unknown command {command.kind[:32]!r}"
            log.warning("ignoring command of unknown kind %r", command.kind[:32])
        self._state.event(
            ack=telemetry_pb2.CommandAck(
                id=command.id[:64], kind=command.kind[:32], ok=ok, detail=detail
            )
        )

    def _start_bench(self, name: str) -> tuple[bool, str]:
        """Benchmark an installed model in the background (its own interpreter, the agent's
        thread count) and report it over the device API."""
        model = self._engine.peek(name)
        if model is None:
            return False, f"{name[:64]!r} is not loaded here"
        if self._benching.locked():
            return False, "a benchmark is already running"
        engine, client = self._engine, self._client
        threads = self._state.config.inference.num_threads

        def run() -> None:
            with self._benching:
                try:
                    result = run_benchmark(
                        model.path,
                        threads=threads,
                        seconds=_BENCH_SECONDS,
                        edgetpus=engine.options.edgetpus,
                        edgetpu_library=engine.options.edgetpu_library,
                    )
                    client.report_benchmark(
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
