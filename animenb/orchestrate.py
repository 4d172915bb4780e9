"""Orchestration: phase 1 -> gate -> phase 2 -> gate -> phase 3 -> gate, retrying a failed gate with a new seed.

    from animenb.orchestrate import orchestrate
    result = orchestrate("anime girl with blue hair", seed=42, models="tiny")
    result.status, result.reason          # "succeeded" | "failed"
    result.attempts                       # one row per attempt: phase, attempt, seed, score, passed, ...

Layout of `output_dir` (default: outputs/<UTC stamp>-orchestration-<id>/):

    orchestration.json                    the chain record (written after every attempt; status "running" until done)
    manifest.json                         phase "ORCHESTRATION": parameters, timings, final files, quality summary
    1_character_sheet/attempt_1/          one phase run per attempt: its manifest.json, quality.json, files
    1_character_sheet/attempt_2/          ... a retry, with a derived seed
    2_animation_loop/attempt_1/
    3_full_video/attempt_1/

The chain policy lives in small pure functions, so the job server can run the same chain as a parent
job with one child job per attempt (`orchestrate` itself is driven by them):

    next_step(history, max_retries)  what to do after the scored attempts so far: run (phase, attempt),
                                  or stop with "succeeded" / "failed" and the reason
    attempt_parameters(...)       plain-JSON parameters of one attempt = the phase notebook's parameters
    CHAIN / chain_inputs(...)     which phase feeds which (phase 2's IP-Adapter reference = phase 1's
                                  run directory; phase 3's image = phase 2's first loop frame)
    attempt_seed(...)             attempt 1 uses the base seed, retries a seed derived from it
    attempt_dir(...)              where an attempt writes
    resolve_thresholds(...)       per-phase gate thresholds (None = parameters/quality.yaml)
    gate_decision(...)            "advance" | "retry" | "fail" after a scored attempt
    gate_failure_reason(...)      the status reason naming the phase, attempts, seeds and scores
    ProgressPlan, eta_seconds     overall percent across the chain (never decreasing, re-budgeted on a
                                  retry) and the ETA from the measured work rate

A gate failure is not an exception: the result has status "failed" and a reason. Real errors
(bad input, a phase raising) propagate; `orchestration.json` then records status "error" (or
"cancelled" for `animenb.progress.Cancelled`) before the exception leaves.
"""
from __future__ import annotations

import hashlib
import html
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from . import __version__
from .manifest import file_entry, read_manifest, utc_now, versions, write_json_atomic, write_manifest
from .phases import PHASE_FUNCTIONS, PhaseResult, get_phase
from .phases.common import (check_prompt, load_image, models_label, prepare_output_dir, resolve_backend,
                            resolve_seed)
from .progress import Cancelled, ProgressDisplay, ProgressEvent

ORCHESTRATION = "ORCHESTRATION"
RECORD_NAME = "orchestration.json"
MAX_RETRIES_LIMIT = 10
# Relative cost of one attempt of each phase, for the overall percent. Measured with the tiny profile
# (64 px, 1 thread): 2.5 / 2.3 / 3.0 s at 2 steps, 12 / 10 / 14 s at 15 steps, so equal weights.
PHASE_COST: dict[str, float] = {"CHARACTER_SHEET": 1.0, "ANIMATION_LOOP": 1.0, "FULL_VIDEO": 1.0}
SCORING_SHARE = 0.05  # share of an attempt's progress reserved for quality scoring


# ----------------------------------------------------------------------------- chain policy (pure)

@dataclass(frozen=True)
class ChainLink:
    """One phase of the chain: `parameter` of `phase` is fed from the passing run of `source`."""
    phase: str
    parameter: str | None = None
    source: str | None = None


CHAIN: tuple[ChainLink, ...] = (
    ChainLink("CHARACTER_SHEET"),                                   # reference_image: the caller's, if any
    ChainLink("ANIMATION_LOOP", "reference_image", "CHARACTER_SHEET"),  # IP-Adapter reference = the sheet run
    ChainLink("FULL_VIDEO", "image", "ANIMATION_LOOP"),             # SVD source = the first loop frame
)


