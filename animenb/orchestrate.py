"""The gated chain in this process: phase 1 -> gate -> phase 2 -> gate -> phase 3 -> gate, retrying a failed gate.

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

The loop itself (policy, retries, thresholds, overall progress, the record and the manifest) is
`animenb.chain.ChainRun`, shared with the job server's orchestrator (`animenb.runner.orchestration`), which
runs each attempt as a child job; this module only runs an attempt: a phase-function call, then its score.

A gate failure is not an exception: the result has status "failed" and a reason. Real errors
(bad input, a phase raising) propagate; `orchestration.json` then records status "error" (or
"cancelled" for `animenb.progress.Cancelled`) before the exception leaves.
"""

from __future__ import annotations

import html
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from .chain import (
    MAX_RETRIES,
    ORCHESTRATION,
    Attempt,
    AttemptOutcome,
    AttemptRecord,
    ChainRun,
    check_on_review,
    final_files,
    resolve_thresholds,
)
from .phases import PHASE_FUNCTIONS, PhaseResult, get_phase
from .phases.common import load_image, prepare_output_dir, resolve_backend, resolve_seed
from .phases.spec import CHARACTER_SHEET
from .progress import Cancelled, CancelToken, ProgressDisplay, ProgressEvent


@dataclass(frozen=True)
class OrchestrationResult:
    """What `orchestrate` returns. `results` holds the last run of each phase reached (the passing
    one, or the last failing one); `attempts` one row per attempt (for a pandas table)."""

    status: str  # succeeded | failed
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
        """The attempts as flat dicts (metrics and the server-only fields left out), for
        `pandas.DataFrame(result.rows())`."""
        return [
            {k: v for k, v in a.as_dict().items() if k not in ("metrics", "job_id", "error")} for a in self.attempts
        ]

    def path(self, key: str) -> Path:
        """Absolute path of a final output named in the manifest ("sheet", "gif", "mp4", ...)."""
        return self.output_dir / self.manifest["outputs"][key]

    def _repr_html_(self) -> str:
        colour = "green" if self.succeeded else "#b00"
        return (
            f'<b>ORCHESTRATION</b> <span style="color:{colour}">{html.escape(self.status)}</span> · '
            f"{html.escape(self.reason)} · seed {self.seed} · {len(self.attempts)} attempts · "
            f"<code>{html.escape(str(self.output_dir))}</code>"
        )


# ----------------------------------------------------------------------------- the orchestrator


