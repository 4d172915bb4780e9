"""The chain's loop: attempts, retries, gate thresholds, progress and the record, whoever runs an attempt.

The two orchestrators differ only in how they run one attempt of one phase: `animenb.orchestrate` calls the
phase function and scores its run in this process; the job server's parent job
(`animenb.runner.orchestration`) submits a child job and waits for it. Everything around that is here:

    chain = ChainRun(root, parameters, seed=seed, max_retries=max_retries, thresholds=thresholds, publish=...)
    while (attempt := chain.next_attempt()) is not None:
        chain.add(attempt, run_once(attempt))      # -> AttemptOutcome: the run directory and its gate verdict
    chain.finish(chain.ended.action, chain.ended.reason)

`ChainRun` asks the policy (`next_step`) what comes next, builds the attempt's parameters (seed, chain
inputs, per-phase options), keeps the record (`ChainRecord`, saved after every attempt) and the overall
progress (`ChainProgress`: `relay` passes the attempt's own progress events on), and turns each outcome
into an `AttemptRecord` with the gate's decision.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from ..phases.catalog import get_phase
from ..progress import ProgressEvent
from .policy import (
    NextStep,
    attempt_parameters,
    attempt_seed,
    check_on_review,
    gate_decision,
    next_step,
    resolve_thresholds,
)
from .progress import ChainProgress
from .record import AttemptRecord, ChainRecord, parent_manifest

# The chain's inputs to a phase (`chain_inputs`), as the record lists them per phase.
CHAIN_INPUTS = ("reference_image", "image")


@dataclass(frozen=True)
class Attempt:
    """One attempt to run: attempt `number` (from 1) of `phase`, with the phase notebook's `parameters`
    (the phase function's keyword arguments, without `output_dir` and `models`, which the runner sets).
    `output_dir` is where an in-process attempt writes; a child job writes to its own outputs/<job id>/."""

    phase: str
    number: int
    parameters: dict[str, Any]
    output_dir: Path
    threshold: float | None  # the gate; None: the phase's threshold in parameters/quality.yaml


@dataclass(frozen=True)
class AttemptOutcome:
    """What running one attempt gave: its run directory and the gate's verdict on it."""

    run_dir: Path
    score: float | None
    threshold: float | None
    passed: bool
    metrics: dict[str, float] = field(default_factory=dict)
    generate_seconds: float | None = None
    score_seconds: float | None = None
    job_id: str | None = None  # the child job (server)
    error: dict | None = None  # the quality step's error, when the run could not be scored (server)
    failures: list[str] = field(default_factory=list)  # the quality report's reasons the gate failed
    verdict: str | None = None  # the gate's pass | review | fail (None: a run scored before verdicts)


class ChainRun:
    """One chain in progress (see the module docstring).

    `parameters` are the chain's, as recorded; the attempts read `prompt`, `steps`, `width`, `height`,
    `models` and `reference_image` from them. `phase_options` adds parameters per phase name.
    `publish(event, milestone)` receives the overall progress (`ChainProgress`). `advisory`: gates are
    scored and recorded but a failed one neither retries nor stops the chain (random-weight profiles).
    `on_review`: what a gate's "review" verdict does (`policy.ON_REVIEW`)."""

    def __init__(
        self,
        root: str | Path,
        parameters: Mapping[str, Any],
        *,
        seed: int,
        max_retries: int,
        thresholds: Mapping[Any, float | None] | float | None = None,
        phase_options: Mapping[str, Mapping[str, Any]] | None = None,
        job_id: str | None = None,
        publish: Callable[[ProgressEvent, bool], None] | None = None,
        advisory: bool = False,
        on_review: str = "continue",
    ):
        self.root = Path(root)
        self.parameters = dict(parameters)
        self.seed = int(seed)
        self.max_retries = max_retries
        self.advisory = advisory
        self.on_review = check_on_review(on_review)
        self.thresholds = resolve_thresholds(thresholds)
        self.phase_options = {name: dict(options) for name, options in (phase_options or {}).items()}
        self.record = ChainRecord(
            self.root,
            parameters=self.parameters,
            seed=self.seed,
            max_retries=max_retries,
            thresholds=self.thresholds,
            job_id=job_id,
        )
        self.progress = ChainProgress(attempts_allowed=max_retries + 1, publish=publish)
        self.history: list[dict] = []  # the policy's input: the scored attempts, in order
        self.attempts: list[AttemptRecord] = []
        self.passed: dict[str, Path] = {}  # phase name -> the run directory that passed its gate
        self.ended: NextStep | None = None  # the policy's last word (succeeded / failed), once said
        self.started = time.perf_counter()

    def next_attempt(self, stage: str = "starting") -> Attempt | None:
        """The policy's next attempt, on record and in the progress at `stage`; None once the chain ended
        (then `ended` says how)."""
        step = next_step(self.history, self.max_retries, self.on_review, self.advisory)
        if step.action != "run":
            self.ended = step
            return None
        assert step.phase is not None and step.attempt is not None
        p = self.parameters
        parameters = attempt_parameters(
            step.phase,
            step.attempt,
            prompt=p["prompt"],
            seed=self.seed,
            root=self.root,
            passed=self.passed,
            steps=p["steps"],
            width=p.get("width"),
            height=p.get("height"),
            models=p.get("models"),
            reference_image=p.get("reference_image"),
            phase_options=self.phase_options,
        )
        output_dir = Path(parameters.pop("output_dir"))
        parameters.pop("models")
        self.record.begin_attempt(step.phase, {k: parameters[k] for k in CHAIN_INPUTS if k in parameters})
        self.progress.begin_attempt(step.phase, step.attempt, stage)
        return Attempt(step.phase, step.attempt, parameters, output_dir, self.thresholds[step.phase])

    def relay(self, event: Any) -> None:
        """One progress report of the running attempt (a phase's `ProgressEvent` or a child's
        `JobProgressEvent`: anything with their percent, step, total_steps, stage, part and preview)."""
        self.progress.on_phase_progress(
            event.percent, event.step, event.total_steps, event.stage, part=event.part, preview=event.preview
        )

    def add(self, attempt: Attempt, outcome: AttemptOutcome) -> AttemptRecord:
        """The attempt ran and was scored: record it, tell the progress, and save the record."""
        row = self._add(attempt.phase, attempt.number, outcome)
        self.progress.end_attempt(row.passed, row.score)
        self.save()
        return row

    def replay(self, phase: str, number: int, outcome: AttemptOutcome) -> AttemptRecord:
        """An attempt a previous process finished (a resumed chain): counted, not published."""
        row = self._add(phase, number, outcome)
        self.progress.replay(phase, number, row.passed)
        return row

    def _add(self, phase: str, number: int, outcome: AttemptOutcome) -> AttemptRecord:
        p = get_phase(phase)
        row = AttemptRecord(
            phase=p.name,
            phase_id=p.id,
            attempt=number,
            seed=attempt_seed(self.seed, p.id, number),
            seed_source=AttemptRecord.seed_source_of(number),
            output_dir=Path(os.path.relpath(outcome.run_dir, self.root)).as_posix(),
            score=outcome.score,
            threshold=outcome.threshold,
            passed=outcome.passed,
            decision=gate_decision(
                outcome.passed, number, self.max_retries, outcome.verdict, self.on_review, self.advisory
            ),
            generate_seconds=outcome.generate_seconds,
            score_seconds=outcome.score_seconds,
            metrics=dict(outcome.metrics),
            job_id=outcome.job_id,
            error=outcome.error,
            failures=list(outcome.failures),
            verdict=outcome.verdict,
        )
        self.attempts.append(row)
        self.history.append(row.as_dict())
        self.record.add_attempt(row)
        if row.passed or self.advisory:  # advisory: a failed attempt still feeds the next phase
            self.passed[row.phase] = Path(outcome.run_dir)
        return row

    def save(self) -> Path:
        """Write orchestration.json (atomically) with the time so far."""
        return self.record.save(time.perf_counter() - self.started)

    def finish(self, status: str, reason: str) -> None:
        """The chain ended (succeeded / failed / cancelled / error): on record, saved."""
        self.record.finish(status, reason)
        self.save()

    def write_manifest(self, finals: list[tuple[Path, str]]) -> dict:
        """The parent's manifest.json, listing `finals` ((path inside the root, kind) of each final file)."""
        return parent_manifest(self.root, self.record, self.attempts, finals)
