"""The dashboard's actions: each a confirmation form (GET) and its POST, which calls the admin
API with the person's own token. So the role each needs is the API's (the buttons are hidden
from those it would refuse, but a refusal, PERMISSION_DENIED included, is shown in the API's
own words) and each is in the audit log as the person's, marked "via dashboard".

| action | admin method | role |
|---|---|---|
| pause, resume, abort a rollout | PauseRollout, ResumeRollout, AbortRollout | operator |
| create a rollout | CreateRollout | operator |
| deploy a version | Deploy | operator |
| delete a version | DeleteModelVersion | operator |
| list admins, add one, set a role, revoke one | ListAdmins, CreateAdmin, SetAdminRole, |
| | RevokeAdmin | admin |
"""

from __future__ import annotations

import logging
from typing import Any

import grpc
from starlette.responses import Response

from fleet_server.admins.roles import Role
from fleet_server.dashboard import forms, pages
from fleet_server.dashboard.guards import BadInputError, row_id, selector, waves
from fleet_server.dashboard.sessions import Person
from fleet_server.dashboard.web import Deps, Req, page, redirect, refusal, rpc_message, signed_in
from protos import admin_pb2 as pb

__all__ = [
    "admin_add",
    "admin_change",
    "admin_change_form",
    "rollout_action",
    "rollout_action_form",
    "rollout_create",
    "rollout_form",
    "version_action",
    "version_action_form",
]

log = logging.getLogger(__name__)

_ADMIN_ACTIONS = ("role", "revoke")


def _call(deps: Deps, who: Person, method: str, request: Any) -> Any:
    return deps.call(method, request, who.token)


def _done(deps: Deps, who: Person, where: str, text: str) -> Response:
    deps.sessions.flash(who.session, text)
    return redirect(where)


# rollouts ------------------------------------------------------------------------------------


def _rollout_id(req: Req) -> int:
    found = row_id(req.params["rollout_id"])
    if found is None or req.params["action"] not in pages.ROLLOUT_ACTIONS:
        raise pages.PageNotFoundError("No such rollout action.")
    return found


def _rollout_action_form(deps: Deps, req: Req, who: Person) -> Response:
    title, main = pages.confirm(deps.ctx, _rollout_id(req), req.params["action"], who.csrf)
    return page(req, who, title, main, refresh=False)


def _rollout_action(deps: Deps, req: Req, who: Person) -> Response:
    rollout_id, action = _rollout_id(req), req.params["action"]
    method = pages.ROLLOUT_ACTIONS[action]
    try:
        _call(deps, who, method, pb.RolloutRequest(rollout_id=rollout_id))
    except grpc.RpcError as exc:
        status, text = rpc_message(exc)
        return refusal(req, who, status, f"Rollout {rollout_id}",
                       f"Rollout {rollout_id}: {action} refused: {text}")  # fmt: skip
    return _done(deps, who, "/rollouts", f"Rollout {rollout_id}: {action} done.")


def _versions(deps: Deps) -> list[tuple[str, str]]:
    return [(m.model_name, m.version) for m in reversed(deps.ctx.catalog.list_models())]


def _rollout_form(deps: Deps, req: Req, who: Person) -> Response:
    main = forms.rollout_form(who.csrf, _versions(deps), req.query)
    return page(req, who, "New rollout", main, refresh=False)


def _rollout_create(deps: Deps, req: Req, who: Person) -> Response:
    form = req.form
    try:
        request = pb.CreateRolloutRequest(
            model_name=form.get("model", "").strip(),
            version=form.get("version", "").strip(),
            selector=selector(form.get("selector", "")),
            waves=waves(form.get("waves", "")),
        )
        created = _call(deps, who, "CreateRollout", request)
    except (BadInputError, grpc.RpcError) as exc:
        status, text = (400, str(exc)) if isinstance(exc, BadInputError) else rpc_message(exc)
        main = forms.rollout_form(who.csrf, _versions(deps), form, f"Refused: {text}")
        return page(req, who, "New rollout", main, status=status, refresh=False)
    devices = sum(w.devices for w in created.wave_status)
    return _done(deps, who, "/rollouts", f"Rollout {created.rollout_id} of "
                 f"{created.model_name} {created.version} created ({devices} device(s) so "
                 "far).")  # fmt: skip


# versions ------------------------------------------------------------------------------------


def _version(req: Req) -> tuple[str, str, str]:
    action = req.params["action"]
    if action not in ("deploy", "delete"):
        raise pages.PageNotFoundError("No such model action.")
    return req.params["model"], req.params["version"], action