def chain_inputs(phase: str, passed: Mapping[str, str | Path], reference_image: str | None = None) -> dict:
    """The phase-function keyword arguments that chain `phase` to the phases before it.

    `passed` maps phase name -> the run directory of its passing attempt. Phase 2 gets phase 1's run
    directory as `reference_image` (the phase function loads its reference pose); phase 3 gets the
    path of phase 2's first loop frame as `image` (a phase-2 directory would resolve to its
    reference image, not a frame). Phase 1 gets the caller's `reference_image`, if any.
    """
    link = next((link for link in CHAIN if link.phase == phase), None)
    if link is None:
        raise ValueError(f"`phase` must be one of {', '.join(l.phase for l in CHAIN)}, got {phase!r}.")
    if link.source is None:
        return {} if reference_image is None else {"reference_image": str(reference_image)}
    if link.source not in passed:
        raise ValueError(f"{phase} needs the passing run of {link.source}, which is not in `passed`.")
    source = Path(passed[link.source])
    if link.source == "ANIMATION_LOOP":
        frames = read_manifest(source)["outputs"].get("frames") or []
        if not frames:
            raise ValueError(f"{source} has no loop frames to animate.")
        return {link.parameter: str(source / frames[0])}
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


def resolve_thresholds(thresholds: Mapping[str | int, float | None] | float | None) -> dict[str, float | None]:
    """Per-phase gate thresholds: None -> each phase's threshold in parameters/quality.yaml (None here);
    a number -> that threshold for every phase; a mapping by phase id or name -> those phases (others
    None). Thresholds are finite numbers >= 0; above 1 forces a failure (tests use 1.01)."""
    from .quality.config import check_threshold

    out: dict[str, float | None] = {link.phase: None for link in CHAIN}
    if thresholds is None:
        return out
    if isinstance(thresholds, Mapping):
        for key, value in thresholds.items():
            name = get_phase(key).name
            out[name] = None if value is None else check_threshold(value, f"thresholds[{key!r}]")
        return out
    value = check_threshold(thresholds, "thresholds")
    return {name: value for name in out}


def gate_decision(passed: bool, attempt: int, max_retries: int) -> str:
    """After attempt `attempt` (from 1) of a phase was scored: "advance" to the next phase, "retry"
    this phase with a new seed, or "fail" the chain (the gate failed on attempt max_retries + 1)."""
    if passed:
        return "advance"
    return "retry" if attempt <= max_retries else "fail"


def gate_failure_reason(phase: str, attempts: list[Mapping[str, Any]]) -> str:
    """E.g. "CHARACTER_SHEET failed its quality gate (threshold 1.01) after 3 attempts:
    seed 42 -> 0.797, seed 2919... -> 0.812, seed 1234... -> 0.790"."""
    thresholds = sorted({a["threshold"] for a in attempts if a.get("threshold") is not None})
    gate = ", ".join(f"{t:.2f}" for t in thresholds) or "?"
    tries = ", ".join(f"seed {a['seed']} -> {a['score']:.3f}" if a.get("score") is not None
                      else f"seed {a['seed']} -> not scored" for a in attempts)
    n = len(attempts)
    return f"{phase} failed its quality gate (threshold {gate}) after {n} attempt{'s' * (n != 1)}: {tries}"


def success_reason(history: Sequence[Mapping[str, Any]]) -> str:
    passed = [h for h in history if h["passed"]]
    n = len(history)
    return (f"all {len(CHAIN)} gates passed in {n} attempt{'s' * (n != 1)} ("
            + ", ".join(f"{h['phase']} {h['score']:.3f}" for h in passed) + ")")


@dataclass(frozen=True)
class NextStep:
    """What the chain does next: run `phase` attempt `attempt`, or stop ("succeeded" / "failed", with reason)."""
    action: str                 # run | succeeded | failed
    phase: str | None = None
    attempt: int | None = None
    reason: str = ""


