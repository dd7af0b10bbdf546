"""The agent's TOML configuration: typed, bounded, unknown keys rejected.

Example (packaging/config/agent.toml has the annotated version)::

    [agent]
    name = "pi-kitchen"
    state_dir = "/var/lib/edgefleet-agent"

    [server]
    address = "fleet.example.com:7443"
    enrollment_token_file = "/etc/edgefleet/enrollment.token"
"""

from __future__ import annotations

import math
import os
import re
import stat
import tomllib
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from agent.errors import ConfigError
from agent.routing.policy import Policy
from protos.zones import zone_of

__all__ = [
    "AgentConfig",
    "AgentSection",
    "ApiSection",
    "CloudSection",
    "DeviceSection",
    "HardwareSection",
    "InferenceSection",
    "RoutingSection",
    "ServerSection",
    "TelemetrySection",
    "UpdatesSection",
    "ValidationSection",
    "line_of",
    "load_config",
    "routing_policy",
]


@dataclass(frozen=True)
class AgentSection:
    name: str = ""  # defaults to the host name
    state_dir: Path = Path("/var/lib/edgefleet-agent")
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class DeviceSection:
    # The IANA time zone (e.g. "Europe/Berlin") the fleet's maintenance windows are read in for
    # this device; reported to the server at enrollment and each check-in.
    timezone: str = "UTC"


@dataclass(frozen=True)
class ServerSection:
    # host:port of the fleet server's main port; several replicas separated by commas
    # ("a.example:7443, b.example:7443"): the agent moves to the next when calls to one go
    # unanswered (docs/deployment.md). URLs the server gives by port only use the first host.
    address: str = "127.0.0.1:7443"
    enrollment_token: str = ""
    enrollment_token_file: Path | None = None
    # The fleet CA certificate (the server's DATA_DIR/ca/ca.crt): the server's TLS certificate
    # must chain to it. Needed to enroll; afterwards the CA from enrollment is used.
    ca_file: Path | None = None
    checkin_interval_s: float = 30.0
    timeout_s: float = 10.0
    # A download that receives nothing for this long is cancelled and resumed later.
    stall_timeout_s: float = 30.0

    def addresses(self) -> list[str]:
        """The server replicas' addresses, in the order they are tried."""
        return [part.strip() for part in self.address.split(",") if part.strip()]


@dataclass(frozen=True)
class ApiSection:
    socket: Path = Path("/run/edgefleet-agent/oip.sock")
    listen: str = ""  # optional TCP address, e.g. "127.0.0.1:8001"
    metrics_listen: str = ""  # optional Prometheus endpoint, e.g. "127.0.0.1:9464"
    # The same API over HTTP (KServe v2 / Triton REST): a unix socket (default: rest.sock
    # beside ``socket``) and an optional TCP address, e.g. "127.0.0.1:8000".
    rest_socket: Path | None = None
    rest_listen: str = ""

    @property
    def rest_socket_path(self) -> Path:
        """Where the REST API listens: ``rest_socket``, or rest.sock beside ``socket``."""
        return self.rest_socket or self.socket.with_name("rest.sock")


@dataclass(frozen=True)
class InferenceSection:
    num_threads: int = 1  # CPU threads per interpreter
    workers: int = 2  # interpreters per model (parallel requests per model)
    queue_depth: int = 32  # requests waiting per model before RESOURCE_EXHAUSTED
    memory_budget_mb: int = 0  # 0 = no budget; else idle unpinned models are evicted (LRU)


@dataclass(frozen=True)
class HardwareSection:
    edgetpu_library: str = "libedgetpu.so.1"  # a name searched in the usual places, or a path
    sysfs_root: Path = Path("/sys")  # for containers that mount the host's sysfs elsewhere
    dev_root: Path = Path("/dev")


