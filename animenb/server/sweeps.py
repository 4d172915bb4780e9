"""POST /api/anime/sweeps (a sweep: one parent job, one child job per cell) and GET /api/anime/sweeps (the
caller's sweeps, as /jobs lists jobs).

Body: `phase` (1, 2, 3 or a name; default 1), `parameters` (what every cell shares: the fields of POST
/generate, checked the same way), `axes` ({parameter: values}, 1 to 3 of them; values a list or an A1111
string like "8-40:8", see `animenb.sweeps.plan`), `mode` ("grid", default, or "zip"), `visibility`.
Every axis is checked against the phase's spec value by value and every cell as a whole before anything is
stored; an error names `axes.<name>`, `parameters.<name>`, `axes` (too many cells) or `mode`.

A sweep queues many jobs, so it needs a token. It is admitted like any job (`AnimeService.admit`): the cost
of every cell together against the caller's cap, and its cells against the caller's queued-jobs allowance.
The 202 reply adds `kind` "sweep", `cells` and `cost`.
"""

from __future__ import annotations

from animenb.store.tokens_base import ANONYMOUS
from animenb.sweeps.plan import SweepError, build_plan
from animenb.sweeps.report import SWEEP_KIND

from . import views
from .auth import require_role
from .handlers import BaseHandler
from .requests import Caller, JobRequest
from .validation import APIError, invalid, parse_cursor, parse_json_body, parse_limit, validate_generate

ACCEPTED = ("phase", "parameters", "axes", "mode", "visibility")


def validate_sweep(data: dict, outputs_dir, readable, backend: str | None = None):
    """(the plan, visibility) of a POST /sweeps body, or APIError 422 naming the field. `backend`: the server's
    own, which the spec's rules see when the body names none (as for POST /generate)."""
    unknown = sorted(set(data) - set(ACCEPTED))
    if unknown:
        raise invalid(unknown[0], f"Unknown field `{unknown[0]}`; accepted: {', '.join(ACCEPTED)}.", "unknown_field")
    if "axes" not in data:
        raise invalid("axes", '`axes` is required, e.g. {"steps": "8-24:8", "seed": [1, 2]}.', "missing_field")
    shared = data.get("parameters", {})
    if not isinstance(shared, dict):
        raise invalid("parameters", f"`parameters` must be an object, got {type(shared).__name__}.")
    axes = data["axes"]
    for key in ("phase", "visibility"):
        if key in shared:
            raise invalid(f"parameters.{key}", f"`{key}` is a field of the sweep, not of `parameters`.")
    # The shared values alone (image references resolved, defaults and one seed for every cell), checked with
    # the first value of each axis standing in, so a parameter an axis provides (a swept prompt) is not missing.
    first = {}
    if isinstance(axes, dict):
        first = {name: values[0] for name, values in axes.items() if isinstance(values, list) and values}
    body = {**first, **shared, "phase": data.get("phase", 1)}
    if "visibility" in data:
        body["visibility"] = data["visibility"]
    try:
        phase, values, visibility = validate_generate(body, outputs_dir, readable, backend)
    except APIError as exc:
        if exc.field in first and exc.field not in shared:
            raise invalid(f"axes.{exc.field}", f"`axes.{exc.field}`: {exc.message}") from None
        if exc.field not in (None, "phase", "visibility"):
            raise invalid(f"parameters.{exc.field}", exc.message, exc.code) from None
        raise
    for name in axes if isinstance(axes, dict) else ():
        if name not in shared:
            values.pop(name, None)  # an axis's value comes from each cell, not the stand-in or a default
    try:
        plan = build_plan(phase, values, axes, data.get("mode", "grid"))
    except SweepError as exc:
        field = exc.field if exc.field.startswith("axes") or exc.field == "mode" else f"parameters.{exc.field}"
        raise invalid(field, str(exc)) from None
    return plan, visibility


async def submit_sweep(service, data: dict, caller: Caller) -> dict:
    """Validate, admit the parent job (its cost: every cell; its cells count against the caller's queued
    jobs), and return the 202 reply."""
    plan, visibility = validate_sweep(
        data,
        service.outputs_dir,
        lambda job_id: service.readable_job(job_id, caller.identity) is not None,
        service.config.backend,
    )
    if plan.parameters.get("backend") == "comfyui" and not service.config.comfyui_url:
        raise APIError(
            422,
            "comfyui_not_configured",
            "`backend` comfyui needs a ComfyUI server: start animenb serve with --comfyui-url URL.",
            "parameters.backend",
        )
    if "visibility" not in data:
        visibility = "private"  # a token's jobs are its own unless it says "public"
    parameters = {**plan.parameters, "sweep": plan.as_dict()}
    job = await service.admit(
        JobRequest(
            kind=SWEEP_KIND,
            phase=plan.phase,
            parameters=parameters,
            owner=caller.name,
            visibility=visibility,
            exempt_from_user_limit=caller.is_admin,
            role=caller.role,
            children=len(plan.cells),
        )
    )
    return {
        "job_id": job.id,
        "status": job.status.value,
        "kind": SWEEP_KIND,
        "phase": plan.phase,
        "cells": len(plan.cells),
        "axes": plan.axes,
        "mode": plan.mode,
        "seed": plan.parameters.get("seed"),
        "cost": round(plan.cost(**service.render_sizes), 3),
        "status_url": views.status_url(job.id),
        "ws_url": views.ws_url(job.id, caller.ws_base),
        "queue_position": service.store.queue_position(job.id),
    }


class SweepsHandler(BaseHandler):
    """POST: a sweep (module docstring); GET: the caller's sweeps (`?status=`, `?limit=`, `?cursor=`)."""

    async def post(self) -> None:
        require_role(self, "user")  # AUTH CHECK: a sweep queues many jobs
        data = parse_json_body(self.request.body, self.request.headers.get("Content-Type"))
        reply = await submit_sweep(self.service, data, self.caller())
        self.write_accepted(reply)

    def get(self) -> None:
        limit = parse_limit(self.get_query_argument("limit", None))
        cursor = parse_cursor(self.get_query_argument("cursor", None))
        identity = self.current_user
        scope = {"visibility": "public"} if identity is None else {"owner": identity.name}
        service = self.service
        status = self.status_filter()
        # Sweeps are few among jobs: read pages of the caller's jobs until `limit` sweeps are found.
        sweeps: list = []
        while len(sweeps) <= limit:
            page, cursor = service.store.list(status=status, limit=200, cursor=cursor, **scope)
            sweeps += [j for j in page if j.kind == SWEEP_KIND]
            if cursor is None:
                break
        more = len(sweeps) > limit
        caller = self.caller()
        self.write_json(
            {
                "sweeps": [service.status(j, caller.ws_base) for j in sweeps[:limit]],
                "user": identity.name if identity else ANONYMOUS,
                "limit": limit,
                "next_cursor": str(sweeps[limit - 1].seq) if more else None,
            }
        )


sweep_handlers = [(r"/api/anime/sweeps/?", SweepsHandler)]
