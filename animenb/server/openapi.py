"""`GET /api/anime/openapi.json`: the API as an OpenAPI 3.1 document, built from the definitions the server uses.

Request bodies come from the phase specs (`animenb.phases.spec`, what /generate and /orchestrate
validate with); WebSocket messages from the typed job events (`animenb.runner.events`); the
error body is the one `JSONErrorMixin.write_error` writes. Response bodies list the keys the
views (`animenb.server.views`) always write, and allow more (clients must ignore unknown keys).
OpenAPI has no WebSocket object: the job socket is documented as its GET upgrade route, with
its messages under `x-websocket-messages` and as component schemas.
"""

from __future__ import annotations

import typing
from functools import lru_cache
from typing import Any

from animenb import __version__
from animenb.chain import MAX_RETRIES, ON_REVIEW, THRESHOLD
from animenb.phases.spec import SPECS, Param
from animenb.runner import events as job_events
from animenb.store import JobStatus
from animenb.sweeps.plan import MAX_AXES, MAX_CELLS, MODES

from .handlers import BaseHandler
from .orchestrate_validation import CHAIN_FIELDS
from .validation import JOB_ID_RE

API = "/api/anime"
JOB_ID = {
    "name": "job_id",
    "in": "path",
    "required": True,
    "description": "a job id (32 hex digits)",
    "schema": {"type": "string", "pattern": JOB_ID_RE.pattern},
}
STATUSES = [status.value for status in JobStatus]


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict:
    return _json(_ref("Error"), description)


# -- request bodies from the phase specs -----------------------------------------------------------
def param_schema(param: Param) -> dict:
    """JSON Schema of one spec parameter (ranges, enum, length, nullability, default)."""
    schema: dict[str, Any] = {"type": [param.type, "null"] if param.nullable else param.type}
    for key, value in (
        ("minimum", param.minimum),
        ("maximum", param.maximum),
        ("multipleOf", param.multiple_of),
        ("maxLength", param.max_length),
    ):
        if value is not None:
            schema[key] = value
    if param.enum is not None:
        schema["enum"] = list(param.enum) + ([None] if param.nullable else [])
    if param.type == "string" and not param.blank:
        schema["pattern"] = r"\S"
    if param.items is not None:
        schema["items"] = param.items
    if not param.required:
        schema["default"] = param.default
    if param.description:
        schema["description"] = param.description
    if param.example is not None:
        schema["examples"] = [param.example]
    return schema


def generate_request(spec) -> dict:
    """POST /generate for one phase: its API parameters plus `phase` and `visibility`."""
    properties = {
        "phase": {"description": f"{spec.phase} or {spec.name}", "enum": [spec.phase, str(spec.phase), spec.name]},
        "visibility": {
            "type": "string",
            "enum": ["public", "private"],
            "default": "public",
            "description": "private jobs are listed and served to their owner only",
        },
    }
    properties.update({p.name: param_schema(p) for p in spec.api_params})
    required = [p.name for p in spec.api_params if p.required]
    if spec.phase != 1:
        required.insert(0, "phase")
    rules = [rule.as_dict()["expression"] for rule in spec.rules]
    description = f"Phase {spec.phase}, {spec.name}." + (f" Also: {'; '.join(rules)}." if rules else "")
    return {
        "type": "object",
        "title": f"Generate{spec.name.title().replace('_', '')}",
        "description": description,
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }


