"""`animenb review JOB good|bad`: record your verdict on a finished output (POST /generation/{id}/review)."""

from __future__ import annotations

import argparse

from ._client import API, add_server_arguments, get_json

HELP = "record your verdict on a finished output (good or bad); `animenb calibrate` fits the gates to them"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_server_arguments(parser)
    parser.add_argument("job_id", help="the job whose output you judged")
    parser.add_argument("verdict", choices=("good", "bad"), help="good: the gate should pass it; bad: fail it")
    parser.add_argument("--note", default="", help="why (kept with the verdict)")


def run(args: argparse.Namespace) -> int:
    review = get_json(
        args.url,
        f"{API}/generation/{args.job_id}/review",
        args.token,
        body={"verdict": args.verdict, "note": args.note},
    )
    print(f"{review['job_id']}: {review['verdict']} by {review['reviewer']}")
    return 0
