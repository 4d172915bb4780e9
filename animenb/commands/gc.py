"""`animenb gc --older-than 7d`: delete finished jobs older than that, with their outputs (see animenb.retention)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = "delete finished jobs older than --older-than (rows, outputs, thumbnails); never queued or running ones"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--older-than", required=True, help="age like 7d, 12h, 30m, 45s, 2w (by finish time)")
    parser.add_argument("--home", default=None, help="where the server keeps jobs.sqlite (default $ANIMENB_HOME)")
    parser.add_argument("--outputs", default=None, help="outputs directory (default $ANIMENB_OUTPUTS or ./outputs)")
    parser.add_argument("--dry-run", action="store_true", help="say what would go; delete nothing")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace) -> int:
    from animenb import config
    from animenb.retention import collect_garbage, parse_age
    from animenb.server.app import STORE_NAME
    from animenb.store import SqliteJobStore

    older_than = parse_age(args.older_than)
    home = Path(args.home).expanduser().resolve() if args.home else config.home_dir()
    outputs = Path(args.outputs).expanduser().resolve() if args.outputs else config.outputs_dir()
    store = SqliteJobStore(home / STORE_NAME)
    try:
        report = collect_garbage(
            store, outputs, older_than=older_than, thumbnails_dir=home / "thumbnails", dry_run=args.dry_run
        )
    finally:
        store.close()
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        verb = "would delete" if args.dry_run else "deleted"
        print(
            f"{verb} {len(report.jobs)} job(s) and {len(report.orphans)} orphan output dir(s), "
            f"{report.bytes_freed / 1e6:.1f} MB"
        )
        for error in report.errors:
            print(f"  error: {error}")
    return 1 if report.errors else 0
