"""The price table: what a cloud request costs, and what local inference costs in energy."""

from __future__ import annotations

from dataclasses import dataclass, field

from fleet_server.errors import BadRequestError

__all__ = ["Prices"]


@dataclass(frozen=True)
class Prices:
    """The price table: a cloud request, and the energy of local inference."""

    cloud_per_request: float = 0.002  # USD
    energy_per_kwh: float = 0.30  # USD
    device_power_w: float = 5.0  # while inferring, unless the hardware class has its own
    power_by_class: dict[str, float] = field(default_factory=dict)  # e.g. {"x86_64": 35}

    def __post_init__(self) -> None:
        values = [self.cloud_per_request, self.energy_per_kwh, self.device_power_w]
        if any(v < 0 or v > 1e6 for v in [*values, *self.power_by_class.values()]):
            raise BadRequestError("prices and powers must be within 0..1e6")

    def local_per_request(self, latency_ms: float, hardware_class: str = "") -> float:
        """Energy cost of one local inference of ``latency_ms`` on a hardware class."""
        power = self.power_by_class.get(hardware_class, self.device_power_w)
        return latency_ms / 1000 * power / 3.6e6 * self.energy_per_kwh