def orchestrate_request() -> dict:
    """POST /orchestrate: the chain's fields (`orchestrate_validation.ACCEPTED`), ranges from phase 1's spec
    and the chain's own (`animenb.chain.MAX_RETRIES`, `THRESHOLD`)."""
    shared = SPECS[1]
    properties = {name: param_schema(shared.param(name)) for name in CHAIN_FIELDS}
    gate = {k: v for k, v in param_schema(THRESHOLD).items() if k not in ("default", "description")}
    properties.update(
        {
            "reference_image": {
                "type": ["string", "null"],
                "description": "phase 1's IP-Adapter reference: a job id or /api/anime/outputs/ URL",
            },
            "max_retries": param_schema(MAX_RETRIES),
            "advisory_gates": {
                "type": "boolean",
                "default": False,
                "description": "score and record every gate, but run the chain through (random weights)",
            },
            "on_review": {
                "type": "string",
                "enum": list(ON_REVIEW),
                "default": "continue",
                "description": "what a gate's review verdict does: go on and flag it, retry, or stop",
            },
            "threshold": {**gate, "description": "the gate of every phase; null: parameters/quality.yaml"},
            "thresholds": {
                "type": ["object", "null"],
                "additionalProperties": gate,
                "description": "per phase (id or name); not with `threshold`",
            },
            "models": {"type": ["string", "null"], "description": "must be the server's profile (or left out)"},
            "visibility": {"type": "string", "enum": ["public", "private"], "default": "public"},
        }
    )
    return {
        "type": "object",
        "title": "Orchestrate",
        "properties": properties,
        "required": ["prompt"],
        "additionalProperties": False,
    }


def sweep_request() -> dict:
    """POST /sweeps (`animenb.server.sweeps`): the shared parameters are a /generate body's fields."""
    values = {"oneOf": [{"type": "array", "minItems": 1}, {"type": "string", "examples": ["8-40:8", "1-4", "5,7"]}]}
    return {
        "type": "object",
        "title": "Sweep",
        "required": ["axes"],
        "additionalProperties": False,
        "properties": {
            "phase": {"description": "1, 2, 3 or a phase name", "default": 1},
            "parameters": {"type": "object", "description": "what every cell shares: the fields of POST /generate"},
            "axes": {
                "type": "object",
                "minProperties": 1,
                "maxProperties": MAX_AXES,
                "additionalProperties": values,
                "description": f"{{parameter: values}} in X, Y, Z order; at most {MAX_CELLS} cells in all",
            },
            "mode": {
                "enum": list(MODES),
                "default": "grid",
                "description": "grid: every combination; zip: the i-th values together",
            },
            "visibility": {"type": "string", "enum": ["public", "private"], "default": "private"},
        },
    }


# -- WebSocket messages from the typed job events ------------------------------------------------------
_PY_TYPES = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    dict: "object",
    list: "array",
    type(None): "null",
    typing.Any: None,
}


def _type_schema(hint) -> dict:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", typing.Union)):
        schemas = [_type_schema(arg) for arg in typing.get_args(hint)]
        types = [s.get("type") for s in schemas]
        if all(isinstance(t, str) for t in types):
            return {"type": types}
        return {"anyOf": schemas}
    base = origin or hint
    kind = _PY_TYPES.get(base)
    if kind is None:
        return {}
    if kind == "number":
        return {"type": "number"}
    return {"type": kind}


def event_schema(cls) -> dict:
    """A job event dataclass as the JSON message the socket sends (`event` names its type)."""
    hints = typing.get_type_hints(cls)
    properties = {"event": {"const": cls.event}}
    required = ["event"]
    for field in job_events.wire_fields(cls):
        properties[field.name] = _type_schema(hints[field.name])
        required.append(field.name)
    return {
        "type": "object",
        "title": cls.__name__,
        "description": (cls.__doc__ or "").strip().split("\n")[0],
        "properties": properties,
        "required": required,
        "additionalProperties": True,
    }


EVENT_CLASSES = [
    cls
    for cls in vars(job_events).values()
    if isinstance(cls, type) and issubclass(cls, job_events.JobEvent) and cls is not job_events.JobEvent
]


# -- response bodies ------------------------------------------------------------------------------------
def _object(required: dict[str, dict], description: str = "", **optional: dict) -> dict:
    schema = {
        "type": "object",
        "properties": {**required, **optional},
        "required": list(required),
        "additionalProperties": True,
    }
    if description:
        schema["description"] = description
    return schema