def next_step(history: Sequence[Mapping[str, Any]], max_retries: int) -> NextStep:
    """The whole chain policy as a function of the scored attempts so far (each a mapping with at least
    "phase", "seed", "score", "threshold", "passed", in order). The job server's parent job calls it
    after every child; `orchestrate` drives its own loop with it."""
    if not history:
        return NextStep("run", CHAIN[0].phase, 1)
    last = history[-1]
    tries = [h for h in history if h["phase"] == last["phase"]]
    decision = gate_decision(bool(last["passed"]), len(tries), max_retries)
    if decision == "retry":
        return NextStep("run", last["phase"], len(tries) + 1)
    if decision == "fail":
        return NextStep("failed", last["phase"], len(tries), gate_failure_reason(last["phase"], tries))
    index = [link.phase for link in CHAIN].index(last["phase"])
    if index + 1 == len(CHAIN):
        return NextStep("succeeded", reason=success_reason(history))
    return NextStep("run", CHAIN[index + 1].phase, 1)


def attempt_parameters(phase: str, attempt: int, *, prompt: str, seed: int, root: str | Path,
                       passed: Mapping[str, str | Path], steps: int = 15, width: int | None = None,
                       height: int | None = None, models: str | None = None, reference_image: str | None = None,
                       phase_options: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """Plain-JSON parameters of one attempt: the phase function's keyword arguments, which are also
    the parameter names of the phase notebook (papermill `parameters=` for a child job).
    `seed` is the base seed; `passed` maps phase name -> passing run directory."""
    name = get_phase(phase).name
    return {"prompt": prompt, "seed": attempt_seed(seed, get_phase(phase).id, attempt), "steps": steps,
            "width": width, "height": height, "models": models or "",
            "output_dir": str(attempt_dir(root, name, attempt)),
            **chain_inputs(name, passed, reference_image), **dict((phase_options or {}).get(name, {}))}


@dataclass(frozen=True)
class ProgressPlan:
    """Overall percent across the chain as planned work units (one per phase attempt, weighted by
    PHASE_COST). Made at `base_percent` for `units` (the current attempt first):

        percent(f) = base + (100 - base) * (Σ units[:index] + f * units[index]) / Σ units

    A retry re-budgets: the new plan starts at the percent the failed attempt ended at, with the
    retry's unit followed by the phases still to come, so the percent never goes backwards.
    """
    units: tuple[float, ...]
    base_percent: float = 0.0
    index: int = 0

    @classmethod
    def for_chain(cls, phases: list[str] | tuple[str, ...] | None = None,
                  cost: Mapping[str, float] | None = None) -> "ProgressPlan":
        cost = PHASE_COST if cost is None else cost
        phases = [link.phase for link in CHAIN] if phases is None else list(phases)
        return cls(units=tuple(float(cost.get(p, 1.0)) for p in phases))

    def percent(self, fraction: float = 0.0) -> float:
        total = sum(self.units)
        if self.index >= len(self.units) or total <= 0:
            return 100.0
        f = min(1.0, max(0.0, float(fraction)))
        done = sum(self.units[:self.index]) + f * self.units[self.index]
        return min(100.0, self.base_percent + (100.0 - self.base_percent) * done / total)

    def remaining_units(self, fraction: float = 0.0) -> float:
        """Work left in the plan (same units as PHASE_COST), for the ETA."""
        if self.index >= len(self.units):
            return 0.0
        f = min(1.0, max(0.0, float(fraction)))
        return sum(self.units[self.index:]) - f * self.units[self.index]

    def advance(self) -> "ProgressPlan":
        """The current attempt passed: the next unit is current."""
        return ProgressPlan(self.units, self.base_percent, self.index + 1)

    def retry(self) -> "ProgressPlan":
        """The current attempt failed its gate and is retried: re-budget from where it ended."""
        units = (self.units[self.index],) + self.units[self.index + 1:]
        return ProgressPlan(units, self.percent(1.0), 0)


def eta_seconds(units_done: float, units_remaining: float, elapsed: float) -> float | None:
    """Seconds left at the measured rate `units_done / elapsed` (None before any work is measured)."""
    if units_done <= 1e-9 or elapsed <= 0:
        return None
    return max(0.0, units_remaining * elapsed / units_done)


# ----------------------------------------------------------------------------- progress stream

class ChainProgress:
    """One overall progress stream for the chain: `ProgressEvent`s with phase "ORCHESTRATION",
    `percent` across the chain, the current phase and attempt in `stage`, the inner phase's
    step/total_steps, and the ETA from the measured work rate (rate origin: the first completed
    denoising step, so model loading does not count as a rate)."""

    def __init__(self, plan: ProgressPlan, *, publish: Callable[[ProgressEvent], None] | None = None,
                 display: str | None = "auto", attempts_allowed: int = 1):
        self.plan = plan
        self.publish = publish
        self.sink = ProgressDisplay(display, desc=ORCHESTRATION)
        self.attempts_allowed = attempts_allowed
        self.phase = get_phase(CHAIN[0].phase)
        self.attempt = 1
        self.fraction = 0.0
        self.units_done = 0.0          # finished work (all attempts), in PHASE_COST units
        self.percent = 0.0
        self.last_event: ProgressEvent | None = None
        self._step, self._total, self._inner_stage = 0, 1, "starting"
        self._started = time.perf_counter()
        self._origin: tuple[float, float] | None = None  # (time, units) at the first completed step

    # -- driven by the orchestrator
    def begin_attempt(self, phase: str, attempt: int) -> None:
        self.phase, self.attempt, self.fraction = get_phase(phase), attempt, 0.0
        self._step, self._total, self._inner_stage = 0, 1, "starting"
        self._emit()

    def on_phase_event(self, event: ProgressEvent) -> None:
        self._step, self._total, self._inner_stage = event.step, max(1, event.total_steps), event.stage
        self.fraction = max(self.fraction, (1.0 - SCORING_SHARE) * event.percent / 100.0)
        if self._origin is None and event.step >= 1:
            self._origin = (time.perf_counter(), self._units_now())
        self._emit(event.preview, step_event=True)

    def scoring(self) -> None:
        self._inner_stage = "scoring"
        self._emit()

    def end_attempt(self, decision: str, score: float | None = None) -> None:
        self.fraction = 1.0
        self._inner_stage = f"gate {'passed' if decision == 'advance' else 'failed'}" + (
            "" if score is None else f" ({score:.3f})")
        self._emit()
        self.units_done += self.plan.units[self.plan.index]
        self.fraction = 0.0
        self.plan = self.plan.advance() if decision == "advance" else self.plan.retry()

    def finish(self, stage: str) -> None:
        self._inner_stage = stage
        self._emit(final=True)
        self.sink.close()

    # -- internals
    def _units_now(self) -> float:
        index = self.plan.index
        current = self.plan.units[index] if index < len(self.plan.units) else 0.0
        return self.units_done + self.fraction * current

    def eta_seconds(self) -> float | None:
        if self._origin is None:
            return None
        t0, u0 = self._origin
        return eta_seconds(self._units_now() - u0, self.plan.remaining_units(self.fraction),
                           time.perf_counter() - t0)

    def _emit(self, preview: str | None = None, final: bool = False, step_event: bool = False) -> None:
        self.percent = max(self.percent, round(self.plan.percent(self.fraction), 2))
        if final:
            stage = self._inner_stage
        else:
            stage = (f"phase {self.phase.id}/{len(CHAIN)} {self.phase.name} · attempt "
                     f"{self.attempt}/{self.attempts_allowed} · {self._inner_stage}")
        eta = 0.0 if final else self.eta_seconds()
        event = ProgressEvent(phase=ORCHESTRATION, stage=stage, stage_index=self.phase.id, stage_count=len(CHAIN),
                              step=self._step, total_steps=self._total, percent=self.percent,
                              eta_seconds=None if eta is None else round(eta, 3),
                              elapsed_seconds=round(time.perf_counter() - self._started, 3), preview=preview)
        self.last_event = event
        if self.publish is not None:
            self.publish(event)
        self.sink.show(event, force=not step_event)


# ----------------------------------------------------------------------------- records and result

@dataclass(frozen=True)
class AttemptRecord:
    """One phase attempt: where it wrote, its seed (and how it was derived), its gate verdict, timings."""
    phase: str
    phase_id: int
    attempt: int
    seed: int
    seed_source: str            # "base" or "sha256(base:phase:attempt)"
    output_dir: str             # relative to the orchestration's output_dir
    score: float | None
    threshold: float | None
    passed: bool
    decision: str               # advance | retry | fail
    generate_seconds: float
    score_seconds: float
    metrics: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class OrchestrationResult:
    """What `orchestrate` returns. `results` holds the last run of each phase reached (the passing
    one, or the last failing one); `attempts` one row per attempt (for a pandas table)."""
    status: str                 # succeeded | failed
    reason: str
    output_dir: Path
    seed: int
    attempts: list[AttemptRecord]
    results: dict[str, PhaseResult] = field(repr=False)
    record: dict = field(repr=False)
    manifest: dict = field(repr=False)

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"

    def rows(self) -> list[dict]:
        """The attempts as flat dicts (metrics left out): `pandas.DataFrame(result.rows())`."""
        return [{k: v for k, v in a.as_dict().items() if k != "metrics"} for a in self.attempts]

    def path(self, key: str) -> Path:
        """Absolute path of a final output named in the manifest ("sheet", "gif", "mp4", ...)."""
        return self.output_dir / self.manifest["outputs"][key]

    def _repr_html_(self) -> str:
        colour = "green" if self.succeeded else "#b00"
        return (f'<b>ORCHESTRATION</b> <span style="color:{colour}">{html.escape(self.status)}</span> · '
                f"{html.escape(self.reason)} · seed {self.seed} · {len(self.attempts)} attempts · "
                f"<code>{html.escape(str(self.output_dir))}</code>")


def _check_int(value, name: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"`{name}` must be an integer {bound}, got {value!r}.")
    return value


# ----------------------------------------------------------------------------- the orchestrator

def orchestrate(
    prompt: str,
    *,
    seed: int | None = None,
    steps: int = 15,
    width: int | None = None,
    height: int | None = None,
    reference_image: str | Path | None = None,
    max_retries: int = 2,
    models: str | None = None,
    backend: str = "diffusers",
    backend_options: dict | None = None,
    output_dir: str | Path | None = None,
    thresholds: Mapping[str | int, float | None] | float | None = None,
    phase_options: Mapping[str, Mapping[str, Any]] | None = None,
    on_progress: Callable[[ProgressEvent], None] | None = None,
    display: str | None = "auto",
) -> OrchestrationResult:
    """Run CHARACTER_SHEET -> gate -> ANIMATION_LOOP -> gate -> FULL_VIDEO -> gate in this process.

    Each attempt runs the phase function into `attempt_dir(output_dir, phase, k)`, scores it with
    `animenb.quality` (plus the IP-Adapter CLIP encoder with the diffusers backend) and records the
    verdict (quality.json, manifest["quality"]). A failed gate retries the phase with
    `attempt_seed(seed, phase_id, k)` up to `max_retries` times; then the chain stops with status
    "failed" and a reason naming the phase, attempts, seeds and scores. `thresholds`: None (each
    phase's threshold in parameters/quality.yaml), one number for all phases, or a mapping by phase.
    `phase_options` passes extra keyword arguments to one phase function, by phase name (e.g.
    {"FULL_VIDEO": {"frames": 14}}). `on_progress` receives the overall `ProgressEvent`s; `display`
    as for the phase functions ("auto", "kernel", "tqdm" or None).
    """
    # 0. check inputs before any model work
    check_prompt(prompt)
    seed = resolve_seed(seed)
    _check_int(steps, "steps", 1, 1000)
    _check_int(max_retries, "max_retries", 0, MAX_RETRIES_LIMIT)
    gates = resolve_thresholds(thresholds)
    options = {get_phase(k).name: dict(v) for k, v in (phase_options or {}).items()}
    for name, opts in options.items():
        clash = {"prompt", "seed", "steps", "width", "height", "models", "backend", "backend_options",
                 "output_dir", "on_progress", "display", "reference_image", "image"} & set(opts)
        if clash:
            raise ValueError(f"`phase_options[{name!r}]` may not set {sorted(clash)}: orchestrate sets them.")
    if reference_image is not None:
        load_image(reference_image, "reference_image")  # an image file or a run directory with a reference
    engine = resolve_backend(backend, models, backend_options)
    root = prepare_output_dir(output_dir, ORCHESTRATION)

    from .quality import record_quality, score_output_dir

    parameters = {"prompt": prompt, "seed": seed, "steps": steps, "width": width, "height": height,
                  "reference_image": None if reference_image is None else str(reference_image),
                  "max_retries": max_retries, "models": models, "backend": getattr(engine, "name", str(backend)),
                  "thresholds": thresholds if not isinstance(thresholds, Mapping)
                  else {str(k): v for k, v in thresholds.items()}, "phase_options": options}
    record: dict[str, Any] = {
        "status": "running", "reason": "", "animenb_version": __version__, "started_at": utc_now(),
        "finished_at": None, "parameters": parameters, "seed": seed,
        "chain": [asdict(link) for link in CHAIN],
        "seed_derivation": "attempt 1: the base seed; attempt k > 1: sha256(f'{seed}:{phase_id}:{k}') "
                           "first 8 bytes mod 2**32",
        "phases": [{"phase": {"id": get_phase(l.phase).id, "name": l.phase}, "status": "pending",
                    "threshold": gates[l.phase], "inputs": {}, "attempts": [], "output_dir": None} for l in CHAIN],
        "timings": {},
    }
    progress = ChainProgress(ProgressPlan.for_chain(), publish=on_progress, display=display,
                             attempts_allowed=max_retries + 1)
    started = time.perf_counter()
    attempts: list[AttemptRecord] = []
    results: dict[str, PhaseResult] = {}
    passed_dirs: dict[str, Path] = {}

    def save_record() -> None:
        record["timings"]["total_seconds"] = round(time.perf_counter() - started, 4)
        write_json_atomic(root / RECORD_NAME, record)

    save_record()
    try:
        # 1-3. each phase, attempt after attempt, until its gate passes or the retries run out
        history: list[dict] = []
        while (step := next_step(history, max_retries)).action == "run":
            phase, attempt = get_phase(step.phase), step.attempt
            entry = record["phases"][phase.id - 1]
            kwargs = attempt_parameters(phase.name, attempt, prompt=prompt, seed=seed, root=root, passed=passed_dirs,
                                        steps=steps, width=width, height=height, models=models,
                                        reference_image=parameters["reference_image"], phase_options=options)
            out = Path(kwargs.pop("output_dir"))
            kwargs.pop("models")
            entry.update(status="running",
                         inputs={k: kwargs[k] for k in ("reference_image", "image") if k in kwargs})
            progress.begin_attempt(phase.name, attempt)
            t0 = time.perf_counter()
            result = PHASE_FUNCTIONS[phase.name](**kwargs, output_dir=out, backend=engine, display=None,
                                                 on_progress=progress.on_phase_event)
            t1 = time.perf_counter()
            progress.scoring()
            report = score_output_dir(out, threshold=gates[phase.name], embed="auto")
            record_quality(out, report)
            decision = gate_decision(report.passed, attempt, max_retries)
            row = AttemptRecord(
                phase=phase.name, phase_id=phase.id, attempt=attempt, seed=kwargs["seed"],
                seed_source="base" if attempt == 1 else "sha256(base:phase:attempt)",
                output_dir=out.relative_to(root).as_posix(), score=report.score, threshold=report.threshold,
                passed=report.passed, decision=decision, generate_seconds=round(t1 - t0, 4),
                score_seconds=round(time.perf_counter() - t1, 4), metrics=dict(report.metrics))
            attempts.append(row)
            history.append(row.as_dict())
            results[phase.name] = result
            entry["attempts"].append(row.as_dict())
            progress.end_attempt(decision, report.score)
            if report.passed:
                entry.update(status="passed", output_dir=row.output_dir)
                passed_dirs[phase.name] = out
            elif decision == "fail":
                entry["status"] = "failed"
            save_record()
        status, reason = step.action, step.reason
        for entry in record["phases"]:
            if entry["status"] == "pending":
                entry["status"] = "skipped"
    except BaseException as exc:
        record.update(status="cancelled" if isinstance(exc, (Cancelled, KeyboardInterrupt)) else "error",
                      reason=f"{type(exc).__name__}: {exc}", finished_at=utc_now())
        save_record()
        progress.finish(f"{record['status']}: {record['reason']}")
        raise

    # 4. the parent's record and manifest
    record.update(status=status, reason=reason, finished_at=utc_now())
    save_record()
    manifest = _write_parent_manifest(root, record, parameters, seed, engine, results, passed_dirs, attempts)
    progress.finish("done" if status == "succeeded" else f"failed: {reason}")
    return OrchestrationResult(status=status, reason=reason, output_dir=root, seed=seed, attempts=attempts,
                               results=results, record=record, manifest=manifest)


def _write_parent_manifest(root: Path, record: dict, parameters: dict, seed: int, engine, results: dict,
                           passed: dict[str, Path], attempts: list[AttemptRecord]) -> dict:
    """manifest.json of phase "ORCHESTRATION": the final files of the passing runs (relative paths),
    and "quality" = the weakest final score among the phases reached, passed = every gate passed."""
    outputs: dict[str, Any] = {"record": RECORD_NAME, "runs": {}}
    files: list[tuple[Path, str]] = []
    wanted = {"CHARACTER_SHEET": (("sheet", "sheet"), ("reference", "reference")),
              "ANIMATION_LOOP": (("gif", "gif"), ("mp4", "loop_mp4"), ("webp", "webp")),
              "FULL_VIDEO": (("mp4", "video"),)}
    for name, result in results.items():
        run = result.output_dir.relative_to(root).as_posix()
        outputs["runs"][name] = run
        if name not in passed:
            continue
        for key, kind in wanted[name]:
            rel = result.manifest["outputs"].get(key)
            if rel:
                path = result.output_dir / rel
                outputs[kind] = path.relative_to(root).as_posix()
                files.append((path, kind))
    if "FULL_VIDEO" in passed:
        outputs["mp4"] = outputs["video"]
    files.append((root / RECORD_NAME, "orchestration"))
    final = {}
    for a in attempts:
        final[a.phase] = a  # the last attempt of each phase reached
    weakest = min(final.values(), key=lambda a: a.score if a.score is not None else -1.0) if final else None
    quality = {"score": None if weakest is None else weakest.score,
               "threshold": None if weakest is None else weakest.threshold,
               "passed": record["status"] == "succeeded",
               "phases": {a.phase: {"score": a.score, "threshold": a.threshold, "passed": a.passed,
                                    "attempts": a.attempt} for a in final.values()}}
    description = engine.describe()
    manifest = {
        "animenb_version": __version__, "created_at": record["started_at"],
        "phase": {"id": None, "name": ORCHESTRATION},
        "parameters": parameters, "seed": seed, "models": models_label(description), "backend": description,
        "versions": versions(), "timings": dict(record["timings"]),
        "status": record["status"], "reason": record["reason"],
        "outputs": outputs,
        "files": [file_entry(root, path, kind) for path, kind in files],
        "quality": quality,
    }
    write_manifest(root, manifest)
    return manifest
