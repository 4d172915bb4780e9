"""The gated chain CHARACTER_SHEET -> gate -> ANIMATION_LOOP -> gate -> FULL_VIDEO -> gate, independent of who runs it.

Two orchestrators run it: `animenb.orchestrate.orchestrate` (in this process: phase functions, then
`animenb.quality`) and the job server's parent job (`animenb.runner.orchestration`: one child job per
attempt). Everything but running one attempt lives here, so they cannot drift apart:

    loop       the chain's loop (`ChainRun`): attempts, retries, thresholds, progress relay, the record
    policy     which phase runs next, with which seed and inputs, and why the chain stopped (pure)
    progress   the overall percent and ETA across the chain (`ChainProgress`)
    record     orchestration.json and the parent's manifest.json (one shape)
"""

from .loop import Attempt, AttemptOutcome, ChainRun
from .policy import (
    CHAIN,
    MAX_RETRIES,
    MAX_RETRIES_LIMIT,
    MAX_THRESHOLD,
    ON_REVIEW,
    ORCHESTRATION,
    THRESHOLD,
    ChainLink,
    NextStep,
    attempt_dir,
    attempt_parameters,
    attempt_seed,
    chain_inputs,
    check_on_review,
    check_threshold,
    gate_decision,
    gate_failure_reason,
    next_step,
    resolve_thresholds,
    success_reason,
)
from .progress import PHASE_COST, SCORING_SHARE, ChainProgress, ProgressPlan, eta_seconds
from .record import (
    FINAL_FILES,
    RECORD_KIND,
    RECORD_NAME,
    AttemptRecord,
    ChainRecord,
    final_attempts,
    final_files,
    parent_manifest,
    parent_quality,
    read_record,
)

__all__ = [
    "CHAIN",
    "FINAL_FILES",
    "MAX_RETRIES",
    "MAX_RETRIES_LIMIT",
    "MAX_THRESHOLD",
    "ON_REVIEW",
    "ORCHESTRATION",
    "PHASE_COST",
    "RECORD_KIND",
    "RECORD_NAME",
    "SCORING_SHARE",
    "THRESHOLD",
    "Attempt",
    "AttemptOutcome",
    "AttemptRecord",
    "ChainLink",
    "ChainProgress",
    "ChainRecord",
    "ChainRun",
    "NextStep",
    "ProgressPlan",
    "attempt_dir",
    "attempt_parameters",
    "attempt_seed",
    "chain_inputs",
    "check_on_review",
    "check_threshold",
    "eta_seconds",
    "final_attempts",
    "final_files",
    "gate_decision",
    "gate_failure_reason",
    "next_step",
    "parent_manifest",
    "parent_quality",
    "read_record",
    "resolve_thresholds",
    "success_reason",
]
