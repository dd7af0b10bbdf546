"""The router: which policy applies to a model, the guarded cloud call, and what was counted.

The local API (``agent.inference.oip``) asks the router for a model's policy and, when a
request should go to the cloud, calls :meth:`Router.call_cloud`. A cloud that is down, slow,
over budget or behind an open breaker never fails a request that the local model can answer:
the local answer is served and flagged.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from agent.routing.cloud import CloudClient, CloudError
from agent.routing.guards import Breaker, Budget
from agent.routing.policy import Policy
from protos import inference_pb2 as pb

__all__ = ["RouteStats", "Router"]


@dataclass
class RouteStats:
    """Routing counts for one model since the agent started, and since the last report."""

    cloud_requests: int = 0  # answered by the cloud
    cloud_errors: int = 0  # cloud calls that failed
    cloud_skipped: int = 0  # cloud wanted, but a budget or the breaker stopped it
    cloud_cost_usd: float = 0.0
    window_cloud_requests: int = 0
    window_cloud_cost_usd: float = 0.0
    routed: int = 0  # requests answered under this policy, by any path
    window_routed: int = 0


class Router:
    """Policies per model (config overrides, then the server's), guards, counts."""

    def __init__(
        self,
        cloud: CloudClient | None,
        *,
        overrides: Mapping[str, Policy] | None = None,
        breaker: Breaker | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cloud = cloud
        self._overrides = dict(overrides or {})
        self._server: dict[str, Policy] = {}
        self._breaker = breaker or Breaker()
        self._budgets: dict[str, Budget] = {}
        self._stats: dict[str, RouteStats] = {}
        self._clock = clock
        self._lock = threading.Lock()

    def policy(self, model: str) -> Policy:
        """The policy for a model: the agent's config, else the server's, else ``local``."""
        return self._overrides.get(model) or self._server.get(model) or Policy()

    def set_overrides(self, policies: Mapping[str, Policy]) -> None:
        """Replace the agent config's policies (a reload)."""
        self._overrides = dict(policies)

    def set_server_policies(self, policies: Mapping[str, Policy]) -> None:
        self._server = dict(policies)

    def models(self) -> list[str]:
        """Models with a policy other than ``local`` (cloud-only ones included)."""
        names = set(self._server) | set(self._overrides)
        return sorted(n for n in names if self.policy(n).uses_cloud)

    def stats(self, model: str) -> RouteStats:
        with self._lock:
            return self._stats.setdefault(model, RouteStats())

    def take_window(self, model: str) -> RouteStats:
        """A copy of a model's counts; the window counts restart."""
        with self._lock:
            stats = self._stats.setdefault(model, RouteStats())
            copy = RouteStats(**stats.__dict__)
            stats.window_cloud_requests = 0
            stats.window_cloud_cost_usd = 0.0
            stats.window_routed = 0
        return copy

    def count(self, model: str) -> None:
        """Count one request handled under a cloud-using policy (whatever served it)."""
        with self._lock:
            stats = self._stats.setdefault(model, RouteStats())
            stats.routed += 1
            stats.window_routed += 1

    @property
    def breaker_open(self) -> bool:
        return self._breaker.open

    def call_cloud(
        self, model: str, policy: Policy, request: pb.ModelInferRequest
    ) -> tuple[pb.ModelInferResponse | None, str]:
        """Ask the cloud, within the guards: (the answer, "") or (None, why not)."""
        cloud = self.cloud  # once: a reload may swap it meanwhile
        if cloud is None:
            return None, "no cloud endpoint configured"
        now = self._clock()
        with self._lock:
            stats = self._stats.setdefault(model, RouteStats())
            budget = self._budgets.setdefault(model, Budget())
            # The budget first: a refused call must not take the breaker's one probe.
            refused = budget.allow(policy, now) or self._breaker.allow(now)
            if refused:
                stats.cloud_skipped += 1
                return None, refused
            budget.spend(policy, now)  # a call that fails has still been paid for
        forwarded = pb.ModelInferRequest()
        forwarded.CopyFrom(request)
        forwarded.model_name = policy.cloud_model or model
        forwarded.model_version = ""
        ok = False
        try:
            response = cloud.infer(forwarded)
            ok = True
        except CloudError as exc:
            return None, f"cloud failed: {exc}"
        finally:
            # Whatever happened (even an unexpected error), the breaker hears of it.
            with self._lock:
                self._breaker.record(ok, self._clock())
                stats.cloud_cost_usd += policy.cloud_cost
                stats.window_cloud_cost_usd += policy.cloud_cost
                if ok:
                    stats.cloud_requests += 1
                    stats.window_cloud_requests += 1
                else:
                    stats.cloud_errors += 1
        return response, ""
