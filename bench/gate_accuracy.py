"""Gate accuracy on the validity suite, calibration and held-out families apart.

    .venv/bin/python bench/gate_accuracy.py [--config parameters/quality.yaml] [--families drawn,street]
                                            [--save rows.json | --rows rows.json] [--fit [--write fitted.yaml]]

Scores every case of animenb.quality.validity.CASES (drawn good outputs and their broken twins, in
families drawn by two generators; see FAMILIES for which are calibration and which held-out) and prints,
per split and phase: the confusion matrix with reviews, accuracy of the pass/fail decisions made,
false-accept rate (broken cases that passed), false-reject rate (good cases that failed) and review rate;
then the false-accept rate of the classes the gate must never let through, and every held-out mistake.

--fit fits the critical floors and thresholds on the calibration rows only (animenb.quality.calibration)
and prints both splits again under the fitted config, from the stored metrics (no rescoring).
Targets on the held-out families: >= 95% of decisions right, review <= 10%, no false accept in the
identity, noise, blur, scene-cut and vanishing-subject classes, false rejects <= 5%.
Prints figures, asserts nothing. Deterministic (seeded drawings).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import yaml

from animenb.quality.calibration import fit, redecide
from animenb.quality.config import load_quality_config
from animenb.quality.validity import CALIBRATION, CASES, FAMILIES, HELD_OUT, confusion, run_suite

# Failure classes the gate must never accept, by mode.
CLASSES = {"identity": {"different_characters", "character_switch", "one_stranger", "source_mismatch"},
           "scene_cut": {"scene_cut"}, "vanishing": {"vanishing_subject"}, "noise": {"noisy"}, "blur": {"blurred"}}


def report(rows: list[dict], title: str) -> None:
    print(f"\n== {title}")
    print(f"{'split':<12} {'phase':<16} {'good->pass':>10} {'good->FAIL':>10} {'bad->fail':>9} {'bad->PASS':>9} "
          f"{'review':>6} {'accuracy':>9} {'false acc':>9} {'false rej':>9} {'review %':>8}")
    for split in (CALIBRATION, HELD_OUT):
        mine = [r for r in rows if r["split"] == split]
        for phase, c in confusion(mine).items():
            print(f"{split:<12} {phase:<16} {c['true_accept']:>10} {c['false_reject']:>10} {c['true_reject']:>9} "
                  f"{c['false_accept']:>9} {c['review_good'] + c['review_bad']:>6} {c['accuracy']:>9.1%} "
                  f"{c['false_accept_rate']:>9.1%} {c['false_reject_rate']:>9.1%} {c['review_rate']:>8.1%}")
    for split in (CALIBRATION, HELD_OUT):
        line = []
        for name, modes in CLASSES.items():
            cases = [r for r in rows if r["split"] == split and r["mode"] in modes]
            if cases:
                line.append(f"{name} {sum(r['verdict'] == 'pass' for r in cases)}/{len(cases)}")
        print(f"false accepts by class, {split}: {', '.join(line)} (target 0)")
    for r in rows:
        if r["split"] == HELD_OUT and not r["correct"]:
            why = r["review_reasons"] if r["verdict"] == "review" else r["failures"]
            print(f"  {r['verdict'].upper():<6} {r['family']}/{r['phase']}/{r['mode']}/seed{r['seed']}/{r['size']}px "
                  f"score={r['score']:.3f} {why}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=None, help="a quality.yaml (default: parameters/quality.yaml)")
    ap.add_argument("--families", default=None, help=f"comma-separated subset of {', '.join(FAMILIES)}")
    ap.add_argument("--phases", default=None, help="comma-separated subset of the phases' names "
                    "(CHARACTER_SHEET, ANIMATION_LOOP, FULL_VIDEO): rescore only these, e.g. to --save and merge rows")
    ap.add_argument("--save", default=None, help="write the scored rows (JSON) for --rows")
    ap.add_argument("--rows", default=None, help="reuse rows saved with --save instead of scoring (comma-separated "
                    "files are joined)")
    ap.add_argument("--fit", action="store_true", help="fit floors and thresholds on the calibration rows")
    ap.add_argument("--write", default=None, help="with --fit: write the fitted config here (YAML)")
    args = ap.parse_args()
    config = load_quality_config(args.config)
    wanted = set(args.families.split(",")) if args.families else set(FAMILIES)
    for name in sorted(wanted):
        if not FAMILIES[name].available():
            print(f"family {name} skipped: its art is not installed (bash tests/art/install.sh)")
            wanted.discard(name)
    phases = set(args.phases.split(",")) if args.phases else None
    if args.rows:  # one file, or several (comma-separated) saved for different phases or families
        rows = [r for path in args.rows.split(",") for r in json.loads(Path(path).read_text())
                if r["family"] in wanted and (phases is None or r["phase"] in phases)]
        rows = redecide(rows, config)
        print(f"gate_accuracy: {len(rows)} rows from {args.rows}")
    else:
        cases = [c for c in CASES if c.family in wanted and (phases is None or c.phase in phases)]
        print(f"gate_accuracy: python {platform.python_version()}, {os.cpu_count()} CPUs, {len(cases)} cases")
        t = time.perf_counter()
        rows = run_suite(cases, config=config)
        seconds = time.perf_counter() - t
        print(f"{len(rows)} cases scored in {seconds:.1f} s ({1000 * seconds / max(1, len(rows)):.0f} ms per case, "
              "drawing included)")
        if args.save:
            Path(args.save).write_text(json.dumps(rows, default=float))
    for name in sorted(wanted):
        print(f"  {FAMILIES[name].split:<12} {name:<10} {FAMILIES[name].description}")
    report(rows, f"configured gates ({args.config or 'parameters/quality.yaml'})")
    if args.fit:
        fitted_config, fitted = fit([r for r in rows if r["split"] == CALIBRATION], config)
        for phase, f in fitted.items():
            floors = ", ".join(f"{k} {v:.2f}" for k, v in f["critical"].items())
            print(f"fitted {phase}: threshold {f['threshold']:.2f}, {floors} "
                  f"(balanced accuracy {f['balanced_accuracy']:.1%} on {f['cases']} calibration cases)")
        report(redecide(rows, fitted_config), "floors and thresholds fitted on the calibration families")
        if args.write:
            Path(args.write).write_text(yaml.safe_dump(fitted_config, sort_keys=False))


if __name__ == "__main__":
    main()
