"""Staged rollouts: create (now or at a start time), read, pause, resume, abort, roll back."""

from __future__ import annotations

import logging
from typing import Any

from fleet_server.api._errors import rpc_errors
from fleet_server.api.admin import wire
from fleet_server.api.admin._base import (
    AdminBase,
    actor,
    audited,
)
from fleet_server.api.identity import require_admin
from fleet_server.errors import (
    BadRequestError,
    ConflictError,
)
from fleet_server.registry.labels import check_labels
from fleet_server.rollouts.schedule import iso_utc
from fleet_server.rollouts.states import Event
from protos import admin_pb2 as pb

log = logging.getLogger(__name__)
DEFAULT_SUCCESS = 0.9
DEFAULT_FAILURE = 0.1
DEFAULT_DEVICE_TIMEOUT_S = 3600


class RolloutsAdmin(AdminBase):
    @rpc_errors
    @audited(
        "CreateRollout",
        lambda r: (
            f"model {r.model_name} {r.version}"
            + (f" at {iso_utc(r.start_unix)}" if r.start_unix else "")
        ),
    )
    def CreateRollout(self, request: pb.CreateRolloutRequest, context: Any) -> pb.RolloutInfo:  # noqa: N802
        require_admin(context)
        self.require_signed(request.model_name, request.version)
        check_labels(request.selector, "selector label")
        row = self._ctx.rollouts.create(
            model_name=request.model_name,
            version=request.version,
            selector=dict(request.selector),
            waves=list(request.waves),
            success_threshold=request.success_threshold or DEFAULT_SUCCESS,
            failure_threshold=0.0
            if request.pause_on_any_failure
            else request.failure_threshold or DEFAULT_FAILURE,
            max_concurrent=request.max_concurrent,
            device_timeout_s=request.device_timeout_s or DEFAULT_DEVICE_TIMEOUT_S,
            created_by=actor(context),
            allow_empty=request.allow_empty,
            health_gate=wire.health_gate(request.health_gate),
            start_at=request.start_unix or None,
        )
        log.info(
            "rollout %d of %s %s created over %d device(s)%s",
            row.rollout_id,
            row.model_name,
            row.version,
            sum(w.counts.devices for w in row.wave_status),
            f", scheduled to start at {iso_utc(row.start_at)}" if row.start_at else "",
        )
        self._ctx.wake_rollouts()
        self._ctx.wake_upkeep()  # its release is in use now: renewed like a deployment's
        return wire.rollout_info(row)

    @rpc_errors
    def GetRollout(self, request: pb.RolloutRequest, context: Any) -> pb.RolloutInfo:  # noqa: N802
        require_admin(context)
        return wire.rollout_info(self._ctx.rollouts.get(request.rollout_id))

    @rpc_errors
    def ListRollouts(  # noqa: N802
        self, request: pb.ListRolloutsRequest, context: Any
    ) -> pb.ListRolloutsResponse:
        require_admin(context)
        rows = self._ctx.rollouts.list_rollouts(request.model_name)
        return pb.ListRolloutsResponse(rollouts=[wire.rollout_info(r) for r in rows])

    @rpc_errors
    @audited("PauseRollout", lambda r: f"rollout {r.rollout_id}")
    def PauseRollout(self, request: pb.RolloutRequest, context: Any) -> pb.RolloutInfo:  # noqa: N802
        require_admin(context)
        row = self._ctx.rollouts.transition(
            request.rollout_id, Event.PAUSE, f"paused by {actor(context)}"
        )
        return wire.rollout_info(row)

    @rpc_errors
    @audited("ResumeRollout", lambda r: f"rollout {r.rollout_id}")
    def ResumeRollout(self, request: pb.RolloutRequest, context: Any) -> pb.RolloutInfo:  # noqa: N802
        require_admin(context)
        row = self._ctx.rollouts.transition(
            request.rollout_id, Event.RESUME, f"resumed by {actor(context)}"
        )
        self._ctx.wake_rollouts()
        return wire.rollout_info(row)

    @rpc_errors
    @audited("AbortRollout", lambda r: f"rollout {r.rollout_id}")
    def AbortRollout(self, request: pb.RolloutRequest, context: Any) -> pb.RolloutInfo:  # noqa: N802
        require_admin(context)
        row = self._ctx.rollouts.transition(
            request.rollout_id, Event.ABORT, f"aborted by {actor(context)}"
        )
        return wire.rollout_info(row)

    @rpc_errors
    def PrepareRolloutRollback(  # noqa: N802
        self, request: pb.RolloutRequest, context: Any
    ) -> pb.PushModelResponse:
        require_admin(context)
        rollout = self._ctx.rollouts.get(request.rollout_id)
        if not rollout.previous_version:
            raise ConflictError(
                f"rollout {rollout.rollout_id} has no previous version to roll back to "
                "(the model had no deployment before it); abort it instead"
            )
        return self.prepare_rollback(rollout.model_name, rollout.previous_version)

    @rpc_errors
    @audited("CommitRolloutRollback", lambda r: f"rollout {r.rollout_id}")
    def CommitRolloutRollback(  # noqa: N802
        self, request: pb.RolloutRollbackRequest, context: Any
    ) -> pb.RolloutInfo:
        require_admin(context)
        rollout = self._ctx.rollouts.get(request.rollout_id)
        row, blob = self.verified_rollback_set([request.envelope, *request.envelopes])
        if (row.model_name, row.version) != (rollout.model_name, rollout.previous_version):
            raise BadRequestError(
                f"rollout {rollout.rollout_id} rolls back to {rollout.model_name} "
                f"{rollout.previous_version}, not {row.model_name} {row.version}"
            )
        updated = self._ctx.rollouts.set_rollback(
            rollout.rollout_id,
            blob,
            f"rolled back to {row.version} by {actor(context)}",
        )
        log.warning(
            "rollout %d rolled back to %s %s", rollout.rollout_id, row.model_name, row.version
        )
        return wire.rollout_info(updated)
