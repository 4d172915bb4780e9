"""`animenb calibrate`: fit the gates' floors and thresholds to reviewers' verdicts (`animenb review`), print
the confusion matrix before and after (with cross-validation), and write the calibrated config into the
server's home, where the server and the phase functions use it (GET /health names it)."""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

HELP = "fit the quality gates to reviewers' verdicts and write a calibrated config into the server's home"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--home", default=None, help="the server's home, holding jobs.sqlite (default $ANIMENB_HOME)")
    parser.add_argument(
        "--no-suite",
        action="store_true",
        help="fit on the verdicts only, without the validity suite's calibration families "
        "(which take minutes to score)",
    )
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds (default 5)")
    parser.add_argument("--dry-run", action="store_true", help="print the figures, write nothing")


def reviewed_rows(home: Path) -> list[dict]:
    """One row per reviewed, scored job: its phase, score and metrics, and whether reviewers found it good
    (the majority of their verdicts; a tie is left out)."""
    from animenb.server.app import STORE_NAME
    from animenb.store.jobs_common import JobNotFoundError
    from animenb.store.jobs_sqlite import SqliteJobStore
    from animenb.store.reviews_sqlite import SqliteReviewStore

    store = SqliteJobStore(home / STORE_NAME)
    try:
        votes: dict[str, Counter] = {}
        for review in SqliteReviewStore(store.db).list(limit=1_000_000):
            votes.setdefault(review["job_id"], Counter())[review["verdict"]] += 1
        rows = []
        for job_id, count in votes.items():
            try:
                quality = store.get(job_id).outputs.quality or {}
            except JobNotFoundError:  # removed by `animenb gc` since
                continue
            if count["good"] == count["bad"] or quality.get("score") is None or not quality.get("phase"):
                continue
            rows.append(
                {
                    "job_id": job_id,
                    "family": "reviews",
                    "split": "calibration",
                    "phase": quality["phase"],
                    "mode": "reviewed",
                    "expected_pass": count["good"] > count["bad"],
                    "score": quality["score"],
                    **{f"metric.{k}": v for k, v in (quality.get("metrics") or {}).items()},
                }
            )
        return rows
    finally:
        store.close()


def cross_validated(rows: list[dict], config: dict, folds: int) -> list[dict]:
    """Each row decided by floors fitted on the other folds."""
    from animenb.quality.calibration import fit, redecide

    out = []
    for k in range(folds):
        train = [r for i, r in enumerate(rows) if i % folds != k]
        test = [r for i, r in enumerate(rows) if i % folds == k]
        if test:
            out += redecide(test, fit(train, config)[0])
    return out


def _print(title: str, rows: list[dict]) -> None:
    from animenb.quality.validity import confusion

    print(f"\n{title}")
    for phase, c in confusion(rows).items():
        print(
            f"  {phase:<16} good->pass {c['true_accept']:>4}  good->FAIL {c['false_reject']:>4}  "
            f"bad->fail {c['true_reject']:>4}  bad->PASS {c['false_accept']:>4}  "
            f"review {c['review_good'] + c['review_bad']:>4}"
            f"  accuracy {c['accuracy']:.1%}"
        )


def run(args: argparse.Namespace) -> int:
    import yaml

    from animenb import config as app_config
    from animenb.quality.calibration import fit, redecide
    from animenb.quality.config import CALIBRATED_NAME, active_config_path, load_quality_config
    from animenb.quality.validity import CALIBRATION_CASES, run_suite

    if args.folds < 2:
        raise ValueError(f"`--folds` must be at least 2, got {args.folds}.")
    home = Path(args.home).expanduser().resolve() if args.home else app_config.home_dir()
    current = load_quality_config(active_config_path(home))
    rows = reviewed_rows(home)
    print(f"{len(rows)} reviewed outputs in {home}")
    if not args.no_suite:
        print(f"scoring the validity suite's {len(CALIBRATION_CASES)} calibration cases ...")
        rows += run_suite(CALIBRATION_CASES, config=current)
    if not rows:
        raise ValueError("Nothing to calibrate on: record verdicts with `animenb review JOB good|bad` first.")
    fitted, per_phase = fit(rows, current)
    _print("before (the active config)", redecide(rows, current))
    _print("after (fitted on every row: a training figure)", redecide(rows, fitted))
    _print(
        f"after, {args.folds}-fold cross-validated (each row decided by floors fitted without it)",
        cross_validated(rows, current, args.folds),
    )
    for phase, f in per_phase.items():
        floors = ", ".join(f"{k} {v:.2f}" for k, v in f["critical"].items())
        print(f"  {phase}: threshold {f['threshold']:.2f}, {floors}")
    if args.dry_run:
        return 0
    path = home / CALIBRATED_NAME
    path.write_text(
        "# Written by `animenb calibrate` from reviewers' verdicts; delete it to go back to\n"
        "# parameters/quality.yaml.\n" + yaml.safe_dump(fitted, sort_keys=False)
    )
    print(f"wrote {path}")
    return 0