@dataclass(frozen=True)
class UpdatesSection:
    health_window_s: float = 60.0  # serving time a new version is watched before it counts as good
    health_min_requests: int = 20  # requests needed before error rate and latency are judged
    health_max_error_rate: float = 0.2  # more failed requests than this: roll back
    health_max_latency_ratio: float = 3.0  # p50 this many times the previous version's: roll back
    crash_loop_starts: int = 3  # abnormal deaths while it loaded or served: a crash loop
    max_download_kbps: int = 0  # download bandwidth limit in KiB/s; 0 = unlimited
    keep_versions: int = 2  # older versions kept on disk per model (the last-known-good counts)
    # HTTPS downloads from the fleet's object store or a mirror: the CA of their certificates
    # (default: the system's roots); plain HTTP only when allowed (the manifest's hash protects
    # integrity, not privacy). Every byte is checked; the server's stream is the fallback.
    download_ca_file: Path | None = None
    allow_http_downloads: bool = False


@dataclass(frozen=True)
class TelemetrySection:
    mqtt_url: str = ""  # overrides the URL the server hands out at enrollment
    interval_s: float = 10.0
    # Messages kept on disk while the broker is away; past it the oldest telemetry goes first
    # (update events are never dropped).
    spool_max_messages: int = 10_000


@dataclass(frozen=True)
class CloudSection:
    # An Open Inference Protocol v2 gRPC endpoint: grpcs://host:port (TLS) or grpc://...
    # Empty: the one the server hands out in the desired state, if any.
    url: str = ""
    token_file: Path | None = None  # or systemd's credential "cloud-token"
    ca_file: Path | None = None  # for its TLS certificate; default: the system's roots
    timeout_s: float = 2.0  # per request, retries included
    retries: int = 1  # on UNAVAILABLE / RESOURCE_EXHAUSTED, with jittered backoff
    breaker_failures: int = 5  # consecutive failures that open the circuit breaker
    breaker_cooldown_s: float = 30.0  # before one request tries the cloud again


@dataclass(frozen=True)
class RoutingSection:
    """A model's routing policy set on the device, overriding the server's."""

    policy: str = "local"
    threshold: float = 0.0
    latency_budget_ms: float = 0.0
    cloud_model: str = ""
    cloud_cost: float = 0.0
    max_per_minute: int = -1  # -1: no limit; 0: no cloud calls
    max_spend_per_day: float = -1.0  # USD; -1: no limit; 0: no cloud calls


@dataclass(frozen=True)
class ValidationSection:
    """A model's input validation (docs/inference-api.md): refuse NaN and infinities, and
    values outside [min, max] in real numbers."""

    finite: bool = True
    min: float = -math.inf
    max: float = math.inf


