"""Overall progress of a chain, whoever runs it: percent across the phases (never decreasing, re-budgeted on a
retry), the current phase and attempt, and the ETA from the measured work rate.

    ProgressPlan, eta_seconds     the arithmetic (pure)
    ChainProgress                 the tracker of the chain's loop (`ChainRun`), fed with the attempt's
                                  own progress: a phase function's `ProgressEvent`s in process, a child
                                  job's progress events on the server. It publishes one `ProgressEvent`
                                  (phase "ORCHESTRATION", part "chain") per change; the caller decides
                                  where it goes (a display, the job event bus, the store).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Mapping

from ..phases.catalog import get_phase
from ..progress import ProgressEvent
from .policy import CHAIN, ORCHESTRATION

# Relative cost of one attempt of each phase, for the overall percent. Measured with the tiny profile
# (64 px, 1 thread): 2.5 / 2.3 / 3.0 s at 2 steps, 12 / 10 / 14 s at 15 steps, so equal weights.
PHASE_COST: dict[str, float] = {"CHARACTER_SHEET": 1.0, "ANIMATION_LOOP": 1.0, "FULL_VIDEO": 1.0}
SCORING_SHARE = 0.05  # share of an attempt's progress reserved for quality scoring


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
    def for_chain(
        cls, phases: list[str] | tuple[str, ...] | None = None, cost: Mapping[str, float] | None = None
    ) -> "ProgressPlan":
        cost = PHASE_COST if cost is None else cost
        phases = [link.phase for link in CHAIN] if phases is None else list(phases)
        return cls(units=tuple(float(cost.get(p, 1.0)) for p in phases))

    def percent(self, fraction: float = 0.0) -> float:
        total = sum(self.units)
        if self.index >= len(self.units) or total <= 0:
            return 100.0
        f = min(1.0, max(0.0, float(fraction)))
        done = sum(self.units[: self.index]) + f * self.units[self.index]
        return min(100.0, self.base_percent + (100.0 - self.base_percent) * done / total)

    def remaining_units(self, fraction: float = 0.0) -> float:
        """Work left in the plan (same units as PHASE_COST), for the ETA."""
        if self.index >= len(self.units):
            return 0.0
        f = min(1.0, max(0.0, float(fraction)))
        return sum(self.units[self.index :]) - f * self.units[self.index]

    def advance(self) -> "ProgressPlan":
        """The current attempt passed: the next unit is current."""
        return ProgressPlan(self.units, self.base_percent, self.index + 1)

    def retry(self) -> "ProgressPlan":
        """The current attempt failed its gate and is retried: re-budget from where it ended."""
        units = (self.units[self.index],) + self.units[self.index + 1 :]
        return ProgressPlan(units, self.percent(1.0), 0)


def eta_seconds(units_done: float, units_remaining: float, elapsed: float) -> float | None:
    """Seconds left at the measured rate `units_done / elapsed` (None before any work is measured)."""
    if units_done <= 1e-9 or elapsed <= 0:
        return None
    return max(0.0, units_remaining * elapsed / units_done)


class ChainProgress:
    """One overall progress stream for a chain (see the module docstring).

    Contract: `begin_attempt` before an attempt's first progress, `on_phase_progress` for each progress
    report of the attempt (`part` "generation": the phase itself, 1 - SCORING_SHARE of the attempt;
    "quality": its scoring, the rest), `end_attempt` once its gate decided, `finish` once. Every call
    publishes a `ProgressEvent` with `percent` across the chain (never lower than the last), `stage`
    "phase i/3 NAME · attempt k/n · <inner stage>", the inner step/total_steps, and `eta_seconds`
    from the work rate measured since the first completed denoising step (model loading is no rate).
    `publish(event, milestone)`: `milestone` is False for a step event (a display or a store may
    throttle those) and True for the rest (stage changes, gates, the end: never dropped).
    """

    def __init__(
        self,
        *,
        attempts_allowed: int,
        publish: Callable[[ProgressEvent, bool], None] | None = None,
        plan: ProgressPlan | None = None,
    ):
        self.plan = plan or ProgressPlan.for_chain()
        self.publish = publish
        self.attempts_allowed = attempts_allowed
        self.phase = get_phase(CHAIN[0].phase)
        self.attempt = 1
        self.fraction = 0.0
        self.units_done = 0.0  # finished work (all attempts), in PHASE_COST units
        self.percent = 0.0
        self.step, self.total_steps = 0, 0
        self.last_event: ProgressEvent | None = None
        self._started = time.perf_counter()
        self._origin: tuple[float, float] | None = None  # (time, units) at the first completed step

    def begin_attempt(self, phase: str, attempt: int, stage: str = "starting") -> ProgressEvent:
        self.phase, self.attempt, self.fraction = get_phase(phase), attempt, 0.0
        self.step, self.total_steps = 0, 0
        return self._emit(stage)

    def stage(self, stage: str) -> ProgressEvent:
        """The attempt moved on without a step (e.g. "queued", "starting", "scoring")."""
        return self._emit(stage)

    def on_phase_progress(
        self,
        percent: float,
        step: int,
        total_steps: int,
        stage: str,
        *,
        part: str = "generation",
        preview: str | None = None,
    ) -> ProgressEvent:
        """One progress report of the current attempt: `percent` of its `part` ("generation" or "quality")."""
        share = min(1.0, max(0.0, float(percent) / 100.0))
        if part == "quality":
            fraction, stage = (1.0 - SCORING_SHARE) + SCORING_SHARE * share, f"scoring: {stage}"
        else:
            fraction = (1.0 - SCORING_SHARE) * share
        self.fraction = max(self.fraction, min(1.0, fraction))
        self.step, self.total_steps = int(step), int(total_steps)
        if self._origin is None and step >= 1:
            self._origin = (time.perf_counter(), self._units_now())
        return self._emit(stage, preview=preview, step_event=True)

    def end_attempt(self, passed: bool, score: float | None, *, emit: bool = True) -> None:
        """The attempt's gate decided: the plan advances (passed) or re-budgets for a retry."""
        self.fraction = 1.0
        if emit:
            self._emit(
                f"gate {'passed' if passed else 'failed'} (" + ("not scored" if score is None else f"{score:.3f}") + ")"
            )
        index = self.plan.index
        self.units_done += self.plan.units[index] if index < len(self.plan.units) else 0.0
        self.plan = self.plan.advance() if passed else self.plan.retry()
        self.fraction = 0.0
        self.percent = max(self.percent, round(self.plan.percent(0.0), 2))

    def replay(self, phase: str, attempt: int, passed: bool) -> None:
        """An attempt a previous process finished (a resumed chain): counted, not published."""
        self.phase, self.attempt = get_phase(phase), attempt
        self.end_attempt(passed, None, emit=False)

    def finish(self, stage: str) -> ProgressEvent:
        """The chain ended: `stage` as it is (e.g. "done", "failed: <reason>"), ETA 0."""
        return self._emit(stage, final=True)

    def eta_seconds(self) -> float | None:
        if self._origin is None:
            return None
        t0, u0 = self._origin
        eta = eta_seconds(self._units_now() - u0, self.plan.remaining_units(self.fraction), time.perf_counter() - t0)
        return None if eta is None else round(eta, 3)

    def _units_now(self) -> float:
        index = self.plan.index
        current = self.plan.units[index] if index < len(self.plan.units) else 0.0
        return self.units_done + self.fraction * current

    def _emit(
        self, inner: str, preview: str | None = None, final: bool = False, step_event: bool = False
    ) -> ProgressEvent:
        self.percent = max(self.percent, round(self.plan.percent(self.fraction), 2))
        stage = (
            inner
            if final
            else (
                f"phase {self.phase.id}/{len(CHAIN)} {self.phase.name} · attempt "
                f"{self.attempt}/{self.attempts_allowed} · {inner}"
            )
        )
        event = ProgressEvent(
            phase=ORCHESTRATION,
            stage=stage,
            stage_index=self.phase.id,
            stage_count=len(CHAIN),
            step=self.step,
            total_steps=self.total_steps,
            percent=self.percent,
            eta_seconds=0.0 if final else self.eta_seconds(),
            elapsed_seconds=round(time.perf_counter() - self._started, 3),
            preview=preview,
            part="chain",
        )
        self.last_event = event
        if self.publish is not None:
            self.publish(event, not step_event)
        return event
