"""The body of POST /api/anime/orchestrate -> the parent job's parameters, or an `APIError`.

The gated chain CHARACTER_SHEET -> ANIMATION_LOOP -> FULL_VIDEO runs as one parent job with one child job
per phase attempt (see animenb.runner.orchestration). Body: `prompt` (required) and optional `seed`,
`steps`, `width`, `height`, `negative_prompt`, `guidance_scale`, `scheduler` (checked exactly as for
POST /generate and passed to every phase), `reference_image` (a previous job's output, as for /generate;
phase 1's IP-Adapter reference), `max_retries` (retries per phase after a failed gate), `on_review`
(continue | retry | stop, default continue: what a gate's "review" verdict does), `advisory_gates` (run
the chain through whatever the gates say), `threshold` (one gate for every phase) or `thresholds`
({phase id or name: number or null}; null or absent: the phase's threshold in parameters/quality.yaml),
`models` (must name the server's profile, if given), `visibility`.
`max_retries` and the gates follow the chain's own spec (`animenb.chain.MAX_RETRIES`, `THRESHOLD`), as the
in-process `orchestrate()` and the OpenAPI document do.
"""

from __future__ import annotations

import secrets

from animenb.chain import MAX_RETRIES, ON_REVIEW, resolve_thresholds
from animenb.phases.spec import CHARACTER_SHEET, SpecError
from animenb.runner.orchestration import COMMON_FIELDS

from .validation import FIELDS, check_param, invalid, resolve_output_ref

CHAIN_FIELDS = ("prompt", "seed", "steps", "width", "height") + COMMON_FIELDS
ACCEPTED = CHAIN_FIELDS + (
    "reference_image",
    "max_retries",
    "advisory_gates",
    "on_review",
    "threshold",
    "thresholds",
    "models",
    "visibility",
)


def validate_orchestrate(data: dict, outputs_dir, server_models: str, readable) -> tuple[dict, str | None]:
    """Returns (the parent's parameters, visibility if given)."""
    unknown = sorted(set(data) - set(ACCEPTED))
    if unknown:
        raise invalid(
            unknown[0], f"Unknown field `{unknown[0]}`; accepted: {', '.join(ACCEPTED)}.", code="unknown_field"
        )
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
    values["max_retries"] = check_param(MAX_RETRIES, data.get("max_retries", MAX_RETRIES.default))
    values["thresholds"] = _thresholds(data)
    advisory = data.get("advisory_gates", False)
    if not isinstance(advisory, bool):
        raise invalid("advisory_gates", f"`advisory_gates` must be true or false, got {advisory!r}.")
    values["advisory_gates"] = advisory
    on_review = data.get("on_review", "continue")
    if on_review not in ON_REVIEW:
        raise invalid("on_review", f"`on_review` must be one of {', '.join(ON_REVIEW)}, got {on_review!r}.")
    values["on_review"] = on_review
    models = data.get("models")
    if models is not None and models != server_models:
        raise invalid(
            "models", f"`models` must be this server's profile {server_models!r} (or left out), got {models!r}."
        )
    visibility = data.get("visibility")
    if visibility is not None and visibility not in ("public", "private"):
        raise invalid("visibility", f"`visibility` must be one of public, private, got {visibility!r}.")
    return values, visibility


def _thresholds(data: dict) -> dict[str, float | None]:
    """{phase name: gate or None} from `threshold` (a number or null) or `thresholds` (an object or null)."""
    if "threshold" in data and "thresholds" in data:
        raise invalid("thresholds", "Give `threshold` (every phase) or `thresholds` (per phase), not both.")
    field = "threshold" if "threshold" in data else "thresholds"
    given = data.get(field)
    if field == "thresholds" and given is not None and not isinstance(given, dict):
        raise invalid(
            field, f"`{field}` must be an object {{phase id or name: number or null}}, got {type(given).__name__}."
        )
    if field == "threshold" and isinstance(given, dict):
        raise invalid(field, f"`{field}` must be a number or null, got object; per phase: `thresholds`.")
    try:
        return resolve_thresholds(given, field)
    except SpecError as exc:
        raise invalid(exc.field, str(exc)) from None
