"""Request schemas: turn a POST /generate body into (phase id, validated values) or an `APIError`.

What a phase accepts is its spec (`animenb.phases.spec`), the same the phase function checks,
so a job the API accepts does not fail those checks in its kernel. Every bad input gets a
4xx with `{"error": {"code", "message", "field"}}`; nothing reaches a notebook except through
`animenb.runner.parameters` (plain JSON types). Messages name the field and echo the bad
value, like diffusers' `check_inputs`.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from tornado.web import HTTPError

from animenb.phases.spec import CHARACTER_SHEET, SPECS, Param, SpecError, phase_spec

MAX_BODY_BYTES = 64 * 1024
JOB_ID_RE = re.compile(r"^[0-9a-f]{32}$")
OUTPUT_REF_RE = re.compile(r"^(?:/api/anime/outputs/)?(?P<job_id>[0-9a-f]{32})(?:/(?P<path>[^?#]*))?$")


class APIError(HTTPError):
    """An HTTPError with a machine-readable code and the offending field."""

    def __init__(
        self,
        status_code: int,
        code: str,
        message: str,
        field: str | None = None,
        *,
        headers: dict[str, str] | None = None,
        **kwargs,
    ):
        super().__init__(status_code, "%s", message, **kwargs)
        self.code, self.message, self.field = code, message, field
        self.headers = dict(headers or {})  # e.g. Retry-After, WWW-Authenticate (set by write_error)


def invalid(field: str, message: str, code: str = "invalid_value") -> APIError:
    return APIError(422, code, message, field)


# -- fields: the phases' specs (animenb.phases.spec) -----------------------------------------------
def _choice(field: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise invalid(field, f"`{field}` must be one of {', '.join(choices)}, got {value!r}.")
    return value


def _as_json_integer(param: Param, value: Any) -> Any:
    """JSON has one number type: 64.0 is the integer 64 for an integer parameter."""
    if param.type == "integer" and type(value) is float and value.is_integer():
        return int(value)
    return value


def check_param(param: Param, value: Any) -> Any:
    """`value` for `param` (an integral float made an int), or APIError 422 naming the field."""
    value = _as_json_integer(param, value)
    try:
        param.check(value)
    except SpecError as exc:
        raise invalid(exc.field, str(exc)) from None
    return value


@dataclass(frozen=True)
class Field:
    """A request field shared by every phase (POST /orchestrate passes these to each phase)."""

    check: Callable[[str, Any], Any]
    default: Callable[[], Any] | None = None


def _shared_field(name: str, default: Callable[[], Any] | None = None) -> Field:
    param = CHARACTER_SHEET.param(name)  # the same range in every phase (a test holds them equal)
    return Field(lambda _field, value: check_param(param, value), default)


# Defaults here only where every phase agrees (each phase's own defaults apply otherwise).
FIELDS: dict[str, Field] = {
    name: _shared_field(name)
    for name in ("prompt", "negative_prompt", "width", "height", "guidance_scale", "scheduler", "backend")
}
FIELDS["steps"] = _shared_field("steps", default=lambda: CHARACTER_SHEET.defaults["steps"])
FIELDS["seed"] = _shared_field("seed", default=lambda: secrets.randbelow(2**32))
META_FIELDS = ("phase", "visibility")
API_FIELDS = tuple(dict.fromkeys(p.name for spec in SPECS.values() for p in spec.api_params))
SERVER_DEFAULTED = ("backend",)  # left out: the server's --backend applies


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict:
    data = {}
    for key, value in pairs:
        if key in data:
            raise ValueError(f"duplicate key {key!r}")
        data[key] = value
    return data


def check_content_type(content_type: str | None) -> None:
    """A body must be declared JSON: application/json (or *+json). Without a Content-Type, a form
    or text/plain a web page on another site could send (see animenb.server.csrf) is 415 too."""
    if not content_type:
        raise APIError(
            415,
            "unsupported_media_type",
            "The request body must be JSON: send `Content-Type: application/json`.",
            "Content-Type",
        )
    media = content_type.split(";", 1)[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise APIError(
            415,
            "unsupported_media_type",
            f"The request body must be JSON (Content-Type: application/json), got {media!r}.",
            "Content-Type",
        )


def parse_json_body(body: bytes, content_type: str | None = None) -> dict:
    if len(body) > MAX_BODY_BYTES:
        raise APIError(413, "body_too_large", f"The request body must be at most {MAX_BODY_BYTES} bytes.")
    check_content_type(content_type)
    if not body.strip():
        raise APIError(400, "invalid_json", "The request body must be a JSON object, got nothing.")
    try:
        data = json.loads(body, object_pairs_hook=_no_duplicate_keys)
    except (ValueError, UnicodeDecodeError) as exc:
        raise APIError(400, "invalid_json", f"The request body is not valid JSON: {exc}.") from None
    except RecursionError:
        raise APIError(400, "invalid_json", "The request body is nested too deeply.") from None
    if not isinstance(data, dict):
        raise APIError(400, "invalid_json", f"The request body must be a JSON object, got {type(data).__name__}.")
    return data


# Whether the caller may read a job's outputs (job id -> bool): the handler's auth rules.
Readable = Callable[[str], bool]


def resolve_output_ref(field: str, value: Any, outputs_dir: Path, readable: Readable) -> str:
    """`<job_id>` (its output directory), `<job_id>/<file>` or `/api/anime/outputs/<job_id>/<file>`
    -> an absolute path inside the outputs directory. A job the caller may not read is answered
    like a job without outputs, so private jobs can't be reused (or probed) by others."""
    if type(value) is not str or not (m := OUTPUT_REF_RE.match(value)):
        raise invalid(
            field,
            f"`{field}` must name a previous job's output as `<job_id>`, `<job_id>/<file>` or "
            f"its /api/anime/outputs/ URL, got {value!r}.",
        )
    if not readable(m["job_id"]):
        raise invalid(field, f"`{field}`: job {m['job_id']} has no finished outputs.")
    root = (outputs_dir / m["job_id"]).resolve()
    if not m["path"]:
        if not (root / "manifest.json").is_file():
            raise invalid(field, f"`{field}`: job {m['job_id']} has no finished outputs.")
        return str(root)
    target = (root / m["path"]).resolve()
    if root not in target.parents or not target.is_file():
        raise invalid(field, f"`{field}` does not name an existing output file: {value!r}.")
    return str(target)


