"""What the server's services share: the stores of every concern, the keys, the CA, and the
hooks the composition root (:mod:`fleet_server.app`) wires between them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fleet_server.admins.store import AdminStore
from fleet_server.artifacts.store import Artifacts
from fleet_server.audit.store import AuditLog
from fleet_server.catalog.benchmarks import BenchStore
from fleet_server.catalog.downloads import Downloads
from fleet_server.catalog.push import MANIFEST_LIFETIME_S
from fleet_server.catalog.store import CatalogStore
from fleet_server.registry.ca import FleetCA
from fleet_server.registry.checkins import AnswerCache, LastSeen
from fleet_server.registry.devlogs import DeviceLogStore
from fleet_server.registry.refusals import RefusalStore
from fleet_server.registry.store import DeviceStore
from fleet_server.renewal.status import current as current_status
from fleet_server.rollouts.health import HealthStore
from fleet_server.rollouts.retention import Retention
from fleet_server.rollouts.store import RolloutStore
from fleet_server.rollouts.window_store import WindowStore
from fleet_server.routing.store import RoutingStore
from fleet_server.signing.expiry import KeyStatus
from fleet_server.signing.keys import KeyStore
from fleet_server.storage.db import Database
from fleet_server.telemetry.store import TelemetryStore
from fleet_server.webhooks.store import WebhookStore
from protos import device_pb2

if TYPE_CHECKING:
    from fleet_server.datadir import DataDir

__all__ = ["ServerContext"]


@dataclass
class ServerContext:
    """Everything the servicers share."""

    db: Database
    artifacts: Artifacts
    keys: KeyStore
    fleet_id: str
    admin_token: str
    enrollment_token: str
    device_mqtt_url: str
    ca: FleetCA
    device_address: str = ""  # host:port of the mTLS device port, as devices should dial it
    data_dir: DataDir | None = None  # the server's own (None: stores without one, in tests)
    server_cert_pem: bytes = b""  # the TLS certificate the gRPC ports present (create_server)
    checkin_interval_s: int = 30
    manifest_lifetime_s: int = MANIFEST_LIFETIME_S  # of the manifests it signs (push, rollback)
    renew_ahead_s: float = 30 * 86400  # manifests in use expiring sooner are re-issued
    devices: DeviceStore = field(init=False)
    refusals: RefusalStore = field(init=False)
    device_logs: DeviceLogStore = field(init=False)
    catalog: CatalogStore = field(init=False)
    telemetry: TelemetryStore = field(init=False)
    rollouts: RolloutStore = field(init=False)
    windows: WindowStore = field(init=False)
    health: HealthStore = field(init=False)
    routing: RoutingStore = field(init=False)
    bench: BenchStore = field(init=False)
    downloads: Downloads = field(init=False)
    audit: AuditLog = field(init=False)
    admins: AdminStore = field(init=False)
    retention: Retention = field(init=False)
    webhooks: WebhookStore = field(init=False)
    # Called when something may let a rollout move on (set by the rollout controller).
    wake_rollouts: Callable[[], None] = lambda: None
    # Called when the manifests in use changed: the key maintainer looks at them at once.
    wake_upkeep: Callable[[], None] = lambda: None
    # Publishes a command (device id, kind[, model name]) to a device over MQTT and returns
    # its id (set when MQTT is there).
    send_command: Callable[..., str] | None = None
    # Called with a device's id once it is revoked: the embedded broker closes its connection
    # and the ingest drops its messages (set when they run in this process).
    revoked: Callable[[str], None] = lambda _device_id: None
    # Where devices send cloud-routed requests (the reference service or another OIP server).
    cloud_endpoint: device_pb2.CloudEndpoint | None = None
    # A mirror of the artifacts devices try first ("{artifact}" = the sha256); "" = none.
    mirror_url: str = ""

    last_seen: LastSeen = field(init=False)
    answers: AnswerCache = field(init=False)

    def __post_init__(self) -> None:
        self.devices = DeviceStore(self.db)
        self.refusals = RefusalStore(self.db)
        self.device_logs = DeviceLogStore(self.db)
        self.catalog = CatalogStore(self.db)
        self.telemetry = TelemetryStore(self.db)
        self.windows = WindowStore(self.db)
        self.rollouts = RolloutStore(self.db, self.catalog, self.windows)
        self.health = HealthStore(self.db)
        self.routing = RoutingStore(self.db)
        self.bench = BenchStore(self.db)
        self.downloads = Downloads(self.db)
        self.audit = AuditLog(self.db)
        self.admins = AdminStore(self.db, self.admin_token)
        self.retention = Retention(self.db, self.artifacts)
        self.webhooks = WebhookStore(self.db)
        self.last_seen = LastSeen(self.devices)
        self.answers = AnswerCache()

    def key_status(self, now: float) -> KeyStatus:
        """What expires when (keys status, the dashboard, the expiry hook: one view)."""
        return current_status(
            self.keys,
            self.catalog,
            self.rollouts,
            data_dir=self.data_dir,
            server_cert_pem=self.server_cert_pem,
            now=now,
        )
