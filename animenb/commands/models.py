"""`animenb models list | check PROFILE | download PROFILE`: the weights a profile needs, and getting them."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "list model profiles and files, check a profile's weights, download them from the Hugging Face Hub"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    actions.add_parser("list", help="profiles, and the checkpoints / VAEs / LoRAs / embeddings in the model folders")
    check = actions.add_parser("check", help="per role: present, or what is missing (no network)")
    check.add_argument("profile", help="profile name (parameters/models/) or YAML path")
    download = actions.add_parser("download", help="fetch a profile's hub weights (sizes and licences first)")
    download.add_argument("profile", help="profile name (parameters/models/) or YAML path")
    download.add_argument(
        "--local-dir",
        type=Path,
        default=None,
        help="copy each repo to LOCAL_DIR/<org>/<name> (for an air-gapped box) instead of the hub cache ($HF_HOME)",
    )
    download.add_argument("--yes", "-y", action="store_true", help="do not ask before downloading")


def _size(count: int) -> str:
    n = float(count)
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def _list() -> int:
    from animenb import model_files
    from animenb.profiles import available_profiles, load_profile

    print("profiles:")
    for name in available_profiles():
        profile = load_profile(name)
        print(f"  {name:<16} {profile.label}")
    for kind in model_files.KINDS:
        entries = model_files.files(kind)
        print(f"{kind} ({model_files.folder(kind)}): {len(entries) or 'none'}")
        for entry in entries:
            print(f"  {entry.name:<40} {_size(entry.size):>10}  {model_files.short_hash(entry)}")
    return 0


def _check(name: str) -> int:
    from animenb.model_fetch import local_status
    from animenb.profiles import load_profile

    rows = local_status(load_profile(name))
    for row in rows:
        state = "present" if row["present"] else "MISSING"
        print(f"{row['role']:<16} {state:<8} {row['source']}")
        print(f"{'':<16} {row['where'] if row['present'] else row['missing']}")
    missing = [r["role"] for r in rows if not r["present"]]
    if missing:
        print(f"missing: {', '.join(missing)}; fetch them with `animenb models download {name}`", file=sys.stderr)
    return 1 if missing else 0


def _download(name: str, local_dir: Path | None, yes: bool) -> int:
    from animenb.model_fetch import fetch, hub_downloads, plan
    from animenb.profiles import load_profile

    downloads = hub_downloads(load_profile(name))
    if not downloads:
        print(f"profile {name!r} loads nothing from the hub")
        return 0
    target = (lambda d: local_dir / d.repo_id) if local_dir else (lambda d: None)
    plans = [plan(d, target(d)) for d in downloads]
    for p in plans:
        print(
            f"{p['role']:<16} {p['repo_id']:<48} {p['files']:>3} files {_size(p['bytes']):>10} "
            f"(to fetch {_size(p['bytes_to_fetch'])})  licence: {p['licence']}"
        )
    total = sum(p["bytes_to_fetch"] for p in plans)
    print(f"total to fetch: {_size(total)}")
    if total and not yes:
        if not sys.stdin.isatty():
            raise ValueError("not a terminal: pass --yes to download after reading the sizes and licences above.")
        if input("Download and accept these licences? [y/N] ").strip().lower() not in ("y", "yes"):
            print("nothing downloaded")
            return 1
    for download in downloads:
        print(f"{download.role}: {fetch(download, target(download))}")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.action == "list":
        return _list()
    if args.action == "check":
        return _check(args.profile)
    return _download(args.profile, args.local_dir, args.yes)