def orchestrate(
    prompt: str,
    *,
    seed: int | None = None,
    steps: int = 15,
    width: int | None = None,
    height: int | None = None,
    reference_image: str | Path | None = None,
    max_retries: int = MAX_RETRIES.default,
    models: str | None = None,
    backend: str = "diffusers",
    backend_options: dict | None = None,
    output_dir: str | Path | None = None,
    thresholds: Mapping[str | int, float | None] | float | None = None,
    advisory_gates: bool = False,
    on_review: str = "continue",
    phase_options: Mapping[str, Mapping[str, Any]] | None = None,
    on_progress: Callable[[ProgressEvent], None] | None = None,
    display: str | None = "auto",
    cancel: CancelToken | None = None,
) -> OrchestrationResult:
    """Run CHARACTER_SHEET -> gate -> ANIMATION_LOOP -> gate -> FULL_VIDEO -> gate in this process.

    Each attempt runs the phase function into `attempt_dir(output_dir, phase, k)`, scores it with
    `animenb.quality` (plus the IP-Adapter CLIP encoder with the diffusers backend) and records the
    verdict (quality.json, manifest["quality"]). A failed gate retries the phase with
    `attempt_seed(seed, phase_id, k)` up to `max_retries` times; then the chain stops with status
    "failed" and a reason naming the phase, attempts, seeds and scores. `thresholds`: None (each
    phase's threshold in parameters/quality.yaml), one number for all phases, or a mapping by phase.
    `advisory_gates=True` scores and records every gate but runs the chain through whatever they say
    (each phase once; a failed attempt still feeds the next phase), for random-weight profiles.
    `on_review`: what a gate's "review" verdict does ("continue" flagged, "retry", or "stop").
    `phase_options` passes extra keyword arguments to one phase function, by phase name (e.g.
    {"FULL_VIDEO": {"frames": 14}}). `on_progress` receives the overall `ProgressEvent`s; `display`
    as for the phase functions ("auto", "kernel", "tqdm" or None); `cancel` (an
    `animenb.progress.CancelToken`) stops the chain at the running phase's next step (`Cancelled`).
    """
    # 0. check inputs before any model work
    seed = resolve_seed(seed)
    for name, value in (("prompt", prompt), ("seed", seed), ("steps", steps), ("width", width), ("height", height)):
        CHARACTER_SHEET.param(name).check(value)  # the same in every phase's spec (animenb.phases.spec)
    MAX_RETRIES.check(max_retries)
    check_on_review(on_review)
    gates = resolve_thresholds(thresholds)
    options = {get_phase(k).name: dict(v) for k, v in (phase_options or {}).items()}
    for name, opts in options.items():
        clash = {
            "prompt",
            "seed",
            "steps",
            "width",
            "height",
            "models",
            "backend",
            "backend_options",
            "output_dir",
            "on_progress",
            "display",
            "cancel",
            "reference_image",
            "image",
        } & set(opts)
        if clash:
            raise ValueError(f"`phase_options[{name!r}]` may not set {sorted(clash)}: orchestrate sets them.")
    if reference_image is not None:
        load_image(reference_image, "reference_image")  # an image file or a run directory with a reference
    phase_backend = resolve_backend(backend, models, backend_options)  # one backend (and model cache) for every phase
    root = prepare_output_dir(output_dir, ORCHESTRATION)

    from .quality import record_quality, score_output_dir

    parameters = {
        "prompt": prompt,
        "seed": seed,
        "steps": steps,
        "width": width,
        "height": height,
        "reference_image": None if reference_image is None else str(reference_image),
        "max_retries": max_retries,
        "advisory_gates": advisory_gates,
        "on_review": on_review,
        "models": models,
        "backend": getattr(phase_backend, "name", str(backend)),
        "thresholds": thresholds if not isinstance(thresholds, Mapping) else {str(k): v for k, v in thresholds.items()},
        "phase_options": options,
    }
    sink = ProgressDisplay(display, desc=ORCHESTRATION)

    def publish(event: ProgressEvent, milestone: bool) -> None:
        if on_progress is not None:
            on_progress(event)
        sink.show(event, force=milestone)

    chain = ChainRun(
        root,
        parameters,
        seed=seed,
        max_retries=max_retries,
        thresholds=gates,
        phase_options=options,
        publish=publish,
        advisory=advisory_gates,
        on_review=on_review,
    )
    results: dict[str, PhaseResult] = {}

    def run_once(attempt: Attempt) -> AttemptOutcome:
        """The phase function into the attempt's directory, then its quality report (quality.json)."""
        t0 = time.perf_counter()
        results[attempt.phase] = PHASE_FUNCTIONS[attempt.phase](
            **attempt.parameters,
            output_dir=attempt.output_dir,
            backend=phase_backend,
            display=None,
            on_progress=chain.relay,
            cancel=cancel,
        )
        t1 = time.perf_counter()
        chain.progress.stage("scoring")
        report = score_output_dir(attempt.output_dir, threshold=attempt.threshold, embed="auto")
        record_quality(attempt.output_dir, report)
        return AttemptOutcome(
            attempt.output_dir,
            report.score,
            report.threshold,
            report.passed,
            metrics=dict(report.metrics),
            generate_seconds=round(t1 - t0, 4),
            score_seconds=round(time.perf_counter() - t1, 4),
            failures=list(report.failures),
            verdict=report.verdict,
        )

    # 1-3. each phase, attempt after attempt, until its gate passes or the retries run out
    chain.save()
    try:
        while (attempt := chain.next_attempt()) is not None:
            chain.add(attempt, run_once(attempt))
    except BaseException as exc:
        chain.finish(
            "cancelled" if isinstance(exc, (Cancelled, KeyboardInterrupt)) else "error", f"{type(exc).__name__}: {exc}"
        )
        chain.progress.finish(f"{chain.record.status}: {chain.record.reason}")
        sink.close()
        raise

    # 4. the parent's record and manifest
    assert chain.ended is not None
    status, reason = chain.ended.action, chain.ended.reason
    chain.finish(status, reason)
    manifest = chain.write_manifest([(path, kind) for path, kind, _ in final_files(chain.passed)])
    chain.progress.finish("done" if status == "succeeded" else f"failed: {reason}")
    sink.close()
    return OrchestrationResult(
        status=status,
        reason=reason,
        output_dir=root,
        seed=seed,
        attempts=chain.attempts,
        results=results,
        record=chain.record.data,
        manifest=manifest,
    )
