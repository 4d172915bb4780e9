"""Request schemas: turn a POST /generate body into (phase id, validated values) or an `APIError`.

Every bad input gets a 4xx with `{"error": {"code", "message", "field"}}`; nothing
reaches a notebook except through `animenb.runner.parameters` (plain JSON types).
Messages name the field and echo the bad value, like diffusers' `check_inputs`.
"""
from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from tornado.web import HTTPError

from animenb.backends.base import SCHEDULERS
from animenb.phases.catalog import get_phase

MAX_BODY_BYTES = 64 * 1024
MAX_PROMPT_CHARS = 2000
MIN_SIZE, MAX_SIZE = 64, 2048
MAX_STEPS = 150
SEED_LIMIT = 2**63
JOB_ID_RE = re.compile(r"^[0-9a-f]{32}$")
OUTPUT_REF_RE = re.compile(r"^(?:/api/anime/outputs/)?(?P<job_id>[0-9a-f]{32})(?:/(?P<path>[^?#]*))?$")


class APIError(HTTPError):
    """An HTTPError with a machine-readable code and the offending field."""

    def __init__(self, status_code: int, code: str, message: str, field: str | None = None, *,
                 headers: dict[str, str] | None = None, **kwargs):
        super().__init__(status_code, "%s", message, **kwargs)
        self.code, self.message, self.field = code, message, field
        self.headers = dict(headers or {})  # e.g. Retry-After, WWW-Authenticate (set by write_error)


def invalid(field: str, message: str, code: str = "invalid_value") -> APIError:
    return APIError(422, code, message, field)


# -- field checkers --------------------------------------------------------------------------
def _int(field: str, value: Any, lo: int, hi: int, multiple: int = 1) -> int:
    if type(value) is float and value.is_integer():
        value = int(value)
    if type(value) is not int:
        raise invalid(field, f"`{field}` must be an integer, got {value!r}.")
    if not lo <= value <= hi:
        raise invalid(field, f"`{field}` must be in [{lo}, {hi}], got {value}.")
    if value % multiple:
        raise invalid(field, f"`{field}` must be a multiple of {multiple}, got {value}.")
    return value


def _float(field: str, value: Any, lo: float, hi: float, *, open_low: bool = False) -> float:
    if type(value) not in (int, float) or value != value:
        raise invalid(field, f"`{field}` must be a number, got {value!r}.")
    if value > hi or value < lo or (open_low and value == lo):
        raise invalid(field, f"`{field}` must be in {'(' if open_low else '['}{lo}, {hi}], got {value}.")
    return float(value)


def _text(field: str, value: Any, *, required: bool) -> str:
    if type(value) is not str:
        raise invalid(field, f"`{field}` must be a string, got {type(value).__name__}.")
    if required and not value.strip():
        raise invalid(field, f"`{field}` must not be empty.")
    if len(value) > MAX_PROMPT_CHARS:
        raise invalid(field, f"`{field}` must be at most {MAX_PROMPT_CHARS} characters, got {len(value)}.")
    if "\x00" in value:
        raise invalid(field, f"`{field}` must not contain NUL characters.")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise invalid(field, f"`{field}` must be valid Unicode text (it holds a lone surrogate).") from None
    return value


def _choice(field: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise invalid(field, f"`{field}` must be one of {', '.join(choices)}, got {value!r}.")
    return value


@dataclass(frozen=True)
class Field:
    check: Callable[[str, Any], Any]
    phases: frozenset[int] = frozenset({1, 2, 3})
    default: Callable[[], Any] | None = None


FIELDS: dict[str, Field] = {
    "prompt": Field(lambda f, v: _text(f, v, required=True)),
    "negative_prompt": Field(lambda f, v: _text(f, v, required=False), default=lambda: ""),
    # width/height default to the model profile's size (512 for SD 1.5, 64 for tiny), in the notebook
    "width": Field(lambda f, v: _int(f, v, MIN_SIZE, MAX_SIZE, 8)),
    "height": Field(lambda f, v: _int(f, v, MIN_SIZE, MAX_SIZE, 8)),
    "steps": Field(lambda f, v: _int(f, v, 1, MAX_STEPS), default=lambda: 15),
    "seed": Field(lambda f, v: _int(f, v, 0, SEED_LIMIT - 1), default=lambda: secrets.randbelow(2**32)),
    "guidance_scale": Field(lambda f, v: _float(f, v, 0.0, 30.0)),
    "scheduler": Field(lambda f, v: _choice(f, v, SCHEDULERS)),
    "backend": Field(lambda f, v: _choice(f, v, ("diffusers", "comfyui"))),  # default: the server's --backend
    "reference_image": Field(lambda f, v: v, phases=frozenset({1, 2})),  # resolved against outputs
    "frames": Field(lambda f, v: _int(f, v, 2, 64), phases=frozenset({2, 3})),
    "fps": Field(lambda f, v: _int(f, v, 1, 60), phases=frozenset({2, 3})),
    "image": Field(lambda f, v: v, phases=frozenset({3})),  # resolved against outputs
    "seconds": Field(lambda f, v: _float(f, v, 0.0, 30.0, open_low=True), phases=frozenset({3})),
}
META_FIELDS = ("phase", "visibility")
PATH_FIELDS = ("reference_image", "image")


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
        raise APIError(415, "unsupported_media_type", "The request body must be JSON: send "
                       "`Content-Type: application/json`.", "Content-Type")
    media = content_type.split(";", 1)[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise APIError(415, "unsupported_media_type",
                       f"The request body must be JSON (Content-Type: application/json), got {media!r}.",
                       "Content-Type")


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
        raise invalid(field, f"`{field}` must name a previous job's output as `<job_id>`, `<job_id>/<file>` or "
                             f"its /api/anime/outputs/ URL, got {value!r}.")
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


def validate_generate(data: dict, outputs_dir: Path, readable: Readable) -> tuple[int, dict[str, Any], str]:
    """Returns (phase id, values for the notebook, visibility)."""
    try:
        phase = get_phase(data.get("phase", 1)).id
    except ValueError as exc:
        raise invalid("phase", str(exc)) from None
    if type(data.get("phase", 1)) not in (int, str):
        raise invalid("phase", f"`phase` must be 1, 2, 3 or a phase name, got {data['phase']!r}.")
    unknown = sorted(set(data) - set(FIELDS) - set(META_FIELDS))
    if unknown:
        raise invalid(unknown[0], f"Unknown field `{unknown[0]}`; accepted: {', '.join(list(FIELDS) + list(META_FIELDS))}.",
                      code="unknown_field")
    if "prompt" not in data:
        raise invalid("prompt", "`prompt` is required.", code="missing_field")
    visibility = _choice("visibility", data.get("visibility", "public"), ("public", "private"))
    values: dict[str, Any] = {}
    for name, spec in FIELDS.items():
        if name in data and data[name] is not None:
            if phase not in spec.phases:
                raise invalid(name, f"`{name}` does not apply to phase {phase}.", code="unknown_field")
            value = spec.check(name, data[name])
            values[name] = resolve_output_ref(name, value, outputs_dir, readable) if name in PATH_FIELDS else value
        elif spec.default is not None:
            values[name] = spec.default()
    return phase, values, visibility


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