def _version_action_form(deps: Deps, req: Req, who: Person) -> Response:
    del deps
    model, version, action = _version(req)
    main = forms.version_confirm(action, model, version, who.csrf)
    return page(req, who, f"{action.title()} {model} {version}", main, refresh=False)


def _version_action(deps: Deps, req: Req, who: Person) -> Response:
    model, version, action = _version(req)
    try:
        if action == "deploy":
            answer = _call(deps, who, "Deploy",
                           pb.DeployRequest(model_name=model, version=version))  # fmt: skip
            note = f" {answer.note}" if answer.note else ""
            text = f"{model} {version} deployed to every device.{note}"
        else:
            request = pb.DeleteModelVersionRequest(model_name=model, version=version)
            answer = _call(deps, who, "DeleteModelVersion", request)
            text = f"{model} {version} deleted ({answer.files} file(s) removed)."
    except grpc.RpcError as exc:
        status, refused = rpc_message(exc)
        main = forms.version_confirm(action, model, version, who.csrf, f"Refused: {refused}")
        return page(req, who, f"{action.title()} {model} {version}", main, status=status,
                    refresh=False)  # fmt: skip
    return _done(deps, who, "/models", text)


# admins --------------------------------------------------------------------------------------


def _role(raw: str) -> str:
    try:
        return str(Role.parse(raw))
    except ValueError as exc:
        raise BadInputError(str(exc)) from None


def _admin_add(deps: Deps, req: Req, who: Person) -> Response:
    name = req.form.get("name", "").strip()
    try:
        request = pb.CreateAdminRequest(name=name, role=_role(req.form.get("role", "")))
        answer = _call(deps, who, "CreateAdmin", request)
    except (BadInputError, grpc.RpcError) as exc:
        status, text = (400, str(exc)) if isinstance(exc, BadInputError) else rpc_message(exc)
        try:
            listed = _call(deps, who, "ListAdmins", pb.ListAdminsRequest())
        except grpc.RpcError:
            return refusal(req, who, status, "Admins", f"Adding {name!r} was refused: {text}")
        main = forms.admins(listed, who, f"Refused: {text}", req.form)
        return page(req, who, "Admins", main, status=status, refresh=False)
    log.info("dashboard: %s added admin %s (%s)", who.name, answer.admin.name, answer.admin.role)
    main = forms.token_shown(answer.admin.name, answer.admin.role, answer.token)
    return page(req, who, "Admin added", main, refresh=False)


def _admin_target(req: Req) -> tuple[str, str]:
    if req.params["action"] not in _ADMIN_ACTIONS:
        raise pages.PageNotFoundError("No such admin action.")
    return req.params["name"], req.params["action"]


def _admin_change_form(deps: Deps, req: Req, who: Person) -> Response:
    name, action = _admin_target(req)
    if action == "revoke":
        return page(req, who, f"Revoke {name}", forms.admin_revoke(name, who.csrf),
                    refresh=False)  # fmt: skip
    try:
        listed = _call(deps, who, "ListAdmins", pb.ListAdminsRequest())
    except grpc.RpcError as exc:
        status, text = rpc_message(exc)
        return refusal(req, who, status, "Admins", f"Listing the admins was refused: {text}")
    current = next((a.role for a in listed.admins if a.name == name), None)
    if current is None:
        raise pages.PageNotFoundError(f"No admin {name!r}.")
    return page(req, who, f"Role of {name}", forms.admin_role(name, current, who.csrf),
                refresh=False)  # fmt: skip


def _admin_change(deps: Deps, req: Req, who: Person) -> Response:
    name, action = _admin_target(req)
    try:
        if action == "role":
            role = _role(req.form.get("role", ""))
            _call(deps, who, "SetAdminRole", pb.SetAdminRoleRequest(name=name, role=role))
            text = f"{name} is now {role}."
        else:
            _call(deps, who, "RevokeAdmin", pb.AdminRequest(name=name))
            text = f"{name} is revoked."
    except (BadInputError, grpc.RpcError) as exc:
        status, refused = (400, str(exc)) if isinstance(exc, BadInputError) else rpc_message(exc)
        return refusal(req, who, status, "Admins", f"{action} of {name} refused: {refused}")
    return _done(deps, who, "/admins", text)


rollout_action_form = signed_in(_rollout_action_form)
rollout_action = signed_in(_rollout_action)
rollout_form = signed_in(_rollout_form)
rollout_create = signed_in(_rollout_create)
version_action_form = signed_in(_version_action_form)
version_action = signed_in(_version_action)
admin_add = signed_in(_admin_add)
admin_change_form = signed_in(_admin_change_form)
admin_change = signed_in(_admin_change)