@dataclass(frozen=True)
class AgentConfig:
    agent: AgentSection = field(default_factory=AgentSection)
    device: DeviceSection = field(default_factory=DeviceSection)
    server: ServerSection = field(default_factory=ServerSection)
    api: ApiSection = field(default_factory=ApiSection)
    inference: InferenceSection = field(default_factory=InferenceSection)
    hardware: HardwareSection = field(default_factory=HardwareSection)
    updates: UpdatesSection = field(default_factory=UpdatesSection)
    telemetry: TelemetrySection = field(default_factory=TelemetrySection)
    cloud: CloudSection = field(default_factory=CloudSection)
    routing: dict[str, RoutingSection] = field(default_factory=dict)  # per model name
    validation: dict[str, ValidationSection] = field(default_factory=dict)  # per model name

    def warnings(self) -> list[str]:
        """What is allowed but unsafe: listeners other hosts can reach without TLS or auth."""
        found = []
        for key, address in (("api.listen", self.api.listen),
                             ("api.rest_listen", self.api.rest_listen),
                             ("api.metrics_listen", self.api.metrics_listen)):  # fmt: skip
            host = address.rpartition(":")[0].strip("[]")
            if address and host not in {"127.0.0.1", "::1", "localhost"}:
                what = ("shows this device's models and load to anyone"
                        if key == "api.metrics_listen"
                        else "runs and unloads this device's models for anyone who reaches it "
                        f"(plain {'HTTP' if key == 'api.rest_listen' else 'TCP'}, "
                        "no authentication)")  # fmt: skip
                found.append(f"{key} = {address!r} listens beyond this device and {what}; "
                             "use 127.0.0.1, or a firewall")  # fmt: skip
        return found

    def cloud_token(self) -> str:
        """The cloud endpoint's token: from ``cloud.token_file`` or systemd's credentials dir
        (``cloud-token``); empty when neither is there.

        Raises:
            ConfigError: the configured file cannot be read.
        """
        for path in _candidates(self.cloud.token_file, "cloud-token"):
            try:
                return _read_small(path, "the cloud token").decode("utf-8").strip()
            except FileNotFoundError:
                if path == self.cloud.token_file:
                    raise ConfigError(f"cloud.token_file {path} does not exist") from None
            except OSError as exc:
                raise ConfigError(f"cannot read the cloud token {path}: {exc}") from exc
        return ""

    def cloud_ca(self) -> bytes | None:
        """The CA of the cloud endpoint's TLS certificate (None: the system's roots).

        Raises:
            ConfigError: ``cloud.ca_file`` cannot be read.
        """
        path = self.cloud.ca_file
        if path is None:
            return None
        try:
            return _read_small(path, "cloud.ca_file")
        except OSError as exc:
            raise ConfigError(f"cannot read cloud.ca_file {path}: {exc}") from exc

    def enrollment_token(self) -> str:
        """The enrollment token: inline, from a file, or from systemd's credentials dir.

        Raises:
            ConfigError: the token file cannot be read.
        """
        if self.server.enrollment_token:
            return self.server.enrollment_token
        for path in _candidates(self.server.enrollment_token_file, "enrollment-token"):
            try:
                token = _read_small(path, "the enrollment token").decode("utf-8").strip()
            except FileNotFoundError:
                if path == self.server.enrollment_token_file and not os.environ.get(
                    "CREDENTIALS_DIRECTORY"
                ):
                    raise ConfigError(
                        f"server.enrollment_token_file {path} does not exist: put a token from "
                        "'edgefleet tokens create' there (or LoadCredential=enrollment-token:...)"
                    ) from None
                continue
            except OSError as exc:
                raise ConfigError(f"cannot read enrollment token {path}: {exc}") from exc
            except UnicodeDecodeError as exc:
                raise ConfigError(f"enrollment token {path} is not text") from exc
            if not token:
                # Not "no token configured": one is, and the file is wrong.
                raise ConfigError(
                    f"the enrollment token file {path} is empty: put a token from 'edgefleet "
                    "tokens create' in it"
                )
            return token
        return ""

    def fleet_ca(self) -> bytes:
        """The fleet CA certificate (PEM): from ``server.ca_file`` or systemd's credentials dir
        (``fleet-ca.crt``); empty when neither is there.

        Raises:
            ConfigError: the file cannot be read.
        """
        for path in _candidates(self.server.ca_file, "fleet-ca.crt"):
            try:
                return _read_small(path, "the fleet CA")
            except FileNotFoundError:
                if path == self.server.ca_file:
                    raise ConfigError(f"server.ca_file {path} does not exist") from None
            except OSError as exc:
                raise ConfigError(f"cannot read the fleet CA {path}: {exc}") from exc
        return b""

    def enrollment_inputs(self) -> tuple[str, bytes]:
        """The enrollment token and the fleet CA (PEM): what a device that is not enrolled yet
        needs to enroll. Read afresh at each call: a file fixed meanwhile counts.

        Raises:
            ConfigError: naming everything that is wrong: a configured file that cannot be
                read, no token, no CA.
        """
        token, ca, problems = "", b"", []
        try:
            token = self.enrollment_token()
        except ConfigError as exc:
            problems.append(str(exc))
        else:
            if not token:
                problems.append(
                    "no enrollment token is configured (server.enrollment_token, server."
                    "enrollment_token_file, or systemd's LoadCredential=enrollment-token:...)"
                )
        try:
            ca = self.fleet_ca()
        except ConfigError as exc:
            problems.append(str(exc))
        else:
            if not ca:
                problems.append(
                    "no fleet CA to check the server with: set server.ca_file to a copy of the "
                    "server's DATA_DIR/ca/ca.crt (or LoadCredential=fleet-ca.crt:...)"
                )
        if problems:
            raise ConfigError("; ".join(problems))
        return token, ca