STRING, INTEGER, NUMBER, BOOLEAN, OBJECT = ({"type": t} for t in ("string", "integer", "number", "boolean", "object"))
_MODEL_FILE = {
    "type": "object",
    "required": ["name", "file", "bytes", "sha256", "hash"],
    "properties": {"name": STRING, "file": STRING, "bytes": INTEGER, "sha256": STRING, "hash": STRING},
}
MODELS = {
    "type": "object",
    "required": ["checkpoints", "vae", "loras", "embeddings"],
    "properties": {
        "profile": OBJECT,
        **{
            kind: {"type": "array", "items": _MODEL_FILE}
            for kind in ("checkpoints", "vae", "loras", "embeddings", "controlnet")
        },
    },
}
NULLABLE_STRING = {"type": ["string", "null"]}
NULLABLE_INTEGER = {"type": ["integer", "null"]}
PAGE: dict[str, dict] = {"limit": INTEGER, "next_cursor": NULLABLE_STRING, "count": INTEGER}


def _schemas() -> dict:
    schemas = {
        "Error": _object(
            {
                "error": _object(
                    {
                        "code": STRING,
                        "message": STRING,
                        "field": {"type": ["string", "null"], "description": "the request field to blame, if any"},
                    }
                )
            },
            "Every error: 4xx for a bad request (never a 500 for bad input), 5xx only for a "
            "server fault; no traceback.",
        ),
        "JobAccepted": _object(
            {
                "job_id": STRING,
                "status": {"enum": STATUSES},
                "status_url": STRING,
                "ws_url": STRING,
                "queue_position": NULLABLE_INTEGER,
            },
            "202 to POST /generate and /orchestrate; `Location` is `status_url`.",
            phase=NULLABLE_INTEGER,
            cancel_token={"type": "string", "description": "anonymous jobs: DELETE needs it"},
        ),
        "JobState": _object(
            {
                "job_id": STRING,
                "status": {"enum": STATUSES},
                "phase": NULLABLE_INTEGER,
                "progress": OBJECT,
                "outputs": {"type": "array", "items": STRING},
                "created_at": STRING,
                "status_url": STRING,
                "ws_url": STRING,
            },
            "A job's status body (also the `state` message of its socket).",
            error={"type": ["object", "null"]},
            quality={"type": ["object", "null"]},
            reviews={
                "type": "array",
                "items": OBJECT,
                "description": "reviewers' verdicts on a finished output, newest first",
            },
        ),
        "JobList": _object({"jobs": {"type": "array", "items": _ref("JobState")}, **PAGE}),
        "Gallery": _object(
            {
                "gallery": {
                    "type": "array",
                    "items": _object({"job_id": STRING, "prompt": {}, "files": {"type": "array"}}),
                },
                **PAGE,
            }
        ),
        "Health": _object(
            {
                "status": {"enum": ["healthy", "degraded"]},
                "service": STRING,
                "version": {**STRING, "description": "the version of the API contract this server implements"},
                "animenb_version": {**STRING, "description": "the installed animenb package's version"},
                "components": _object(
                    {
                        "comfyui": OBJECT,
                        "gpu": OBJECT,
                        "jobs": OBJECT,
                        "models": OBJECT,
                        "store": OBJECT,
                        "dispatcher": OBJECT,
                    }
                ),
                "degraded_components": {"type": "array", "items": STRING},
                "degraded_reasons": {
                    "type": "object",
                    "additionalProperties": STRING,
                    "description": "why each degraded component is degraded",
                },
            }
        ),
        "Phases": _object(
            {
                "phases": {"type": "array", "items": _object({"id": INTEGER, "name": STRING, "notebook": STRING})},
                "quality_threshold": NUMBER,
            }
        ),
        "AdminStats": OBJECT,
        "GcReport": OBJECT,
        "Orchestrate": orchestrate_request(),
        "Sweep": sweep_request(),
        "SweepList": _object(
            {"sweeps": {"type": "array", "items": _ref("JobState")}, "limit": INTEGER, "next_cursor": NULLABLE_STRING}
        ),
    }
    for spec in SPECS.values():
        schemas[generate_request(spec)["title"]] = generate_request(spec)
    for cls in EVENT_CLASSES:
        schemas[cls.__name__] = event_schema(cls)
    return schemas


