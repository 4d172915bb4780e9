"""`animenb sweep`: an X/Y/Z grid of runs of one phase, here or on a server (`--url`: POST /api/anime/sweeps, then
its progress until it ends).

Here, each cell executes the phase notebook with papermill into `<sweep>/cells/<k>/notebook.ipynb`, all cells
and then the report on one warm kernel (`animenb.sweeps.notebooks`), so models load once. Ctrl-C stops the
running cell and ends the sweep, its finished cells kept and recorded.

Exit status: 0 when at least one cell succeeded, 1 when none did (or the sweep was cancelled on the server),
2 for a usage error (animenb.cli), e.g. an axis the phase's spec refuses, 130 after a Ctrl-C here.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import urllib.error
import urllib.request

from ._client import API, api_error, base_url, get_json, headers
from .run import parse_value

TEXT = ("prompt", "negative_prompt")
HELP = "run a parameter sweep (X/Y/Z grid of one phase) with a report and a labelled grid image"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "examples:\n"
        "  animenb sweep 1 -p prompt 'girl with red scarf' --axis steps=8,15,25 --axis seed=1-4\n"
        "  animenb sweep 1 -p prompt 'girl' --axis steps=8-40:8 --axis guidance_scale=5,7 --models tiny\n"
        "  animenb sweep 1 -p prompt 'girl' --axis steps=10,20 --url http://127.0.0.1:8328 --token T\n"
        "axes are A1111's X/Y/Z values: a list (8,15,25), a range (1-4, 8-40:8, 8-40 (+8), 5-7 [5])."
    )
    parser.add_argument("phase", metavar="PHASE", help="1, 2, 3 or CHARACTER_SHEET, ANIMATION_LOOP, FULL_VIDEO")
    parser.add_argument(
        "-p",
        "--parameter",
        dest="parameters",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
        help="a parameter every cell shares (repeatable)",
    )
    parser.add_argument(
        "--axis",
        dest="axes",
        action="append",
        default=[],
        metavar="NAME=VALUES",
        help="a swept parameter and its values (repeatable, up to 3: X, Y, Z)",
    )
    parser.add_argument(
        "--mode",
        choices=("grid", "zip"),
        default="grid",
        help="grid: every combination (default); zip: the i-th values together",
    )
    parser.add_argument("--models", default=None, help="model profile (local runs; default $ANIMENB_MODELS or tiny)")
    parser.add_argument("--output-dir", default=None, help="local runs: default outputs/sweep-<stamp>/")
    parser.add_argument("--no-report", action="store_true", help="local runs: skip the comparison notebook")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "--url", default=None, help="submit the sweep to this animenb server instead of running it here"
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("ANIMENB_TOKEN"),
        help="bearer token for --url (default $ANIMENB_TOKEN); a sweep needs one",
    )


def parse_axes(pairs: list[str]) -> dict[str, str]:
    """`["steps=8,15", "seed=1-4"]` -> {"steps": "8,15", "seed": "1-4"} (values parsed by the sweep's plan)."""
    axes: dict[str, str] = {}
    for pair in pairs:
        name, sep, values = pair.partition("=")
        if not sep or not name.strip() or not values.strip():
            raise ValueError(f"`--axis` must be NAME=VALUES like steps=8,15,25, got {pair!r}.")
        if name.strip() in axes:
            raise ValueError(f"`--axis` names {name.strip()!r} twice.")
        axes[name.strip()] = values.strip()
    if not axes:
        raise ValueError("give at least one `--axis NAME=VALUES`, e.g. --axis steps=8,15,25.")
    return axes


def run(args: argparse.Namespace) -> int:
    # Values are YAML scalars as for `animenb run`; prompts stay text whatever YAML would read.
    parameters = {name: value if name in TEXT else parse_value(value) for name, value in args.parameters}
    axes = parse_axes(args.axes)
    if args.url:
        return _remote(args, parameters, axes)
    return _local(args, parameters, axes)


def _local(args, parameters: dict, axes: dict) -> int:
    from pathlib import Path

    from animenb.sweeps.local import default_sweep_dir, run_sweep
    from animenb.sweeps.notebooks import CellFailed, SweepKernel
    from animenb.sweeps.report import RECORD_NAME, read_record

    logging.getLogger("papermill").setLevel(logging.ERROR)  # as `animenb run`: no warning per commented default
    sweep_dir = Path(args.output_dir).expanduser().resolve() if args.output_dir else default_sweep_dir()
    with SweepKernel() as kernel:
        try:
            df = run_sweep(
                args.phase,
                parameters,
                axes,
                mode=args.mode,
                out_dir=sweep_dir,
                models=args.models,
                progress=not args.quiet,
                kernel=kernel,
            )
        except KeyboardInterrupt:
            reason = (read_record(sweep_dir) or {}).get("reason") or "cancelled"
            print(
                f"animenb sweep: {reason} (Ctrl-C); the finished cells are in {sweep_dir}/cells/, "
                f"the record is {sweep_dir}/{RECORD_NAME}",
                file=sys.stderr,
            )
            return 130
        columns = [c for c in (*axes, "status", "quality_score", "verdict", "duration_seconds") if c in df]
        print(df[columns].to_string(index=False))
        print(f"grid:   {sweep_dir}/grid.png")
        if not args.no_report:
            try:
                print(f"report: {kernel.run_report(sweep_dir)}")
            except CellFailed as exc:  # the cells' results stand without it
                print(f"animenb sweep: the report notebook {exc}", file=sys.stderr)
    print(f"record: {sweep_dir}/{RECORD_NAME}")
    return 0 if (df["status"] == "succeeded").any() else 1


def _post_json(url: str, path: str, body: dict, token: str | None) -> dict:
    request = urllib.request.Request(
        base_url(url) + path,
        data=json.dumps(body).encode(),
        method="POST",
        headers={**headers(token), "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raise ValueError(api_error(exc.code, exc.read())) from None
    except (urllib.error.URLError, OSError) as exc:
        raise ConnectionError(
            f"cannot reach the animenb server at {base_url(url)} "
            f"({getattr(exc, 'reason', exc)}); is `animenb serve` running? (--url)"
        ) from None


def _remote(args, parameters: dict, axes: dict) -> int:
    phase = int(args.phase) if str(args.phase).isdigit() else args.phase
    reply = _post_json(
        args.url,
        f"{API}/sweeps",
        {"phase": phase, "parameters": parameters, "axes": axes, "mode": args.mode},
        args.token,
    )
    job_id, cells = reply["job_id"], reply["cells"]
    print(f"sweep {job_id}: {cells} cells queued; {base_url(args.url)}{reply['status_url']}")
    bar = None
    if not args.quiet:
        from tqdm.auto import tqdm

        bar = tqdm(total=cells, desc="sweep", unit="cell")
    try:
        while True:
            status = get_json(args.url, reply["status_url"], args.token)
            if bar is not None:
                bar.n = sum(1 for c in status.get("children") or [] if c["status"] not in ("queued", "running"))
                bar.refresh()
            if status["status"] not in ("queued", "running"):
                break
            time.sleep(0.5)
    finally:
        if bar is not None:
            bar.close()
    print(f"{status['status'].upper()}: {status.get('reason') or ''}")
    for url in status.get("outputs") or []:
        if url.endswith(("/grid.png", "/report.ipynb", "/sweep.json")):
            print(f"{url.rsplit('/', 1)[1]:<13}{base_url(args.url)}{url}")
    return 0 if status["status"] == "succeeded" else 1