_MAX_FILE_BYTES = 1 << 20  # a config, a token or a CA is a few KiB; more is the wrong file


def _read_small(path: Path, what: str) -> bytes:
    """The bytes of a regular file of at most 1 MiB, or a refusal: a FIFO would block the
    reader (at a reload: the control loop, for good) and /dev/zero never ends.

    Raises:
        OSError: the file cannot be opened or read.
        ConfigError: it is not a regular file, or is larger than 1 MiB.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO: do not wait
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ConfigError(f"{what} {path} is not a regular file")
        data = handle.read(_MAX_FILE_BYTES + 1)
    if len(data) > _MAX_FILE_BYTES:
        raise ConfigError(f"{what} {path} is larger than 1 MiB; is it the right file?")
    return data


def _candidates(configured: Path | None, credential: str) -> list[Path]:
    """Where a secret may be: the configured file, then systemd's credentials dir."""
    paths = [configured] if configured is not None else []
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if creds:
        paths.append(Path(creds) / credential)
    return paths


_T = TypeVar("_T")
# Tables of one section per model name: [routing.MODEL], [validation.MODEL].
_PER_MODEL: dict[str, type[Any]] = {"routing": RoutingSection, "validation": ValidationSection}


def _build(cls: type[_T], raw: Any, where: str) -> _T:
    if not isinstance(raw, dict):
        raise ConfigError(f"[{where}] must be a table")
    known = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ConfigError(
            f"unknown key(s) in [{where}]: {', '.join(unknown)} (known: {', '.join(sorted(known))})"
        )
    values: dict[str, Any] = {}
    for name, value in raw.items():
        spec = known[name]
        default = getattr(cls(), name)
        key = f"{where}.{name}" if where else name
        if is_dataclass(default):
            values[name] = _build(type(default), value, key)
        elif cls is AgentConfig and name in _PER_MODEL:
            table = _expect(value, dict, key)
            values[name] = {
                model: _build(_PER_MODEL[name], section, f"{name}.{model}")
                for model, section in table.items()
            }
        elif isinstance(default, bool):
            values[name] = _expect(value, bool, key)
        elif isinstance(default, int):
            values[name] = _expect(value, int, key)
        elif isinstance(default, float):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"{key} must be a number, got {value!r}")
            values[name] = float(value)
        elif isinstance(default, Path) or "Path" in str(spec.type):
            values[name] = Path(_expect(value, str, key))
        elif isinstance(default, dict):
            table = _expect(value, dict, key)
            for k, v in table.items():
                if not isinstance(v, str) or len(k) > 63 or len(v) > 255:
                    raise ConfigError(f"{key}.{k} must be a string of at most 255 characters")
            values[name] = dict(table)
        else:
            values[name] = _expect(value, str, key)
    return cls(**values)


def _expect(value: Any, kind: type, key: str) -> Any:
    if isinstance(value, bool) and kind is not bool:
        raise ConfigError(f"{key} must be {kind.__name__}, got {value!r}")
    if not isinstance(value, kind):
        raise ConfigError(f"{key} must be {kind.__name__}, got {value!r}")
    return value


