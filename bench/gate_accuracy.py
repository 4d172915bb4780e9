"""Gate accuracy on the validity suite: how often each phase's 80% gate decides right.

    .venv/bin/python bench/gate_accuracy.py [--config parameters/quality.yaml] [--threshold 0.8]

Runs every case of animenb.quality.validity (drawn good outputs and their broken twins, several seeds
and sizes, 64-512 px) and prints, per phase: the confusion matrix, accuracy, false-accept rate (broken
cases that passed) and false-reject rate (good cases that failed); then the false-accept rate of the
classes the gate must never let through (identity, noise, blur) and each mode's worst-case margin.
Targets (issue 11): 100% on the suite; false-accept 0 for the identity, noise and blur classes.
Prints figures, asserts nothing. Deterministic (seeded drawings).
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from collections import defaultdict

from animenb.quality.validity import SUITE, confusion, run_suite

# Failure classes the issue names, by mode.
CLASSES = {"identity": {"different_characters", "character_switch", "one_stranger", "scene_cut", "source_mismatch"},
           "noise": {"noisy"}, "blur": {"blurred"}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=None, help="a quality.yaml (default: parameters/quality.yaml)")
    ap.add_argument("--threshold", type=float, default=None, help="override every phase's score threshold")
    args = ap.parse_args()
    print(f"gate_accuracy: python {platform.python_version()}, {os.cpu_count()} CPUs, {len(SUITE)} cases")
    t = time.perf_counter()
    rows = run_suite(SUITE, config=args.config, threshold=args.threshold)
    seconds = time.perf_counter() - t

    print(f"\n{'phase':<16} {'good->pass':>10} {'good->FAIL':>10} {'bad->fail':>10} {'bad->PASS':>10} "
          f"{'accuracy':>9} {'false acc':>9} {'false rej':>9}")
    for phase, c in confusion(rows).items():
        print(f"{phase:<16} {c['true_accept']:>10} {c['false_reject']:>10} {c['true_reject']:>10} "
              f"{c['false_accept']:>10} {c['accuracy']:>9.1%} {c['false_accept_rate']:>9.1%} "
              f"{c['false_reject_rate']:>9.1%}")

    print("\nfalse-accept rate by class (target 0)")
    for name, modes in CLASSES.items():
        cases = [r for r in rows if r["mode"] in modes]
        accepted = sum(r["passed"] for r in cases)
        print(f"  {name:<9} {accepted}/{len(cases)} = {accepted / max(1, len(cases)):.1%}")

    print("\nper mode: decisions right, score range, what failed (first critical property, else the score)")
    by_mode: dict[tuple, list] = defaultdict(list)
    for r in rows:
        by_mode[(r["phase"], r["mode"])].append(r)
    for (phase, mode), cases in by_mode.items():
        right = sum(r["correct"] for r in cases)
        scores = [r["score"] for r in cases]
        reasons = sorted({next((f.split()[0] for f in r["failures"] if not f.startswith("score")), "score")
                          for r in cases if r["failures"]})
        print(f"  {phase:<16} {mode:<21} {right}/{len(cases)}  score {min(scores):.2f}-{max(scores):.2f}  "
              f"{', '.join(reasons) or '-'}")
    wrong = [r for r in rows if not r["correct"]]
    for r in wrong:
        print(f"  WRONG: {r['phase']}/{r['mode']}/seed{r['seed']}/{r['size']}px passed={r['passed']} "
              f"score={r['score']:.3f} {r['failures']}")
    print(f"\n{len(rows)} cases scored in {seconds:.1f} s ({1000 * seconds / len(rows):.0f} ms per case, "
          f"drawing included)")


if __name__ == "__main__":
    main()
