"""The chain's policy as pure functions: which phase runs next, with which seed and inputs, and why it stopped.

The chain's loop (`animenb.chain.loop.ChainRun`, which both orchestrators run) asks `next_step` after every
attempt:

    next_step(history, max_retries)  what to do after the scored attempts so far: run (phase, attempt),
                                  or stop with "succeeded" / "failed" and the reason (`advisory=True`:
                                  gates are scored and recorded, but a failed one neither retries nor stops)
    attempt_parameters(...)       plain-JSON parameters of one attempt = the phase notebook's parameters
    CHAIN / chain_inputs(...)     which phase feeds which (phase 2's IP-Adapter reference = phase 1's
                                  run directory; phase 3's image = phase 2's first loop frame)
    attempt_seed(...)             attempt 1 uses the base seed, retries a seed derived from it
    attempt_dir(...)              where an in-process attempt writes
    MAX_RETRIES, THRESHOLD        the chain's own parameters as spec `Param`s: default, range and type, which
                                  `orchestrate`, POST /orchestrate and the OpenAPI document all read
    resolve_thresholds(...)       per-phase gate thresholds (None = parameters/quality.yaml)
    gate_decision(...)            "advance" | "retry" | "fail" after a scored attempt (`on_review` says what a
                                  "review" verdict does: "continue" and flag it, "retry", or "stop")
    gate_failure_reason(...)      the status reason naming the phase, attempts, seeds and scores
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..phases.catalog import get_phase
from ..phases.spec import Param, SpecError, image_source

ORCHESTRATION = "ORCHESTRATION"  # the parent's phase name in its manifest and progress events
MAX_RETRIES_LIMIT = 10
MAX_THRESHOLD = 2.0  # a score is in [0, 1]: any gate above 1 fails (tests force failures with 1.01)
MAX_RETRIES = Param(
    "max_retries",
    "integer",
    default=2,
    minimum=0,
    maximum=MAX_RETRIES_LIMIT,
    description="retries per phase after a failed gate, each with a new seed",
)
THRESHOLD = Param(
    "threshold",
    "number",
    nullable=True,
    minimum=0.0,
    maximum=MAX_THRESHOLD,
    description="a phase's quality gate; null: its threshold in parameters/quality.yaml",
)
# What a gate's "review" verdict (a measure within its margin of a floor) does to the chain: go on and
# flag the output for a person (default: an unattended chain should not throw away work it cannot judge),
# retry the phase like a failure, or stop the chain for a person to look.
ON_REVIEW = ("continue", "retry", "stop")
SEED_DERIVATION = "attempt 1: the base seed; attempt k > 1: sha256(f'{seed}:{phase_id}:{k}') first 8 bytes mod 2**32"


@dataclass(frozen=True)
class ChainLink:
    """One phase of the chain: `parameter` of `phase` is fed from the passing run of `source`."""

    phase: str
    parameter: str | None = None
    source: str | None = None


CHAIN: tuple[ChainLink, ...] = (
    ChainLink("CHARACTER_SHEET"),  # reference_image: the caller's, if any
    ChainLink("ANIMATION_LOOP", "reference_image", "CHARACTER_SHEET"),  # IP-Adapter reference = the sheet run
    ChainLink("FULL_VIDEO", "image", "ANIMATION_LOOP"),  # SVD source = the first loop frame
)


def chain_inputs(phase: str, passed: Mapping[str, str | Path], reference_image: str | None = None) -> dict:
    """The phase-function keyword arguments that chain `phase` to the phases before it.

    `passed` maps phase name -> the run directory of its passing attempt. Phase 2 gets phase 1's run
    directory as `reference_image` (the phase function loads its reference pose from it); phase 3 gets
    the path of phase 2's first loop frame as `image` (what `phases.spec.image_source` takes from a loop
    run), so the record names the frame itself. Phase 1 gets the caller's `reference_image`, if any.
    """
    link = next((link for link in CHAIN if link.phase == phase), None)
    if link is None:
        raise ValueError(f"`phase` must be one of {', '.join(link.phase for link in CHAIN)}, got {phase!r}.")
    if link.parameter is None or link.source is None:
        return {} if reference_image is None else {"reference_image": str(reference_image)}
    if link.source not in passed:
        raise ValueError(f"{phase} needs the passing run of {link.source}, which is not in `passed`.")
    source = Path(passed[link.source])
    if link.source == "ANIMATION_LOOP":
        return {link.parameter: str(image_source(source, link.parameter))}
    return {link.parameter: str(source)}


def attempt_seed(base_seed: int, phase_id: int, attempt: int) -> int:
    """Attempt 1 of every phase uses `base_seed`; attempt k > 1 uses
    int(sha256(f"{base_seed}:{phase_id}:{k}")[:8 bytes]) mod 2**32, a new seed that depends only on
    the base seed, the phase and the attempt number (so a rerun retries the same seeds)."""
    if attempt < 1:
        raise ValueError(f"`attempt` counts from 1, got {attempt!r}.")
    if attempt == 1:
        return int(base_seed)
    digest = hashlib.sha256(f"{int(base_seed)}:{int(phase_id)}:{int(attempt)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 2**32


def attempt_dir(root: str | Path, phase: str, attempt: int) -> Path:
    """`<root>/<id>_<phase name lower>/attempt_<k>` (k from 1)."""
    p = get_phase(phase)
    return Path(root) / f"{p.id}_{p.name.lower()}" / f"attempt_{attempt}"


def check_threshold(value: Any, name: str = "threshold") -> float | None:
    """`value` as a gate threshold (`THRESHOLD`'s rules), or SpecError naming `name`."""
    replace(THRESHOLD, name=name).check(value)
    return None if value is None else float(value)


def resolve_thresholds(
    thresholds: Mapping[Any, float | None] | float | None, name: str = "thresholds"
) -> dict[str, float | None]:
    """Per-phase gate thresholds: None -> each phase's threshold in parameters/quality.yaml (None here);
    a number -> that threshold for every phase; a mapping by phase id or name -> those phases (others
    None). Each follows `THRESHOLD` (a number in [0, MAX_THRESHOLD] or None); SpecError names `name`."""
    out: dict[str, float | None] = {link.phase: None for link in CHAIN}
    if thresholds is None:
        return out
    if not isinstance(thresholds, Mapping):
        value = check_threshold(thresholds, name)
        return {phase: value for phase in out}
    for key, value in thresholds.items():
        try:
            phase = get_phase(key).name
        except ValueError as exc:
            raise SpecError(name, f"`{name}`: {exc}") from None
        try:
            out[phase] = check_threshold(value, f"{name}[{key!r}]")
        except SpecError as exc:
            raise SpecError(name, str(exc)) from None
    return out


def check_on_review(on_review: Any) -> str:
    if on_review not in ON_REVIEW:
        raise ValueError(f"`on_review` must be one of {', '.join(ON_REVIEW)}, got {on_review!r}.")
    return on_review


def gate_decision(
    passed: bool,
    attempt: int,
    max_retries: int,
    verdict: str | None = None,
    on_review: str = "continue",
    advisory: bool = False,
) -> str:
    """After attempt `attempt` (from 1) of a phase was scored: "advance" to the next phase, "retry"
    this phase with a new seed, or "fail" the chain (the gate failed on attempt max_retries + 1).
    A "review" `verdict` advances (flagged) with `on_review` "continue", fails the chain with "stop",
    and counts as a failed gate with "retry". Advisory gates always advance (random-weight models fail
    every gate by design)."""
    if advisory:
        return "advance"
    if verdict == "review" and check_on_review(on_review) != "continue":
        if on_review == "stop":
            return "fail"
        passed = False
    if passed:
        return "advance"
    return "retry" if attempt <= max_retries else "fail"


def attempt_verdict(attempt: Mapping[str, Any]) -> str:
    """E.g. "seed 42 -> 0.133 (pose_distinctness 0.212 < floor 0.5)": the score and, when the gate failed,
    the rules that failed it (`failures` of the quality report; a low score is already in the number)."""
    if attempt.get("score") is None:
        return f"seed {attempt['seed']} -> not scored"
    failed = [f for f in attempt.get("failures") or () if not f.startswith("score ")]
    return f"seed {attempt['seed']} -> {attempt['score']:.3f}" + (f" ({'; '.join(failed)})" if failed else "")


def gate_failure_reason(phase: str, attempts: list[Mapping[str, Any]]) -> str:
    """E.g. "CHARACTER_SHEET failed its quality gate (threshold 0.80) after 3 attempts:
    seed 42 -> 0.797, seed 2919... -> 0.812 (pose_distinctness 0.212 < floor 0.5), seed 1234... -> 0.790"."""
    thresholds = sorted({a["threshold"] for a in attempts if a.get("threshold") is not None})
    gate = ", ".join(f"{t:.2f}" for t in thresholds) or "?"
    tries = ", ".join(attempt_verdict(a) for a in attempts)
    n = len(attempts)
    return f"{phase} failed its quality gate (threshold {gate}) after {n} attempt{'s' * (n != 1)}: {tries}"


def success_reason(history: Sequence[Mapping[str, Any]], advisory: bool = False) -> str:
    """Why a chain that reached its end succeeded: every gate passed (the passing attempt of each phase,
    and those a person should review), or, with advisory gates, it ran through (and which gates failed)."""
    n = len(history)
    failed = [h for h in history if not h["passed"]]
    if advisory and failed:
        return f"ran through with advisory gates in {n} attempt{'s' * (n != 1)}; failed: " + ", ".join(
            f"{h['phase']} {attempt_verdict(h)}" for h in failed
        )
    passed = [h for h in history if h["passed"]]
    flagged = [h["phase"] for h in passed if h.get("verdict") == "review"]
    return (
        f"all {len(CHAIN)} gates passed in {n} attempt{'s' * (n != 1)} ("
        + ", ".join(f"{h['phase']} {h['score']:.3f}" for h in passed)
        + ")"
        + (f"; flagged for review: {', '.join(flagged)}" if flagged else "")
    )


@dataclass(frozen=True)
class NextStep:
    """What the chain does next: run `phase` attempt `attempt`, or stop ("succeeded" / "failed", with reason)."""

    action: str  # run | succeeded | failed
    phase: str | None = None
    attempt: int | None = None
    reason: str = ""


def next_step(
    history: Sequence[Mapping[str, Any]], max_retries: int, on_review: str = "continue", advisory: bool = False
) -> NextStep:
    """The whole chain policy as a function of the scored attempts so far (each a mapping with at least
    "phase", "seed", "score", "threshold", "passed", and "verdict" where the gate gave one, in order).
    `ChainRun.next_attempt` calls it."""
    if not history:
        return NextStep("run", CHAIN[0].phase, 1)
    last = history[-1]
    tries = [h for h in history if h["phase"] == last["phase"]]
    decision = gate_decision(bool(last["passed"]), len(tries), max_retries, last.get("verdict"), on_review, advisory)
    if decision == "retry":
        return NextStep("run", last["phase"], len(tries) + 1)
    if decision == "fail" and last.get("verdict") == "review" and on_review == "stop":
        return NextStep(
            "failed",
            last["phase"],
            len(tries),
            f"{last['phase']} needs a review (on_review=stop): seed {last['seed']} -> {last['score']:.3f}",
        )
    if decision == "fail":
        return NextStep("failed", last["phase"], len(tries), gate_failure_reason(last["phase"], tries))
    index = [link.phase for link in CHAIN].index(last["phase"])
    if index + 1 == len(CHAIN):
        return NextStep("succeeded", reason=success_reason(history, advisory))
    return NextStep("run", CHAIN[index + 1].phase, 1)


def attempt_parameters(
    phase: str,
    attempt: int,
    *,
    prompt: str,
    seed: int,
    root: str | Path,
    passed: Mapping[str, str | Path],
    steps: int = 15,
    width: int | None = None,
    height: int | None = None,
    models: str | None = None,
    reference_image: str | None = None,
    phase_options: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Plain-JSON parameters of one attempt: the phase function's keyword arguments, which are also
    the parameter names of the phase notebook (papermill `parameters=` for a child job).
    `seed` is the base seed; `passed` maps phase name -> passing run directory."""
    name = get_phase(phase).name
    return {
        "prompt": prompt,
        "seed": attempt_seed(seed, get_phase(phase).id, attempt),
        "steps": steps,
        "width": width,
        "height": height,
        "models": models or "",
        "output_dir": str(attempt_dir(root, name, attempt)),
        **chain_inputs(name, passed, reference_image),
        **dict((phase_options or {}).get(name, {})),
    }
