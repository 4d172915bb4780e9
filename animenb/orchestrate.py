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

The policy, the overall progress and the record and manifest shapes are `animenb.chain`'s, shared with the
job server's orchestrator (`animenb.runner.orchestration`), which runs each attempt as a child job.

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

from .chain import (MAX_RETRIES_LIMIT, ORCHESTRATION, AttemptRecord, ChainProgress, ChainRecord, attempt_parameters,
                    check_on_review, final_files, gate_decision, next_step, parent_manifest, resolve_thresholds)
from .phases import PHASE_FUNCTIONS, PhaseResult, get_phase
from .phases.common import load_image, prepare_output_dir, resolve_backend, resolve_seed
from .phases.spec import CHARACTER_SHEET
from .progress import CancelToken, Cancelled, ProgressDisplay, ProgressEvent


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
        """The attempts as flat dicts (metrics and the server-only fields left out): `pandas.DataFrame(result.rows())`."""
        return [{k: v for k, v in a.as_dict().items() if k not in ("metrics", "job_id", "error")}
                for a in self.attempts]

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
    on_review: str = "continue",
    models: str | None = None,
    backend: str = "diffusers",
    backend_options: dict | None = None,
    output_dir: str | Path | None = None,
    thresholds: Mapping[str | int, float | None] | float | None = None,
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
    _check_int(max_retries, "max_retries", 0, MAX_RETRIES_LIMIT)
    check_on_review(on_review)
    gates = resolve_thresholds(thresholds)
    options = {get_phase(k).name: dict(v) for k, v in (phase_options or {}).items()}
    for name, opts in options.items():
        clash = {"prompt", "seed", "steps", "width", "height", "models", "backend", "backend_options",
                 "output_dir", "on_progress", "display", "cancel", "reference_image", "image"} & set(opts)
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
    record = ChainRecord(root, parameters=parameters, seed=seed, max_retries=max_retries, thresholds=gates)
    sink = ProgressDisplay(display, desc=ORCHESTRATION)

    def publish(event: ProgressEvent, milestone: bool) -> None:
        if on_progress is not None:
            on_progress(event)
        sink.show(event, force=milestone)

    progress = ChainProgress(attempts_allowed=max_retries + 1, publish=publish)
    started = time.perf_counter()
    attempts: list[AttemptRecord] = []
    results: dict[str, PhaseResult] = {}
    passed_dirs: dict[str, Path] = {}

    def save_record() -> None:
        record.save(time.perf_counter() - started)

    def on_phase_event(event: ProgressEvent) -> None:
        progress.on_phase_progress(event.percent, event.step, event.total_steps, event.stage, part=event.part,
                                   preview=event.preview)

    save_record()
    try:
        # 1-3. each phase, attempt after attempt, until its gate passes or the retries run out
        history: list[dict] = []
        while (step := next_step(history, max_retries, on_review)).action == "run":
            phase, attempt = get_phase(step.phase), step.attempt
            kwargs = attempt_parameters(phase.name, attempt, prompt=prompt, seed=seed, root=root, passed=passed_dirs,
                                        steps=steps, width=width, height=height, models=models,
                                        reference_image=parameters["reference_image"], phase_options=options)
            out = Path(kwargs.pop("output_dir"))
            kwargs.pop("models")
            record.begin_attempt(phase.name, {k: kwargs[k] for k in ("reference_image", "image") if k in kwargs})
            progress.begin_attempt(phase.name, attempt)
            t0 = time.perf_counter()
            result = PHASE_FUNCTIONS[phase.name](**kwargs, output_dir=out, backend=engine, display=None,
                                                 on_progress=on_phase_event, cancel=cancel)
            t1 = time.perf_counter()
            progress.stage("scoring")
            report = score_output_dir(out, threshold=gates[phase.name], embed="auto")
            record_quality(out, report)
            row = AttemptRecord(
                phase=phase.name, phase_id=phase.id, attempt=attempt, seed=kwargs["seed"],
                seed_source=AttemptRecord.seed_source_of(attempt), output_dir=out.relative_to(root).as_posix(),
                score=report.score, threshold=report.threshold, passed=report.passed, verdict=report.verdict,
                decision=gate_decision(report.passed, attempt, max_retries, report.verdict, on_review),
                generate_seconds=round(t1 - t0, 4),
                score_seconds=round(time.perf_counter() - t1, 4), metrics=dict(report.metrics))
            attempts.append(row)
            history.append(row.as_dict())
            results[phase.name] = result
            record.add_attempt(row)
            progress.end_attempt(report.passed, report.score)
            if report.passed:
                passed_dirs[phase.name] = out
            save_record()
        status, reason = step.action, step.reason
    except BaseException as exc:
        record.finish("cancelled" if isinstance(exc, (Cancelled, KeyboardInterrupt)) else "error",
                      f"{type(exc).__name__}: {exc}")
        save_record()
        progress.finish(f"{record.status}: {record.reason}")
        sink.close()
        raise

    # 4. the parent's record and manifest
    record.finish(status, reason)
    save_record()
    manifest = parent_manifest(root, record, attempts,
                               [(path, kind) for path, kind, _ in final_files(passed_dirs)])
    progress.finish("done" if status == "succeeded" else f"failed: {reason}")
    sink.close()
    return OrchestrationResult(status=status, reason=reason, output_dir=root, seed=seed, attempts=attempts,
                               results=results, record=record.data, manifest=manifest)