def _validate(config: AgentConfig) -> None:
    if zone_of(config.device.timezone) is None:
        raise ConfigError(
            f"device.timezone {config.device.timezone[:70]!r} is not an IANA time zone this "
            "machine knows (e.g. Europe/Berlin, America/New_York, UTC)"
        )
    if not 1.0 <= config.server.checkin_interval_s <= 86400:
        raise ConfigError("server.checkin_interval_s must be within 1..86400")
    if not 0.5 <= config.server.timeout_s <= 300:
        raise ConfigError("server.timeout_s must be within 0.5..300")
    if not 1.0 <= config.server.stall_timeout_s <= 600:
        raise ConfigError("server.stall_timeout_s must be within 1..600")
    if not 0.5 <= config.telemetry.interval_s <= 3600:
        raise ConfigError("telemetry.interval_s must be within 0.5..3600")
    if not 10 <= config.telemetry.spool_max_messages <= 10_000_000:
        raise ConfigError("telemetry.spool_max_messages must be within 10..10000000")
    if not 1 <= config.inference.num_threads <= 64:
        raise ConfigError("inference.num_threads must be within 1..64")
    if not 1 <= config.inference.workers <= 16:
        raise ConfigError("inference.workers must be within 1..16")
    if not 0 <= config.inference.queue_depth <= 10_000:
        raise ConfigError("inference.queue_depth must be within 0..10000")
    if not 0 <= config.inference.memory_budget_mb <= 1_048_576:
        raise ConfigError("inference.memory_budget_mb must be within 0..1048576")
    addresses = config.server.addresses()
    if not 1 <= len(addresses) <= 8 or any(":" not in a for a in addresses):
        raise ConfigError(
            f"server.address {config.server.address[:200]!r} must be host:port, or up to 8 of "
            "them separated by commas"
        )
    u = config.updates
    if not 0 <= u.health_window_s <= 86400:
        raise ConfigError("updates.health_window_s must be within 0..86400")
    if not 1 <= u.health_min_requests <= 1_000_000:
        raise ConfigError("updates.health_min_requests must be within 1..1000000")
    if not 0 <= u.health_max_error_rate <= 1:
        raise ConfigError("updates.health_max_error_rate must be within 0..1")
    if not 1 <= u.health_max_latency_ratio <= 1000:
        raise ConfigError("updates.health_max_latency_ratio must be within 1..1000")
    if not 1 <= u.keep_versions <= 20:
        raise ConfigError("updates.keep_versions must be within 1..20")
    if not 0 <= u.max_download_kbps <= 10_000_000:
        raise ConfigError("updates.max_download_kbps must be within 0..10000000")
    if not 2 <= u.crash_loop_starts <= 100:
        raise ConfigError("updates.crash_loop_starts must be within 2..100")
    if config.api.metrics_listen and ":" not in config.api.metrics_listen:
        raise ConfigError(f"api.metrics_listen {config.api.metrics_listen!r} must be host:port")
    if len(str(config.api.socket)) > 100:
        raise ConfigError(f"api.socket {config.api.socket} is longer than a unix socket allows")
    if config.api.rest_socket is not None and len(str(config.api.rest_socket)) > 100:
        raise ConfigError(
            f"api.rest_socket {config.api.rest_socket} is longer than a unix socket allows"
        )
    if config.api.rest_socket is not None and config.api.rest_socket == config.api.socket:
        raise ConfigError(f"api.rest_socket {config.api.rest_socket} is also api.socket; give "
                          "the REST API a socket of its own")  # fmt: skip
    rest = config.api.rest_listen
    if rest and not (":" in rest and rest.rpartition(":")[2].isdigit()
                     and 0 < int(rest.rpartition(":")[2]) < 65536):  # fmt: skip
        raise ConfigError(f'api.rest_listen {rest!r} must be host:port, e.g. "127.0.0.1:8000"')
    c = config.cloud
    if c.url and (
        not c.url.startswith(("grpc://", "grpcs://"))
        or not c.url.split("://", 1)[1].rpartition(":")[2].isdigit()
    ):
        raise ConfigError(f"cloud.url {c.url!r} must be grpcs://host:port or grpc://host:port")
    if not 0.05 <= c.timeout_s <= 300:
        raise ConfigError("cloud.timeout_s must be within 0.05..300")
    if not 0 <= c.retries <= 10:
        raise ConfigError("cloud.retries must be within 0..10")
    if not 1 <= c.breaker_failures <= 1000 or not 0 <= c.breaker_cooldown_s <= 86400:
        raise ConfigError(
            "cloud.breaker_failures must be within 1..1000, breaker_cooldown_s within 0..86400"
        )
    for model, r in config.routing.items():
        try:
            routing_policy(r)
        except ConfigError as exc:
            raise ConfigError(f"routing.{model}: {exc}") from exc
    for model, v in config.validation.items():
        if math.isnan(v.min) or math.isnan(v.max) or v.min > v.max:
            raise ConfigError(f"validation.{model}: min {v.min:g} must be at most max {v.max:g}")
    if config.telemetry.mqtt_url and not config.telemetry.mqtt_url.startswith(
        ("mqtt://", "mqtts://")
    ):
        raise ConfigError("telemetry.mqtt_url must start with mqtt:// or mqtts://")


