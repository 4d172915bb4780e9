"""The body of POST /api/anime/orchestrate -> the parent job's parameters, or an `APIError`.

The gated chain CHARACTER_SHEET -> ANIMATION_LOOP -> FULL_VIDEO runs as one parent job with one child job
per phase attempt (see animenb.runner.orchestration). Body: `prompt` (required) and optional `seed`,
`steps`, `width`, `height`, `negative_prompt`, `guidance_scale`, `scheduler` (checked exactly as for
POST /generate and passed to every phase), `reference_image` (a previous job's output, as for /generate;
phase 1's IP-Adapter reference), `max_retries` (0-10, default 2: retries per phase after a failed gate),
`on_review` (continue | retry | stop, default continue: what a gate's "review" verdict does),
`threshold` (one gate for every phase) or `thresholds` ({phase id or name: number or null}; null or
absent: the phase's threshold in parameters/quality.yaml), `models` (must name the server's profile, if
given), `visibility`.
"""
from __future__ import annotations

import secrets

from animenb.chain import MAX_RETRIES_LIMIT, ON_REVIEW
from animenb.phases.catalog import get_phase
from animenb.phases.spec import CHARACTER_SHEET, SpecError
from animenb.runner.orchestration import COMMON_FIELDS

from .validation import FIELDS, invalid, resolve_output_ref

MAX_THRESHOLD = 2.0  # above 1 a gate always fails (tests force failures with 1.01)
CHAIN_FIELDS = ("prompt", "seed", "steps", "width", "height") + COMMON_FIELDS
ACCEPTED = CHAIN_FIELDS + ("reference_image", "max_retries", "on_review", "threshold", "thresholds", "models", "visibility")


def _threshold(field: str, value) -> float | None:
    if value is None:
        return None
    if type(value) not in (int, float) or value != value or not 0 <= value <= MAX_THRESHOLD:
        raise invalid(field, f"`{field}` must be a number in [0, {MAX_THRESHOLD}] or null, got {value!r}.")
    return float(value)


def validate_orchestrate(data: dict, outputs_dir, server_models: str, readable) -> tuple[dict, str | None]:
    """Returns (the parent's parameters, visibility if given)."""
    unknown = sorted(set(data) - set(ACCEPTED))
    if unknown:
        raise invalid(unknown[0], f"Unknown field `{unknown[0]}`; accepted: {', '.join(ACCEPTED)}.",
                      code="unknown_field")
    if "prompt" not in data:
        raise invalid("prompt", "`prompt` is required.", code="missing_field")
    values: dict = {}
    for name in CHAIN_FIELDS:
        spec = FIELDS[name]
        if name in data:  # null too: `"prompt": null` is a 422, not "the default"
            values[name] = spec.check(name, data[name])
        elif spec.default is not None:
            values[name] = spec.default()
    if values.get("seed") in (None, -1):
        values["seed"] = secrets.randbelow(2**32)
    if data.get("reference_image") is not None:
        reference = resolve_output_ref("reference_image", data["reference_image"], outputs_dir, readable)
        try:
            CHARACTER_SHEET.param("reference_image").check(reference)
        except SpecError as exc:  # in the caller's words, never the server's paths
            raise invalid("reference_image", str(exc).replace(reference, str(data["reference_image"]))) from None
        values["reference_image"] = reference
    retries = data.get("max_retries", 2)
    if type(retries) is not int or not 0 <= retries <= MAX_RETRIES_LIMIT:
        raise invalid("max_retries", f"`max_retries` must be an integer in [0, {MAX_RETRIES_LIMIT}], got {retries!r}.")
    values["max_retries"] = retries
    on_review = data.get("on_review", "continue")
    if on_review not in ON_REVIEW:
        raise invalid("on_review", f"`on_review` must be one of {', '.join(ON_REVIEW)}, got {on_review!r}.")
    values["on_review"] = on_review
    if "threshold" in data and "thresholds" in data:
        raise invalid("thresholds", "Give `threshold` (every phase) or `thresholds` (per phase), not both.")
    thresholds = {get_phase(p).name: None for p in (1, 2, 3)}
    if data.get("threshold") is not None:
        gate = _threshold("threshold", data["threshold"])
        thresholds = {name: gate for name in thresholds}
    elif data.get("thresholds") is not None:
        if not isinstance(data["thresholds"], dict):
            raise invalid("thresholds", "`thresholds` must be an object {phase id or name: number or null}, "
                                        f"got {type(data['thresholds']).__name__}.")
        for key, gate in data["thresholds"].items():
            try:
                name = get_phase(key).name
            except ValueError as exc:
                raise invalid("thresholds", f"`thresholds`: {exc}") from None
            thresholds[name] = _threshold(f"thresholds.{key}", gate)
    values["thresholds"] = thresholds
    models = data.get("models")
    if models is not None and models != server_models:
        raise invalid("models", f"`models` must be this server's profile {server_models!r} (or left out), "
                                f"got {models!r}.")
    visibility = data.get("visibility")
    if visibility is not None and visibility not in ("public", "private"):
        raise invalid("visibility", f"`visibility` must be one of public, private, got {visibility!r}.")
    return values, visibility