def validate_generate(
    data: dict, outputs_dir: Path, readable: Readable, backend: str | None = None
) -> tuple[int, dict[str, Any], str]:
    """Returns (phase id, values for the notebook, visibility). The phase's spec decides what is
    valid, so nothing accepted here fails its checks later in the kernel; the phase's defaults are
    filled in (and a seed drawn) so the job records what it ran with. `backend` is the server's own,
    which the spec's rules see when the request names none."""
    raw_phase = data.get("phase", 1)
    if type(raw_phase) not in (int, str):
        raise invalid("phase", f"`phase` must be 1, 2, 3 or a phase name, got {raw_phase!r}.")
    try:
        spec = phase_spec(raw_phase)
    except ValueError as exc:
        raise invalid("phase", str(exc)) from None
    unknown = sorted(set(data) - set(API_FIELDS) - set(META_FIELDS))
    if unknown:
        raise invalid(
            unknown[0],
            f"Unknown field `{unknown[0]}`; accepted: {', '.join(API_FIELDS + META_FIELDS)}.",
            code="unknown_field",
        )
    accepted = {p.name: p for p in spec.api_params}
    for name in data:
        if name not in accepted and name not in META_FIELDS:
            raise invalid(name, f"`{name}` does not apply to phase {spec.phase}.", code="unknown_field")
    visibility = _choice("visibility", data.get("visibility", "public"), ("public", "private"))
    for param in spec.params:
        if param.required and param.name not in data:
            raise invalid(param.name, f"`{param.name}` is required.", code="missing_field")
    values: dict[str, Any] = {}
    as_given: dict[str, str] = {}  # resolved path -> the reference as the caller gave it
    for name, param in accepted.items():
        if name not in data:
            continue
        value = _as_json_integer(param, data[name])
        if param.image_ref and value is not None:
            value = resolve_output_ref(name, value, outputs_dir, readable)
            as_given[value] = data[name]
        values[name] = value
    try:
        spec.check({"backend": backend, **values} if backend else values)
    except SpecError as exc:
        message = str(exc)
        for path, given in as_given.items():  # the caller's own words, never the server's paths
            message = message.replace(path, given)
        raise invalid(exc.field, message) from None
    for name, param in accepted.items():
        if name not in values and param.default is not None and name not in SERVER_DEFAULTED:
            values[name] = param.default
    if values.get("seed") in (None, -1):
        values["seed"] = secrets.randbelow(2**32)  # drawn here, so the job's record says which
    return spec.phase, values, visibility


def parse_limit(value: str | None, default: int = 50, maximum: int = 200) -> int:
    if value is None:
        return default
    try:
        limit = int(value)
    except ValueError:
        raise invalid("limit", f"`limit` must be an integer, got {value!r}.") from None
    if not 1 <= limit <= maximum:
        raise invalid("limit", f"`limit` must be in [1, {maximum}], got {limit}.")
    return limit


CURSOR_MAX = 2**63 - 1  # cursors are SQLite integer row sequence numbers


def parse_cursor(value: str | None) -> str | None:
    """A `next_cursor` from a previous page: ASCII digits within SQLite's integer range (else 422)."""
    if value is None or value == "":
        return None
    if not (value.isascii() and value.isdigit()) or len(value) > 19 or int(value) > CURSOR_MAX:
        raise invalid("cursor", f"`cursor` must be a value returned as `next_cursor`, got {value[:40]!r}.")
    return value
