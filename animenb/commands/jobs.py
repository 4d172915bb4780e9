"""`animenb jobs`: the server's jobs, newest first (GET /api/anime/jobs), as a table or JSON."""

from __future__ import annotations

import argparse
import json

from ._client import API, add_server_arguments, get_json

HELP = "list the server's jobs (newest first): id, status, phase, progress, quality, prompt"
STATUSES = ("queued", "running", "succeeded", "failed", "cancelled", "lost")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "examples:\n"
        "  animenb jobs                          the 20 newest jobs\n"
        "  animenb jobs --status queued,running  what is waiting or running\n"
        "  animenb jobs --json | jq .jobs[0]     the API's status bodies\n"
        "then `animenb watch JOB_ID` follows one with a progress bar."
    )
    add_server_arguments(parser)
    parser.add_argument(
        "--status", default=None, metavar="S[,S...]", help=f"only these statuses ({', '.join(STATUSES)})"
    )
    parser.add_argument("--limit", type=int, default=20, help="how many jobs, 1-200 (default 20)")
    parser.add_argument("--json", action="store_true", help="print the API's JSON instead of a table")


def _cell(text, width: int) -> str:
    text = " ".join(str(text if text is not None else "").split())  # prompts may hold newlines and tabs
    return text if len(text) <= width else text[: width - 1] + "…"


def format_table(jobs: list[dict]) -> str:
    rows = [("JOB ID", "STATUS", "PHASE", "PROGRESS", "QUALITY", "CREATED", "PROMPT")]
    for job in jobs:
        progress = job.get("progress") or {}
        percent = progress.get("percent")
        quality = job.get("quality") or {}
        score = quality.get("score")
        gate = (
            ""
            if score is None
            else (" review" if quality.get("verdict") == "review" else " pass" if quality.get("passed") else " below")
        )
        phase = job.get("phase_name") or job.get("phase") or ""
        rows.append(
            (
                job["job_id"],
                job.get("status", ""),
                _cell(phase, 16),
                "" if percent is None else f"{percent:.0f}%",
                "" if score is None else f"{score:.3f}{gate}",
                (job.get("created_at") or "")[:19].replace("T", " "),
                _cell(job.get("prompt"), 48),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1] for r in rows)


def run(args: argparse.Namespace) -> int:
    if not 1 <= args.limit <= 200:
        raise ValueError(f"`--limit` must be in [1, 200], got {args.limit}.")
    if args.status:
        bad = [s for s in args.status.split(",") if s.strip() not in STATUSES]
        if bad:
            raise ValueError(f"`--status` must be among {', '.join(STATUSES)}, got {', '.join(bad)!s}.")
    body = get_json(args.url, f"{API}/jobs", args.token, {"status": args.status, "limit": args.limit})
    if args.json:
        print(json.dumps(body, indent=2))
        return 0
    jobs = body.get("jobs", [])
    if not jobs:
        print("no jobs" + (f" with status {args.status}" if args.status else ""))
        return 0
    print(format_table(jobs))
    total = body.get("count")
    if total is not None and total > len(jobs):
        print(f"({len(jobs)} of {total}; --limit shows more)")
    return 0