def routing_policy(section: RoutingSection) -> Policy:
    """The policy a [routing.MODEL] table sets.

    Raises:
        ConfigError: an unknown policy or an out-of-range value.
    """
    return Policy(
        kind=section.policy,
        threshold=section.threshold,
        latency_budget_ms=section.latency_budget_ms,
        cloud_model=section.cloud_model,
        cloud_cost=section.cloud_cost,
        max_per_minute=None if section.max_per_minute < 0 else section.max_per_minute,
        max_spend_per_day=None if section.max_spend_per_day < 0 else section.max_spend_per_day,
        source="config",
    )


def line_of(text: str, table: str, key: str) -> int | None:
    """The 1-based line of ``key = ...`` inside ``[table]`` (or of the table header when the
    key is not found), or None."""
    current = ""
    header = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if line.startswith("[") and line.endswith("]"):
            current = line.strip("[]").strip()
            if current == table:
                header = number
            continue
        if current == table and line.split("=", 1)[0].strip().strip('"') == key:
            return number
    return header


_UNKNOWN = re.compile(r"^unknown key\(s\) in \[([^\]]*)\]: ([^ ,]+)")
_KEYED = re.compile(r"^([a-z_]+(?:\.[A-Za-z0-9_.-]+)*?)\.([a-z_]+) ")


def _where(text: str, message: str) -> str:
    """``:LINE`` for the key a validation message names, when it can be found."""
    unknown = _UNKNOWN.match(message)
    keyed = _KEYED.match(message)
    if unknown:
        line = line_of(text, unknown.group(1), unknown.group(2))
    elif keyed:
        line = line_of(text, keyed.group(1), keyed.group(2))
    else:
        line = None
    return f":{line}" if line else ""


def _read_config(path: Path) -> str:
    """The config file's text (see :func:`_read_small`).

    Raises:
        OSError: the file cannot be opened or read.
        ConfigError: it is not a regular file, too large, or not UTF-8.
    """
    data = _read_small(path, "config file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 (byte {exc.start})") from exc


def load_config(path: Path) -> AgentConfig:
    """Read, type-check and validate a config file.

    Raises:
        ConfigError: naming the file and what is wrong in it.
    """
    try:
        text = _read_config(path)
        raw = tomllib.loads(text)
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} does not exist") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
    try:
        config = _build(AgentConfig, raw, "")
        _validate(config)
    except ConfigError as exc:
        raise ConfigError(f"{path}{_where(text, str(exc))}: {exc}") from exc
    # Relative paths are relative to the config file, not to wherever the agent started.
    base = path.resolve().parent
    if not config.agent.state_dir.is_absolute():
        config = replace(
            config, agent=replace(config.agent, state_dir=base / config.agent.state_dir)
        )
    if not config.api.socket.is_absolute():
        config = replace(config, api=replace(config.api, socket=base / config.api.socket))
    if config.api.rest_socket is not None and not config.api.rest_socket.is_absolute():
        rest_socket = base / config.api.rest_socket
        config = replace(config, api=replace(config.api, rest_socket=rest_socket))
    if config.server.enrollment_token_file is not None and not (
        config.server.enrollment_token_file.is_absolute()
    ):
        token_file = base / config.server.enrollment_token_file
        config = replace(config, server=replace(config.server, enrollment_token_file=token_file))
    if config.server.ca_file is not None and not config.server.ca_file.is_absolute():
        config = replace(
            config, server=replace(config.server, ca_file=base / config.server.ca_file)
        )
    for name in ("token_file", "ca_file"):
        value = getattr(config.cloud, name)
        if value is not None and not value.is_absolute():
            config = replace(config, cloud=replace(config.cloud, **{name: base / value}))
    return config
