"""What a chain leaves in its parent directory: the chain record and the parent's manifest.json.

One shape for both orchestrators (the in-process `orchestrate()` and the job server's parent job):

`orchestration.json` (`RECORD_NAME`), rewritten after every attempt, status "running" until the end:

    {"kind": "orchestration", "job_id" (the parent job's id; None in-process), "status", "reason",
     "animenb_version", "started_at", "updated_at", "finished_at", "parameters", "seed", "max_retries",
     "thresholds": {phase: gate or None}, "chain": [{"phase", "parameter", "source"}], "seed_derivation",
     "phases": [{"phase": {"id", "name"}, "status": pending|running|passed|failed|skipped, "threshold",
                 "inputs", "attempts": [attempt rows], "output_dir"}],
     "attempts": [attempt rows, in order], "children": [child job ids (server; empty in-process)],
     "timings": {"total_seconds"}}

An attempt row is `AttemptRecord.as_dict()`; its `output_dir` is the attempt's run directory relative to
the parent's (in-process "1_character_sheet/attempt_1"; a server child "../<child job id>").

`manifest.json` (`parent_manifest`), written when the policy ends the chain (succeeded or a failed gate):

    {"animenb_version", "created_at", "phase": {"id": None, "name": "ORCHESTRATION"}, "parameters", "seed",
     "models", "backend" (from the first attempt's run), "versions", "timings", "status", "reason",
     "outputs": {"record": "orchestration.json", "runs": {phase: last run reached},
                 <kind>: path of each final file of the passing runs (kinds in FINAL_FILES), "mp4": the video},
     "files": [file entries: the final files and the record],
     "quality": {"score", "threshold" (the weakest final attempt's), "passed" (every gate passed),
                 "phases": {phase: {"score", "threshold", "passed", "attempts", "output_dir"}}}}
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .. import __version__
from ..atomic import write_json
from ..manifest import file_entry, read_manifest, utc_now, versions, write_manifest
from ..phases.catalog import get_phase
from .policy import CHAIN, ORCHESTRATION, SEED_DERIVATION

RECORD_NAME = "orchestration.json"
RECORD_KIND = "orchestration"  # the record's file kind in the parent manifest, and the job kind
# The final files of each passing run, in the parent's manifest: phase -> ((run manifest outputs key, kind,
# file stem when copied into the parent's directory), ...). Kinds are the phases' own file kinds.
FINAL_FILES: dict[str, tuple[tuple[str, str, str], ...]] = {
    "CHARACTER_SHEET": (("sheet", "sheet", "sheet"), ("reference", "reference", "reference")),
    "ANIMATION_LOOP": (("gif", "gif", "loop"), ("mp4", "loop_mp4", "loop"), ("webp", "webp", "loop")),
    "FULL_VIDEO": (("mp4", "video", "video"),),
}


@dataclass(frozen=True)
class AttemptRecord:
    """One phase attempt: where it wrote, its seed (and how it was derived), its gate verdict, timings.

    `output_dir` is relative to the parent's directory; `job_id` is the child job (server only);
    `error` is the quality step's error when the attempt could not be scored (server only); `failures`
    the quality report's reasons the gate failed (empty when it passed)."""

    phase: str
    phase_id: int
    attempt: int
    seed: int
    seed_source: str  # "base" or "sha256(base:phase:attempt)"
    output_dir: str
    score: float | None
    threshold: float | None
    passed: bool
    decision: str  # advance | retry | fail
    generate_seconds: float | None = None
    score_seconds: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    job_id: str | None = None
    error: dict | None = None
    failures: list[str] = field(default_factory=list)
    verdict: str | None = None  # pass | review | fail (the gate's three-way verdict; None before it had one)

    def as_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def seed_source_of(attempt: int) -> str:
        return "base" if attempt == 1 else "sha256(base:phase:attempt)"