def _paths() -> dict:
    generate = {"oneOf": [_ref(generate_request(spec)["title"]) for spec in SPECS.values()]}
    bad_body = {
        "400": _error("not JSON, or not an object"),
        "413": _error("body over 64 KiB"),
        "415": _error("not `Content-Type: application/json`"),
        "422": _error("a field the phase's spec refuses (`field` names it)"),
        "401": _error("a bad or revoked token"),
        "403": _error("a foreign Origin (CSRF) or no right"),
        "429": _error("too many queued jobs (Retry-After)"),
        "503": _error("the job store cannot write now: locked by another process (Retry-After)"),
        "507": _error("the server's disk is full; nothing was written"),
    }
    anyone = {"401": _error("a bad or revoked token")}
    job_404 = {"404": _error("no such job, or not yours")}
    ws_messages = [_ref(cls.__name__) for cls in EVENT_CLASSES]
    return {
        f"{API}/health": {
            "get": {
                "summary": "Service, kernels, models, queue and ComfyUI health",
                "responses": {"200": _json(_ref("Health"), "health"), **anyone},
            }
        },
        f"{API}/jobs": {
            "get": {
                "summary": "Jobs the caller may see, newest first, paged",
                "parameters": [
                    {
                        "name": "status",
                        "in": "query",
                        "schema": STRING,
                        "description": f"comma-separated: {', '.join(STATUSES)}",
                    },
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1}},
                    {"name": "cursor", "in": "query", "schema": STRING},
                    {"name": "owner", "in": "query", "schema": STRING, "description": "admins: a user name or *"},
                ],
                "responses": {"200": _json(_ref("JobList"), "jobs"), "422": _error("a bad query value"), **anyone},
            }
        },
        f"{API}/gallery": {
            "get": {
                "summary": "Finished public runs with their files",
                "description": "Top-level jobs only: a sweep's cells and a chain's steps "
                "show through their parent's card.",
                "parameters": [
                    {"name": "limit", "in": "query", "schema": INTEGER},
                    {"name": "cursor", "in": "query", "schema": STRING},
                    {"name": "phase", "in": "query", "schema": STRING},
                ],
                "responses": {"200": _json(_ref("Gallery"), "gallery"), "422": _error("a bad query value"), **anyone},
            }
        },
        f"{API}/phases": {
            "get": {
                "summary": "The three phases and the quality gate",
                "responses": {"200": _json(_ref("Phases"), "phases"), **anyone},
            }
        },
        f"{API}/models": {
            "get": {
                "summary": "Checkpoints, VAEs, LoRAs and embeddings jobs can name",
                "responses": {"200": _json(MODELS, "model files by kind"), **anyone},
            }
        },
        f"{API}/openapi.json": {
            "get": {
                "summary": "This document",
                "responses": {
                    "200": {"description": "OpenAPI 3.1", "content": {"application/json": {"schema": OBJECT}}}
                },
            }
        },
        f"{API}/generate": {
            "post": {
                "summary": "Queue one phase job (the body's `phase`, default 1)",
                "requestBody": {"required": True, "content": {"application/json": {"schema": generate}}},
                "responses": {"202": _json(_ref("JobAccepted"), "queued"), **bad_body},
            }
        },
        f"{API}/orchestrate": {
            "post": {
                "summary": "Queue the chain 1 -> gate -> 2 -> gate -> 3 -> gate (needs a token)",
                "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("Orchestrate")}}},
                "responses": {"202": _json(_ref("JobAccepted"), "queued"), **bad_body},
            }
        },
        f"{API}/sweeps": {
            "post": {
                "summary": "Queue a parameter sweep: one parent job, one child job per cell (needs a token)",
                "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("Sweep")}}},
                "responses": {
                    "202": _json(_ref("JobAccepted"), "queued (adds kind, cells, axes, mode, cost)"),
                    **bad_body,
                },
            },
            "get": {
                "summary": "The caller's sweeps (anonymous: public ones), newest first, paged",
                "parameters": [
                    {"name": "status", "in": "query", "schema": STRING},
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1}},
                    {"name": "cursor", "in": "query", "schema": STRING},
                ],
                "responses": {"200": _json(_ref("SweepList"), "sweeps"), "422": _error("a bad query value"), **anyone},
            },
        },
        f"{API}/generation/{{job_id}}/status": {
            "get": {
                "summary": "A job's status",
                "parameters": [JOB_ID],
                "responses": {"200": _json(_ref("JobState"), "status"), **job_404, **anyone},
            }
        },
        f"{API}/generation/{{job_id}}": {
            "get": {
                "summary": "A job's status",
                "parameters": [JOB_ID],
                "responses": {"200": _json(_ref("JobState"), "status"), **job_404, **anyone},
            },
            "delete": {
                "summary": "Cancel a job (its owner, an admin, or the anonymous job's cancel token)",
                "parameters": [JOB_ID, {"name": "X-Cancel-Token", "in": "header", "schema": STRING}],
                "responses": {
                    "200": _json(_ref("JobState"), "cancelled (or already finished)"),
                    "403": _error("not yours"),
                    **job_404,
                    **anyone,
                },
            },
        },
        f"{API}/outputs/{{path}}": {
            "get": {
                "summary": "A job's file: outputs/<job_id>/<path>",
                "parameters": [{"name": "path", "in": "path", "required": True, "schema": STRING}],
                "responses": {
                    "200": {"description": "the file (image, video, notebook, manifest)"},
                    "404": _error("no such file"),
                    **anyone,
                },
            }
        },
        f"{API}/thumbnails/{{job_id}}/{{rel}}": {
            "get": {
                "summary": "A 256 px thumbnail of a job's image or video",
                "parameters": [JOB_ID, {"name": "rel", "in": "path", "required": True, "schema": STRING}],
                "responses": {
                    "200": {"description": "image/jpeg or image/png"},
                    "404": _error("no such file"),
                    **anyone,
                },
            }
        },
        f"{API}/admin/stats": {
            "get": {
                "summary": "Server, queue and kernel statistics (admin token)",
                "responses": {
                    "200": _json(_ref("AdminStats"), "stats"),
                    "401": _error("no token"),
                    "403": _error("not an admin"),
                },
            }
        },
        f"{API}/admin/gc": {
            "post": {
                "summary": "Delete old finished jobs' files (admin token)",
                "responses": {"200": _json(_ref("GcReport"), "what was deleted"), **bad_body},
            }
        },
        "/ws/job/{job_id}": {
            "get": {
                "summary": "A job's live events over WebSocket (also under /api/anime/ws/job/{job_id})",
                "description": "Upgrade to a WebSocket. The server sends JSON messages, each one of "
                "`x-websocket-messages` (`event` names the type, `seq` orders them per job; "
                "`?after=SEQ` resumes); `state` first, `finished` last.",
                "parameters": [JOB_ID, {"name": "after", "in": "query", "schema": INTEGER}],
                "x-websocket-messages": {"oneOf": ws_messages},
                "responses": {
                    "101": {"description": "switching to the WebSocket protocol"},
                    "400": _error("not a WebSocket upgrade"),
                    **job_404,
                    **anyone,
                },
            }
        },
    }


@lru_cache(maxsize=1)
def openapi_document() -> dict:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "animenb anime production API",
            "version": __version__,
            "description": "Jobs, gallery and live progress for animenb's phase notebooks. "
            "Auth: `Authorization: Bearer <token>` where a route needs it.",
        },
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "paths": _paths(),
        "components": {"schemas": _schemas(), "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }


class OpenAPIHandler(BaseHandler):
    def get(self) -> None:
        self.write_json(openapi_document())


openapi_handlers = [(rf"{API}/openapi\.json", OpenAPIHandler)]