class ChainRecord:
    """`orchestration.json` of one chain (shape in the module docstring), kept in memory and saved atomically."""

    def __init__(
        self,
        root: str | Path,
        *,
        parameters: Mapping[str, Any],
        seed: int,
        max_retries: int,
        thresholds: Mapping[str, float | None],
        job_id: str | None = None,
    ):
        self.root = Path(root)
        self.data: dict[str, Any] = {
            "kind": RECORD_KIND,
            "job_id": job_id,
            "status": "running",
            "reason": "",
            "animenb_version": __version__,
            "started_at": utc_now(),
            "updated_at": None,
            "finished_at": None,
            "parameters": dict(parameters),
            "seed": seed,
            "max_retries": max_retries,
            "thresholds": dict(thresholds),
            "chain": [asdict(link) for link in CHAIN],
            "seed_derivation": SEED_DERIVATION,
            "phases": [
                {
                    "phase": {"id": get_phase(link.phase).id, "name": link.phase},
                    "status": "pending",
                    "threshold": thresholds.get(link.phase),
                    "inputs": {},
                    "attempts": [],
                    "output_dir": None,
                }
                for link in CHAIN
            ],
            "attempts": [],
            "children": [],
            "timings": {},
        }

    @property
    def status(self) -> str:
        return self.data["status"]

    @property
    def reason(self) -> str:
        return self.data["reason"]

    def _phase(self, phase: str) -> dict:
        return self.data["phases"][get_phase(phase).id - 1]

    def begin_attempt(self, phase: str, inputs: Mapping[str, Any]) -> None:
        """An attempt of `phase` starts with the chain's `inputs` to it (reference_image / image)."""
        self._phase(phase).update(status="running", inputs=dict(inputs))

    def add_child(self, job_id: str) -> None:
        """A child job of the chain (server), on record before it runs: a restarted server resumes from these."""
        self.data["children"].append(job_id)

    @property
    def children(self) -> list[str]:
        return list(self.data["children"])

    def add_attempt(self, row: AttemptRecord) -> None:
        """A scored attempt: the phase passes, fails (no retry left) or stays running (a retry follows)."""
        entry = self._phase(row.phase)
        entry["attempts"].append(row.as_dict())
        self.data["attempts"].append(row.as_dict())
        if row.passed:
            entry.update(status="passed", output_dir=row.output_dir)
        elif row.decision == "fail":
            entry["status"] = "failed"

    def finish(self, status: str, reason: str) -> None:
        """The chain ended (succeeded / failed / cancelled / error): phases never reached are "skipped"."""
        self.data.update(status=status, reason=reason, finished_at=utc_now())
        for entry in self.data["phases"]:
            if entry["status"] == "pending":
                entry["status"] = "skipped"

    def save(self, total_seconds: float) -> Path:
        self.data["updated_at"] = utc_now()
        self.data["timings"]["total_seconds"] = round(total_seconds, 4)
        path = self.root / RECORD_NAME
        write_json(path, self.data)
        return path


def read_record(root: str | Path) -> dict | None:
    """A chain's record, or None when there is none (yet) or it is unreadable."""
    try:
        return json.loads((Path(root) / RECORD_NAME).read_text())
    except (OSError, ValueError):
        return None


def final_attempts(attempts: list[AttemptRecord]) -> dict[str, AttemptRecord]:
    """The last attempt of each phase reached, by phase name, in chain order."""
    final: dict[str, AttemptRecord] = {}
    for row in attempts:
        final[row.phase] = row
    return final


def final_files(passed: Mapping[str, str | Path]) -> list[tuple[Path, str, str]]:
    """(source path, kind, stem) of the final files of the passing runs (`passed`: phase -> run directory),
    in FINAL_FILES order; outputs a run does not have (e.g. no reference) are left out."""
    found = []
    for phase, wanted in FINAL_FILES.items():
        if phase not in passed:
            continue
        run = Path(passed[phase])
        outputs = read_manifest(run).get("outputs", {})
        for key, kind, stem in wanted:
            rel = outputs.get(key)
            if isinstance(rel, str) and (run / rel).is_file():
                found.append((run / rel, kind, stem))
    return found


def parent_quality(attempts: list[AttemptRecord], passed: bool) -> dict:
    """The parent's "quality": the weakest final attempt's score with its threshold (an unscored attempt
    is the weakest), `passed` = every gate passed, and one entry per phase reached."""
    final = final_attempts(attempts)
    weakest = min(final.values(), key=lambda a: a.score if a.score is not None else -1.0) if final else None
    return {
        "score": None if weakest is None else weakest.score,
        "threshold": None if weakest is None else weakest.threshold,
        "passed": passed,
        "phases": {
            a.phase: {
                "score": a.score,
                "threshold": a.threshold,
                "passed": a.passed,
                "attempts": a.attempt,
                "output_dir": a.output_dir,
            }
            for a in final.values()
        },
    }


def parent_manifest(
    root: str | Path, record: ChainRecord, attempts: list[AttemptRecord], finals: list[tuple[Path, str]]
) -> dict:
    """The parent's manifest.json (shape in the module docstring), written into `root`.

    `finals`: (path inside `root`, kind) of each final file, as `final_files` found them (in-process) or
    as copied into `root` (server). `models` and `backend` are the first attempt's run's."""
    root = Path(root)
    first = read_manifest(root / attempts[0].output_dir) if attempts else {}
    outputs: dict[str, Any] = {
        "record": RECORD_NAME,
        "runs": {a.phase: a.output_dir for a in final_attempts(attempts).values()},
    }
    for path, kind in finals:
        outputs[kind] = Path(path).resolve().relative_to(root.resolve()).as_posix()
    if "video" in outputs:
        outputs["mp4"] = outputs["video"]
    data = record.data
    manifest = {
        "animenb_version": __version__,
        "created_at": data["started_at"],
        "phase": {"id": None, "name": ORCHESTRATION},
        "parameters": data["parameters"],
        "seed": data["seed"],
        "models": first.get("models"),
        "backend": first.get("backend"),
        "versions": versions(),
        "timings": dict(data["timings"]),
        "status": data["status"],
        "reason": data["reason"],
        "outputs": outputs,
        "files": [file_entry(root, path, kind) for path, kind in finals]
        + [file_entry(root, root / RECORD_NAME, RECORD_KIND)],
        "quality": parent_quality(attempts, data["status"] == "succeeded"),
    }
    write_manifest(root, manifest)
    return manifest
